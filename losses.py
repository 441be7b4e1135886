"""Softmax and cross-entropy from scratch (d2l 3.4, 3.6 and 3.7.2), as the notes derive them.

O is an (n, q) matrix of logits (n examples, q classes), y holds the labels, y_hat the probabilities:

    softmax(o)_j  = exp(o_j) / sum_k exp(o_k)
    l(y, y_hat)   = -sum_j y_j log y_hat_j  =  log sum_k exp(o_k) - o_y      (y one-hot)
    dl/do_j       = softmax(o)_j - y_j

Three levels of care, in the order the notes take them:
  softmax_naive, cross_entropy_naive   the first version: exp overflows, log of an underflowed 0 is inf
  softmax, log_softmax                 stable: subtract each row's maximum first (LogSumExp)
  cross_entropy_with_grad              the stable loss and its closed-form gradient softmax(o) - y:
                                       what train.py's step computes

Below the chapter's part, `cross_entropy`: F.cross_entropy's complete equivalent, built on the above.
`python losses.py [--out DIR]`: the notes' worked examples, where each stage breaks, DIR/stability.png.
"""
import sys

import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli, writing

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import torch  # noqa: E402  (after cli.start(), on purpose)
from torch import nn  # noqa: E402

# ----------------------------------------------------------------------------- softmax


def softmax_naive(O):
    """softmax(O)_ij = exp(O_ij) / sum_k exp(O_ik), exactly as in the notes. O: (n, q) -> (n, q).

    Kept to show the failure: in float32 exp(89) is inf, so any logit above ~88.7 makes the row
    inf / inf = nan.
    """
    O_exp = torch.exp(O)
    partition = O_exp.sum(1, keepdim=True)
    return O_exp / partition  # broadcasting divides each row by its sum


def softmax(O, dim=-1):
    """softmax(o)_j = exp(o_j - max) / sum_k exp(o_k - max). O: (..., q, ...) -> the same shape.

    Subtracting the maximum leaves the ratio unchanged but makes every exponent <= 0, so exp never
    overflows and the largest term is 1.
    """
    _refuse_unless_float(O, 'softmax')
    if O.numel() == 0:  # e.g. q = 0 classes: nothing to normalise (and no maximum), as in torch
        return O.clone()
    row_max = O.amax(dim, keepdim=True).detach()  # the shift cancels out: no gradient flows into it
    O_exp = (O - row_max).exp()
    return O_exp / O_exp.sum(dim, keepdim=True)


def log_softmax(O, dim=-1):
    """log softmax(o)_j = o_j - max - log sum_k exp(o_k - max)   (LogSumExp). O: (..., q, ...) -> the same.

    Finite for any finite logits. A logit of -inf (a masked class) gives -inf in that place and correct
    values elsewhere; a row that is entirely -inf gives nan, as torch.log_softmax does.
    """
    _refuse_unless_float(O, 'log_softmax')
    if O.numel() == 0:
        return O.clone()
    row_max = O.amax(dim, keepdim=True).detach()
    shifted = O - row_max
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def _refuse_unless_float(O, name):
    """Logits are real numbers: refuse integer, bool and complex ones as torch.softmax does."""
    if not O.is_floating_point():
        raise NotImplementedError(f'"{name}" not implemented for '
                                  f"'{O.type().rsplit('.', 1)[-1].removesuffix('Tensor')}'")


# ----------------------------------------------------------------------------- cross-entropy


def cross_entropy_naive(y_hat, y, eps=0.0):
    """l_i = -log(y_hat[i, y_i] + eps): the book's cross_entropy (d2l 3.6.4). y_hat: (n, q), y: (n,) -> (n,).

    With eps=0 a true-class probability that underflowed to 0 gives inf; eps=1e-8, as the notes suggest,
    caps the loss at -log(1e-8) ~ 18.42.
    """
    return -torch.log(y_hat[torch.arange(len(y_hat), device=y_hat.device), y] + eps)  # the notes' range(n)


