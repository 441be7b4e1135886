"""losses.cross_entropy, F.cross_entropy's complete equivalent: its numbers and gradients for every shape and
option, on random cases and on PyTorch's own OpInfo and ModuleInfo inputs, in float32 and float64 and, bit for
bit, in float16 and bfloat16; differentiable twice and under torch.func as F.cross_entropy is; every argument
checked by torch's rules, no stricter and no looser."""

import functools

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from losses import cross_entropy

# -----------------------------------------------------------------------------
# cross_entropy against torch.nn.functional.cross_entropy


FLOATS = (torch.float32, torch.float64)
HALF = (torch.float16, torch.bfloat16)


@st.composite
def cross_entropy_cases(draw, dtypes=FLOATS):
    """Random (input, target, keyword arguments) covering every option of F.cross_entropy."""
    N = draw(st.integers(1, 64))
    C = draw(st.integers(2, 20))
    dtype = draw(st.sampled_from(dtypes))
    scale = draw(st.sampled_from([1e-2, 1.0, 10.0, 1e2, 1e3, 1e4]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    logits = torch.randn(N, C, dtype=dtype, generator=generator) * scale
    kwargs = dict(reduction=draw(st.sampled_from(['none', 'mean', 'sum'])),
                  label_smoothing=draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))))
    if draw(st.booleans()):
        kwargs['weight'] = torch.rand(C, dtype=dtype, generator=generator) * 2 + 0.1
    target_kind = draw(st.sampled_from(['index', 'probability', 'one-hot']))
    labels = torch.randint(0, C, (N,), generator=generator)
    if target_kind == 'probability':
        target = torch.softmax(torch.randn(N, C, dtype=dtype, generator=generator) * 3, 1)
    elif target_kind == 'one-hot':
        target = F.one_hot(labels, C).to(dtype)
    else:
        ignore_index = draw(st.sampled_from([-100, 0, C - 1]))
        kwargs['ignore_index'] = ignore_index
        if draw(st.booleans()):  # some (possibly all) targets are ignored
            ignored = torch.rand(N, generator=generator) < draw(st.sampled_from([0.3, 1.0]))
            labels = torch.where(ignored, ignore_index, labels)
        target = labels
    return logits, target, kwargs


def assert_close_to_reference(ours, reference, precision=None):
    """Compare within a tolerance scaled to the magnitude of the reference values; float16/bfloat16 logits
    (precision) by assert_torchs_numbers.

    precision: the dtype whose rounding limits the agreement (default ours'): float32 where any operand
    was float32, even if the result was promoted to float64.
    """
    if precision in HALF:
        return assert_torchs_numbers(ours, reference, precision)
    rtol = 2e-5 if (precision or ours.dtype) == torch.float32 else 1e-10
    magnitude = reference.detach().nan_to_num(0.0).abs().max().item() if reference.numel() else 0.0
    torch.testing.assert_close(ours, reference, rtol=rtol, atol=rtol * (1 + magnitude), equal_nan=True)


def assert_torchs_numbers(ours, reference, half):
    """Results from float16/bfloat16 logits: torch's, bit for bit, except where the float32 value torch rounds
    lies within a float32 hair of a rounding boundary of the half dtype: which neighbour it gets then depends on
    the exp and log its kernels call (Sleef's, vectorised) against ours (torch.exp: MKL's), and on its vector
    width. Rare, but where g - exp(out) sum(g) nearly cancels (label smoothing, probability targets) a few
    gradient elements of a row can be. So at most one element in 10 (one in any case) may differ, by at most 2
    units in the last place of `half` at the tensor's largest magnitude; the rest is equal (nan where torch's
    is). (In 16,000 random cases: at most 6 elements of a tensor, 0.25 units.)"""
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    ours, reference = ours.detach(), reference.detach()
    differ = ~((ours == reference) | (ours.isnan() & reference.isnan()))
    assert int(differ.sum()) <= 1 + differ.numel() // 10, f"{int(differ.sum())} of {differ.numel()} differ"
    if differ.any():
        largest = reference.double().abs().nan_to_num(0.0, 0.0, 0.0).max().clamp_min(torch.finfo(half).tiny)
        unit = torch.finfo(half).eps * 2.0 ** torch.floor(torch.log2(largest))
        difference = (ours.double() - reference.double()).abs()[differ]
        assert (difference <= 2 * unit).all(), f"{difference.max().item()} > 2 * {unit.item()}"


def downstream_gradient(reference):
    """A random gradient from downstream, in [0.5, 1.5), the same for the same shape (so that hypothesis
    replays a failing example as it failed)."""
    generator = torch.Generator().manual_seed(reference.numel())
    return torch.rand(reference.shape, dtype=reference.dtype, generator=generator) + 0.5


