"""Train softmax regression on Fashion-MNIST (d2l 3.6) and save what a reader wants to look at.

    python train.py                      the book's recipe: minibatch SGD, lr 0.1, batch 256, 10 epochs
    python train.py --recipe tuned       the best this same linear model does on raw pixels
    python train.py --compare            naive vs scratch vs torch loss from the same initial weights

Everything lands in --out (outputs/): history.csv, metrics.json, model.pt after every epoch, curves.png at
most every 2 s; predictions.png, weights.png, confusion.png, confidence.png from the last finished epoch
when the run ends, fails or is interrupted (helpers/records.py). `--help` lists the flags and the exit codes.
"""
import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli, writing

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import copy
import dataclasses
import math
import sys
import time

import torch

import data
from helpers import records
from losses import LOSSES, correct_count, cross_entropy_with_grad
from model import SoftmaxRegression
from support.steps import Diverged, steps

# The two recipes. Flags given on the command line override these values.
RECIPES = {
    # d2l 3.6: minibatch SGD on X/255, lr 0.1, batch 256, 10 epochs.
    'textbook': dict(epochs=10, batch_size=256, lr=0.1, momentum=0.0,
                     weight_decay=0.0, schedule='constant', standardize=False),
    # The same linear model tuned: per-pixel standardised inputs, momentum 0.9, L2 1e-3, cosine decay to 0
    # over 5 epochs. Searching SGD/Adam, batch sizes, schedules, weight decays and up to 30 epochs never beat
    # it by more than seed noise; full-batch L-BFGS on the same L2 objective puts the ceiling at 0.847.
    'tuned': dict(epochs=5, batch_size=256, lr=0.05, momentum=0.9,
                  weight_decay=1e-3, schedule='cosine', standardize=True),
}


@dataclasses.dataclass
class Config:
    """Everything that defines a run; saved in metrics.json and model.pt."""
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.1
    loss: str = 'scratch'
    recipe: str = 'textbook'
    device: str = 'auto'
    seed: int = 0
    data_dir: str | None = None
    out: str = 'outputs'
    compare: bool = False
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = 'constant'
    standardize: bool = False


# ----------------------------------------------------------------------------- one step: gradient and update

def closed_form_gradients(model, X, O, y):
    """The scratch loss and its gradients without autograd, as the chapter derives them (d2l 3.4.6):

        l_i = log sum_k exp(o_ik) - o_iy,   dO = (softmax(O) - onehot(y)) / n,   dW = X^T dO,   db = sum_i dO_i

    X: (n, 784), O: (n, 10) logits, y: (n,) -> (l: (n,), [dW: (784, 10), db: (10,)]).
    """
    l, dO = cross_entropy_with_grad(O, y)  # the gradient of sum_i l_i; divided by n, the mean's
    return l, model.gradients(X, dO.div_(len(y)))


def autograd_gradients(model, O, y, loss):
    """The same by backward() through the naive or torch loss (O built with autograd) -> (l, [dW, db])."""
    l = LOSSES[loss](O, y, reduction='none')
    model.zero_grad(set_to_none=True)
    l.mean().backward()
    return l.detach(), [param.grad for param in model.parameters()]


@torch.no_grad()
def sgd_update(params, grads, velocities, lr, momentum=0.0, weight_decay=0.0):
    """Minibatch SGD (d2l 3.1.1), with the tuned recipe's momentum and L2 weight decay:

        g <- g + weight_decay * w;   v <- momentum * v + g;   w <- w - lr * v

    With momentum = weight_decay = 0 this is the book's w <- w - lr * g: torch.optim.SGD's update
    (dampening 0, no Nesterov), written out; a loop over two tensors costs less than the optimizer.
    """
    for param, grad, velocity in zip(params, grads, velocities):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        if momentum:
            grad = velocity.mul_(momentum).add_(grad)
        param.sub_(grad, alpha=lr)


def learning_rate(config, step, total_steps):
    """The recipe's learning rate at `step` (counted from 0 over the run): constant, or cosine to 0."""
    if config.schedule == 'cosine':
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return config.lr


# ----------------------------------------------------------------------------- the epoch