def cross_entropy_with_grad(O, y):
    """Each example's cross-entropy and its gradient in closed form, without autograd (d2l 3.4.6):

        l_i = log sum_k exp(o_ik - m_i) - (o_iy - m_i),   m_i = max_k o_ik      (LogSumExp)
        dl_i/do_ij = softmax(o_i)_j - y_ij                                     (y one-hot)

    O: (n, q) logits, y: (n,) int64 class indices -> (losses (n,), gradient (n, q)). The gradient is
    that of sum_i l_i: divide by n for the mean's. (Classes along dim 1, so (n, q, d1, ..., dK) logits
    with (n, d1, ..., dK) labels work too.) No checks: the labels are the data set's, already validated.
    """
    y_col = y.unsqueeze(1)  # (n, 1): where each row's true class is
    shifted = O - O.amax(1, keepdim=True)  # o - m: exponents <= 0, exp cannot overflow
    picked = shifted.gather(1, y_col)  # o_y - m
    exp_shifted = shifted.exp_()  # in place: one buffer the size of O
    partition = exp_shifted.sum(1, keepdim=True)
    losses = (partition.log() - picked).squeeze(1)  # never the log of a probability: no underflow
    grad = exp_shifted.div_(partition)  # softmax(o), in place
    grad.scatter_add_(1, y_col, torch.full_like(partition, -1.0))  # - onehot(y)
    return losses, grad


# ----------------------------------------------------------------------------- accuracy


def correct_count(y_hat, y):
    """Number of correct predictions, sum_i [argmax_j y_hat_ij = y_i], as a 0-dim tensor.

    y_hat: (n, q) logits or probabilities, or (n,) predicted labels; y: (n,) labels. Stays on the device
    (no host sync), so a training loop can keep it and read it once per epoch.
    """
    if y_hat.dim() > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    y_hat = y_hat.reshape(-1)  # (n, 1) labels would otherwise broadcast against (n,) into (n, n)
    if y_hat.shape != y.shape:
        raise ValueError(f"predictions have shape {tuple(y_hat.shape)} but labels have shape {tuple(y.shape)}")
    return (y_hat.type(y.dtype) == y).sum()


def accuracy(y_hat, y):
    """The notes' accuracy: the number of correct predictions, as a Python float (divide by len(y))."""
    return float(correct_count(y_hat, y))


# ----------------------------------------------------------------------------- train.py --loss


def naive_loss(O, y, reduction='mean'):
    """-log softmax_naive(O)[i, y_i] with eps=0, so it really overflows: each example's, or their mean."""
    losses = cross_entropy_naive(softmax_naive(O), y)
    return losses.mean() if reduction == 'mean' else losses