def check_random_case(case):
    logits, target, kwargs = case
    x_ours = logits.clone().requires_grad_()
    x_torch = logits.clone().requires_grad_()
    ours = cross_entropy(x_ours, target, **kwargs)
    reference = F.cross_entropy(x_torch, target, **kwargs)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    assert_close_to_reference(ours.detach(), reference.detach(), logits.dtype)
    upstream = downstream_gradient(reference)
    (ours * upstream).sum().backward()
    (reference * upstream).sum().backward()
    assert_close_to_reference(x_ours.grad, x_torch.grad, logits.dtype)


@settings(max_examples=100, deadline=None)
@given(cross_entropy_cases())
def test_cross_entropy_matches_torch_in_value_and_gradient(case):
    check_random_case(case)


@settings(max_examples=50, deadline=None)
@given(cross_entropy_cases(dtypes=HALF))
def test_half_precision_gives_torchs_numbers_in_value_and_gradient(case):
    check_random_case(case)


# -----------------------------------------------------------------------------
# float16 and bfloat16: torch's very numbers, bit for bit


def half_case(dtype, shape, target_kind, options):
    """(logits, target, kwargs) of a fixed seed: logits of dtype and shape, ~N(0, 3^2); class indices (some or
    all ignored when options say so) or probabilities (float16/bfloat16 or float32, requiring grad)."""
    generator = torch.Generator().manual_seed(sum(shape) + len(options))
    logits = (torch.randn(shape, generator=generator) * 3).to(dtype)
    class_dim, options = (0 if len(shape) == 1 else 1), dict(options)
    C = shape[class_dim]
    if options.pop('weight', False):
        options['weight'] = (torch.rand(C, generator=generator) * 2 + 0.1).to(dtype)
    if target_kind != 'indices':
        target = torch.softmax(torch.randn(shape, generator=generator) * 3, class_dim)
        return logits, target.to(dtype if target_kind == 'probabilities' else torch.float32), options
    target = torch.randint(0, C, shape[:class_dim] + shape[class_dim + 1:], generator=generator)
    ignored = options.pop('ignored', None)
    if ignored is not None:
        position = torch.arange(target.numel()).reshape(target.shape)
        target = torch.where({'some': position % 5 == 2, 'every 16th': position % 16 == 0,
                              'all': position >= 0}[ignored], options.get('ignore_index', -100), target)
    return logits, target, options


HALF_CASES = {  # shape, target, options
    'the training case': ((64, 10), 'indices', {}),
    'weight, an ignore_index, none': ((64, 10), 'indices', dict(weight=True, ignore_index=3, ignored='some')),
    'weight, smoothing, sum': ((64, 10), 'indices', dict(weight=True, label_smoothing=0.1, reduction='sum')),
    'every 16th ignored, weight': ((300, 7), 'indices', dict(ignored='every 16th', weight=True)),
    '2000 rows, sum': ((2000, 3), 'indices', dict(reduction='sum')),
    'K-dim, smoothing': ((4, 5, 3, 6), 'indices', dict(label_smoothing=0.2, ignored='some')),
    'K-dim, 70 positions a row, sum': ((2, 4, 70), 'indices', dict(reduction='sum', weight=True)),
    'one example': ((6,), 'indices', dict(reduction='none', label_smoothing=0.3)),
    'probabilities, weight, smoothing': ((16, 10), 'probabilities', dict(weight=True, label_smoothing=0.3)),
    'float32 probabilities, K-dim, none': ((3, 5, 4, 2), 'float32 probabilities', dict(reduction='none')),
    'no rows': ((0, 4), 'indices', {}),
    'every position ignored': ((8, 4), 'indices', dict(ignored='all', label_smoothing=0.1)),
}


@pytest.mark.parametrize('name', HALF_CASES)
@pytest.mark.parametrize('dtype', HALF, ids=str)
def test_half_precision_is_torchs_bit_for_bit(dtype, name):
    """The loss and its gradients (the logits', and a probability target's), equal to torch's in every bit, on
    cases that cover each option, the orders torch adds in (every 16th position ignored, 2000 rows) and the
    K-dimensional kernels. (These inputs hold no element at a hair from a rounding boundary: see
    assert_torchs_numbers.)"""
    logits, target, kwargs = half_case(dtype, *HALF_CASES[name])
    results = []
    for fn in (cross_entropy, F.cross_entropy):
        x = logits.clone().requires_grad_()
        t = target.clone().requires_grad_(target.is_floating_point())
        loss = fn(x, t, **kwargs)
        upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1)).to(loss.dtype) + 0.5
        results.append((loss,) + torch.autograd.grad(loss, [x, t] if t.requires_grad else [x], upstream))
    for what, ours, theirs in zip(('loss', 'input gradient', 'target gradient'), *results):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, what
        assert torch.equal(ours.nan_to_num(7.0), theirs.nan_to_num(7.0)), what


