"""
Softmax and cross-entropy loss from scratch (Dive into Deep Learning, ch. 3).

Notation follows the notes: O is an (n, q) matrix of logits (n examples,
q classes), y holds the labels, y_hat the predicted probabilities.

    softmax(o)_j  = exp(o_j) / sum_k exp(o_k)
    l(y, y_hat)   = -sum_j y_j log y_hat_j        (= -log y_hat_y for one-hot y)
    dl/do_j       = softmax(o)_j - y_j

Three levels of care:
  softmax_naive / cross_entropy_naive   the notes' first version; overflows
  softmax / log_softmax                 stable, subtract the row maximum
  cross_entropy                         stable, fused, hand-written backward,
                                        same signature and numbers as
                                        torch.nn.functional.cross_entropy

Run `python losses.py [--out DIR]` for the worked examples, a table of the
notes' stages (naive, max-subtracted, + eps, LogSumExp, torch) at growing
logit scales, and DIR/stability.png (default outputs/).
"""

import math
import numbers
import operator
import os
import sys

import machinery.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from machinery import cli

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import torch  # noqa: E402  (after cli.start(), on purpose)
from torch import nn  # noqa: E402

# -----------------------------------------------------------------------------
# softmax


def softmax_naive(O):
    """softmax(O)_ij = exp(O_ij) / sum_k exp(O_ik), exactly as in the notes.

    O: (n, q) logits -> (n, q) probabilities.
    Kept to show the failure: in float32 exp(89) is inf, so any logit above
    ~88.7 makes the row inf / inf = nan.
    """
    O_exp = torch.exp(O)
    partition = O_exp.sum(1, keepdim=True)
    return O_exp / partition  # broadcasting divides each row by its sum


def softmax(O, dim=-1):
    """softmax(o)_j = exp(o_j - max) / sum_k exp(o_k - max).

    O: (..., q, ...) logits -> probabilities of the same shape, normalised
    along `dim`. Subtracting the maximum leaves the ratio unchanged but makes
    every exponent <= 0, so exp never overflows and the largest term is 1.
    """
    # the shift cancels out of the result, so no gradient needs to flow into it
    row_max = O.amax(dim, keepdim=True).detach()
    O_exp = (O - row_max).exp()
    return O_exp / O_exp.sum(dim, keepdim=True)


def log_softmax(O, dim=-1):
    """log softmax(o)_j = o_j - max - log sum_k exp(o_k - max)   (LogSumExp).

    O: (..., q, ...) logits -> log-probabilities of the same shape.
    Finite for any finite logits. A logit of -inf (a masked class) gives -inf
    in that place and correct values elsewhere; a row that is entirely -inf
    gives nan, as torch.log_softmax does.
    """
    # the shift cancels out of the result, so no gradient needs to flow into it
    row_max = O.amax(dim, keepdim=True).detach()
    shifted = O - row_max
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


# -----------------------------------------------------------------------------
# cross-entropy


def cross_entropy_naive(y_hat, y, eps=0.0):
    """l_i = -log(y_hat[i, y_i] + eps), the notes' per-example loss.

    y_hat: (n, q) probabilities, y: (n,) int64 labels -> (n,) losses.
    With eps=0 a true-class probability that underflowed to 0 gives inf;
    eps=1e-8, as the notes suggest, caps the loss at -log(1e-8) ~ 18.42.
    """
    return -torch.log(y_hat[torch.arange(len(y_hat), device=y_hat.device), y] + eps)  # the notes' range(n)


_REDUCTIONS = ('none', 'mean', 'sum')


def _dims(input, index_target=False):
    """The symbolic shape of input, '(N, C, d1, d2)', or of its class-index target, '(N, d1, d2)',
    for error messages."""
    if input.dim() == 1:
        return '()' if index_target else '(C,)'
    names = ['N'] + ([] if index_target else ['C']) + [f"d{k}" for k in range(1, input.dim() - 1)]
    return '(' + ', '.join(names) + (',)' if len(names) == 1 else ')')


