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

Run `python losses.py` for the worked examples and a stability plot.
"""

import math
import os

import torch
from torch import nn

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


def _check_arguments(input, target, weight, ignore_index, reduction, label_smoothing):
    """Raise ValueError naming what is wrong; return True for probability targets.

    Only metadata is inspected here (shape, dtype, device), so this costs no
    kernel launch and no host sync; the value-range check is separate.
    """
    if not isinstance(input, torch.Tensor) or input.dim() != 2 or not input.is_floating_point():
        got = f"{tuple(input.shape)} {input.dtype}" if isinstance(input, torch.Tensor) else type(input).__name__
        raise ValueError(f"input must be a floating-point (N, C) tensor of logits, got {got}")
    N, C = input.shape
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a tensor, got {type(target).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if weight is not None:
        if weight.shape != (C,) or weight.dtype != input.dtype:
            raise ValueError(f"weight must be a {input.dtype} tensor of shape ({C},) like input, "
                             f"got {tuple(weight.shape)} {weight.dtype}")
        if weight.requires_grad:
            raise ValueError("weight requires grad, but cross_entropy differentiates with "
                             "respect to input only; pass weight.detach()")
    # as in torch, a target shaped like the input holds probabilities
    if target.shape == input.shape:
        if target.dtype != input.dtype:
            raise ValueError(f"target of shape {tuple(target.shape)} holds class probabilities, so it "
                             f"must be {input.dtype} like input, got {target.dtype}")
        if ignore_index >= 0:
            raise ValueError("ignore_index is not supported for probability targets")
        if target.requires_grad:
            raise ValueError("target requires grad, but cross_entropy differentiates with "
                             "respect to input only; pass target.detach()")
        return True
    if target.dim() != 1 or target.shape[0] != N:
        raise ValueError(f"target has shape {tuple(target.shape)}; expected ({N},) class indices "
                         f"or ({N}, {C}) probabilities for input of shape ({N}, {C})")
    if target.dtype != torch.int64:
        raise ValueError(f"target of shape ({N},) must hold int64 class indices, got {target.dtype}")
    return False


def _check_index_range(target, C, ignore_index):
    """Raise ValueError if a target other than ignore_index lies outside [0, C).

    Torch raises too (inside nll_loss), but not with a message that says what to do.
    """
    bad = target[(target != ignore_index) & ((target < 0) | (target >= C))]
    if bad.numel() > 0:
        raise ValueError(f"target has values outside 0..{C - 1} (found {bad[0].item()}); "
                         f"expected class indices in [0, C) or ignore_index={ignore_index}")


def _logsumexp_parts(O, target_col):
    """exp(o - max) (n, q), its row sums (n, 1), and the per-example losses (n,):

        l_i = log sum_k exp(o_ik - m_i) - (o_iy - m_i),   m_i = max_k o_ik      (LogSumExp)
    """
    shifted = O - O.amax(1, keepdim=True)  # exponents <= 0: exp cannot overflow
    picked = shifted.gather(1, target_col)  # o_y - max
    exp_shifted = shifted.exp_()  # reuse the buffer: one (n, q) allocation
    row_sum = exp_shifted.sum(1, keepdim=True)
    return exp_shifted, row_sum, (row_sum.log() - picked).view(-1)


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

    Every variant is l_i = -sum_j q_ij log p_ij with p = softmax(o_i) and a
    per-class target mass q_ij (one-hot, smoothed, weighted, or zero for an
    ignored row). Since sum_j p_ij = 1,

        dl_i/do_ij = (sum_k q_ik) p_ij - q_ij,

    which is softmax(o) - y for a one-hot y. The gradient is w.r.t. the logits
    only. Double backward is not supported (backward raises if asked for it
    with create_graph=True): SGD never needs second derivatives, and
    supporting them would mean recording the backward formula as a graph.
    """

    @staticmethod
    def forward(ctx, input, target, reduction, options):
        """options is None on the fast path (index targets, all in [0, C), no weight,
        no smoothing: the training case), else (weight, ignore_index, label_smoothing,
        is_probability); packing them keeps the per-call cost of apply down."""
        ctx.reduction = reduction
        ctx.fast = options is None
        if options is None:
            target_col = target.view(-1, 1)
            exp_shifted, row_sum, losses = _logsumexp_parts(input, target_col)
            ctx.save_for_backward(exp_shifted, row_sum, target_col)
            if reduction == 'mean':
                return losses.mean()
            return losses.sum() if reduction == 'sum' else losses

        weight, ignore_index, label_smoothing, is_probability = options
        ctx.label_smoothing, ctx.is_probability = label_smoothing, is_probability
        N, C = input.shape
        log_probs = log_softmax(input, 1)  # the LogSumExp form above
        if is_probability:
            # q_ij = w_j ((1 - eps) t_ij + eps / C); the mean is over N rows
            mass = target
            if label_smoothing > 0:
                mass = mass * (1 - label_smoothing) + label_smoothing / C
            if weight is not None:
                mass = mass * weight
            losses = -(log_probs * mass).sum(1)
            ctx.save_for_backward(log_probs, mass)
            if reduction == 'mean':
                return losses.sum() / N
            return losses.sum() if reduction == 'sum' else losses

        # q_ij = a_i ((1 - eps) w_{y_i} [j = y_i] + (eps / C) w_j), a_i = [y_i != ignore_index];
        # the true-class part is gathered, never built as an (N, C) one-hot, so a -inf
        # logit of another class cannot turn into 0 * -inf = nan
        keep = (target != ignore_index).view(-1, 1)
        target_col = torch.where(keep, target.view(-1, 1), 0)  # ignored rows point at class 0
        picked_weight = weight[target_col] if weight is not None else torch.ones_like(log_probs[:, :1])
        losses = -(1 - label_smoothing) * picked_weight * log_probs.gather(1, target_col)
        if label_smoothing > 0:
            weighted = log_probs * weight if weight is not None else log_probs
            losses = losses - (label_smoothing / C) * weighted.sum(1, keepdim=True)
        # where, not multiply: an ignored row may hold nan/inf, which torch masks too
        losses = torch.where(keep, losses, 0).view(-1)
        # torch's mean divides by sum_i a_i w_{y_i}, not by N (so 0/0 = nan if all are ignored)
        denominator = (picked_weight * keep).sum()
        ctx.save_for_backward(log_probs, target_col, keep, picked_weight, weight, denominator)
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
            if reduction == 'none':  # one g_i per row
                grad_input = exp_shifted / row_sum
                grad_input.scatter_add_(1, target_col, torch.full_like(row_sum, -1.0))
                return grad_input.mul_(grad_output.view(-1, 1)), None, None, None
            # the fast path runs on CPU only, where reading a number is no device sync
            g = float(grad_output) / max(len(row_sum), 1) if reduction == 'mean' else float(grad_output)
            grad_input = torch.zeros_like(exp_shifted).scatter_(1, target_col, -g)  # -g onehot(y)
            # + g exp(o - max) / sum_k exp(o_k - max) = g softmax(o), in one fused pass
            return grad_input.addcdiv_(exp_shifted, row_sum, value=g), None, None, None

        upstream = grad_output.view(-1, 1) if reduction == 'none' else grad_output
        if ctx.is_probability:
            log_probs, mass = ctx.saved_tensors
            if reduction == 'mean':
                upstream = upstream / len(log_probs)
            grad_input = log_probs.exp() * mass.sum(1, keepdim=True) - mass
            return grad_input * upstream, None, None, None

        log_probs, target_col, keep, picked_weight, weight, denominator = ctx.saved_tensors
        C = log_probs.shape[1]
        smoothing = ctx.label_smoothing
        if reduction == 'mean':
            upstream = upstream / denominator
        hard_mass = (1 - smoothing) * picked_weight  # (N, 1): q at the true class, before smoothing
        probs = log_probs.exp()
        if smoothing > 0:
            smooth_mass = (smoothing / C) * (weight if weight is not None else torch.ones_like(probs[0]))
            grad_input = probs * (hard_mass + smooth_mass.sum()) - smooth_mass
        else:
            grad_input = probs * hard_mass
        grad_input.scatter_add_(1, target_col, -hard_mass)
        # where, not multiply: upstream is inf when every row is ignored (mean = 0/0), and
        # torch gives those rows a zero gradient
        return grad_input * torch.where(keep, upstream, 0), None, None, None


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0):
    """Cross-entropy from logits, l_i = -sum_j q_ij log softmax(o_i)_j, as F.cross_entropy.

    input: (N, C) logits, float32 or float64 (or one example's (C,), as torch allows).
    target: (N,) int64 (or uint8) class indices, or (N, C) class probabilities
        (one-hot included).
    weight: optional (C,) per-class weights w.
    ignore_index: index targets equal to it contribute nothing (index targets only).
    reduction: 'none' -> (N,) losses, 'sum', or 'mean' (divides by
        sum_i w_{y_i} over non-ignored rows for index targets, by N for
        probability targets).
    label_smoothing eps: the target becomes (1 - eps) y + eps / C, the
        uniform part weighted per class by w.

    Uses log softmax(o)_j = o_j - max - log sum_k exp(o_k - max), so it is
    finite for any finite logits. The gradient, written by hand, is
    (sum_k q_ik) softmax(o_i) - q_i; it flows to input only (not to target
    or weight) and cannot be differentiated again.
    """
    if isinstance(input, torch.Tensor) and input.dim() == 1 and isinstance(target, torch.Tensor):
        # one unbatched example, as torch allows: (C,) logits with a 0-dim index or (C,) probabilities
        loss = cross_entropy(input.unsqueeze(0), target.unsqueeze(0), weight, ignore_index, reduction,
                             label_smoothing)
        return loss.squeeze(0) if reduction == 'none' else loss
    if isinstance(target, torch.Tensor) and target.dtype == torch.uint8:
        target = target.long()  # torch takes Byte class indices too
    is_probability = _check_arguments(input, target, weight, ignore_index, reduction, label_smoothing)
    C = input.shape[1]
    label_smoothing = float(label_smoothing)
    if (not is_probability and weight is None and label_smoothing == 0
            and input.is_cpu and not 0 <= ignore_index < C):
        # The training case. Checking the target range up front (an aminmax and two
        # reads) measured ~18 us per call, over 5% of fwd+bwd at (256, 10). Instead the
        # fast path assumes every target is a class index and lets its gather, which
        # bounds-checks on CPU anyway, tell us otherwise: then we look closer. A target
        # equal to ignore_index (e.g. -100) fails that check too and takes the general path.
        try:
            return _CrossEntropyFromLogits.apply(input, target, reduction, None)
        except RuntimeError:
            _check_index_range(target, C, ignore_index)  # a ValueError if a target is bad
            if not (target == ignore_index).any():
                raise  # the failure was something else; let it through
    elif not is_probability and target.is_cpu:
        # off the hot path, so check plainly. On an accelerator reading the answer back
        # would stall the pipeline every step, so there a bad index fails inside gather.
        _check_index_range(target, C, ignore_index)
    options = (weight, ignore_index, label_smoothing, is_probability)
    return _CrossEntropyFromLogits.apply(input, target, reduction, options)


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
# demo


