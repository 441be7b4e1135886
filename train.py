"""Train softmax regression on Fashion-MNIST (d2l 3.6 / 3.7) and save what a reader wants to look at.

    python train.py                      the book's recipe: minibatch SGD, lr 0.1, batch 256, 10 epochs
    python train.py --recipe tuned       the best this same linear model does on raw pixels
    python train.py --compare            naive vs scratch vs torch loss from the same initial weights

Everything lands in --out (outputs/): history.csv, curves.png, metrics.json, model.pt after every epoch;
predictions.png, weights.png, confusion.png, confidence.png from the last finished epoch when the run
ends, fails or is interrupted. Exit codes: 0 done, 1 diverged (loss became nan/inf), 2 bad input, 130 interrupted (Ctrl-C).
"""
import os
import sys

import machinery.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from machinery import cli

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import argparse
import copy
import csv
import dataclasses
import functools
import io
import json
import math
import statistics
import time

import torch

import data
from machinery import plots
from machinery import metrics
from machinery.threads import ThreadChooser
from machinery.cli import EXIT_DIVERGED, EXIT_INTERRUPTED, OutputError, stop_if_requested, write_atomically, write_text
from losses import LOSSES, correct_count, cross_entropy, cross_entropy_naive, softmax, softmax_naive
from model import SoftmaxRegression

# The two recipes. Flags given on the command line override these values.
RECIPES = {
    # d2l 3.6/3.7: minibatch SGD on X/255, lr 0.1, batch 256, 10 epochs.
    'textbook': dict(epochs=10, batch_size=256, lr=0.1, momentum=0.0,
                     weight_decay=0.0, schedule='constant', standardize=False),
    # Tuned for the same linear model: per-pixel standardised inputs, momentum 0.9, L2 1e-3, cosine
    # decay to 0 over 5 epochs. A search over SGD/Adam, batch sizes, schedules, weight decays and up to
    # 30 epochs never beat it by more than seed noise; full-batch L-BFGS on the same L2 objective
    # measures the ceiling at 0.847.
    'tuned': dict(epochs=5, batch_size=256, lr=0.05, momentum=0.9,
                  weight_decay=1e-3, schedule='cosine', standardize=True),
}
HISTORY_COLUMNS = ['epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'seconds']


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


class Diverged(Exception):
    def __init__(self, epoch, step, loss):
        where = f"step {step}" if isinstance(step, int) else step
        super().__init__(f"epoch {epoch}, {where}: loss is {loss}")
        self.epoch, self.step, self.loss = epoch, step, loss


# ----------------------------------------------------------------------------- command line

MAX_EPOCHS = 100_000  # ~3 hours at 0.1 s an epoch: a larger number is a typo, not a plan
epochs_flag = cli.whole_number(1, MAX_EPOCHS + 1)
batch_size_flag = cli.whole_number(1, 60_000 + 1)  # at most the whole training set: one step per epoch


def build_parser():
    parser = cli.ArgumentParser(
        description="Softmax regression O = XW + b on Fashion-MNIST, as in Dive into Deep Learning ch. 3.",
        epilog="Exit codes: 0 done, 1 the loss diverged (nan/inf), 2 bad input, 130 interrupted.")
    parser.add_argument('--epochs', type=epochs_flag, metavar='N',
                        help="passes over the 60,000 training images (textbook 10, tuned %d)"
                             % RECIPES['tuned']['epochs'])
    parser.add_argument('--batch-size', type=batch_size_flag, metavar='N',
                        help="examples per SGD step (textbook 256, tuned %d)" % RECIPES['tuned']['batch_size'])
    parser.add_argument('--lr', type=cli.positive_float32,
                        help="learning rate (textbook 0.1, tuned %g, its peak before cosine decay)"
                             % RECIPES['tuned']['lr'])
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
                             "and write compare.png and history_<loss>.csv")
    return parser