def _check_arguments(input, target, weight, ignore_index, reduction, label_smoothing):
    """Check the arguments by torch's rules and say what is wrong.

    Shapes (K >= 0 extra dimensions, e.g. the pixels of a segmentation map):
        input   (N, C, d1, ..., dK) logits, or one example's (C,)
        target  (N, d1, ..., dK) class indices (int64 or uint8), or (), or (1,) for (C,) logits;
                or class probabilities of the input's shape (any floating dtype)
        weight  (C,)

    Returns (is_probability, ignore_index as an int, label_smoothing as a float).
    Raises ValueError for a bad shape, dtype or value and TypeError for an argument of the
    wrong type, each naming the argument. Only metadata is inspected (type, shape, dtype),
    so this costs no kernel launch and no host sync; the range of index targets is checked apart.
    """
    if not isinstance(input, torch.Tensor) or input.dim() == 0 or not input.is_floating_point():
        got = f"{tuple(input.shape)} {input.dtype}" if isinstance(input, torch.Tensor) else type(input).__name__
        raise ValueError(f"input must be a floating-point tensor of logits shaped (C,), (N, C) or "
                         f"(N, C, d1, ..., dK), got {got}")
    shape = input.shape  # read once: each .shape builds a new torch.Size (this runs every training step)
    dim = len(shape)
    C = shape[0] if dim == 1 else shape[1]
    if C == 0:
        raise ValueError(f"input of shape {_dims(input)} = {tuple(shape)} has C = 0 classes; "
                         f"cross-entropy needs at least one")
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a tensor, got {type(target).__name__}")
    target_shape = target.shape
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")

    # label_smoothing: a real number, as torch takes it (an int, a bool, a 0-dim tensor), not None
    if type(label_smoothing) is not float:
        if isinstance(label_smoothing, torch.Tensor) and label_smoothing.dim() == 0:
            label_smoothing = label_smoothing.item()
        if not isinstance(label_smoothing, numbers.Real):
            raise TypeError(f"label_smoothing must be a float, got {type(label_smoothing).__name__}")
        label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:  # also refuses nan
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")

    # ignore_index: an integer; 1.0 or True is refused, as torch refuses them (an integer 0-dim
    # tensor or numpy integer is taken, as torch takes it)
    if type(ignore_index) is not int:
        if isinstance(ignore_index, bool):
            raise TypeError("ignore_index must be an int, got bool")
        try:
            ignore_index = operator.index(ignore_index)
        except TypeError:
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}") from None
    if not -2**63 <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")

    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be None or a tensor of shape (C,) = ({C},), got {type(weight).__name__}")
        if weight.shape != (C,):
            raise ValueError(f"weight must have shape (C,) = ({C},) like input's classes, got {tuple(weight.shape)}")

    # as in torch, a target of the input's shape holds probabilities
    if target_shape == shape:
        if not target.is_floating_point():
            raise ValueError(f"target of shape {tuple(target_shape)} holds class probabilities, so it must be "
                             f"{input.dtype} (or another floating-point dtype), got {target.dtype}")
        if ignore_index >= 0:
            raise ValueError(f"ignore_index is not supported for probability targets (got {ignore_index}; "
                             f"torch allows only a negative one, which then ignores nothing)")
        if weight is not None and weight.is_complex():  # any real dtype is promoted, as in torch
            raise ValueError(f"weight must be a real tensor, got {weight.dtype}")
        return True, ignore_index, label_smoothing

    # otherwise class indices, shaped like the input without C: (N, d1, ..., dK); for one
    # example's (C,) logits a () index, or a (1,) one as torch allows. (N,) is built directly
    # in the common 2-D case: slicing a torch.Size costs a microsecond.
    if dim == 1:
        index_shapes = ((), (1,))
    else:
        index_shapes = ((shape[0],) if dim == 2 else shape[:1] + shape[2:],)
    if target_shape not in index_shapes:
        indices = ("a () or (1,) class index" if dim == 1 else
                   f"{_dims(input, index_target=True)} = {tuple(index_shapes[0])} class indices")
        raise ValueError(f"target has shape {tuple(target_shape)}; for input of shape {_dims(input)} = "
                         f"{tuple(shape)} expected {indices} or {tuple(shape)} class probabilities")
    if target.dtype != torch.int64 and target.dtype != torch.uint8:
        raise ValueError(f"target of shape {tuple(target_shape)} must hold int64 (or uint8) class indices, "
                         f"got {target.dtype}")
    if weight is not None:
        if weight.dtype != input.dtype:
            raise ValueError(f"weight must be a {input.dtype} tensor of shape ({C},) like input, "
                             f"got {tuple(weight.shape)} {weight.dtype}")
        if weight.requires_grad:  # torch refuses it too (nll_loss is not differentiable in weight)
            raise ValueError("weight requires grad, but with class-index targets cross_entropy differentiates "
                             "with respect to input only; pass weight.detach()")
    return False, ignore_index, label_smoothing