def main():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    print("Worked examples from the notes")
    y_hat = torch.tensor([[0.7, 0.2, 0.1]])
    print(f"  y = [1, 0, 0], y_hat = [0.7, 0.2, 0.1]:  -log 0.7 = "
          f"{cross_entropy_naive(y_hat, torch.tensor([0])).item():.3f}")
    y = torch.tensor([0, 2])
    y_hat = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
    losses = cross_entropy_naive(y_hat, y)
    print(f"  cross_entropy_naive(y_hat, y=[0, 2]) = [{losses[0]:.4f}, {losses[1]:.4f}]")
    print(f"  accuracy(y_hat, y) / len(y) = {accuracy(y_hat, y) / len(y)}")

    torch.manual_seed(0)
    O = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    scales = [1, 10, 100, 1000, 10_000]
    names = list(LOSSES)
    table = {name: [LOSSES[name](O * scale, y).item() for scale in scales] for name in names}

    print("\nMean loss of fixed (8, 10) float32 logits (seed 0) scaled by s")
    print(f"  {'s':>7}" + "".join(f"{name:>14}" for name in names))
    for k, scale in enumerate(scales):
        print(f"  {scale:>7g}" + "".join(f"{table[name][k]:>14.6g}" for name in names))
    print("  naive: exp overflows float32 once a logit exceeds ~88.7, giving inf / inf = nan")

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    # naive underneath as a wide translucent band, so the lines on top stay visible where they agree
    styles = {'naive': dict(color='tab:red', marker='o', linewidth=6, markersize=12, alpha=0.35),
              'scratch': dict(color='tab:blue', marker='s', linewidth=1.5, markersize=6),
              'torch': dict(color='black', marker='.', linestyle='--', linewidth=1, markersize=6)}
    labels = {'naive': 'naive (softmax_naive, then -log)',
              'scratch': 'scratch (cross_entropy, stable)',
              'torch': 'torch (nn.CrossEntropyLoss)'}
    finite_values = [v for name in names for v in table[name] if math.isfinite(v)]
    top = max(finite_values) * 5
    for name in names:
        ax.plot(scales, table[name], label=labels[name], **styles[name])
    broken = [s for s, v in zip(scales, table['naive']) if not math.isfinite(v)]
    if broken:
        ax.plot(broken, [top] * len(broken), 'x', color='tab:red', markersize=12, markeredgewidth=2.5,
                label='naive is nan or inf (drawn at the top)')
        ax.annotate("naive breaks from here on:\nexp(o) overflows float32 for o > 88.7,\n"
                    "so softmax_naive computes inf / inf = nan",
                    xy=(broken[0], top), xytext=(1.3, top / 6), color='tab:red', va='top',
                    arrowprops=dict(arrowstyle='->', color='tab:red'))
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_ylim(top=top * 2)
    ax.set_xlabel('logit scale s (loss of s * O)')
    ax.set_ylabel('mean cross-entropy loss')
    ax.set_title('Cross-entropy of scaled logits: the naive version overflows')
    ax.grid(True, which='major', alpha=0.3)
    ax.legend(loc='lower right')
    fig.tight_layout()
    from train import save_figure  # train.py imports this module, so import it only here
    os.makedirs('outputs', exist_ok=True)
    path = os.path.join('outputs', 'stability.png')
    save_figure(fig, path)
    plt.close(fig)
    print(f"\nsaved {path}")


if __name__ == '__main__':
    main()