def parse_config(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    given = {key: value for key, value in vars(args).items() if value is not None}
    config = Config(**{**recipe, **given})
    if config.device == 'cuda' and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for but this machine has no usable CUDA device "
                     "(use --device cpu or auto)")
    return config


def resolve_device(name):
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        print("device: cpu (no CUDA device found)", flush=True)
        return torch.device('cpu')
    return torch.device(name)


# ----------------------------------------------------------------------------- files, written atomically

OUTPUT_FILES = ['history.csv', 'curves.png', 'metrics.json', 'model.pt', 'predictions.png', 'weights.png',
                'confusion.png', 'confidence.png', 'compare.png', 'compare.json'] + [f"history_{loss}.csv" for loss in LOSSES]


def check_out_dir(out):
    """Fail before training, not after, when the output folder cannot be made or written."""
    cli.prepare_out_dir(out)
    for name in OUTPUT_FILES:
        path = os.path.join(out, name)
        if os.path.exists(path) and not os.path.isfile(path):
            raise OutputError(f"cannot write {path}: something other than a file is in the way")


def history_csv(history):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(HISTORY_COLUMNS)
    for row in history:
        writer.writerow([row['epoch']] + [f"{row[key]:.6f}" for key in HISTORY_COLUMNS[1:]])
    return buffer.getvalue()


# ----------------------------------------------------------------------------- training

def prepare_features(images):
    """uint8 (N, 784) -> float32 (N, 784) features held for the whole run: X/255, exactly ToTensor's scaling."""
    return images.float().div_(255)


def pixel_statistics(train_features):
    """Per-pixel mean and std of the training set; border pixels that never vary get std 1."""
    mean = train_features.mean(0)
    std = train_features.std(0)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def folded_copy(model, mean, std):
    """A copy of a model trained on (X - m)/s that takes X directly: ((X - m)/s) W + b = X (W/s) + (b - (m/s) W)."""
    folded = copy.deepcopy(model)
    with torch.no_grad():
        W_over_std = model.W / std[:, None]
        folded.W.copy_(W_over_std)
        folded.b.copy_(model.b - mean @ W_over_std)
    return folded


def learning_rate(config, step, total_steps):
    """The recipe's learning rate at `step` (counted from 0 over the run): constant, or cosine to 0."""
    if config.schedule == 'cosine':
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return config.lr


@torch.no_grad()
def sgd_update(params, grads, velocities, lr, momentum=0.0, weight_decay=0.0):
    """Minibatch SGD (d2l 3.2.6), with the tuned recipe's momentum and L2 weight decay:

        g <- g + weight_decay * w;   v <- momentum * v + g;   w <- w - lr * v

    With momentum = weight_decay = 0 this is the book's w <- w - lr * g. It is torch.optim.SGD's update
    (dampening 0, no Nesterov), written out: a loop over two tensors costs less than the optimizer's
    bookkeeping, which is a measurable part of a 0.5 ms step.
    """
    for param, grad, velocity in zip(params, grads, velocities):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        if momentum:
            grad = velocity.mul_(momentum).add_(grad)
        param.sub_(grad, alpha=lr)


@torch.no_grad()
def closed_form_gradients(model, X, y):
    """The scratch loss's gradients without autograd, as the chapter derives them (d2l 3.4.6):

        O = XW + b,   dO = (softmax(O) - onehot(y)) / n,   dW = X^T dO,   db = sum_i dO_i

    X: (n, 784), y: (n,) int64 -> (O: (n, 10) logits, [dW: (784, 10), db: (10,)]): what autograd finds
    through losses.cross_entropy, without building and walking a graph at every step.
    """
    O = model(X)
    dO = softmax(O)  # losses.py's stable softmax: exp(o - max) / sum exp(o - max)
    dO.scatter_add_(1, y.view(-1, 1), torch.full((len(y), 1), -1.0, device=O.device))  # - onehot(y)
    return O, model.gradients(X, dO.div_(len(y)))