def _check_index_range(target, C, ignore_index):
    """Raise ValueError if a target other than ignore_index lies outside [0, C).

    Torch raises too (inside nll_loss), but not with a message that says what to do.
    """
    bad = target[(target != ignore_index) & ((target < 0) | (target >= C))]
    if bad.numel() > 0:
        raise ValueError(f"target has values outside 0..{C - 1} (found {bad[0].item()}); "
                         f"expected class indices in [0, C) or ignore_index={ignore_index}")


def _logsumexp_parts(O, target_col):
    """exp(o - max), its sums over the classes, and the losses, the classes along dim 1:

        l = log sum_k exp(o_k - m) - (o_y - m),   m = max_k o_k      (LogSumExp)

    O: (n, q) or (n, q, d1, ..., dK) logits, target_col: (n, 1, d1, ..., dK) int64 ->
    exp_shifted like O, row_sum (n, 1, d1, ..., dK), losses (n, d1, ..., dK).
    """
    shifted = O - O.amax(1, keepdim=True)  # exponents <= 0: exp cannot overflow
    picked = shifted.gather(1, target_col)  # o_y - max
    exp_shifted = shifted.exp_()  # reuse the buffer: one allocation the size of O
    row_sum = exp_shifted.sum(1, keepdim=True)
    return exp_shifted, row_sum, (row_sum.log() - picked).squeeze(1)


def cross_entropy_with_grad(O, y):
    """Per-example cross-entropy and its gradient in closed form, without autograd (d2l 3.4.6):

        l_i = log sum_k exp(o_ik - m_i) - (o_iy - m_i),   m_i = max_k o_ik      (LogSumExp)
        dl_i/do_ij = softmax(o_i)_j - y_ij                                     (y one-hot)

    O: (n, q) logits, y: (n,) int64 class indices in [0, q) -> (losses (n,), gradient (n, q)).
    The gradient is that of sum_i l_i; divide by n for the mean. No checks: callers pass labels
    already validated (on CPU an index out of range still fails inside gather).
    """
    target_col = y.view(-1, 1)
    exp_shifted, row_sum, losses = _logsumexp_parts(O, target_col)
    grad = exp_shifted.div_(row_sum)  # softmax(o), in place
    grad.scatter_add_(1, target_col, torch.full_like(row_sum, -1.0))  # - onehot(y)
    return losses, grad


