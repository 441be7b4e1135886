"""The chapter's hyperparameter exercises answered by one command (d2l 3.7 ex. 1-2, 4.4): train a grid of
learning rates x batch sizes x seeds and draw what the reader should compare.

    python sweep.py                                       lr 0.01 .. 1 x batch 32 .. 1024, 10 epochs, seed 0
    python sweep.py --lr 0.1 1 --batch-size 256 --epochs 50   what many more epochs do to test accuracy
    python sweep.py --seeds 3                             every cell three times: mean +- std

Every (lr, batch size, seed) is one run of train.py's own training (train.new_model + train.train), so a
row here and `python train.py --lr LR --batch-size N --epochs E --seed S` (same recipe, loss, device)
have the same history. The data is loaded once and every run happens in this process. In --out:

    sweep.csv          one row per finished run (finished or diverged), rewritten whole after every run
    history_*.csv      each run's per-epoch history, train.py's columns; the name says which run it is
    sweep.png          final test accuracy, learning rate against batch size, best cell outlined
    sweep_curves.png   test loss and accuracy against epoch, one line per learning rate, at batch 256
    sweep.json         this sweep's configuration, the recipe's settings, device, status

sweep.csv is the record: running the command again trains only the runs (lr, batch size, seed, epochs,
recipe, loss) not yet in it, so a grid grows by running it again with more values. Ctrl-C keeps every
finished run and redraws the figures. Exit codes: 0 every run finished or diverged (a diverging learning
rate is an answer, not an error), 2 bad input, 130 interrupted.
"""
import os
import sys

import machinery.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from machinery import cli

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import csv
import dataclasses
import io
import json
import math
import time

import torch

import train

import data
from machinery import plots, plots_sweep
from machinery.cli import EXIT_INTERRUPTED, InputError, OutputError, write_text

DEFAULT_LRS = [0.01, 0.03, 0.1, 0.3, 1.0]
DEFAULT_BATCH_SIZES = [32, 64, 256, 1024]
CURVES_BATCH_SIZE = 256  # sweep_curves.png shows this batch size (the book's), or the nearest one swept
MAX_SEEDS = 1000

KEY_COLUMNS = ['lr', 'batch_size', 'seed', 'epochs', 'recipe', 'loss']  # what makes two runs the same run
RESULT_COLUMNS = ['final_train_loss', 'final_test_loss', 'final_test_acc', 'best_test_acc', 'best_epoch', 'seconds']
SWEEP_COLUMNS = KEY_COLUMNS + ['status'] + RESULT_COLUMNS
STATUSES = ('finished', 'diverged')
MAX_CSV_BYTES = 64 * 2**20  # ~400,000 rows: far more than any grid
OUTPUT_FILES = ['sweep.csv', 'sweep.json', 'sweep.png', 'sweep_curves.png']


@dataclasses.dataclass
class SweepConfig:
    """What a sweep is: the grid and the settings every run shares. Saved in sweep.json."""
    lr: list = dataclasses.field(default_factory=lambda: list(DEFAULT_LRS))
    batch_size: list = dataclasses.field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    epochs: int = 10
    seeds: int = 1
    recipe: str = 'textbook'
    loss: str = 'scratch'
    device: str = 'auto'
    data_dir: str | None = None
    out: str = 'outputs/sweep'

    def run_config(self, lr, batch_size, seed):
        """The train.Config of one run: the recipe's defaults overridden by the run's values, exactly what
        `python train.py --recipe R --loss L --lr LR --batch-size N --epochs E --seed S --device D` builds."""
        return train.Config(**{**train.RECIPES[self.recipe], 'lr': lr, 'batch_size': batch_size,
                               'epochs': self.epochs, 'seed': seed, 'loss': self.loss, 'recipe': self.recipe,
                               'device': self.device, 'data_dir': self.data_dir, 'out': self.out})

    def grid(self):
        """Every run's key, seed 0's whole grid first (so an early Ctrl-C leaves a complete picture)."""
        return [(lr, batch_size, seed, self.epochs, self.recipe, self.loss)
                for seed in range(self.seeds) for batch_size in self.batch_size for lr in self.lr]

    def matches(self, key):
        """Whether a run of sweep.csv belongs in this sweep's figures: the same epochs, recipe and loss."""
        return key[3:] == (self.epochs, self.recipe, self.loss)