def autograd_gradients(loss_fn, model, X, y):
    """Gradients by loss_fn(O, y).backward(), for the naive and torch losses. Same returns as above."""
    O = model(X)
    model.zero_grad(set_to_none=True)
    loss_fn(O, y).backward()
    return O.detach(), [param.grad for param in model.parameters()]


def make_step(model, config, total_steps):
    """The run's SGD step, step(X, y, number) -> O: the gradients of the configured loss, then the update.

    The scratch loss trains with its closed-form gradient, the others through autograd; both feed the
    same update, and a test checks that the two ways give the same step.
    """
    params = list(model.parameters())
    velocities = [torch.zeros_like(param) for param in params]  # momentum buffers
    if config.loss == 'scratch':
        gradients = closed_form_gradients
    else:
        gradients = functools.partial(autograd_gradients, LOSSES[config.loss])

    def step(X, y, number):
        O, grads = gradients(model, X, y)
        sgd_update(params, grads, velocities, learning_rate(config, number, total_steps),
                   config.momentum, config.weight_decay)
        return O
    return step


@torch.no_grad()
def example_losses(loss, O, y):
    """Each example's loss l_i = -log softmax(o_i)_{y_i}, computed by the run's implementation `loss`.

    O: (n, 10) logits, y: (n,) labels -> (n,). The naive version gives inf/nan where it overflows.
    """
    if loss == 'naive':
        return cross_entropy_naive(softmax_naive(O), y)
    if loss == 'torch':
        return torch.nn.functional.cross_entropy(O, y, reduction='none')
    return cross_entropy(O, y, reduction='none')


def mean_loss(losses):
    # In float64: a float32 sum of 60,000 terms depends on how the threads split it, and the history must
    # not depend on the thread count the ThreadChooser picked.
    return float(losses.double().mean())