class _CrossEntropyFromLogits(torch.autograd.Function):
    """Fused log-softmax + negative log-likelihood with a hand-written backward.

    The classes lie along dim 1 of input (n, q) or (n, q, d1, ..., dK); each position
    (example i, pixel d) is one distribution. Every variant is l = -sum_j q_j log p_j with
    p = softmax(o) over the classes and a per-class target mass q (one-hot, smoothed,
    weighted, a probability vector, or zero at an ignored position). Since sum_j p_j = 1,

        dl/do_j = (sum_k q_k) p_j - q_j,

    which is softmax(o) - y for a one-hot y. For probability targets t, where
    q = w * ((1 - eps) t + eps / q_classes), the loss is linear in t and in w:

        dl/dt_j = -(1 - eps) w_j log p_j,    dl/dw_j = -((1 - eps) t_j + eps / q_classes) log p_j,

    so a target (or weight) that requires grad gets its gradient too, as in torch. Double
    backward is not supported (backward raises if asked for it with create_graph=True): SGD
    never needs second derivatives, and supporting them would mean recording the backward
    formula as a graph.
    """

    @staticmethod
    def forward(ctx, input, target, weight, reduction, options):
        """options is None on the fast path (index targets, all in [0, C), no weight, no
        smoothing: the training case), else (ignore_index, label_smoothing, is_probability);
        packing them keeps the per-call cost of apply down."""
        ctx.reduction = reduction
        ctx.fast = options is None
        if options is None:
            target_col = target.unsqueeze(1)
            exp_shifted, row_sum, losses = _logsumexp_parts(input, target_col)
            ctx.save_for_backward(exp_shifted, row_sum, target_col)
            if reduction == 'mean':
                return losses.mean()  # over all N d1 ... dK positions
            return losses.sum() if reduction == 'sum' else losses

        ignore_index, label_smoothing, is_probability = options
        ctx.label_smoothing, ctx.is_probability = label_smoothing, is_probability
        C = input.shape[1]
        # w as (1, C, 1, ..., 1), to broadcast along the class dimension of (N, C, d1, ..., dK)
        weight_view = weight.view((1, C) + (1,) * (input.dim() - 2)) if weight is not None else None
        if is_probability:
            # log p in the logits' precision, then the products in the promoted one (a float64
            # target with float32 logits gives a float64 loss), as torch computes it
            dtype = torch.promote_types(input.dtype, target.dtype)
            if weight is not None:
                dtype = torch.promote_types(dtype, weight.dtype)
            ctx.dtypes = (input.dtype, target.dtype, weight.dtype if weight is not None else None)
            log_probs = log_softmax(input, 1).to(dtype)  # the LogSumExp form above
            smoothed = target  # s = (1 - eps) t + eps / C, in t's precision as torch computes it
            if label_smoothing > 0:
                smoothed = smoothed * (1 - label_smoothing) + label_smoothing / C
            smoothed = smoothed.to(dtype)
            mass = smoothed * weight_view if weight is not None else smoothed  # q = w s
            losses = -(log_probs * mass).sum(1)
            ctx.save_for_backward(log_probs, smoothed, weight_view)
            if reduction == 'mean':  # over all N d1 ... dK positions (0 / 0 = nan if there are none)
                return losses.sum() / losses.numel()
            return losses.sum() if reduction == 'sum' else losses

        # q_j = a ((1 - eps) w_y [j = y] + (eps / C) w_j), a = [y != ignore_index], at each position;
        # the true-class part is gathered, never built as a one-hot, so a -inf logit of another
        # class cannot turn into 0 * -inf = nan
        log_probs = log_softmax(input, 1)  # the LogSumExp form above
        keep = (target != ignore_index).unsqueeze(1)  # (N, 1, d1, ..., dK)
        target_col = torch.where(keep, target.unsqueeze(1), 0)  # ignored positions point at class 0
        picked_weight = weight[target_col] if weight is not None else torch.ones_like(log_probs[:, :1])
        losses = -(1 - label_smoothing) * picked_weight * log_probs.gather(1, target_col)
        if label_smoothing > 0:
            weighted = log_probs * weight_view if weight is not None else log_probs
            losses = losses - (label_smoothing / C) * weighted.sum(1, keepdim=True)
        # where, not multiply: an ignored position may hold nan/inf, which torch masks too
        losses = torch.where(keep, losses, 0).squeeze(1)
        # torch's mean divides by the sum of w_y over the kept positions, not by their number
        # (so 0 / 0 = nan if all are ignored)
        denominator = (picked_weight * keep).sum()
        ctx.save_for_backward(log_probs, target_col, keep, picked_weight, weight_view, denominator)
        if reduction == 'mean':
            return losses.sum() / denominator
        return losses.sum() if reduction == 'sum' else losses

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            # backward(create_graph=True): the formula below is not itself differentiable
            # here, so refuse rather than return a silently wrong second derivative.
            # (torch.autograd.function.once_differentiable would do this lazily, but costs
            # ~15 us per call, ~5% of fwd+bwd at (256, 10).)
            raise RuntimeError("cross_entropy does not support double backward")
        reduction = ctx.reduction
        if ctx.fast:  # g (softmax(o) - onehot(y)), the closed form
            exp_shifted, row_sum, target_col = ctx.saved_tensors
            if reduction == 'none':  # one g per position
                grad_input = exp_shifted / row_sum
                grad_input.scatter_add_(1, target_col, torch.full_like(row_sum, -1.0))
                return grad_input.mul_(grad_output.unsqueeze(1)), None, None, None, None
            # the fast path runs on CPU only, where reading a number is no device sync
            g = float(grad_output)
            if reduction == 'mean':
                g /= max(row_sum.numel(), 1)  # N d1 ... dK positions
            grad_input = torch.zeros_like(exp_shifted).scatter_(1, target_col, -g)  # -g onehot(y)
            # + g exp(o - max) / sum_k exp(o_k - max) = g softmax(o), in one fused pass
            return grad_input.addcdiv_(exp_shifted, row_sum, value=g), None, None, None, None

        # the upstream gradient of each position's loss, (N, 1, d1, ..., dK) or a scalar
        upstream = grad_output.unsqueeze(1) if reduction == 'none' else grad_output
        smoothing = ctx.label_smoothing
        if ctx.is_probability:
            log_probs, smoothed, weight_view = ctx.saved_tensors
            input_dtype, target_dtype, weight_dtype = ctx.dtypes
            if reduction == 'mean':
                upstream = upstream / (log_probs.numel() // log_probs.shape[1])
            grad_input = grad_target = grad_weight = None
            if ctx.needs_input_grad[0]:  # (sum_k q_k) p_j - q_j
                mass = smoothed * weight_view if weight_view is not None else smoothed
                grad_input = (log_probs.exp() * mass.sum(1, keepdim=True) - mass) * upstream
                grad_input = grad_input.to(input_dtype)
            if ctx.needs_input_grad[1]:  # -(1 - eps) w_j log p_j
                weighted = log_probs * weight_view if weight_view is not None else log_probs
                grad_target = (weighted * (-(1 - smoothing) * upstream)).to(target_dtype)
            if ctx.needs_input_grad[2]:  # -s_j log p_j, summed over every example and position
                per_position = -(smoothed * log_probs) * upstream
                other_dims = [0] + list(range(2, log_probs.dim()))
                grad_weight = per_position.sum(other_dims).to(weight_dtype)
            return grad_input, grad_target, grad_weight, None, None

        log_probs, target_col, keep, picked_weight, weight_view, denominator = ctx.saved_tensors
        C = log_probs.shape[1]
        if reduction == 'mean':
            upstream = upstream / denominator
        hard_mass = (1 - smoothing) * picked_weight  # (N, 1, ...): q at the true class, before smoothing
        probs = log_probs.exp()
        if smoothing > 0:
            if weight_view is not None:
                smooth_mass = (smoothing / C) * weight_view  # (1, C, 1, ...)
                grad_input = probs * (hard_mass + smooth_mass.sum()) - smooth_mass
            else:  # eps / C at every class, eps in all
                grad_input = probs * (hard_mass + smoothing) - smoothing / C
        else:
            grad_input = probs * hard_mass
        grad_input.scatter_add_(1, target_col, -hard_mass)
        # where, not multiply: upstream is inf when every position is ignored (mean = 0/0), and
        # torch gives those positions a zero gradient
        return grad_input * torch.where(keep, upstream, 0), None, None, None, None


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0):
    """Cross-entropy from logits, l = -sum_j q_j log softmax(o)_j, as F.cross_entropy.

    The classes lie along dim 1, every other dimension holds positions (one loss each):
    input: (N, C) logits, or (N, C, d1, ..., dK) (e.g. one distribution per pixel), or one
        example's (C,); float32 or float64.
    target: class indices, int64 (or uint8), of shape (N,), (N, d1, ..., dK), or () / (1,) for
        (C,) logits; or class probabilities t of the input's shape (any floating dtype: the
        loss is computed in the promoted one, so a float64 t gives a float64 loss).
    weight: optional (C,) per-class weights w.
    ignore_index: positions whose index target equals it contribute nothing (index targets only).
    reduction: 'none' -> the losses, (N,), (N, d1, ..., dK) or (); 'sum'; or 'mean', which
        for index targets divides by sum w_y over the non-ignored positions, for
        probability targets by the number of positions N d1 ... dK.
    label_smoothing eps: the target becomes (1 - eps) y + eps / C, weighted per class by w.

    Uses log softmax(o)_j = o_j - max - log sum_k exp(o_k - max), so it is finite for any
    finite logits. The gradient is written by hand: (sum_k q_k) softmax(o) - q for the
    logits; for a probability target that requires grad, -(1 - eps) w log softmax(o) (and
    for its weight, likewise). It cannot be differentiated again.
    """
    is_probability, ignore_index, label_smoothing = _check_arguments(
        input, target, weight, ignore_index, reduction, label_smoothing)
    unbatched = input.dim() == 1
    if unbatched:  # one example, as a batch of one: (1, C) logits, (1,) index or (1, C) probabilities
        input = input.unsqueeze(0)
        if is_probability or target.dim() == 0:
            target = target.unsqueeze(0)
    if not is_probability and target.dtype == torch.uint8:
        target = target.long()  # torch takes Byte class indices too
    C = input.shape[1]
    loss = None
    if (not is_probability and weight is None and label_smoothing == 0
            and input.is_cpu and not 0 <= ignore_index < C):
        # The training case. Checking the target range up front (an aminmax and two
        # reads) measured ~18 us per call, over 5% of fwd+bwd at (256, 10). Instead the
        # fast path assumes every target is a class index and lets its gather, which
        # bounds-checks on CPU anyway, tell us otherwise: then we look closer. A target
        # equal to ignore_index (e.g. -100) fails that check too and takes the general path.
        try:
            loss = _CrossEntropyFromLogits.apply(input, target, None, reduction, None)
        except RuntimeError:
            _check_index_range(target, C, ignore_index)  # a ValueError if a target is bad
            if not (target == ignore_index).any():
                raise  # the failure was something else; let it through
    elif not is_probability and target.is_cpu:
        # off the hot path, so check plainly. On an accelerator reading the answer back
        # would stall the pipeline every step, so there a bad index fails inside gather.
        _check_index_range(target, C, ignore_index)
    if loss is None:
        options = (ignore_index, label_smoothing, is_probability)
        loss = _CrossEntropyFromLogits.apply(input, target, weight, reduction, options)
    return loss.squeeze(0) if unbatched and reduction == 'none' else loss


