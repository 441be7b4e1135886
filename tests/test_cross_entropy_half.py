"""losses.cross_entropy in float16 and bfloat16 on the CPU: torch's very numbers, its kernels' rounding
reproduced (support/cross_entropy_plumbing.py), on random cases and fixed ones, bit for bit."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from losses import cross_entropy
from test_cross_entropy import (HALF, check_k_dimensional_case, check_random_case, cross_entropy_cases,
                                k_dimensional_cases)


@settings(max_examples=50, deadline=None)
@given(cross_entropy_cases(dtypes=HALF))
def test_half_precision_gives_torchs_numbers_in_value_and_gradient(case):
    check_random_case(case)


@settings(max_examples=50, deadline=None)
@given(k_dimensional_cases(dtypes=HALF))
def test_k_dimensional_and_unbatched_inputs_in_half_precision_give_torchs_numbers(case):
    check_k_dimensional_case(case)


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