@pytest.mark.parametrize('dtype', HALF, ids=str)
def test_half_precision_sums_add_in_torchs_order(dtype):
    """torch's nll_loss adds float16/bfloat16 in their own precision, through eight partial sums passed up at
    positions that are multiples of 16, 256, ... (never at an ignored one); one float32 sum rounded once is
    another number here, and ours is torch's."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(4113, 3, generator=generator) * 4).to(dtype)
    position = torch.arange(4113)
    for ignored in (position % 16 == 0, position % 256 == 0):
        target = torch.where(ignored, -100, torch.randint(0, 3, (4113,), generator=generator))
        reference = F.cross_entropy(logits, target, reduction='sum')
        assert torch.equal(cross_entropy(logits, target, reduction='sum'), reference)
        assert not torch.equal(F.cross_entropy(logits.float(), target, reduction='sum').to(dtype), reference)


def test_half_precision_under_torch_func_is_within_torchs_precision():
    """Under torch.func, where data-dependent shapes cannot run, float16 takes the float path's ops: within a
    few units in the last place of torch's, not bit for bit."""
    import torch.func as tf
    logits, target = torch.randn(5, 4).half(), torch.tensor([0, 1, 2, 3, 1])
    ours = tf.grad(lambda o: cross_entropy(o, target))(logits)
    torch.testing.assert_close(ours, tf.grad(lambda o: F.cross_entropy(o, target))(logits), rtol=4e-3, atol=1e-4)


def test_all_ignored_batch_gives_nan_mean_and_zero_gradient_like_torch():
    x = torch.randn(4, 3, requires_grad=True)
    target = torch.full((4,), -100)
    loss = cross_entropy(x, target)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x, target))
    loss.backward()
    assert (x.grad == 0).all()


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(reduction='none'),
    dict(reduction='sum', label_smoothing=0.3),
    dict(weight='w'),
    dict(weight='w', label_smoothing=0.2, ignore_index=1),
    dict(target='probabilities', weight='w', label_smoothing=0.1),
    dict(target='probabilities', reduction='none'),
])
def test_gradcheck(kwargs):
    kwargs = dict(kwargs)
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    if kwargs.pop('target', None) == 'probabilities':
        target = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    else:
        target = torch.tensor([0, 1, kwargs.get('ignore_index', -100), 3, 4, 1])
    if kwargs.get('weight') == 'w':
        kwargs['weight'] = torch.rand(5, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, target, **kwargs), (x,))


# -----------------------------------------------------------------------------
# PyTorch's own test inputs: the OpInfo samples of nn.functional.cross_entropy and the ModuleInfo inputs
# of nn.CrossEntropyLoss, as torch's test suite runs them (torch ships them; importing them needs expecttest)

SAMPLE_DTYPES = FLOATS + HALF


@functools.lru_cache(maxsize=None)
def torch_samples(dtype):
    """[(source, input, target, kwargs)] for one dtype; inputs (and probability targets) require grad.

    Imported here, not at the top: building torch's op_db takes seconds, and only these tests need it.
    """
    frozen = torch.backends.flags_frozen()
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db
    if not frozen:  # importing torch's test utilities froze the torch.backends flags (disable_global_flags)
        # for the whole process; thaw them, as the other tests may set them. The flag is a global of the
        # module that defines flags_frozen, which is not the object torch.backends names.
        torch.backends.flags_frozen.__globals__['__allow_nonbracketed_mutation_flag'] = True
    opinfo = next(op for op in op_db if op.name == 'nn.functional.cross_entropy')
    moduleinfo = next(module for module in module_db if module.module_cls is nn.CrossEntropyLoss)
    samples = []
    with torch.random.fork_rng():  # the same samples every run, and the global generator untouched
        torch.manual_seed(0)
        for sample in opinfo.sample_inputs('cpu', dtype, requires_grad=True):
            samples.append(('OpInfo', sample.input, sample.args[0], dict(sample.kwargs)))
        for module_input in moduleinfo.module_inputs_func(moduleinfo, device='cpu', dtype=dtype,
                                                          requires_grad=True, training=True):
            input, target = module_input.forward_input.args
            samples.append(('ModuleInfo', input, target, dict(module_input.constructor_input.kwargs)))
    return samples