# -----------------------------------------------------------------------------
# accuracy


def correct_count(y_hat, y):
    """Number of correct predictions, sum_i [argmax_j y_hat_ij = y_i], as a 0-dim tensor.

    y_hat: (n, q) logits or probabilities, or (n,) predicted labels; y: (n,) labels.
    Stays on the device (no host sync), so a training loop can add these up
    and read the total once per epoch.
    """
    if y_hat.dim() > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    y_hat = y_hat.reshape(-1)  # (n, 1) labels would otherwise broadcast against (n,) into (n, n)
    if y_hat.shape != y.shape:
        raise ValueError(f"predictions have shape {tuple(y_hat.shape)} but labels have shape {tuple(y.shape)}")
    return (y_hat.type(y.dtype) == y).sum()


def accuracy(y_hat, y):
    """The notes' accuracy: the number of correct predictions, as a Python float.

    y_hat: (n, q) logits or probabilities, or (n,) predicted labels; y: (n,) labels.
    Divide by len(y) for the fraction.
    """
    return float(correct_count(y_hat, y))


# -----------------------------------------------------------------------------
# registry for train.py --loss: each maps (O: (n, q) logits, y: (n,) int64) -> 0-dim mean loss


def naive_loss(O, y):
    """mean_i -log softmax_naive(O)[i, y_i] with eps=0, so it really overflows."""
    return cross_entropy_naive(softmax_naive(O), y).mean()


