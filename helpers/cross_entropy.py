"""losses.cross_entropy: torch.nn.functional.cross_entropy's complete equivalent, built from losses.py.

Same signature, shapes, options, numbers and errors as F.cross_entropy: (N, C), (N, C, d1, ..., dK) or
(C,) logits; class-index or class-probability targets; weight, ignore_index, reduction,
label_smoothing. Every argument is checked by torch's rules, with a message naming it.

Two paths:
  the training case (index targets on CPU, no weight, no smoothing, no torch.func transform): an
      autograd.Function whose forward is losses.cross_entropy_with_grad, the LogSumExp loss and its
      closed-form gradient softmax(o) - y, so backward is one multiplication;
  every other case: plain differentiable torch ops on losses.log_softmax, so autograd derives it.
Both can be differentiated again (backward(create_graph=True)) and run under torch.func (grad, vmap,
jvp, hessian), giving what F.cross_entropy gives.
"""
import numbers
import operator

import torch

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




class _ClosedForm(torch.autograd.Function):
    """The training case: l = log sum_k exp(o_k - m) - (o_y - m) and g = softmax(o) - onehot(y), both
    from the forward pass (losses.cross_entropy_with_grad), so backward only scales g.

    The classes lie along dim 1 of input (n, q) or (n, q, d1, ..., dK); target (n, d1, ..., dK) int64.
    When backward is itself recorded (create_graph=True), g is recomputed in differentiable ops of the
    input, so the second derivative, diag(p) - p p^T per position, is right. Forward-mode AD (jvp):
    dl = sum_j g_j do_j. A forward that takes ctx (no setup_context) keeps apply cheap: torch binds
    the arguments with inspect.signature on every call otherwise, ~20 us, 10% of fwd+bwd at (256, 10).
    torch.func needs setup_context, so cross_entropy takes the composite path under its transforms.
    """

    @staticmethod
    def forward(ctx, input, target, reduction):
        losses_, grad = losses.cross_entropy_with_grad(input, target)
        ctx.save_for_backward(input, target, grad)
        ctx.grad = grad  # for jvp (forward mode), already held by save_for_backward
        ctx.reduction = reduction
        ctx.positions = max(losses_.numel(), 1)  # N d1 ... dK, what 'mean' divides by
        if reduction == 'mean':
            return losses_.mean()
        return losses_.sum() if reduction == 'sum' else losses_

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
            one_hot = torch.zeros_like(input).scatter_(1, target.unsqueeze(1), 1.0)
            grad = losses.softmax(input, 1) - one_hot
        return grad * upstream, None, None  # one pass over g

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, reduction_tangent):
        grad = ctx.grad
        per_position = (grad * input_tangent).sum(1)
        if ctx.reduction == 'none':
            return per_position
        return per_position.sum() / ctx.positions if ctx.reduction == 'mean' else per_position.sum()


def _composite(input, target, weight, ignore_index, reduction, label_smoothing, is_probability):
    """Every other case, l = -sum_j q_j log p_j at each position, in differentiable ops (autograd derives
    them): p = softmax(o) over dim 1, and the per-class mass q is one-hot, smoothed
    ((1 - eps) y + eps / C), weighted by w, a probability vector t, or zero at an ignored position.

    input (N, C, d1, ..., dK); target (N, d1, ..., dK) indices or probabilities like input; weight (C,).
    """
    C = input.shape[1]
    # w as (1, C, 1, ..., 1), to broadcast along the class dimension of (N, C, d1, ..., dK)
    weight_view = weight.view((1, C) + (1,) * (input.dim() - 2)) if weight is not None else None
    if is_probability:
        # log p in the logits' precision, then the products in the promoted one (a float64 target with
        # float32 logits gives a float64 loss), as torch computes it
        dtype = torch.promote_types(input.dtype, target.dtype)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
        log_probs = losses.log_softmax(input, 1).to(dtype)
        smoothed = target  # s = (1 - eps) t + eps / C, in t's precision as torch computes it
        if label_smoothing > 0:
            smoothed = smoothed * (1 - label_smoothing) + label_smoothing / C
        smoothed = smoothed.to(dtype)
        mass = smoothed * weight_view if weight is not None else smoothed  # q = w s
        per_position = -(log_probs * mass).sum(1)
        if reduction == 'mean':  # over all N d1 ... dK positions (0 / 0 = nan if there are none)
            return per_position.sum() / per_position.numel()
        return per_position.sum() if reduction == 'sum' else per_position

    # q_j = a ((1 - eps) w_y [j = y] + (eps / C) w_j), a = [y != ignore_index], at each position; the
    # true-class part is gathered, never built as a one-hot, so a -inf logit of another class cannot
    # turn into 0 * -inf = nan
    log_probs = losses.log_softmax(input, 1)
    keep = (target != ignore_index).unsqueeze(1)  # (N, 1, d1, ..., dK)
    target_col = torch.where(keep, target.unsqueeze(1), 0)  # ignored positions point at class 0
    picked = log_probs.gather(1, target_col)  # on CPU, a target out of range fails here
    picked_weight = weight[target_col] if weight is not None else torch.ones_like(picked)
    per_position = -(1 - label_smoothing) * picked_weight * picked
    if label_smoothing > 0:
        weighted = log_probs * weight_view if weight is not None else log_probs
        per_position = per_position - (label_smoothing / C) * weighted.sum(1, keepdim=True)
    # where, not multiply: an ignored position may hold nan/inf, which torch masks too (and its
    # gradient is 0, not 0 * inf, when every position is ignored and the mean is 0 / 0)
    per_position = torch.where(keep, per_position, 0).squeeze(1)
    if reduction == 'mean':  # torch divides by the sum of w_y over the kept positions, not their number
        return per_position.sum() / (picked_weight * keep).sum()
    return per_position.sum() if reduction == 'sum' else per_position


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

    Uses log softmax(o)_j = o_j - max - log sum_k exp(o_k - max), so it is finite for any finite
    logits. The gradient for the logits is (sum_k q_k) softmax(o) - q: softmax(o) - y in the
    training case, computed in closed form. Differentiable twice and under torch.func, as torch's.
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
    # Checking the target range up front (an aminmax and two reads) measured ~18 us per call, over 5%
    # of fwd+bwd at (256, 10), and a data-dependent check cannot run under vmap. Instead each path
    # lets its gather, which bounds-checks on CPU, tell us a target is bad: then we look closer.
    try:
        if (not is_probability and weight is None and label_smoothing == 0 and input.is_cpu
                and not 0 <= ignore_index < C and not torch._C._are_functorch_transforms_active()):
            # the training case; a target equal to ignore_index (e.g. -100) fails the gather too,
            # and takes the general path below
            try:
                loss = _ClosedForm.apply(input, target, reduction)
            except RuntimeError:
                if not (target == ignore_index).any():
                    raise
        if loss is None:
            loss = _composite(input, target, weight, ignore_index, reduction, label_smoothing, is_probability)
    except RuntimeError:
        # on an accelerator a bad index fails inside gather instead: reading the answer back here
        # would stall the pipeline every step
        if not is_probability and target.is_cpu:
            _check_index_range(target, C, ignore_index)  # a ValueError if a target is bad
        raise
    return loss.squeeze(0) if unbatched and reduction == 'none' else loss


import losses  # noqa: E402 -- last: losses.py imports this module's cross_entropy in turn