def describe(source, input, target, kwargs):
    return (f"{source}: input {tuple(input.shape)} {input.dtype}, target {tuple(target.shape)} {target.dtype}"
            f"{' requiring grad' if target.requires_grad else ''}, {kwargs}")


def test_torch_samples_cover_every_shape_and_option():
    """PyTorch's own inputs, in each dtype, exercise what losses.cross_entropy must match: (C,), (N, C) and
    K-dimensional logits, class indices (some ignored) and probabilities (requiring grad), a weight, label
    smoothing and each reduction, from both torch's OpInfo and its ModuleInfo."""
    for dtype in SAMPLE_DTYPES:
        seen = set()
        for source, input, target, kwargs in torch_samples(dtype):
            assert input.dtype == dtype and input.requires_grad
            probability = input.shape == target.shape
            seen |= {source, ('(C,)', '(N, C)')[input.dim() - 1] if input.dim() < 3 else 'K-dimensional',
                     'probabilities' if probability else 'indices', f"reduction {kwargs.get('reduction', 'mean')}"}
            seen |= {name for name in ('weight', 'label_smoothing') if kwargs.get(name) is not None}
            if probability and target.requires_grad:
                seen.add('probabilities requiring grad')
            if not probability and (target == kwargs.get('ignore_index', -100)).any():
                seen.add('an ignored target')
        assert seen == {'OpInfo', 'ModuleInfo', '(C,)', '(N, C)', 'K-dimensional', 'indices', 'probabilities',
                        'probabilities requiring grad', 'an ignored target', 'weight', 'label_smoothing',
                        'reduction none', 'reduction mean', 'reduction sum'}, dtype
    assert not torch.backends.flags_frozen()  # the import left the torch.backends flags settable


def check_against_reference(input, target, kwargs, reference_fn):
    """Value, shape, dtype and gradients (input's, and target's where it requires grad) against torch's."""
    input = input.detach().clone().requires_grad_()  # fresh leaves: nothing shared between the two graphs
    target = target.detach().clone().requires_grad_(target.requires_grad)
    kwargs = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    wrt = [input] + ([target] if target.requires_grad else [])
    reference = reference_fn(input, target, kwargs)
    ours = cross_entropy(input, target, **kwargs)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    precision = input.dtype if input.dtype in HALF else None
    assert_close_to_reference(ours.detach(), reference.detach(), precision)
    upstream = torch.rand(reference.shape, dtype=reference.dtype, generator=torch.Generator().manual_seed(0)) + 0.5
    for name, mine, theirs in zip(('input', 'target'), torch.autograd.grad(ours, wrt, upstream),
                                  torch.autograd.grad(reference, wrt, upstream)):
        assert mine.dtype == theirs.dtype, name
        assert_close_to_reference(mine, theirs, precision)


@pytest.mark.parametrize('dtype', SAMPLE_DTYPES, ids=str)
def test_torch_samples_give_torchs_value_and_gradients(dtype):
    failures = []
    for source, input, target, kwargs in torch_samples(dtype):
        if source == 'OpInfo':
            reference_fn = lambda input, target, kwargs: F.cross_entropy(input, target, **kwargs)  # noqa: E731
        else:
            reference_fn = lambda input, target, kwargs: nn.CrossEntropyLoss(**kwargs)(input, target)  # noqa: E731
        try:
            check_against_reference(input, target, kwargs, reference_fn)
        except Exception as error:  # every sample's failure, each named
            failures.append(f"{describe(source, input, target, kwargs)}: {error!r}")
    assert not failures, '\n'.join(failures)


# -----------------------------------------------------------------------------
# K-dimensional and unbatched inputs, every option, against F.cross_entropy


