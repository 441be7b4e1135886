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
  cross_entropy_with_grad               stable LogSumExp loss and its closed-form
                                        gradient softmax(o) - y: train.py's step
  cross_entropy                         the same loss with every option of
                                        torch.nn.functional.cross_entropy
                                        (helpers/cross_entropy.py): --loss
                                        scratch's evaluation and per-example losses

Run `python losses.py [--out DIR]` for the worked examples, a table of the
notes' stages (naive, max-subtracted, + eps, LogSumExp, torch) at growing
logit scales, and DIR/stability.png (default outputs/).
"""

import sys

import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli

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


def _refuse_unless_float(O, name):
    """Logits are real numbers: refuse integer, bool and complex ones as torch.softmax does."""
    if not O.is_floating_point():
        raise NotImplementedError(f'"{name}" not implemented for '
                                  f"'{O.type().rsplit('.', 1)[-1].removesuffix('Tensor')}'")


def softmax(O, dim=-1):
    """softmax(o)_j = exp(o_j - max) / sum_k exp(o_k - max).

    O: (..., q, ...) logits -> probabilities of the same shape, normalised
    along `dim`. Subtracting the maximum leaves the ratio unchanged but makes
    every exponent <= 0, so exp never overflows and the largest term is 1.
    """
    _refuse_unless_float(O, 'softmax')
    if O.numel() == 0:  # e.g. q = 0 classes: nothing to normalise (and no maximum), as in torch
        return O.clone()
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
    _refuse_unless_float(O, 'log_softmax')
    if O.numel() == 0:  # e.g. q = 0 classes: nothing to normalise (and no maximum), as in torch
        return O.clone()
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


def cross_entropy_with_grad(O, y):
    """Per-example cross-entropy and its gradient in closed form, without autograd (d2l 3.4.6):

        l_i = log sum_k exp(o_ik - m_i) - (o_iy - m_i),   m_i = max_k o_ik      (LogSumExp)
        dl_i/do_ij = softmax(o_i)_j - y_ij                                     (y one-hot)

    O: (n, q) logits, y: (n,) int64 class indices in [0, q) -> (losses (n,), gradient (n, q)).
    (The classes lie along dim 1, so (n, q, d1, ..., dK) logits with (n, d1, ..., dK) labels work
    too: one distribution per position.) The gradient is that of sum_i l_i; divide by n for the mean.
    No checks: callers pass labels already validated (on CPU an index out of range still fails
    inside gather).
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


# F.cross_entropy's complete equivalent, every shape and option, built on the functions above
from helpers.cross_entropy import cross_entropy  # noqa: E402

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
# registry for train.py --loss: each maps (O: (n, q) logits, y: (n,) int64, reduction='mean' or 'none')
# to the mean loss (0-dim) or each example's loss (n,)


def naive_loss(O, y, reduction='mean'):
    """-log softmax_naive(O)[i, y_i] with eps=0, so it really overflows; its mean, or each one."""
    losses = cross_entropy_naive(softmax_naive(O), y)
    return losses.mean() if reduction == 'mean' else losses


LOSSES = {
    'naive': naive_loss,
    'scratch': cross_entropy,
    'torch': nn.functional.cross_entropy,  # what nn.CrossEntropyLoss() calls: the reference
}

# the demo's names, still importable from here: they live in helpers/loss_demo.py
_DEMO_NAMES = ('EPS', 'STAGES', 'max_subtracted_loss', 'stability_table', 'where_each_stage_breaks',
               'gradient_rows')


def __getattr__(name):
    if name in _DEMO_NAMES:
        from helpers import loss_demo
        return getattr(loss_demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv=None):
    """python losses.py [--out DIR]: the notes' worked examples, the stability table, DIR/stability.png.

    argv: the flags, a list of strings; None (a call from Python, e.g. a test) takes the defaults,
    since sys.argv is not ours to read there. Returns the exit code; raises cli.InputError for an
    output folder that cannot be written.
    """
    from helpers import loss_demo  # matplotlib is slow to import, and only the demo draws
    parser = cli.ArgumentParser(prog='losses.py', description=__doc__.strip().split('\n')[0])
    parser.add_argument('--out', default='outputs', type=cli.non_empty,
                        help="folder for stability.png (default outputs)")
    args = parser.parse_args([] if argv is None else argv)
    cli.prepare_out_dir(args.out)  # a folder we cannot write is one line and exit 2, before any work
    loss_demo.run(args.out)
    return cli.EXIT_DONE


if __name__ == '__main__':
    # sys.argv is passed explicitly: main() called from Python takes the defaults instead
    sys.exit(cli.run(main, sys.argv[1:]))
