"""losses.py, the chapter's part: the notes' worked examples, softmax and log_softmax, where the naive loss
breaks, the closed-form gradient, the LOSSES registry, and the demo `python losses.py`. (The complete
F.cross_entropy equivalent, losses.cross_entropy, is test_cross_entropy.py's.)"""

import math

import pytest
import torch
import torch.nn.functional as F

from support import cli
import losses
from helpers import loss_demo, plots
from losses import (LOSSES, accuracy, correct_count, cross_entropy, cross_entropy_naive, cross_entropy_with_grad,
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


def test_no_classes_give_an_empty_result_like_torch():
    for shape, dim in (((3, 0), -1), ((0, 3), -1), ((3, 0, 2), 1)):
        O = torch.empty(shape, requires_grad=True)
        for ours, theirs in ((softmax, torch.softmax), (log_softmax, torch.log_softmax)):
            result = ours(O, dim)
            assert result.shape == theirs(O, dim).shape == shape
            result.sum().backward()  # and a gradient, as empty as the input
            assert O.grad.shape == shape


@pytest.mark.parametrize('dtype', [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64], ids=str)
def test_integer_logits_are_refused_like_torch(dtype):
    O = torch.ones(2, 3, dtype=dtype)
    for ours, theirs in ((softmax, torch.softmax), (log_softmax, torch.log_softmax)):
        with pytest.raises(NotImplementedError) as torch_error:
            theirs(O, -1)
        type_name = str(torch_error.value).split(' for ')[-1]  # e.g. 'Long'
        with pytest.raises(NotImplementedError, match=f'"{ours.__name__}" not implemented for {type_name}'):
            ours(O)


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
# the closed-form gradient


def test_cross_entropy_with_grad_is_torchs_loss_and_gradient_per_example():
    torch.manual_seed(0)
    for O, y in ((torch.randn(6, 4, dtype=torch.float64) * 50, torch.randint(0, 4, (6,))),
                 (torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randint(0, 4, (2, 3, 3)))):
        x = O.clone().requires_grad_()
        reference = F.cross_entropy(x, y, reduction='none')
        per_example, grad = cross_entropy_with_grad(O, y)
        torch.testing.assert_close(per_example, reference)
        torch.testing.assert_close(grad, torch.autograd.grad(reference.sum(), x)[0])


# -----------------------------------------------------------------------------
# the demo


def test_demo_prints_the_worked_examples_and_saves_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert losses.main() == 0  # from Python: the defaults, whatever sys.argv holds
    printed = capsys.readouterr().out
    for number in ('0.357', '2.3026', '0.6931', '0.5', 'nan'):
        assert number in printed
    png = tmp_path / 'outputs' / 'stability.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert [p.name for p in png.parent.iterdir()] == ['stability.png']  # no temp file left behind


def test_demo_table_has_one_column_per_stage_and_says_where_each_breaks(tmp_path, capsys):
    assert losses.main(['--out', str(tmp_path / 'figures')]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    start = next(k for k, line in enumerate(lines) if line.split()[:1] == ['s'])
    assert lines[start].split() == ['s', 'naive', 'max-subtracted', '+', 'eps', 'LogSumExp', 'torch']
    rows = {line.split()[0]: line.split()[1:] for line in lines[start + 1:start + 6]}
    assert list(rows) == ['1', '10', '100', '1000', '10000']
    assert rows['1'] == [rows['1'][0]] * 5  # every stage agrees on small logits
    assert rows['100'][:2] == ['nan', 'inf']
    for reason in ('naive: nan from s = 100', 'max-subtracted: inf from s = 100', 'underflow',
                   '+ eps: finite but wrong from s = 10', '18.42', 'LogSumExp: finite at every s and equal to torch',
                   '80 of 80 nan'):
        assert reason in printed
    assert (tmp_path / 'figures' / 'stability.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_demo_output_folder_that_cannot_be_made_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / 'outputs').write_text('a file, not a folder')
    assert cli.run(losses.main, ['--out', str(tmp_path / 'outputs')]) == cli.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.err.count('\n') == 1 and captured.err.startswith('error: ') and 'outputs' in captured.err
    assert captured.out == ''  # refused before any work


def test_demo_interrupted_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt  # as Ctrl-C while the figure is drawn
    monkeypatch.setattr(plots, 'plot_stability', interrupted)
    assert cli.run(losses.main, ['--out', str(tmp_path)]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == 'interrupted'
    assert list(tmp_path.iterdir()) == []


# -----------------------------------------------------------------------------
# the notes' stages, each at the scale where it breaks


def test_each_stage_of_the_notes_breaks_where_the_notes_say():
    generator = torch.Generator().manual_seed(0)
    O = torch.randn(8, 10, generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)
    stages = loss_demo.stages(losses)
    assert list(stages) == ['naive', 'max-subtracted', '+ eps', 'LogSumExp', 'torch']
    table = loss_demo.stability_table(losses, O, y, [1, 10, 100])
    naive, shifted, patched, logsumexp, reference = (table[name] for name in stages)
    # s = 1: all five agree
    for name in stages:
        assert table[name][0] == pytest.approx(reference[0], rel=1e-5)
    # s = 10: the true loss exceeds what + eps can show (a true-class probability is ~3e-17 < 1e-8)
    assert naive[1] == pytest.approx(reference[1], rel=1e-5) and shifted[1] == pytest.approx(reference[1], rel=1e-5)
    assert patched[1] < 0.9 * reference[1]
    # s = 100: overflow (nan), underflow (inf), the cap (finite, wrong), LogSumExp still right
    assert (O * 100).max() > 88.7 and math.isnan(naive[2])
    assert softmax(O * 100)[torch.arange(8), y].min() == 0 and shifted[2] == math.inf
    assert math.isfinite(patched[2]) and patched[2] <= -math.log(1e-8) + 1e-4 and patched[2] < reference[2] / 5
    assert logsumexp[2] == pytest.approx(reference[2], rel=1e-6) and math.isfinite(logsumexp[2])


def test_closed_form_gradient_is_finite_where_autograd_through_naive_is_nan():
    generator = torch.Generator().manual_seed(0)
    O = torch.randn(8, 10, generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)
    rows = loss_demo.gradient_rows(losses, O, y, [1, 1000])
    assert rows[0][1] == 0 and rows[1][1] == 80  # naive: finite at s = 1, all nan at s = 1000
    for scale, nans, finite, difference in rows:
        assert finite and difference < 1e-6
