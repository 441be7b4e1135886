"""losses.cross_entropy's small cases and arguments: its gradient softmax(o) - y, finite for huge logits, and
every argument checked by torch's rules, no stricter and no looser, each error naming the argument."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses import cross_entropy




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