# ----------------------------------------------------------------------------- command line

def build_parser():
    parser = cli.ArgumentParser(
        description="Train softmax regression on Fashion-MNIST for every learning rate x batch size x seed, "
                    "as train.py does, and draw the final test accuracies and the learning curves.",
        epilog="Runs already in DIR/sweep.csv are not trained again. Exit codes: 0 every run finished or "
               "diverged, 2 bad input, 130 interrupted (finished runs kept).")
    # 'extend': `--lr 0.1 --lr 0.3` means both values, not only the last
    parser.add_argument('--lr', type=cli.positive_float32, nargs='+', action='extend', metavar='LR',
                        help="learning rates (default: %s)" % ' '.join(f"{lr:g}" for lr in DEFAULT_LRS))
    parser.add_argument('--batch-size', type=train.batch_size_flag, nargs='+', action='extend', metavar='N',
                        help="batch sizes (default: %s)" % ' '.join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument('--epochs', type=train.epochs_flag, default=10, metavar='N',
                        help="epochs of every run, whatever the recipe (default: %(default)s)")
    parser.add_argument('--seeds', type=cli.whole_number(1, MAX_SEEDS + 1), default=1, metavar='K',
                        help="train every cell with seeds 0 .. K-1 (default: %(default)s)")
    parser.add_argument('--recipe', choices=sorted(train.RECIPES), default='textbook',
                        help="train.py's recipe (momentum, weight decay, schedule, input scaling); lr, "
                             "batch size and epochs come from the flags above (default: %(default)s)")
    parser.add_argument('--loss', choices=sorted(train.LOSSES), default='scratch',
                        help="cross-entropy implementation, as in train.py (default: %(default)s)")
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                        help="where to train; auto picks CUDA when available (default: %(default)s)")
    parser.add_argument('--data-dir', type=cli.non_empty, metavar='DIR',
                        help=f"folder with the four Fashion-MNIST IDX files; default: ${data.ENV_VAR}, "
                             f"./data/FashionMNIST/raw, {data.DEBIAN_DIR}, else download")
    parser.add_argument('--out', type=cli.non_empty, default='outputs/sweep', metavar='DIR',
                        help="where sweep.csv, the histories and the figures go (default: %(default)s)")
    return parser


def parse_config(argv=None):
    """The sweep's flags as a SweepConfig. A value given twice is run once (and said so); the grid is sorted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.lr, args.batch_size = args.lr or DEFAULT_LRS, args.batch_size or DEFAULT_BATCH_SIZES
    for flag, values in (('--lr', args.lr), ('--batch-size', args.batch_size)):
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            print(f"note: {flag} {' '.join(format_number(value) for value in repeated)} given more than once; "
                  f"each value is run once")
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for but this machine has no usable CUDA device "
                     "(use --device cpu or auto)")
    return SweepConfig(lr=sorted(set(args.lr)), batch_size=sorted(set(args.batch_size)), epochs=args.epochs,
                       seeds=args.seeds, recipe=args.recipe, loss=args.loss, device=args.device,
                       data_dir=args.data_dir, out=args.out)


# ----------------------------------------------------------------------------- sweep.csv

def format_number(value):
    """A key's value as the shortest text that reads back as the same number: 0.1, 1, 3e-05, 256.
    (A learning rate keyed with six decimals would merge 1e-7 with 2e-7.)"""
    text = repr(value)
    return text[:-2] if text.endswith('.0') else text


def six_decimals(value):
    return '' if value is None else f"{value:.6f}"


def sweep_csv(rows):
    """The text of sweep.csv: a header and one row per run, sorted by recipe, loss, epochs, batch size, lr, seed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(SWEEP_COLUMNS)
    for key in sorted(rows, key=lambda key: (key[4], key[5], key[3], key[1], key[0], key[2])):
        row = rows[key]
        writer.writerow([format_number(key[0]), *key[1:], row['status']] +
                        [six_decimals(row[column]) for column in RESULT_COLUMNS[:4]] +
                        ['' if row['best_epoch'] is None else row['best_epoch'], six_decimals(row['seconds'])])
    return buffer.getvalue()