@st.composite
def k_dimensional_cases(draw, dtypes=FLOATS):
    """(input, target, kwargs, reference_target): (N, C, d1, ..., dK) logits with K = 0..3 (N may be 0), or
    one example's (C,), of one of dtypes; index or probability targets (of the logits' dtype, float32 or
    float64, maybe requiring grad), every option. reference_target is what torch gets: the same target,
    except a (1,) index for (C,) logits, whose () form torch gets instead (see the end)."""
    unbatched = draw(st.booleans()) and draw(st.booleans())  # a quarter of the cases
    C = draw(st.integers(1, 6))
    if unbatched:
        shape = (C,)
    else:
        shape = (draw(st.integers(0, 4)), C) + tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
    dtype = draw(st.sampled_from(dtypes))
    scale = draw(st.sampled_from([1e-2, 1.0, 10.0, 1e3]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    logits = torch.randn(shape, dtype=dtype, generator=generator) * scale
    kwargs = dict(reduction=draw(st.sampled_from(['none', 'mean', 'sum'])),
                  label_smoothing=draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))))
    class_dim = 0 if unbatched else 1
    if draw(st.booleans()):  # class probabilities of the input's shape, maybe of another float dtype
        target_dtype = draw(st.sampled_from([dtype, torch.float32, torch.float64]))
        target = torch.softmax(torch.randn(shape, dtype=target_dtype, generator=generator) * 3, class_dim)
        target.requires_grad_(draw(st.booleans()))
        kwargs['ignore_index'] = draw(st.sampled_from([-100, -1]))  # torch allows only a negative one here
        if draw(st.booleans()):
            weight_dtype = draw(st.sampled_from([dtype, target_dtype]))
            kwargs['weight'] = (torch.rand(C, dtype=weight_dtype, generator=generator) * 2 + 0.1
                                ).requires_grad_(draw(st.booleans()))
        return logits, target, kwargs, target
    ignore_index = draw(st.sampled_from([-100, 0, C - 1]))
    kwargs['ignore_index'] = ignore_index
    if draw(st.booleans()):
        kwargs['weight'] = torch.rand(C, dtype=dtype, generator=generator) * 2 + 0.1
    target = torch.randint(0, C, shape[:1] + shape[2:] if not unbatched else (), generator=generator)
    if draw(st.booleans()):  # some (possibly all) positions ignored
        ignored = torch.rand(target.shape, generator=generator) < draw(st.sampled_from([0.3, 1.0]))
        target = torch.where(ignored, ignore_index, target)
    if unbatched and C > 1 and draw(st.booleans()):  # (1,) with C = 1 would be a probability target
        # a (1,) index for (C,) logits, as torch accepts it; torch's own label-smoothing path then fails to
        # broadcast its () smoothing term against the (1,) mask, so the reference gets the () index
        return logits, target.reshape(1), kwargs, target
    return logits, target, kwargs, target


@settings(max_examples=100, deadline=None)
@given(k_dimensional_cases())
def test_k_dimensional_and_unbatched_inputs_match_torch(case):
    check_k_dimensional_case(case)


@settings(max_examples=50, deadline=None)
@given(k_dimensional_cases(dtypes=HALF))
def test_k_dimensional_and_unbatched_inputs_in_half_precision_give_torchs_numbers(case):
    check_k_dimensional_case(case)


def check_k_dimensional_case(case):
    logits, target, kwargs, reference_target = case
    x_ours, x_torch = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    t_ours = target.detach().clone().requires_grad_(target.requires_grad)
    t_torch = reference_target.detach().clone().requires_grad_(target.requires_grad)
    weight = kwargs.pop('weight', None)
    w_ours = weight.detach().clone().requires_grad_(weight.requires_grad) if weight is not None else None
    w_torch = weight.detach().clone().requires_grad_(weight.requires_grad) if weight is not None else None
    ours = cross_entropy(x_ours, t_ours, weight=w_ours, **kwargs)
    reference = F.cross_entropy(x_torch, t_torch, weight=w_torch, **kwargs)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    dtypes = {t.dtype for t in (logits, target, weight) if t is not None}
    precision = logits.dtype if logits.dtype in HALF else torch.float32 if torch.float32 in dtypes else torch.float64
    assert_close_to_reference(ours.detach(), reference.detach(), precision)
    upstream = downstream_gradient(reference)
    pairs = [(x_ours, x_torch)] + [(a, b) for a, b in ((t_ours, t_torch), (w_ours, w_torch))
                                   if a is not None and a.requires_grad]
    mine = torch.autograd.grad(ours, [a for a, _ in pairs], upstream)
    theirs = torch.autograd.grad(reference, [b for _, b in pairs], upstream)
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype
        assert_close_to_reference(a, b, precision)