LOSSES = {
    'naive': naive_loss,
    'scratch': cross_entropy,
    'torch': nn.CrossEntropyLoss(),
}


# -----------------------------------------------------------------------------
# demo: the notes' stages, side by side

EPS = 1e-8  # the notes' quick patch: -log(p + EPS) <= -log EPS ~ 18.42


def max_subtracted_loss(O, y, eps=0.0):
    """mean_i -log(softmax(O)[i, y_i] + eps): the notes' second stage, and with eps=1e-8 its patch.

    O: (n, q) logits, y: (n,) int64 labels -> 0-dim mean loss. Subtracting the row maximum stops
    the overflow, but softmax(o)_y = exp(o_y - max) / sum_k exp(o_k - max) still rounds to 0 once
    o_y lies ~104 below the maximum (float32), and -log 0 = inf: underflow. eps keeps it finite by
    capping every loss at -log eps, which is then simply wrong for a larger true loss.
    """
    return cross_entropy_naive(softmax(O), y, eps).mean()


# the notes' stages in order: column name -> (what it computes, (O, y) -> mean loss)
STAGES = {
    'naive': ("-log softmax_naive(o)_y: exp(o) / sum exp(o), then -log", naive_loss),
    'max-subtracted': ("-log softmax(o)_y: exp(o - max) / sum exp(o - max), then -log", max_subtracted_loss),
    '+ eps': ("-log(softmax(o)_y + 1e-8): the quick patch", lambda O, y: max_subtracted_loss(O, y, EPS)),
    'LogSumExp': ("cross_entropy: log sum exp(o - max) - (o_y - max), never log of a probability",
                  cross_entropy),
    'torch': ("nn.CrossEntropyLoss", nn.CrossEntropyLoss()),
}


