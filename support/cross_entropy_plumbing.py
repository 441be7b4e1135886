"""losses.cross_entropy's plumbing. Its arguments checked by torch.nn.functional.cross_entropy's rules, each error
naming the argument: shapes, dtypes, reduction, ignore_index, label_smoothing, weight (only metadata is read, so
a check costs no kernel launch and no host sync). And its float16/bfloat16 path on the CPU, in_torch_order:
torch's sequence of operations, with its log_softmax and nll_loss kernels' rounding reproduced, so that the
loss and its gradient are torch's very numbers."""
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


def check_arguments(input, target, weight, ignore_index, reduction, label_smoothing):
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


def check_index_range(target, C, ignore_index):
    """Raise ValueError if a target other than ignore_index lies outside [0, C).

    Torch raises too (inside nll_loss), but not with a message that says what to do.
    """
    bad = target[(target != ignore_index) & ((target < 0) | (target >= C))]
    if bad.numel() > 0:
        raise ValueError(f"target has values outside 0..{C - 1} (found {bad[0].item()}); "
                         f"expected class indices in [0, C) or ignore_index={ignore_index}")


def as_batch(input, target, is_probability):
    """(input, target, unbatched): one example's (C,) logits as a batch of one, (1, C), with a (1,) index or
    (1, C) probabilities; uint8 class indices as int64, as torch takes them."""
    unbatched = input.dim() == 1
    if unbatched:
        input = input.unsqueeze(0)
        if is_probability or target.dim() == 0:
            target = target.unsqueeze(0)
    if not is_probability and target.dtype == torch.uint8:
        target = target.long()
    return input, target, unbatched


# ----------------------------------------------------------------------------- torch's rounding in half precision
# torch's CPU kernels compute float16/bfloat16 in float32 and round to the input's dtype, not always once and
# not always at the end: the nll_loss sums add in half precision. These round where they do.


def _in_order(values, dim):
    """The float32 sum along dim, one class after the other from 0, as torch's kernels add along a dim that is
    not the last (one vector lane per position)."""
    total = torch.zeros_like(values.narrow(dim, 0, 1))
    for part in values.split(1, dim):
        total = total + part
    return total


class HalfLogSoftmax(torch.autograd.Function):
    """log softmax(x) along dim, for float16/bfloat16 x, rounded where torch's CPU kernel rounds: in float32,
    x - max - log sum exp(x - max), rounded once to x's dtype; along the last dim the sum, then its log, are
    rounded to x's dtype first. Backward as torch's: g - exp(out) sum(g) in float32, rounded once, as the
    fused multiply-add its x86-64 builds compile to (float64 holds exp(out) sum(g) exactly)."""

    @staticmethod
    def forward(x, dim):
        x32 = x.float()
        shifted = x32 - x32.amax(dim, keepdim=True)
        if dim < x.dim() - 1:
            return (shifted - _in_order(shifted.exp(), dim).log()).to(x.dtype)
        total = shifted.exp().sum(dim, keepdim=True).to(x.dtype).float()
        return (shifted - total.log().to(x.dtype).float()).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad):
        output, = ctx.saved_tensors
        g = grad.float()
        total = _in_order(g, ctx.dim) if ctx.dim < g.dim() - 1 else g.sum(ctx.dim, keepdim=True)
        return (g.double() - output.float().exp().double() * total.double()).float().to(grad.dtype), None

    @staticmethod
    def jvp(ctx, x_tangent, _):
        output, = ctx.saved_tensors
        t = x_tangent.float()
        return (t - (output.float().exp() * t).sum(ctx.dim, keepdim=True)).to(x_tangent.dtype)