def test_k_dimensional_input_is_its_positions_flattened():
    """(N, C, d1, d2) with (N, d1, d2) targets is (N d1 d2, C) with (N d1 d2,) targets: the classes
    along dim 1, one loss per pixel."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 2, dtype=torch.float64)
    y = torch.randint(0, 5, (3, 4, 2))
    y[0, 0, 0] = -100
    flat_x, flat_y = x.movedim(1, -1).reshape(-1, 5), y.reshape(-1)
    w = torch.rand(5, dtype=torch.float64)
    for kwargs in (dict(), dict(weight=w, label_smoothing=0.2), dict(reduction='sum')):
        torch.testing.assert_close(cross_entropy(x, y, **kwargs), cross_entropy(flat_x, flat_y, **kwargs))
    per_pixel = cross_entropy(x, y, reduction='none')
    assert per_pixel.shape == (3, 4, 2)
    torch.testing.assert_close(per_pixel.reshape(-1), cross_entropy(flat_x, flat_y, reduction='none'))
    # probability targets: the mean is over the N d1 d2 positions
    t = torch.softmax(torch.randn(3, 5, 4, 2, dtype=torch.float64), 1)
    torch.testing.assert_close(cross_entropy(x, t), cross_entropy(x, t, reduction='sum') / (3 * 4 * 2))


# -----------------------------------------------------------------------------
# the gradient with respect to a probability target (and its weight), by hand


@pytest.mark.parametrize('shape', [(4, 3), (2, 3, 2, 2), (3,)], ids=str)
@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(reduction='none'),
    dict(reduction='sum', label_smoothing=0.3),
    dict(weight='w', label_smoothing=0.2),
    dict(weight='w', reduction='none', label_smoothing=1.0),
], ids=str)
def test_gradcheck_with_respect_to_the_target_and_its_weight(shape, kwargs):
    kwargs = dict(kwargs)
    generator = torch.Generator().manual_seed(0)
    class_dim = 0 if len(shape) == 1 else 1
    x = torch.randn(shape, dtype=torch.float64, generator=generator).requires_grad_()
    t = torch.softmax(torch.randn(shape, dtype=torch.float64, generator=generator), class_dim).requires_grad_()
    inputs = (x, t)
    if kwargs.pop('weight', None):
        inputs += (torch.rand(shape[class_dim], dtype=torch.float64, generator=generator).add_(0.1).requires_grad_(),)
    assert torch.autograd.gradcheck(lambda x, t, *w: cross_entropy(x, t, *w, **kwargs), inputs)


def test_target_gradient_is_minus_one_minus_eps_times_weight_times_log_p():
    torch.manual_seed(0)
    x, t, w = torch.randn(5, 4), torch.rand(5, 4).requires_grad_(), torch.rand(4)
    eps = 0.25
    cross_entropy(x, t, weight=w, label_smoothing=eps, reduction='sum').backward()
    torch.testing.assert_close(t.grad, -(1 - eps) * w * torch.log_softmax(x, 1))




# -----------------------------------------------------------------------------
# the second derivative and torch.func, as through F.cross_entropy (d2l exercise 3.4.1 uses them)


def higher_order_case(name):
    """(logits, target, kwargs), float64: the training case first (the closed-form path), then the others."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 1])
    return {
        'indices, mean': (logits, labels, {}),
        'indices, none': (logits, labels, dict(reduction='none')),
        'K-dim, sum': (torch.randn(3, 4, 2, 2, dtype=torch.float64, generator=generator),
                       torch.randint(0, 4, (3, 2, 2), generator=generator), dict(reduction='sum')),
        'weight, smoothing, ignore_index': (logits, labels, dict(weight=torch.rand(4, dtype=torch.float64,
                                                                                   generator=generator) + 0.1,
                                                                  label_smoothing=0.2, ignore_index=1)),
        'a -100 target': (logits, torch.tensor([0, -100, 2, 3, 1]), {}),
        'probabilities': (logits, torch.softmax(torch.randn(5, 4, dtype=torch.float64, generator=generator), 1),
                          dict(label_smoothing=0.1)),
        'one example': (logits[0], labels[0], {}),
    }[name]


HIGHER_ORDER_CASES = ['indices, mean', 'indices, none', 'K-dim, sum', 'weight, smoothing, ignore_index',
                      'a -100 target', 'probabilities', 'one example']


def higher_order_results(loss_fn, logits, target, kwargs):
    """{what: tensor} for the loss function loss_fn(o, t, **kwargs): double backward (a Hessian-vector
    product), forward-mode AD, and torch.func's grad, jvp, vmap, jacrev and hessian."""
    import torch.autograd.forward_ad as fwAD
    import torch.func as tf
    scalar = lambda o: loss_fn(o, target, **kwargs).sum()  # noqa: E731
    direction = torch.randn(logits.shape, dtype=logits.dtype, generator=torch.Generator().manual_seed(1))
    x = logits.clone().requires_grad_()
    grad, = torch.autograd.grad(scalar(x), x, create_graph=True)
    results = dict(hessian_vector=torch.autograd.grad((grad * direction).sum(), x)[0])
    with fwAD.dual_level():
        results['forward_ad'] = fwAD.unpack_dual(scalar(fwAD.make_dual(logits, direction))).tangent
    results.update(grad=tf.grad(scalar)(logits), jvp=tf.jvp(scalar, (logits,), (direction,))[1],
                   vmap=tf.vmap(scalar)(torch.stack([logits, 2 * logits])),
                   jacrev=tf.jacrev(lambda o: loss_fn(o, target, **kwargs))(logits),
                   hessian=tf.hessian(scalar)(logits))
    return results