def read_sweep_csv(path):
    """{key: row} from an existing sweep.csv, or {} when there is none. Anything that is not a sweep.csv
    written by this script is refused (InputError) before a byte of the folder is changed."""
    if not os.path.exists(path):
        return {}

    def refuse(why):
        raise InputError(f"{path} is not a sweep.csv written by sweep.py ({why}); move it away or choose "
                         f"another --out")
    if os.path.getsize(path) > MAX_CSV_BYTES:
        refuse(f"it holds {os.path.getsize(path):,} bytes, more than a sweep writes")
    try:
        with open(path, newline='', encoding='utf-8') as f:
            text = f.read()
    except UnicodeDecodeError:
        refuse("it is not text")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        refuse(f"not a CSV file: {error}")
    if not records:
        refuse("it is empty")
    if records[0] != SWEEP_COLUMNS:
        refuse(f"its header is {','.join(records[0])[:80]!r}, expected {','.join(SWEEP_COLUMNS)!r}")
    rows = {}
    for line, record in enumerate(records[1:], start=2):
        if not record:
            continue
        if len(record) != len(SWEEP_COLUMNS):
            refuse(f"line {line} has {len(record)} fields, expected {len(SWEEP_COLUMNS)}")
        try:
            key, row = parse_record(dict(zip(SWEEP_COLUMNS, record)))
        except ValueError as error:
            refuse(f"line {line}: {error}")
        rows.setdefault(key, row)
    return rows


def parse_record(record):
    """(key, row) of one sweep.csv line of text fields; ValueError names the bad field."""
    def number(column, kind, low, empty_ok=False):
        text = record[column]
        if empty_ok and text == '':
            return None
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{column} is {text!r}, not a number") from None
        if not (math.isfinite(value) and value >= low):
            raise ValueError(f"{column} is {text!r}")
        return value

    def choice(column, choices):
        if record[column] not in choices:
            raise ValueError(f"{column} is {record[column]!r}, not one of {', '.join(choices)}")
        return record[column]
    lr = number('lr', float, 0)
    if lr == 0:
        raise ValueError("lr is 0")
    key = (lr, number('batch_size', int, 1), number('seed', int, 0), number('epochs', int, 1),
           choice('recipe', sorted(train.RECIPES)), choice('loss', sorted(train.LOSSES)))
    row = dict(status=choice('status', STATUSES), seconds=number('seconds', float, 0),
               best_epoch=number('best_epoch', int, 1, empty_ok=True))
    for column in RESULT_COLUMNS[:4]:
        row[column] = number(column, float, 0, empty_ok=True)
    for column in ('final_test_acc', 'best_test_acc'):
        if row[column] is not None and row[column] > 1:
            raise ValueError(f"{column} is {record[column]!r}, not an accuracy between 0 and 1")
    if row['status'] == 'finished' and None in (row[column] for column in RESULT_COLUMNS[:4]):
        raise ValueError("a finished run without its results")
    return key, row


def history_name(key):
    """The file of one run's history: every field of its key, e.g.
    history_lr0.1_batch256_seed0_10epochs_textbook_scratch.csv."""
    lr, batch_size, seed, epochs, recipe, loss = key
    return f"history_lr{format_number(lr)}_batch{batch_size}_seed{seed}_{epochs}epochs_{recipe}_{loss}.csv"