def train_epoch(model, velocities, features, labels, order, config, epoch):
    """One pass over the training set in minibatches (the book's train_epoch_ch3) -> (train loss, train acc).

    order: (n,) the epoch's permutation of the examples. Each step's losses and logits go into (n,) and
    (n, 10) buffers in the order of the steps; the epoch's mean loss and accuracy (the book's Accumulator)
    come from them once, at the end: the step loop never waits for a value.
    """
    n, batch_size = len(labels), config.batch_size
    num_steps = math.ceil(n / batch_size)
    params = list(model.parameters())
    example_losses = torch.empty(n, device=features.device)
    logits = torch.empty(n, data.NUM_CLASSES, device=features.device)
    for i in steps(epoch, config.epochs, example_losses, batch_size):  # machinery: Ctrl-C, threads, bar, nan
        rows = slice(i * batch_size, (i + 1) * batch_size)  # this minibatch's place in the epoch
        X, y = data.minibatch(features, labels, order[rows])  # a row gather
        O = model(X)  # logits O = XW + b
        if config.loss == 'scratch':
            l, grads = closed_form_gradients(model, X, O, y)
        else:
            l, grads = autograd_gradients(model, O, y, config.loss)
        lr = learning_rate(config, (epoch - 1) * num_steps + i, config.epochs * num_steps)
        sgd_update(params, grads, velocities, lr, config.momentum, config.weight_decay)
        example_losses[rows], logits[rows] = l, O.detach()
    return mean_loss(example_losses), int(correct_count(logits, labels[order])) / n


@torch.no_grad()
def evaluate(model, loss, features, labels):
    """Mean loss and accuracy on a whole split (the book's evaluate_accuracy): (n, 784) @ (784, 10), one GEMM."""
    O = model(features)
    return mean_loss(LOSSES[loss](O, labels, reduction='none')), int(correct_count(O, labels)) / len(labels)


def mean_loss(losses):
    # In float64: a float32 sum of 60,000 terms depends on how the threads split it, and the history must
    # not depend on the thread count.
    return float(losses.double().mean())


# ----------------------------------------------------------------------------- the run

def train(config, model, datasets, device):
    """The epoch loop (the book's train_ch3). After each epoch yields (history, the model as one that takes
    X/255): the history is one dict per finished epoch. Raises Diverged when a loss becomes nan or inf."""
    train_images, train_labels, test_images, test_labels = datasets
    train_features, test_features = data.to_features(train_images), data.to_features(test_images)
    mean, std = None, None
    if config.standardize:  # (X - mean) / std, with the training set's per-pixel statistics
        mean, std = pixel_statistics(train_features)
        train_features.sub_(mean).div_(std)
        test_features.sub_(mean).div_(std)
    velocities = [torch.zeros_like(param) for param in model.parameters()]  # momentum buffers
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        # shuffle=True: a fresh permutation per epoch, drawn on the CPU so that a seed gives one order anywhere
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        with torch.set_grad_enabled(config.loss != 'scratch'):  # the scratch loss needs no autograd graph
            train_loss, train_acc = train_epoch(model, velocities, train_features, train_labels, order, config,
                                                epoch)
        test_loss, test_acc = evaluate(model, config.loss, test_features, test_labels)
        if not math.isfinite(test_loss):  # e.g. the very last step blew the weights up
            raise Diverged(epoch, 'evaluation on the test set', test_loss)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                            test_acc=test_acc, seconds=time.perf_counter() - start,
                            threads=torch.get_num_threads()))  # what the thread choice ended the epoch with
        yield history, model if mean is None else folded_copy(model, mean, std)


def pixel_statistics(train_features):
    """Per-pixel mean and std of the training set; border pixels that never vary get std 1."""
    mean, std = train_features.mean(0), train_features.std(0)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def folded_copy(model, mean, std):
    """A model trained on (X - m)/s as one that takes X: ((X - m)/s) W + b = X (W/s) + (b - (m/s) W)."""
    folded = copy.deepcopy(model)
    with torch.no_grad():
        W_over_std = model.W / std[:, None]
        folded.W.copy_(W_over_std)
        folded.b.copy_(model.b - mean @ W_over_std)
    return folded


def new_model(config, device):
    """The run's initial model: W ~ N(0, 0.01^2) drawn from config.seed, b = 0 (d2l 3.6.1)."""
    torch.manual_seed(config.seed)
    return SoftmaxRegression().to(device)