@pytest.mark.parametrize('name', HIGHER_ORDER_CASES)
def test_second_derivatives_and_torch_func_give_what_they_give_through_torch(name):
    logits, target, kwargs = higher_order_case(name)
    ours = higher_order_results(cross_entropy, logits, target, kwargs)
    theirs = higher_order_results(F.cross_entropy, logits, target, kwargs)
    for what in theirs:
        torch.testing.assert_close(ours[what], theirs[what], rtol=1e-10, atol=1e-12, msg=what)


def test_hessian_is_diag_p_minus_p_p_transpose():
    """The second derivative of l = log sum exp(o) - o_y: diag(p) - p p^T, p = softmax(o), whatever y is."""
    import torch.func as tf
    o = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    p = torch.softmax(o, 0)
    for y in range(4):
        torch.testing.assert_close(tf.hessian(lambda o: cross_entropy(o, torch.tensor(y)))(o),
                                   torch.diag(p) - torch.outer(p, p))


# -----------------------------------------------------------------------------
# the gradient, and torch's rules for arguments, no stricter and no looser


def test_gradient_is_softmax_minus_one_hot_over_n():
    torch.manual_seed(0)
    O = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1])
    cross_entropy(O, y).backward()
    expected = (torch.softmax(O.detach(), 1) - F.one_hot(y, 3)) / 4
    torch.testing.assert_close(O.grad, expected)


def test_backward_twice_with_retain_graph():
    x = torch.randn(8, 4, requires_grad=True)
    y = torch.randint(0, 4, (8,))
    loss = cross_entropy(x, y)
    first, = torch.autograd.grad(loss, x, retain_graph=True)
    second, = torch.autograd.grad(loss, x)
    torch.testing.assert_close(first, second)


def test_float32_logits_of_1e4_stay_finite_with_a_finite_gradient():
    torch.manual_seed(0)
    x = (torch.randn(32, 10) * 1e4).requires_grad_()
    loss = cross_entropy(x, torch.randint(0, 10, (32,)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('target, message', [
    (torch.tensor([0, 1, 2, 12]), r'outside 0\.\.9 \(found 12\)'),
    (torch.tensor([0, -1, 2, 3]), r'outside 0\.\.9 \(found -1\)'),
    (torch.tensor([0, 1, -100, 12]), r'found 12'),  # ignored entries do not hide a bad one
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), r'int64'),
    (torch.tensor([0, 1, 2, 3], dtype=torch.int32), r'int64'),
    (torch.tensor([0, 1, 2]), r'shape \(3,\)'),
    (torch.rand(4, 3), r'shape \(4, 3\)'),
    (torch.zeros(4, 10, dtype=torch.int64), r'probabilities, so it must be torch.float32'),
])
def test_bad_targets_raise_value_error(target, message):
    with pytest.raises(ValueError, match=message):
        cross_entropy(torch.randn(4, 10), target)


def test_bad_options_raise_value_error():
    x, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match='reduction'):
        cross_entropy(x, y, reduction='avg')
    with pytest.raises(ValueError, match='label_smoothing'):
        cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match='weight'):
        cross_entropy(x, y, weight=torch.ones(3))
    with pytest.raises(ValueError, match='weight must be a torch.float32'):
        cross_entropy(x, y, weight=torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match='ignore_index'):
        cross_entropy(x, torch.rand(4, 10), ignore_index=0)
    with pytest.raises(ValueError, match=r'\(N, C\)'):
        cross_entropy(torch.randn(4, 10).long(), y)


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
@pytest.mark.parametrize('target', [torch.tensor(2), torch.tensor([0.2, 0.3, 0.5])])
def test_one_unbatched_example_behaves_as_torch(target, reduction):
    logits = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    mine, theirs = cross_entropy(logits, target, reduction=reduction), F.cross_entropy(logits, target,
                                                                                        reduction=reduction)
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(torch.autograd.grad(mine.sum(), logits)[0],
                               torch.autograd.grad(theirs.sum(), logits)[0])


def test_byte_class_indices_are_accepted_as_torch_accepts_them():
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 4, 2], dtype=torch.uint8)
    torch.testing.assert_close(cross_entropy(logits, target), F.cross_entropy(logits, target))