def read_history(path):
    """A history file written by this script as train.py's rows, or None when it is missing or unreadable
    (the figures then leave that run's line out; sweep.csv, the record, is what matters)."""
    try:
        with open(path, newline='', encoding='utf-8') as f:
            return [dict(row, epoch=int(row['epoch']), **{key: float(row[key]) for key in train.HISTORY_COLUMNS[1:]})
                    for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return None


def check_out_dir(out):
    """Fail before training, not after, when the folder cannot be made or written, or a folder sits where
    one of the sweep's files goes."""
    cli.prepare_out_dir(out)
    for name in OUTPUT_FILES:
        path = os.path.join(out, name)
        if os.path.exists(path) and not os.path.isfile(path):
            raise OutputError(f"cannot write {path}: something other than a file is in the way")


# ----------------------------------------------------------------------------- training

def train_run(config, datasets, device):
    """One run, train.py's training: returns (history of the finished epochs, status, seconds, why it diverged)."""
    finished = []

    def on_epoch(history, _model):  # train() raises Diverged after this was called for the finished epochs
        finished[:] = history
    started = time.perf_counter()
    model = train.new_model(config, device)
    try:
        history = train.train(config, model, datasets, device, on_epoch=on_epoch, log=lambda line: None)
        status, why = 'finished', None
    except train.Diverged as error:
        history, status, why = list(finished), 'diverged', str(error)
    return history, status, time.perf_counter() - started, why


def summary(history, status, seconds):
    """A run's row of sweep.csv from its history (the final epoch and the best test accuracy)."""
    row = dict(status=status, seconds=seconds, final_train_loss=None, final_test_loss=None,
               final_test_acc=None, best_test_acc=None, best_epoch=None)
    if history:
        best = max(history, key=lambda epoch: epoch['test_acc'])  # the first epoch that reached it
        row.update(final_train_loss=history[-1]['train_loss'], final_test_loss=history[-1]['test_loss'],
                   final_test_acc=history[-1]['test_acc'], best_test_acc=best['test_acc'],
                   best_epoch=best['epoch'])
    return row


def best_run(sweep, rows):
    """(key, row) of the finished run of this sweep's epochs/recipe/loss with the best final test accuracy."""
    finished = [(key, row) for key, row in rows.items()
                if sweep.matches(key) and row['status'] == 'finished' and row['final_test_acc'] is not None]
    return max(finished, key=lambda item: item[1]['final_test_acc'], default=(None, None))


def count(n, thing):
    return f"{n} {thing}{'' if n == 1 else 's'}"


def describe(key):
    return f"lr {format_number(key[0])} batch {key[1]} seed {key[2]}"


def train_grid(sweep, todo, rows, datasets, device):
    """Train the runs of `todo` one after another; after each, its history file and sweep.csv are written."""
    from tqdm import tqdm
    csv_path = os.path.join(sweep.out, 'sweep.csv')
    with tqdm(todo, desc='sweep', unit='run', disable=None, dynamic_ncols=True) as bar:
        for index, key in enumerate(bar, start=1):
            bar.set_description(describe(key))
            history, status, seconds, why = train_run(sweep.run_config(*key[:3]), datasets, device)
            # Both files or neither: Ctrl-C here waits until sweep.csv holds the row (a history file
            # without its row is harmless: the run is trained again and the file replaced).
            with cli.signals_deferred():
                write_text(os.path.join(sweep.out, history_name(key)), train.history_csv(history))
                rows[key] = summary(history, status, seconds)
                write_text(csv_path, sweep_csv(rows))
            result = (f"test acc {history[-1]['test_acc']:.4f}" if status == 'finished' else
                      f"diverged at {why}, {len(history)} finished epoch(s) kept")
            bar.write(f"[{index}/{len(todo)}] {describe(key)}: {result}  ({seconds:.1f} s)")
            sys.stdout.flush()  # one line per run, as it happens, also into a pipe or a log file
            best_key, best = best_run(sweep, rows)
            if best_key:
                bar.set_postfix_str(f"best {best['final_test_acc']:.4f} at lr {format_number(best_key[0])} "
                                    f"batch {best_key[1]}")


# ----------------------------------------------------------------------------- figures and files

def draw_figures(sweep, rows):
    """sweep.png and sweep_curves.png from every run in sweep.csv with this sweep's epochs, recipe and loss
    (so a grid extended by an earlier or later command is drawn whole). Returns the names written."""
    runs = [dict(zip(KEY_COLUMNS, key), **row) for key, row in rows.items() if sweep.matches(key)]
    if not runs:
        return []
    what = f"{sweep.recipe} recipe, {sweep.loss} loss, {sweep.epochs} epochs"
    plots.save_figure(plots_sweep.plot_sweep_heatmap(runs, f"final test accuracy ({what})"),
                      os.path.join(sweep.out, 'sweep.png'))
    batch_sizes = sorted({run['batch_size'] for run in runs})
    batch_size = min(batch_sizes, key=lambda size: (abs(math.log(size / CURVES_BATCH_SIZE)), size))
    curves = {}  # lr -> (seed, history, status): the lowest seed of each learning rate at that batch size
    for run in sorted(runs, key=lambda run: (run['lr'], run['seed'])):
        if run['batch_size'] != batch_size or run['lr'] in curves:
            continue
        history = read_history(os.path.join(sweep.out, history_name(tuple(run[key] for key in KEY_COLUMNS))))
        if history is not None:
            curves[run['lr']] = (run['seed'], history, run['status'])
    if not any(history for _, history, _ in curves.values()):
        return ['sweep.png']
    seeds = sorted({seed for seed, _, _ in curves.values()})
    title = (f"test loss and accuracy at batch size {batch_size}, one line per learning rate "
             f"(seed {', '.join(map(str, seeds))}; {what})")
    plots.save_figure(plots_sweep.plot_sweep_curves({lr: (history, status) for lr, (_, history, status) in curves.items()},
                                              title), os.path.join(sweep.out, 'sweep_curves.png'))
    return ['sweep.png', 'sweep_curves.png']


def write_sweep_json(sweep, device, status, trained, started):
    """sweep.json: the sweep's configuration and the recipe's settings each run shares, and how it went."""
    info = dict(status=status, config=dataclasses.asdict(sweep), recipe_settings=train.RECIPES[sweep.recipe],
                runs_in_grid=len(sweep.grid()), runs_trained_now=trained,
                wall_seconds=time.perf_counter() - started,
                **(train.environment(device) if device is not None else {}))
    write_text(os.path.join(sweep.out, 'sweep.json'), json.dumps(info, indent=2) + '\n')


def main(argv=None):
    sweep = parse_config(argv)  # bad flags: one line naming the flag, exit 2
    check_out_dir(sweep.out)
    cli.lock_out_dir(sweep.out)  # a second sweep into the same folder would interleave sweep.csv
    csv_path = os.path.join(sweep.out, 'sweep.csv')
    rows = read_sweep_csv(csv_path)  # refused before anything in the folder changes
    grid = sweep.grid()
    todo = [key for key in grid if key not in rows]
    print(f"sweep: {count(len(grid), 'run')} ({count(len(sweep.lr), 'learning rate')} x "
          f"{count(len(sweep.batch_size), 'batch size')} x {count(sweep.seeds, 'seed')}, "
          f"{count(sweep.epochs, 'epoch')}, {sweep.recipe} recipe, {sweep.loss} loss): "
          f"{len(grid) - len(todo)} already in {csv_path}, {len(todo)} to train", flush=True)
    import matplotlib.figure  # noqa: F401 -- imported now, not half-way through an interrupted save
    started = time.perf_counter()
    device, before, code = None, len(rows), 0
    try:
        if todo:
            device = train.resolve_device(sweep.device)
            datasets = data.load_fashion_mnist(sweep.data_dir, device)
            write_sweep_json(sweep, device, 'running', 0, started)
            train_grid(sweep, todo, rows, datasets, device)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    trained = len(rows) - before
    with cli.signals_ignored():  # a second Ctrl-C must not cut the figures short
        drawn = draw_figures(sweep, rows)
        if device is not None or code == 0:
            write_sweep_json(sweep, device, 'interrupted' if code else 'finished', trained, started)
    figures = f"; {' and '.join(drawn)} redrawn" if drawn else ''
    if code == EXIT_INTERRUPTED:
        cli.say(f"\ninterrupted: {count(trained, 'run')} finished this time, {len(rows)} in all kept in "
                f"{csv_path}{figures}")
        return code
    diverged = sum(rows[key]['status'] == 'diverged' for key in grid)
    best_key, best = best_run(sweep, rows)
    best_text = (f"best final test accuracy {best['final_test_acc']:.4f} at lr {format_number(best_key[0])}, "
                 f"batch {best_key[1]}, seed {best_key[2]}" if best_key else "no run finished")
    print(f"done: {count(len(grid), 'run')} ({trained} trained now, {diverged} diverged); {best_text}; "
          f"files in {sweep.out}/")
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