def _cascade_sum(columns, positions, n):
    """Each of columns (1-D, one item per kept position, in order) summed in its dtype in the order torch's
    CPU nll_loss adds float16/bfloat16: into the first of eight partial sums; after an item at a position whose
    last h base-16 digits are 0 (position 0: h = 7), the first h sums are passed up, each into the next, and
    restart at 0; at the end, 0 + the eight in order. positions: the items' flat indices among n positions."""
    digit = max(4, (n - 1).bit_length() // 8)  # bits per digit: 4 below 2^40 positions
    zero_bits = (positions & -positions).double().log2()  # a position's trailing zero bits (-inf for 0)
    height = torch.where(positions > 0, zero_bits // digit, 7).clamp(max=7).long()  # h: sums it passes up
    columns, totals = list(columns), [items[:0].sum() for items in columns]  # 0s, tied to the items for autograd
    for level in range(8):  # each level's sum takes its items in order, restarting after each passed up
        if len(height) <= 1:  # one item left is passed up unchanged into the last sum that keeps it
            break
        ends = (height > level).long()
        run = ends.cumsum(0) - ends  # which of the passed-up sums (or the last, the level's own) an item is in
        passed = int(ends.sum())
        for c, items in enumerate(columns):  # a 1-D index_add adds in index order, rounding each addition
            sums = items.new_zeros(passed + 1).index_add(0, run, items)
            totals[c], columns[c] = totals[c] + sums[passed], sums[:passed]
        height = height[ends.bool()]
    return [total + items.sum() for total, items in zip(totals, columns)]


def nll_in_half(log_probs, target, weight, reduction, ignore_index):
    """torch's nll_loss on float16/bfloat16 log-probabilities (N, C, d1, ..., dK): -w_y log p_y at each kept
    position, rounded in their dtype; 'sum' and 'mean' add them in its order, 'mean' then divides by the kept
    positions' weights (or their number), added likewise."""
    keep = target != ignore_index
    safe = torch.where(keep, target, 0)  # an ignored position reads class 0, and counts for nothing
    picked = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)  # on CPU, a target out of range fails here
    picked_weight = weight[safe] if weight is not None else None
    terms = picked * picked_weight if weight is not None else picked
    if reduction == 'none':
        return torch.where(keep, -terms, 0)
    positions = keep.flatten().nonzero().squeeze(1)
    columns = [-terms.flatten()[positions]]
    if reduction == 'mean' and weight is not None:
        columns.append(picked_weight.flatten()[positions])
    sums = _cascade_sum(columns, positions, keep.numel())
    if reduction == 'sum':
        return sums[0]
    return sums[0] / (sums[1] if weight is not None else torch.tensor(float(len(positions))).to(sums[0].dtype))


def in_torch_order(input, target, weight, ignore_index, reduction, label_smoothing, is_probability):
    """losses.cross_entropy for float16/bfloat16 on the CPU: the same loss in torch's own sequence of operations
    (aten's cross_entropy_loss), each rounding where torch's does; its log_softmax and nll_loss kernels, which
    round in their own places, reproduced above. input (N, C, d1, ..., dK); weight (C,)."""
    C = input.shape[1]
    log_probs = HalfLogSoftmax.apply(input, 1)
    weight_view = weight.view((1, C) + (1,) * (input.dim() - 2)) if weight is not None else None
    if is_probability:
        q = target * (1 - label_smoothing) + label_smoothing / C if label_smoothing > 0 else target
        products = log_probs * q * weight_view if weight is not None else log_probs * q
        if reduction == 'none':
            return -products.sum(1)
        total = -products.sum()
        if reduction == 'sum' or input.numel() == 0:  # a mean over no position is nan
            return total if reduction == 'sum' else total.fill_(float('nan'))
        return total / (input.numel() // C)
    loss = nll_in_half(log_probs, target, weight, reduction, ignore_index)
    if label_smoothing == 0:
        return loss
    ignored = target == ignore_index
    smooth = -(log_probs * weight_view).sum(1) if weight is not None else -log_probs.sum(1)
    smooth = smooth.masked_fill(ignored, 0.0)
    if reduction == 'mean':  # over the kept positions' weights (or number), as nll_loss
        smooth = smooth.sum() / (weight.gather(0, target.masked_select(~ignored)) if weight is not None
                                 else ~ignored).sum()
    elif reduction == 'sum':
        smooth = smooth.sum()
    return (1 - label_smoothing) * loss + smooth * (label_smoothing / C)
