"""losses.cross_entropy, F.cross_entropy's complete equivalent: its numbers and gradients for every shape and
option, on random cases and on PyTorch's own OpInfo and ModuleInfo inputs; differentiable twice and under
torch.func as F.cross_entropy is. (Half precision: test_cross_entropy_half.py; the argument rules and the
small cases: test_cross_entropy_arguments.py.)"""

import functools

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