def epoch_line(row, epochs):
    return (f"epoch {row['epoch']:3d}/{epochs}  train loss {row['train_loss']:.4f}  "
            f"train acc {row['train_acc']:.4f}  test loss {row['test_loss']:.4f}  "
            f"test acc {row['test_acc']:.4f}  {row['seconds']:.2f} s")


# ----------------------------------------------------------------------------- the command line

def build_parser():
    parser = cli.ArgumentParser(
        description="Softmax regression O = XW + b on Fashion-MNIST, as in Dive into Deep Learning ch. 3.",
        epilog="Exit codes: 0 done, 1 the loss diverged (nan/inf), 2 bad input, 130 interrupted.")
    tuned = RECIPES['tuned']
    parser.add_argument('--epochs', type=cli.whole_number(1, 100_000 + 1), metavar='N',  # more: a typo
                        help=f"passes over the 60,000 training images (textbook 10, tuned {tuned['epochs']})")
    parser.add_argument('--batch-size', type=cli.whole_number(1, 60_000 + 1), metavar='N',
                        help=f"examples per SGD step (textbook 256, tuned {tuned['batch_size']})")
    parser.add_argument('--lr', type=cli.positive_float32,
                        help=f"learning rate (textbook 0.1, tuned {tuned['lr']:g}, its peak before cosine decay)")
    parser.add_argument('--loss', choices=sorted(LOSSES), default='scratch',
                        help="cross-entropy implementation (losses.py): naive = the notes' "
                             "-log(softmax) that overflows, through autograd; scratch = stable LogSumExp, "
                             "trained with its closed-form gradient (softmax(O) - Y)/n and no autograd; "
                             "torch = nn.CrossEntropyLoss through autograd (default: %(default)s)")
    parser.add_argument('--recipe', choices=sorted(RECIPES), default='textbook',
                        help="textbook = the book's SGD run; tuned = standardised inputs, momentum, "
                             "weight decay and a cosine schedule (default: %(default)s)")
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                        help="where to train; auto picks CUDA when available (default: %(default)s)")
    parser.add_argument('--seed', type=cli.whole_number(0, 2**63), default=0,
                        help="seeds the initial weights and the shuffling; same seed on CPU, same "
                             "history (default: %(default)s)")
    parser.add_argument('--data-dir', metavar='DIR', type=cli.non_empty,
                        help=f"folder with the four Fashion-MNIST IDX files (.gz or raw); default: "
                             f"${data.ENV_VAR}, ./data/FashionMNIST/raw, {data.DEBIAN_DIR}, else download")
    parser.add_argument('--out', default='outputs', metavar='DIR', type=cli.non_empty,
                        help="where history, figures, metrics and the checkpoint go (default: %(default)s)")
    parser.add_argument('--compare', action='store_true',
                        help="train once per loss implementation from the same seed and initial weights "
                             "and write compare.png, history_<loss>.csv and compare.json")
    return parser


def parse_config(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {key: value for key, value in vars(args).items() if value is not None}
    config = Config(**{**RECIPES[args.recipe], **given})
    if config.device == 'cuda' and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for but this machine has no usable CUDA device "
                     "(use --device cpu or auto)")
    return config


def resolve_device(name):
    if name == 'auto' and not torch.cuda.is_available():
        print("device: cpu (no CUDA device found)", flush=True)
        return torch.device('cpu')
    return torch.device('cuda' if name == 'auto' else name)


def main(argv=None):
    config = parse_config(argv)  # bad flags: one line naming the flag, exit 2
    writing.prepare_out_dir(config.out, records.OUTPUT_FILES)  # checked and locked now, not after training
    device = resolve_device(config.device)
    datasets = data.load_fashion_mnist(config.data_dir, device)
    model = new_model(config, device)
    if config.compare:
        return records.compare(config, datasets, device, train, model)
    with records.Run(config, datasets, device) as run:  # however the loop ends: final figures, status, exit code
        for history, trained in train(config, model, datasets, device):
            run.save(history, trained)  # model.pt, history.csv, metrics.json: files first, then the line
            print(epoch_line(history[-1], config.epochs))
    return run.exit_code


if __name__ == '__main__':
    sys.exit(cli.run(main))