def stability_table(O, y, scales):
    """{stage: [mean loss of (s * O, y) for each s]}, computed in O's dtype."""
    return {name: [function(O * scale, y).item() for scale in scales] for name, (_, function) in STAGES.items()}


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


def gradient_rows(O, y, scales):
    """For each scale s: (s, nan entries in autograd's gradient through naive_loss, whether the closed
    form (softmax(o) - onehot(y)) / n is finite, its largest difference from autograd through torch's loss)."""
    rows = []
    for scale in scales:
        logits = (O * scale).requires_grad_()
        naive_grad, = torch.autograd.grad(naive_loss(logits, y), logits)
        torch_grad, = torch.autograd.grad(nn.functional.cross_entropy(logits, y), logits)
        _, closed_form = cross_entropy_with_grad(logits.detach(), y)
        closed_form /= len(y)
        rows.append((scale, int(naive_grad.isnan().sum()), bool(closed_form.isfinite().all()),
                     float((closed_form - torch_grad).abs().max())))
    return rows


def main(argv=None):
    """python losses.py [--out DIR]: the notes' worked examples, the stability table, DIR/stability.png.

    argv: the flags, a list of strings; None (a call from Python, e.g. a test) takes the defaults,
    since sys.argv is not ours to read there. Returns the exit code; raises cli.InputError for an
    output folder that cannot be written.
    """
    from machinery import plots  # matplotlib is slow to import, and only the demo draws
    parser = cli.ArgumentParser(prog='losses.py', description=__doc__.strip().split('\n')[0])
    parser.add_argument('--out', default='outputs', type=cli.non_empty,
                        help="folder for stability.png (default outputs)")
    args = parser.parse_args([] if argv is None else argv)
    cli.prepare_out_dir(args.out)  # a folder we cannot write is one line and exit 2, before any work

    print("Worked examples from the notes")
    y_hat = torch.tensor([[0.7, 0.2, 0.1]])
    print(f"  y = [1, 0, 0], y_hat = [0.7, 0.2, 0.1]:  -log 0.7 = "
          f"{cross_entropy_naive(y_hat, torch.tensor([0])).item():.3f}")
    y = torch.tensor([0, 2])
    y_hat = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
    losses = cross_entropy_naive(y_hat, y)
    print(f"  cross_entropy_naive(y_hat, y=[0, 2]) = [{losses[0]:.4f}, {losses[1]:.4f}]")
    print(f"  accuracy(y_hat, y) / len(y) = {accuracy(y_hat, y) / len(y)}")

    generator = torch.Generator().manual_seed(0)
    O = torch.randn(8, 10, generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)
    scales = [1, 10, 100, 1000, 10_000]
    table = stability_table(O, y, scales)
    width = 16
    print("\nMean loss of fixed (8, 10) float32 logits (seed 0) scaled by s, one column per stage of the notes")
    for name, (what, _) in STAGES.items():
        print(f"  {name:<16}{what}")
    print(f"\n  {'s':>7}" + "".join(f"{name:>{width}}" for name in STAGES))
    for k, scale in enumerate(scales):
        print(f"  {scale:>7g}" + "".join(f"{table[name][k]:>{width}.6g}" for name in STAGES))
    print()
    for line in where_each_stage_breaks(O, y, scales, table):
        print(f"  {line}")

    print(f"\nGradient of the mean loss with respect to the {O.numel()} logits")
    print(f"  {'s':>7}  {'autograd through naive':<24}closed form (softmax(o) - onehot(y)) / n")
    for scale, nans, finite, difference in gradient_rows(O, y, scales):
        naive = f"{nans} of {O.numel()} nan" if nans else "finite"
        print(f"  {scale:>7g}  {naive:<24}{'finite' if finite else 'NOT finite'}, within {difference:.1e} of torch's")
    print("  the closed form needs no exp of a large number nor log of a small one: softmax(o) - y stays in [-1, 1]")

    figure = plots.plot_stability(scales, table)
    path = os.path.join(args.out, 'stability.png')
    plots.save_figure(figure, path)
    print(f"\nsaved {path}")
    return cli.EXIT_DONE


if __name__ == '__main__':
    # sys.argv is passed explicitly: main() called from Python takes the defaults instead
    sys.exit(cli.run(main, sys.argv[1:]))