def train_epoch(model, step, features, labels, config, generator, epoch, threads):
    """One pass over the training set (the book's train_epoch_ch3). Returns (train loss, train accuracy).

    Each step's logits O are kept, in the order the examples were visited, in one (n, 10) buffer; the
    book's Accumulator (the mean loss and the accuracy over the epoch) is computed from it once, at the
    end. So the step loop never waits for the device nor reduces anything, and a loss that became nan
    or inf is found there too, with the first step where it did.
    """
    from tqdm import tqdm
    n, batch_size = features.shape[0], config.batch_size
    steps = -(-n // batch_size)
    # A fresh permutation per epoch (shuffle=True in the book's DataLoader), drawn on the CPU so that a
    # seed gives the same order on every device.
    order = torch.randperm(n, generator=generator).to(features.device)
    visited_labels = labels[order]
    logits = torch.empty(n, data.NUM_CLASSES, device=features.device)
    live_postfix = features.device.type == 'cpu'  # on CPU a read is free; on CUDA it would stall the GPU
    next_postfix = time.monotonic() + 0.5
    bar = tqdm(range(steps), leave=False, desc=f"epoch {epoch}/{config.epochs}", unit='batch',
               disable=None, dynamic_ncols=True)
    first_step = (epoch - 1) * steps
    threads.start_epoch()
    for index in bar:
        stop_if_requested()
        threads.tick()
        rows = slice(index * batch_size, (index + 1) * batch_size)
        X = features.index_select(0, order[rows])  # the minibatch: a row gather
        logits[rows] = step(X, visited_labels[rows], first_step + index)
        if live_postfix and time.monotonic() >= next_postfix:
            next_postfix = time.monotonic() + 0.5
            so_far = slice(0, rows.stop)
            bar.set_postfix_str(
                f"loss {mean_loss(example_losses(config.loss, logits[so_far], visited_labels[so_far])):.4f}")
    bar.close()
    losses = example_losses(config.loss, logits, visited_labels)
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        first_bad = int((~finite).nonzero()[0])
        raise Diverged(epoch, first_bad // batch_size + 1, float(losses[first_bad]))
    return mean_loss(losses), int(correct_count(logits, visited_labels)) / n


@torch.no_grad()
def evaluate(model, loss, features, labels):
    """Mean loss and number of correct predictions on a whole split: (n, 784) @ (784, 10) is one GEMM."""
    O = model(features)
    return mean_loss(example_losses(loss, O, labels)), int(correct_count(O, labels))


def train(config, model, datasets, device, on_epoch=None, log=print):
    """The epoch loop. After each epoch calls on_epoch(history, model); raises Diverged on nan/inf loss."""
    train_images, train_labels, test_images, test_labels = datasets
    threads = ThreadChooser(device)  # first: the set-up below runs with every thread, in every run
    train_features, test_features = prepare_features(train_images), prepare_features(test_images)
    mean = std = None
    if config.standardize:  # (X - mean) / std, with the training set's per-pixel statistics
        mean, std = pixel_statistics(train_features)
        train_features.sub_(mean).div_(std)
        test_features.sub_(mean).div_(std)
    total_steps = config.epochs * -(-train_features.shape[0] // config.batch_size)
    step = make_step(model, config, total_steps)
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(model, step, train_features, train_labels, config, generator,
                                            epoch, threads)
        test_loss, test_correct = evaluate(model, config.loss, test_features, test_labels)
        if not math.isfinite(test_loss):  # e.g. the very last step blew up the weights
            raise Diverged(epoch, 'evaluation on the test set', test_loss)
        row = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                   test_loss=test_loss, test_acc=test_correct / test_labels.shape[0])
        row['seconds'] = time.perf_counter() - start
        row['threads'] = torch.get_num_threads()  # what the ThreadChooser ended the epoch with
        history.append(row)
        if on_epoch:  # files first, then the line: a reader of the line finds the epoch's files written
            on_epoch(history, model if mean is None else folded_copy(model, mean, std))  # takes X/255
        log(f"epoch {epoch:3d}/{config.epochs}  train loss {row['train_loss']:.4f}  "
            f"train acc {row['train_acc']:.4f}  test loss {row['test_loss']:.4f}  "
            f"test acc {row['test_acc']:.4f}  {row['seconds']:.2f} s")
        stop_if_requested()
    return history


# ----------------------------------------------------------------------------- one run, its files

def environment(device):
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    return dict(device=str(device), device_name=name, torch_version=str(torch.__version__),
                threads=torch.get_num_threads())


def write_epoch_outputs(out, config, history, model, device, status, started, extra=None):
    """After every epoch: history.csv, model.pt and metrics.json, each replaced whole."""
    write_text(os.path.join(out, 'history.csv'), history_csv(history))
    state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}  # loadable without a GPU
    checkpoint = dict(model=state, inputs='pixels / 255, flattened to (n, 784)',  # also for --recipe tuned
                      config=dataclasses.asdict(config), epoch=history[-1]['epoch'],
                      test_acc=history[-1]['test_acc'], torch_version=str(torch.__version__))
    write_atomically(os.path.join(out, 'model.pt'), lambda tmp: torch.save(checkpoint, tmp))
    write_metrics(out, config, history, device, status, started, extra)


def write_curves(out, config, history):
    plots.save_figure(plots.plot_curves({config.loss: history},
                                        f"softmax regression, {config.recipe} recipe, {config.loss} loss"),
                      os.path.join(out, 'curves.png'))


def write_metrics(out, config, history, device, status, started, extra=None):
    seconds = [row['seconds'] for row in history]
    metrics = dict(status=status, epochs_completed=len(history),
                   final={key: history[-1][key] for key in HISTORY_COLUMNS[1:5]} if history else None,
                   seconds_per_epoch=seconds, median_seconds_per_epoch=statistics.median(seconds) if seconds else None,
                   threads_per_epoch=[row.get('threads') for row in history],
                   wall_seconds=time.perf_counter() - started,
                   config=dataclasses.asdict(config), **environment(device), **(extra or {}))
    write_text(os.path.join(out, 'metrics.json'), json.dumps(metrics, indent=2) + '\n')


@torch.no_grad()
def write_final_figures(out, model, test_images, test_labels):
    """predictions.png, weights.png, confusion.png and confidence.png from a model that takes X/255.

    Returns the test set's calibration (metrics.calibration: ECE over 15 bins of confidence, and the
    confidence threshold that reaches 95% accuracy), without its coverage curve, for metrics.json.
    """
    features = prepare_features(test_images)
    probabilities = softmax(model(features)).cpu()
    predicted = probabilities.argmax(1)
    labels = test_labels.cpu()
    plots.save_figure(plots.plot_predictions(features[:24].cpu(), labels[:24].tolist(), predicted[:24].tolist()),
                      os.path.join(out, 'predictions.png'))
    plots.save_figure(plots.plot_weights(model.W.detach().cpu()), os.path.join(out, 'weights.png'))
    plots.save_figure(plots.plot_confusion(labels, predicted), os.path.join(out, 'confusion.png'))
    calibration = metrics.calibration(probabilities, labels)
    plots.save_figure(plots.plot_confidence(calibration), os.path.join(out, 'confidence.png'))
    return {key: value for key, value in calibration.items() if key != 'coverage_curve'}


def new_model(config, device):
    """The run's initial model: W ~ N(0, 0.01^2) drawn from config.seed, b = 0 (d2l 3.6.1)."""
    torch.manual_seed(config.seed)
    return SoftmaxRegression().to(device)


def earlier_run_note(out, kept):
    """What to say about the folder when this run kept nothing of its own."""
    if kept:
        return f"{kept} finished epoch(s) kept in {out}/"
    if any(os.path.exists(os.path.join(out, name)) for name in ('metrics.json', 'history.csv', 'model.pt')):
        return f"no epoch finished, so nothing was kept; the files in {out}/ are an earlier run's"
    return "no epoch finished, so nothing was kept"


CURVES_EVERY_SECONDS = 2.0  # curves.png is redrawn at most this often (and after the last epoch): no
                            # one reads a figure faster, and drawing it costs as much as an epoch


def run(config, datasets, device):
    """Train one model and keep its files current; returns the exit code."""
    started = time.perf_counter()
    model = new_model(config, device)
    # The last finished epoch's history and model (what an interruption keeps), and how far its files got.
    finished = dict(history=[], model=None, written=0, drawn=0)
    next_curves = time.monotonic() + CURVES_EVERY_SECONDS

    def on_epoch(history, saved_model):
        nonlocal next_curves
        finished.update(history=list(history), model=copy.deepcopy(saved_model))
        write_epoch_outputs(config.out, config, history, saved_model, device, 'running', started)
        finished['written'] = len(history)
        if time.monotonic() >= next_curves:
            write_curves(config.out, config, history)
            finished['drawn'], next_curves = len(history), time.monotonic() + CURVES_EVERY_SECONDS

    def wrap_up(status):
        """The final figures from the last finished epoch, then its files, whole, with the run's status
        (last: a metrics.json that says 'finished' has every figure beside it); returns its count."""
        history = finished['history']
        with cli.signals_ignored():
            if history:
                if finished['drawn'] != len(history):
                    write_curves(config.out, config, history)
                calibration = write_final_figures(config.out, finished['model'], datasets[2], datasets[3])
                write_epoch_outputs(config.out, config, history, finished['model'], device, status, started,
                                    {'calibration': calibration})
        return len(history)

    try:
        history = train(config, model, datasets, device, on_epoch)
        wrap_up('finished')  # inside the try: a Ctrl-C landing before it starts still gets a wrap-up
    except Diverged as diverged:
        kept = wrap_up('diverged')
        hint = ("use a smaller --lr" if config.loss != 'naive'
                else "use the stable loss (--loss scratch) or a smaller --lr")
        cli.say(f"error: training diverged at {diverged}; {hint} (lr was {config.lr:g}). "
                f"{earlier_run_note(config.out, kept)}")
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        kept = wrap_up('interrupted')
        cli.say(f"\ninterrupted: {earlier_run_note(config.out, kept)}")
        return EXIT_INTERRUPTED
    print(f"done: test accuracy {history[-1]['test_acc']:.4f} after {len(history)} epochs; "
          f"median {statistics.median(row['seconds'] for row in history):.3f} s per epoch; "
          f"files in {config.out}/")
    return 0


def compare(config, datasets, device):
    """Train once per loss from the same initial weights and order of batches; overlay the curves."""
    started = time.perf_counter()
    initial = new_model(config, device)
    histories, diverged, code = {}, {}, 0
    try:
        for loss in LOSSES:
            print(f"--- loss: {loss}")
            history_path = os.path.join(config.out, f"history_{loss}.csv")
            write_text(history_path, history_csv([]))  # a header, until the first epoch is done

            def on_epoch(history, _model):
                histories[loss] = list(history)  # first: what the wrap-up below writes again, whole
                write_text(history_path, history_csv(history))
            try:
                train(dataclasses.replace(config, loss=loss), copy.deepcopy(initial), datasets, device, on_epoch)
            except Diverged as error:
                diverged[loss] = str(error)
                kept = len(histories.get(loss, []))
                print(f"{loss} loss diverged at {error}; its {kept} finished epoch(s) are in {history_path}")
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    with cli.signals_ignored():
        histories = {loss: history for loss, history in histories.items() if history}
        for loss, history in histories.items():  # an interruption may have come between an epoch and its file
            write_text(os.path.join(config.out, f"history_{loss}.csv"), history_csv(history))
        if histories:
            title = f"the three losses from the same initial weights ({config.recipe} recipe, lr {config.lr:g})"
            for loss, reason in diverged.items():
                title += f"\n{loss} diverged at {reason}"
            plots.save_figure(plots.plot_curves(histories, title), os.path.join(config.out, 'compare.png'))
        finals = {loss: history[-1] for loss, history in histories.items()}
        status = 'interrupted' if code == EXIT_INTERRUPTED else 'finished'
        report = dict(status=status, trained=list(histories), final=finals, diverged=diverged,
                      config=dict(dataclasses.asdict(config), loss=list(LOSSES)),
                      wall_seconds=time.perf_counter() - started, **environment(device))
        write_text(os.path.join(config.out, 'compare.json'), json.dumps(report, indent=2) + '\n')
    drawn = f"compare.png and history_<loss>.csv in {config.out}/" if histories else (
        f"no loss finished an epoch, so no compare.png was drawn"
        + (f" (the one in {config.out}/ is an earlier run's)"
           if os.path.exists(os.path.join(config.out, 'compare.png')) else ""))
    if code == EXIT_INTERRUPTED:
        earlier = [f"history_{loss}.csv" for loss in LOSSES if loss not in histories
                   and os.path.exists(os.path.join(config.out, f"history_{loss}.csv"))]
        note = (f"; {', '.join(earlier)} did not finish an epoch in this run (an earlier run's or empty)"
                if earlier and histories else "")
        cli.say(f"\ninterrupted: {drawn}{note}")
        return code
    if len(diverged) == len(LOSSES):
        cli.say(f"error: every loss diverged (lr was {config.lr:g}; use a smaller --lr); {drawn}")
        return EXIT_DIVERGED
    print(f"done: {drawn}")
    return 0


def main(argv=None):
    config = parse_config(argv)  # bad flags: one line naming the flag, exit 2
    check_out_dir(config.out)
    cli.lock_out_dir(config.out)  # a second run into the same folder at once is refused, not interleaved
    import matplotlib.figure  # noqa: F401 -- imported now, not half-way through an interrupted save
    device = resolve_device(config.device)
    datasets = data.load_fashion_mnist(config.data_dir, device)
    return (compare if config.compare else run)(config, datasets, device)


if __name__ == '__main__':
    sys.exit(cli.run(main))
