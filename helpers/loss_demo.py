"""`python losses.py`'s demo: the notes' stages of the cross-entropy side by side, and where each breaks.

Prints the worked examples, the mean loss of fixed logits scaled by s = 1 ... 10,000 for each stage
(naive, max-subtracted, + eps, LogSumExp, torch), the line saying where and why each stage breaks, and
the gradient of each; draws stability.png (helpers/plots.py).

Each function takes the losses module it demonstrates as its first argument: losses.py runs this demo from
its main(), so this module does not import losses (the imports run one way).
"""
import math
import os

import torch
from torch import nn

from helpers import plots

EPS = 1e-8  # the notes' quick patch: -log(p + EPS) <= -log EPS ~ 18.42


def max_subtracted_loss(losses, O, y, eps=0.0):
    """mean_i -log(softmax(O)[i, y_i] + eps): the notes' second stage, and with eps=1e-8 its patch.

    O: (n, q) logits, y: (n,) int64 labels -> 0-dim mean loss. Subtracting the row maximum stops
    the overflow, but softmax(o)_y = exp(o_y - max) / sum_k exp(o_k - max) still rounds to 0 once
    o_y lies ~104 below the maximum (float32), and -log 0 = inf: underflow. eps keeps it finite by
    capping every loss at -log eps, which is then simply wrong for a larger true loss.
    """
    return losses.cross_entropy_naive(losses.softmax(O), y, eps).mean()


def stages(losses):
    """The notes' stages in order: column name -> (what it computes, (O, y) -> mean loss)."""
    return {
        'naive': ("-log softmax_naive(o)_y: exp(o) / sum exp(o), then -log", losses.naive_loss),
        'max-subtracted': ("-log softmax(o)_y: exp(o - max) / sum exp(o - max), then -log",
                           lambda O, y: max_subtracted_loss(losses, O, y)),
        '+ eps': ("-log(softmax(o)_y + 1e-8): the quick patch", lambda O, y: max_subtracted_loss(losses, O, y, EPS)),
        'LogSumExp': ("stable_loss: log sum exp(o - max) - (o_y - max), never log of a probability",
                      losses.stable_loss),
        'torch': ("nn.CrossEntropyLoss", nn.CrossEntropyLoss()),
    }


def stability_table(losses, O, y, scales):
    """{stage: [mean loss of (s * O, y) for each s]}, computed in O's dtype."""
    return {name: [function(O * scale, y).item() for scale in scales]
            for name, (_, function) in stages(losses).items()}


def where_each_stage_breaks(O, y, scales, table):
    """The lines under the table: for each stage, the first scale where it breaks, and why."""
    def first(condition):
        return next((s for s, values in zip(scales, zip(*table.values())) if condition(dict(zip(table, values)))),
                    None)
    lines = []
    s = first(lambda row: math.isnan(row['naive']))
    if s is not None:
        lines.append(f"naive: nan from s = {s:g}, whose largest logit ({float(O.max() * s):.4g}) is over 88.7: "
                     f"exp overflows float32, inf / inf = nan")
    s = first(lambda row: math.isinf(row['max-subtracted']))
    if s is not None:
        lines.append(f"max-subtracted: inf from s = {s:g}: exp(o_y - max) of a true class far below the max "
                     f"rounds to 0 (underflow), -log 0 = inf")
    s = first(lambda row: not math.isclose(row['+ eps'], row['LogSumExp'], rel_tol=1e-3))
    if s is not None:
        k = scales.index(s)
        lines.append(f"+ eps: finite but wrong from s = {s:g} ({table['+ eps'][k]:.4g} for {table['LogSumExp'][k]:.4g}):"
                     f" each loss is capped at -log 1e-8 = {-math.log(EPS):.2f}")
    finite = all(math.isfinite(v) for v in table['LogSumExp'])
    agree = all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(table['LogSumExp'], table['torch']))
    lines.append(f"LogSumExp: {'finite at every s' if finite else 'NOT finite'} and "
                 f"{'equal to' if agree else 'DIFFERENT from'} torch: no exp of a positive number, "
                 f"no log of a number below 1")
    return lines


def gradient_rows(losses, O, y, scales):
    """For each scale s: (s, nan entries in autograd's gradient through naive_loss, whether the closed
    form (softmax(o) - onehot(y)) / n is finite, its largest difference from autograd through torch's loss)."""
    rows = []
    for scale in scales:
        logits = (O * scale).requires_grad_()
        naive_grad, = torch.autograd.grad(losses.naive_loss(logits, y), logits)
        torch_grad, = torch.autograd.grad(nn.functional.cross_entropy(logits, y), logits)
        _, closed_form = losses.cross_entropy_with_grad(logits.detach(), y)
        closed_form /= len(y)
        rows.append((scale, int(naive_grad.isnan().sum()), bool(closed_form.isfinite().all()),
                     float((closed_form - torch_grad).abs().max())))
    return rows


def run(out, losses):
    """Print the worked examples, the stages' table and gradients; write out/stability.png."""
    print("Worked examples from the notes")
    y_hat = torch.tensor([[0.7, 0.2, 0.1]])
    print(f"  y = [1, 0, 0], y_hat = [0.7, 0.2, 0.1]:  -log 0.7 = "
          f"{losses.cross_entropy_naive(y_hat, torch.tensor([0])).item():.3f}")
    y = torch.tensor([0, 2])
    y_hat = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
    each = losses.cross_entropy_naive(y_hat, y)
    print(f"  cross_entropy_naive(y_hat, y=[0, 2]) = [{each[0]:.4f}, {each[1]:.4f}]")
    print(f"  accuracy(y_hat, y) / len(y) = {losses.accuracy(y_hat, y) / len(y)}")

    generator = torch.Generator().manual_seed(0)
    O = torch.randn(8, 10, generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)
    scales = [1, 10, 100, 1000, 10_000]
    table = stability_table(losses, O, y, scales)
    columns = stages(losses)
    width = 16
    print("\nMean loss of fixed (8, 10) float32 logits (seed 0) scaled by s, one column per stage of the notes")
    for name, (what, _) in columns.items():
        print(f"  {name:<16}{what}")
    print(f"\n  {'s':>7}" + "".join(f"{name:>{width}}" for name in columns))
    for k, scale in enumerate(scales):
        print(f"  {scale:>7g}" + "".join(f"{table[name][k]:>{width}.6g}" for name in columns))
    print()
    for line in where_each_stage_breaks(O, y, scales, table):
        print(f"  {line}")

    print(f"\nGradient of the mean loss with respect to the {O.numel()} logits")
    print(f"  {'s':>7}  {'autograd through naive':<24}closed form (softmax(o) - onehot(y)) / n")
    for scale, nans, finite, difference in gradient_rows(losses, O, y, scales):
        naive = f"{nans} of {O.numel()} nan" if nans else "finite"
        print(f"  {scale:>7g}  {naive:<24}{'finite' if finite else 'NOT finite'}, within {difference:.1e} of torch's")
    print("  the closed form needs no exp of a large number nor log of a small one: softmax(o) - y stays in [-1, 1]")

    figure = plots.plot_stability(scales, table)
    path = os.path.join(out, 'stability.png')
    plots.save_figure(figure, path)
    print(f"\nsaved {path}")