def stable_loss(O, y, reduction='mean'):
    """-log softmax(O)[i, y_i] by LogSumExp: each example's, or their mean (the loss cross_entropy_with_grad
    computes, here through log_softmax so that autograd can differentiate it)."""
    losses = -log_softmax(O, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    return losses.mean() if reduction == 'mean' else losses


# Each maps (O: (n, q) logits, y: (n,) int64, reduction='mean' or 'none') to the mean loss or each example's.
LOSSES = {
    'naive': naive_loss,
    'scratch': stable_loss,  # train.py trains it with cross_entropy_with_grad's closed form instead of autograd
    'torch': nn.functional.cross_entropy,  # what nn.CrossEntropyLoss() calls: the reference
}


# ----------------------------------------------------------------------------- F.cross_entropy, every option
# Not needed to follow the chapter: the same loss with every shape and option of torch's, checked against it.
from support.cross_entropy_plumbing import (as_batch, check_arguments, check_index_range,  # noqa: E402
                                           in_torch_order)

_HALF = (torch.float16, torch.bfloat16)


class _ClosedForm(torch.autograd.Function):
    """The training case: l and g = softmax(o) - onehot(y) from cross_entropy_with_grad; backward only scales g.
    Input (n, q, d1, ..., dK), target (n, d1, ..., dK) int64. Under backward(create_graph=True) g is rebuilt in
    differentiable ops (second derivative diag(p) - p p^T); jvp: dl = sum_j g_j do_j. forward(ctx, ...), not
    setup_context, keeps apply cheap (~20 us a call); torch.func, which needs setup_context, takes _composite."""

    @staticmethod
    def forward(ctx, input, target, reduction):
        losses, grad = cross_entropy_with_grad(input, target)
        ctx.save_for_backward(input, target, grad)
        ctx.grad, ctx.reduction = grad, reduction  # grad for jvp, already held by save_for_backward
        ctx.positions = max(losses.numel(), 1)  # N d1 ... dK, what 'mean' divides by
        if reduction == 'mean':
            return losses.mean()
        return losses.sum() if reduction == 'sum' else losses

    @staticmethod
    def backward(ctx, grad_loss):
        input, target, grad = ctx.saved_tensors
        if ctx.reduction == 'none':
            upstream = grad_loss.unsqueeze(1)  # one upstream gradient per position
        elif torch.is_grad_enabled():
            upstream = grad_loss / ctx.positions if ctx.reduction == 'mean' else grad_loss
        else:  # a Python number: cheaper than a tensor op, and no device sync on the CPU
            upstream = float(grad_loss) / (ctx.positions if ctx.reduction == 'mean' else 1)
        if torch.is_grad_enabled():  # backward(create_graph=True): g as differentiable ops of the input
            grad = softmax(input, 1) - torch.zeros_like(input).scatter_(1, target.unsqueeze(1), 1.0)
        return grad * upstream, None, None

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, reduction_tangent):
        per_position = (ctx.grad * input_tangent).sum(1)
        if ctx.reduction == 'none':
            return per_position
        return per_position.sum() / ctx.positions if ctx.reduction == 'mean' else per_position.sum()


