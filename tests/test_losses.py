"""Tests for losses.py: the notes' worked examples, stability, and parity with torch."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import losses
from losses import (LOSSES, accuracy, correct_count, cross_entropy, cross_entropy_naive,
                    log_softmax, softmax, softmax_naive)

# -----------------------------------------------------------------------------
# the notes' worked examples


def test_one_example_loss_is_minus_log_0_7():
    # y = [1, 0, 0] (class 0), y_hat = [0.7, 0.2, 0.1]: l = -log 0.7
    y_hat = torch.tensor([[0.7, 0.2, 0.1]])
    assert cross_entropy_naive(y_hat, torch.tensor([0])).item() == pytest.approx(0.357, abs=5e-4)
    # cross_entropy takes logits, and log y_hat are logits whose softmax is y_hat
    logits = y_hat.log()
    one_hot = torch.tensor([[1.0, 0.0, 0.0]])
    assert cross_entropy(logits, one_hot).item() == pytest.approx(-math.log(0.7), rel=1e-6)
    assert cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(-math.log(0.7), rel=1e-6)


def test_two_examples_losses_and_accuracy():
    y = torch.tensor([0, 2])
    y_hat = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
    torch.testing.assert_close(cross_entropy_naive(y_hat, y), torch.tensor([2.3026, 0.6931]), atol=1e-4, rtol=0)
    # the first row predicts class 2 (wrong), the second class 2 (right)
    assert accuracy(y_hat, y) / len(y) == 0.5


def test_accuracy_takes_logits_probabilities_or_labels():
    y = torch.tensor([0, 2, 1, 1])
    logits = torch.tensor([[5.0, 0, 0], [0, 0, 5.0], [0, 5.0, 0], [5.0, 0, 0]])
    assert accuracy(logits, y) == 3.0
    assert accuracy(logits.softmax(1), y) == 3.0
    assert accuracy(torch.tensor([0, 2, 1, 0]), y) == 3.0
    assert accuracy(torch.tensor([[0], [2], [1], [0]]), y) == 3.0  # (n, 1) labels, not (n, n)
    assert isinstance(accuracy(logits, y), float)
    count = correct_count(logits, y)
    assert isinstance(count, torch.Tensor) and count.dim() == 0 and count.item() == 3


# -----------------------------------------------------------------------------
# softmax and log_softmax


def test_softmax_rows_sum_to_one_and_ignore_a_shift():
    torch.manual_seed(0)
    O = torch.randn(5, 7, dtype=torch.float64) * 10
    P = softmax(O)
    torch.testing.assert_close(P.sum(1), torch.ones(5, dtype=torch.float64))
    assert (P >= 0).all()
    torch.testing.assert_close(softmax(O + 123.0), P)
    torch.testing.assert_close(P, torch.softmax(O, 1))
    torch.testing.assert_close(softmax(O.T, dim=0), P.T)


def test_softmax_naive_overflows_at_89_in_float32():
    # exp(88) ~ 1.7e38 still fits float32 (max ~3.4e38); exp(89) ~ 4.5e38 is inf
    fine = softmax_naive(torch.tensor([[88.0, 0.0]]))
    assert torch.isfinite(fine).all()
    torch.testing.assert_close(fine, torch.softmax(torch.tensor([[88.0, 0.0]]), 1))
    broken = softmax_naive(torch.tensor([[89.0, 0.0]]))
    assert torch.isnan(broken[0, 0])  # inf / inf
    assert torch.isnan(softmax_naive(torch.tensor([[100.0, 1.0]]))).any()
    stable = softmax(torch.tensor([[100.0, 1.0], [89.0, 0.0]]))
    assert torch.isfinite(stable).all()
    torch.testing.assert_close(stable.sum(1), torch.ones(2))


def test_log_softmax_matches_torch_for_huge_logits():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        O = torch.randn(6, 9, dtype=dtype) * 1e4
        ours = log_softmax(O)
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, torch.log_softmax(O, -1))
        torch.testing.assert_close(log_softmax(O, dim=0), torch.log_softmax(O, 0))


def test_log_softmax_handles_masked_classes_like_torch():
    inf = float('inf')
    O = torch.tensor([[0.0, -inf, 1.0],  # one masked class: -inf there, correct values elsewhere
                      [-inf, -inf, -inf],  # everything masked: nan, as in torch
                      [-inf, 2.0, -inf]])  # one class left: log 1 = 0
    ours, theirs = log_softmax(O), torch.log_softmax(O, -1)
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    assert ours[0, 1] == -inf and torch.isfinite(ours[0, [0, 2]]).all()
    assert torch.isnan(ours[1]).all()
    assert ours[2, 1] == 0


# -----------------------------------------------------------------------------
# the naive cross-entropy breaks where the notes say


def test_cross_entropy_naive_is_inf_when_the_true_probability_underflows():
    y_hat = softmax(torch.tensor([[0.0, -1000.0]]))  # p(class 1) = exp(-1000) = 0 in float32
    y = torch.tensor([1])
    assert y_hat[0, 1] == 0
    assert cross_entropy_naive(y_hat, y).item() == math.inf
    capped = cross_entropy_naive(y_hat, y, eps=1e-8).item()
    assert capped == pytest.approx(-math.log(1e-8), rel=1e-5)
    assert capped == pytest.approx(18.42, abs=5e-3)
    # cross_entropy works from the logits and gets the true value, 1000
    assert cross_entropy(torch.tensor([[0.0, -1000.0]]), y).item() == pytest.approx(1000.0)


def test_naive_loss_is_nan_for_large_logits_while_scratch_and_torch_agree():
    torch.manual_seed(0)
    O = torch.randn(8, 10) * 1e4
    y = torch.randint(0, 10, (8,))
    assert torch.isnan(LOSSES['naive'](O, y))
    scratch, reference = LOSSES['scratch'](O, y), LOSSES['torch'](O, y)
    assert torch.isfinite(scratch)
    torch.testing.assert_close(scratch, reference)


def test_losses_registry():
    assert set(LOSSES) == {'naive', 'scratch', 'torch'}
    torch.manual_seed(0)
    O = torch.randn(16, 10, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    values, grads = {}, {}
    for name, loss_fn in LOSSES.items():
        loss = loss_fn(O, y)
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0
        values[name] = loss.detach()
        grads[name], = torch.autograd.grad(loss, O)
    for name in ('naive', 'scratch'):
        torch.testing.assert_close(values[name], values['torch'])
        torch.testing.assert_close(grads[name], grads['torch'])


# -----------------------------------------------------------------------------
# cross_entropy against torch.nn.functional.cross_entropy


@st.composite
def cross_entropy_cases(draw):
    """Random (input, target, keyword arguments) covering every option of F.cross_entropy."""
    N = draw(st.integers(1, 64))
    C = draw(st.integers(2, 20))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
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


def assert_close_to_reference(ours, reference):
    """Compare within a tolerance scaled to the magnitude of the reference values."""
    rtol = 2e-5 if ours.dtype == torch.float32 else 1e-10
    magnitude = reference.detach().nan_to_num(0.0).abs().max().item() if reference.numel() else 0.0
    torch.testing.assert_close(ours, reference, rtol=rtol, atol=rtol * (1 + magnitude), equal_nan=True)


@settings(max_examples=100, deadline=None)
@given(cross_entropy_cases())
def test_cross_entropy_matches_torch_in_value_and_gradient(case):
    logits, target, kwargs = case
    x_ours = logits.clone().requires_grad_()
    x_torch = logits.clone().requires_grad_()
    ours = cross_entropy(x_ours, target, **kwargs)
    reference = F.cross_entropy(x_torch, target, **kwargs)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    assert_close_to_reference(ours.detach(), reference.detach())
    upstream = torch.rand_like(reference) + 0.5  # a random downstream gradient
    (ours * upstream).sum().backward()
    (reference * upstream).sum().backward()
    assert_close_to_reference(x_ours.grad, x_torch.grad)


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


def test_gradient_is_softmax_minus_one_hot_over_n():
    torch.manual_seed(0)
    O = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1])
    cross_entropy(O, y).backward()
    expected = (torch.softmax(O.detach(), 1) - F.one_hot(y, 3)) / 4
    torch.testing.assert_close(O.grad, expected)


def test_backward_twice_with_retain_graph_and_no_double_backward():
    x = torch.randn(8, 4, requires_grad=True)
    y = torch.randint(0, 4, (8,))
    loss = cross_entropy(x, y)
    first, = torch.autograd.grad(loss, x, retain_graph=True)
    second, = torch.autograd.grad(loss, x)
    torch.testing.assert_close(first, second)
    with pytest.raises(RuntimeError, match='double backward'):
        torch.autograd.grad(cross_entropy(x, y), x, create_graph=True)


def test_float32_logits_of_1e4_stay_finite_with_a_finite_gradient():
    torch.manual_seed(0)
    x = (torch.randn(32, 10) * 1e4).requires_grad_()
    loss = cross_entropy(x, torch.randint(0, 10, (32,)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# -----------------------------------------------------------------------------
# bad input


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
        cross_entropy(torch.randn(2, 10, 3), torch.zeros(2, 3, dtype=torch.long))


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


# -----------------------------------------------------------------------------
# the demo


def test_demo_prints_the_worked_examples_and_saves_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    losses.main()
    printed = capsys.readouterr().out
    for number in ('0.357', '2.3026', '0.6931', '0.5', 'nan'):
        assert number in printed
    png = tmp_path / 'outputs' / 'stability.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert [p.name for p in png.parent.iterdir()] == ['stability.png']  # no temp file left behind
