"""The arguments of losses.cross_entropy checked by torch.nn.functional.cross_entropy's rules, each error naming
the argument: shapes, dtypes, reduction, ignore_index, label_smoothing, weight. Only metadata is read, so a
check costs no kernel launch and no host sync."""
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