def _composite(input, target, weight, ignore_index, reduction, label_smoothing, is_probability):
    """Every other case in differentiable ops: l = -sum_j q_j log p_j at each position, p = softmax(o) over
    dim 1, and the class mass q one-hot, smoothed ((1 - eps) y + eps / C), weighted by w, a probability
    vector t, or zero at an ignored position. input (N, C, d1, ..., dK); weight (C,)."""
    C = input.shape[1]
    weight_view = weight.view((1, C) + (1,) * (input.dim() - 2)) if weight is not None else None  # w along C
    if is_probability:
        # log p in the logits' precision, the products in the promoted one (a float64 target with float32
        # logits gives a float64 loss), as torch computes it
        dtype = torch.promote_types(input.dtype, target.dtype)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
        log_probs = log_softmax(input, 1).to(dtype)
        smoothed = target * (1 - label_smoothing) + label_smoothing / C if label_smoothing > 0 else target
        mass = smoothed.to(dtype) * weight_view if weight is not None else smoothed.to(dtype)  # q = w s
        per_position = -(log_probs * mass).sum(1)
        if reduction == 'mean':  # over all N d1 ... dK positions (0 / 0 = nan if there are none)
            return per_position.sum() / per_position.numel()
        return per_position.sum() if reduction == 'sum' else per_position
    # index targets: the true class's part is gathered, never built as a one-hot, so a -inf logit of
    # another class cannot turn into 0 * -inf = nan
    log_probs = log_softmax(input, 1)
    keep = (target != ignore_index).unsqueeze(1)  # (N, 1, d1, ..., dK)
    target_col = torch.where(keep, target.unsqueeze(1), 0)  # ignored positions point at class 0
    picked = log_probs.gather(1, target_col)  # on CPU, a target out of range fails here
    picked_weight = weight[target_col] if weight is not None else torch.ones_like(picked)
    per_position = -(1 - label_smoothing) * picked_weight * picked
    if label_smoothing > 0:
        weighted = log_probs * weight_view if weight is not None else log_probs
        per_position = per_position - (label_smoothing / C) * weighted.sum(1, keepdim=True)
    # where, not multiply: an ignored position may hold nan/inf, which torch masks too
    per_position = torch.where(keep, per_position, 0).squeeze(1)
    if reduction == 'mean':  # torch divides by the sum of w_y over the kept positions, not their number
        return per_position.sum() / (picked_weight * keep).sum()
    return per_position.sum() if reduction == 'sum' else per_position


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0):
    """Cross-entropy from logits, l = -sum_j q_j log softmax(o)_j, as torch.nn.functional.cross_entropy.

    input: (N, C), (N, C, d1, ..., dK) (one distribution per position) or one example's (C,) logits.
    target: class indices, int64 (or uint8), shaped (N,), (N, d1, ..., dK), or () / (1,) for (C,) logits;
        or class probabilities t of the input's shape (a float64 t gives a float64 loss, as in torch).
    weight: optional (C,) per-class weights w; ignore_index: index targets equal to it count for nothing.
    reduction: 'none' -> one loss per position; 'sum'; 'mean' (index targets: over sum w_y of the kept
        positions; probability targets: over N d1 ... dK).
    label_smoothing eps: the target becomes (1 - eps) y + eps / C, weighted per class by w.
    The gradient is (sum_k q_k) softmax(o) - q: softmax(o) - y in the training case, in closed form.
    float16/bfloat16 on the CPU: torch's very numbers, rounded where its kernels round (in_torch_order); under
    torch.func or off the CPU they take the float path: close (a few units in the last place), not bit for bit.
    Differentiable twice and under torch.func, as torch's; every argument checked by torch's rules.
    """
    is_probability, ignore_index, label_smoothing = check_arguments(
        input, target, weight, ignore_index, reduction, label_smoothing)
    input, target, unbatched = as_batch(input, target, is_probability)  # (C,) logits as (1, C)
    C, loss = input.shape[1], None
    # The target's range is not checked up front (~18 us per call, and no data-dependent check runs under
    # vmap): each path's gather bounds-checks on CPU, and only then do we look closer.
    try:
        if input.dtype in _HALF and input.is_cpu and not torch._C._are_functorch_transforms_active():
            loss = in_torch_order(input, target, weight, ignore_index, reduction, label_smoothing, is_probability)
        elif (not is_probability and weight is None and label_smoothing == 0 and input.is_cpu
                and not 0 <= ignore_index < C and not torch._C._are_functorch_transforms_active()):
            try:  # the training case; a target equal to ignore_index (e.g. -100) fails the gather too
                loss = _ClosedForm.apply(input, target, reduction)
            except RuntimeError:
                if not (target == ignore_index).any():
                    raise
        if loss is None:
            loss = _composite(input, target, weight, ignore_index, reduction, label_smoothing, is_probability)
    except RuntimeError:
        if not is_probability and target.is_cpu:  # on an accelerator, reading the range back would stall it
            check_index_range(target, C, ignore_index)  # a ValueError if a target is bad
        raise
    return loss.squeeze(0) if unbatched and reduction == 'none' else loss


# ----------------------------------------------------------------------------- python losses.py


def main(argv=None):
    """python losses.py [--out DIR]. argv None (a call from Python, e.g. a test) takes the defaults: sys.argv
    is not ours to read there. Returns the exit code; cli.InputError for an output folder it cannot write."""
    from helpers import loss_demo  # matplotlib is slow to import, and only the demo draws
    parser = cli.ArgumentParser(prog='losses.py', description=__doc__.strip().split('\n')[0])
    parser.add_argument('--out', default='outputs', type=cli.non_empty, metavar='DIR',
                        help="folder for stability.png (default outputs)")
    args = parser.parse_args([] if argv is None else argv)
    writing.prepare_out_dir(args.out)  # a folder we cannot write is one line and exit 2, before any work
    loss_demo.run(args.out, sys.modules[__name__])  # this module, whether imported or run as a script
    return cli.EXIT_DONE


if __name__ == '__main__':
    # sys.argv is passed explicitly: main() called from Python takes the defaults instead
    sys.exit(cli.run(main, sys.argv[1:]))