def test_float64_probabilities_with_float32_logits_are_computed_in_float64_as_torch_does():
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)
    ours, reference = cross_entropy(x, t), F.cross_entropy(x, t)
    assert ours.dtype == reference.dtype == torch.float64
    torch.testing.assert_close(ours, reference)
    assert torch.autograd.grad(ours, x)[0].dtype == torch.float32


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_one_example_with_a_1_element_target_is_accepted_as_torch_accepts_it(reduction):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    target = torch.tensor([2])
    ours, reference = cross_entropy(x, target, reduction=reduction), F.cross_entropy(x, target, reduction=reduction)
    assert ours.shape == reference.shape == ()
    torch.testing.assert_close(ours, reference)
    # torch's own backward fails here with reduction='none' (size mismatch), so the gradient is checked
    # against the one of the same example with a () target
    reference = F.cross_entropy(x, target.reshape(()), reduction=reduction)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(reference, x)[0])


@pytest.mark.parametrize('arguments, error, message', [
    (dict(weight=[1.0, 2.0, 3.0]), TypeError, 'weight'),
    (dict(weight=np.ones(3, dtype=np.float32)), TypeError, 'weight'),
    (dict(ignore_index=1.0), TypeError, 'ignore_index'),
    (dict(ignore_index=True), TypeError, 'ignore_index'),
    (dict(ignore_index=None), TypeError, 'ignore_index'),
    (dict(label_smoothing=None), TypeError, 'label_smoothing'),
    (dict(label_smoothing='0.1'), TypeError, 'label_smoothing'),
    (dict(reduction=None), ValueError, 'reduction'),
], ids=str)
def test_arguments_torch_refuses_are_refused_naming_the_argument(arguments, error, message):
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(error, match=message):
        cross_entropy(x, y, **arguments)
    with pytest.raises((TypeError, ValueError)):  # torch refuses it too
        F.cross_entropy(x, y, **arguments)


@pytest.mark.parametrize('arguments', [
    dict(ignore_index=torch.tensor(1)), dict(ignore_index=np.int64(1)), dict(label_smoothing=0),
    dict(label_smoothing=torch.tensor(0.1)), dict(label_smoothing=np.float32(0.1)),
], ids=str)
def test_arguments_torch_accepts_are_accepted(arguments):
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(cross_entropy(x, y, **arguments), F.cross_entropy(x, y, **arguments))


@pytest.mark.parametrize('target', [torch.zeros(4, dtype=torch.long), torch.zeros(4, 0)], ids=['indices', 'probabilities'])
def test_logits_with_no_classes_are_refused_naming_input(target):
    with pytest.raises(ValueError, match=r'input of shape \(N, C\) = \(4, 0\) has C = 0 classes'):
        cross_entropy(torch.randn(4, 0), target)


def test_probability_target_weight_that_requires_grad_gets_torchs_gradient():
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 4), torch.softmax(torch.randn(2, 3, 4), 1)
    w_ours = torch.rand(3).requires_grad_()
    w_torch = w_ours.detach().clone().requires_grad_()
    ours = cross_entropy(x, t, weight=w_ours, label_smoothing=0.1)
    reference = F.cross_entropy(x, t, weight=w_torch, label_smoothing=0.1)
    torch.testing.assert_close(torch.autograd.grad(ours, w_ours)[0], torch.autograd.grad(reference, w_torch)[0])


@pytest.mark.parametrize('input, target, message', [
    (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 6, dtype=torch.long),
     r'target has shape \(2, 4, 6\); for input of shape \(N, C, d1, d2\) = \(2, 3, 4, 5\) expected '
     r'\(N, d1, d2\) = \(2, 4, 5\) class indices or \(2, 3, 4, 5\) class probabilities'),
    (torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long), r'\(N, d1\) = \(2, 4\) class indices'),
    (torch.randn(3), torch.zeros(2, dtype=torch.long), r'input of shape \(C,\) = \(3,\) expected a \(\) or \(1,\)'),
    (torch.randn(2, 3, 4), torch.zeros(2, 4), r'target of shape \(2, 4\) must hold int64'),
    (torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long), r'holds class probabilities'),
    (torch.randn(2, 3, 4), torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]]), r'outside 0\.\.2 \(found 3\)'),
    (torch.tensor(1.0), torch.tensor(0), r'\(C,\), \(N, C\) or \(N, C, d1, \.\.\., dK\)'),
], ids=['4-d', '3-d', '(C,)', 'float indices', 'integer probabilities', 'out of range', '0-d'])
def test_bad_k_dimensional_input_names_the_shapes(input, target, message):
    with pytest.raises(ValueError, match=message):
        cross_entropy(input, target)
