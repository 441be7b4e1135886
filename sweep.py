"""The chapter's hyperparameter exercises answered by one command (d2l 3.7 exercises 1-2): train a grid of
learning rates x batch sizes x seeds and draw what the reader should compare.

    python sweep.py                                       lr 0.01 .. 1 x batch 32 .. 1024, 10 epochs, seed 0
    python sweep.py --lr 0.1 1 --batch-size 256 --epochs 50   what many more epochs do to test accuracy
    python sweep.py --seeds 3                             every cell three times: mean +- std

Every (lr, batch size, seed) is one run of train.py's own training, in this process on data loaded once:
a row here and `python train.py --lr LR --batch-size N --epochs E --seed S` have the same history. In --out:

    sweep.csv          one row per finished run (finished or diverged), rewritten whole after every run
    history_*.csv      each run's per-epoch history, train.py's columns; the name says which run it is
    sweep.png          final test accuracy, learning rate against batch size, best cell outlined
    sweep_curves.png   test loss and accuracy against epoch, one line per learning rate, at batch 256
    sweep.json         this sweep's configuration, the recipe's settings, device, status

sweep.csv is the record: running the command again trains only the runs (lr, batch size, seed, epochs,
recipe, loss) not yet in it, so a grid grows by running it again with more values. Ctrl-C keeps every
finished run and redraws the figures; a grid of over 10,000 runs or a day's training needs --yes.
"""
import os
import sys

import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli, writing

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import collections
import csv
import dataclasses
import io
import json
import math
import time

import torch

import data
import train
from helpers import plots_sweep, records
from support.steps import Diverged
from support.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, InputError, OutputError
from support.writing import write_text

DEFAULT_LRS = [0.01, 0.03, 0.1, 0.3, 1.0]
DEFAULT_BATCH_SIZES = [32, 64, 256, 1024]
MAX_SEEDS = 1000

KEY_COLUMNS = ['lr', 'batch_size', 'seed', 'epochs', 'recipe', 'loss']  # what makes two runs the same run
RESULT_COLUMNS = ['final_train_loss', 'final_test_loss', 'final_test_acc', 'best_test_acc', 'best_epoch', 'seconds']
SWEEP_COLUMNS = KEY_COLUMNS + ['status'] + RESULT_COLUMNS
STATUSES = ('finished', 'diverged')
MAX_CSV_BYTES = 64 * 2**20  # ~400,000 rows: far more than any grid
OUTPUT_FILES = ['sweep.csv', 'sweep.json', 'sweep.png', 'sweep_curves.png']
MAX_RUNS, MAX_SECONDS = 10_000, 24 * 3600  # a larger grid is refused unless --yes: a typo, not a plan
# An epoch's time (evaluation, bookkeeping) + each step's, at the fast end of a 2-core AMD EPYC: errs short
SECONDS_PER_EPOCH, SECONDS_PER_STEP = 0.5, 0.0004


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
    yes: bool = False  # train the grid even if it is huge

    def run_config(self, lr, batch_size, seed):
        """The train.Config of one run: the recipe's defaults overridden by the run's values, exactly what
        `python train.py --recipe R --loss L --lr LR --batch-size N --epochs E --seed S --device D` builds."""
        return train.Config(**{**train.RECIPES[self.recipe], 'lr': lr, 'batch_size': batch_size,
                               'epochs': self.epochs, 'seed': seed, 'loss': self.loss, 'recipe': self.recipe,
                               'device': self.device, 'data_dir': self.data_dir, 'out': self.out})

    def grid(self):
        """Every run's key, one at a time; seed 0's whole grid first (an early Ctrl-C leaves a picture)."""
        return ((lr, batch_size, seed, self.epochs, self.recipe, self.loss)
                for seed in range(self.seeds) for batch_size in self.batch_size for lr in self.lr)

    def size(self):
        return len(self.lr) * len(self.batch_size) * self.seeds

    def done(self, rows):
        """The keys of `rows` (sweep.csv's runs) that are runs of this grid."""
        lrs, sizes = set(self.lr), set(self.batch_size)
        return [key for key in rows if self.matches(key) and key[0] in lrs and key[1] in sizes and key[2] < self.seeds]

    def matches(self, key):
        """Whether a run of sweep.csv belongs in this sweep's figures: the same epochs, recipe and loss."""
        return key[3:] == (self.epochs, self.recipe, self.loss)


# ----------------------------------------------------------------------------- command line

def build_parser():
    parser = cli.ArgumentParser(
        description="Train softmax regression on Fashion-MNIST for every learning rate x batch size x seed, "
                    "as train.py does, and draw the final test accuracies and the learning curves.",
        epilog="Runs already in DIR/sweep.csv are not trained again. Exit codes: 0 every run finished or "
               "diverged, 2 bad input or a file that cannot be written, 130 interrupted (finished runs kept).")
    # 'extend': `--lr 0.1 --lr 0.3` means both values, not only the last
    parser.add_argument('--lr', type=cli.positive_float32, nargs='+', action='extend', metavar='LR',
                        help="learning rates (default: %s)" % ' '.join(f"{lr:g}" for lr in DEFAULT_LRS))
    parser.add_argument('--batch-size', type=train_flag('--batch-size'), nargs='+', action='extend', metavar='N',
                        help="batch sizes (default: %s)" % ' '.join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument('--epochs', type=train_flag('--epochs'), default=10, metavar='N',
                        help="epochs of every run, whatever the recipe (default: %(default)s)")
    parser.add_argument('--seeds', type=cli.whole_number(1, MAX_SEEDS + 1), default=1, metavar='K',
                        help="train every cell with seeds 0 .. K-1 (default: %(default)s)")
    parser.add_argument('--recipe', choices=sorted(train.RECIPES), default='textbook',
                        help="train.py's recipe, but for lr, batch size and epochs (default: %(default)s)")
    parser.add_argument('--loss', choices=sorted(train.LOSSES), default='scratch',
                        help="cross-entropy implementation, as in train.py (default: %(default)s)")
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                        help="where to train; auto picks CUDA when available (default: %(default)s)")
    parser.add_argument('--data-dir', type=cli.non_empty, metavar='DIR',
                        help=f"folder with the four Fashion-MNIST IDX files; default: ${data.ENV_VAR}, "
                             f"./data/FashionMNIST/raw, {data.DEBIAN_DIR}, else download")
    parser.add_argument('--out', type=cli.non_empty, default='outputs/sweep', metavar='DIR',
                        help="where sweep.csv, the histories and the figures go (default: %(default)s)")
    parser.add_argument('--yes', action='store_true', help=f"train a grid of over {MAX_RUNS:,} runs to train "
                        f"or an estimated {MAX_SECONDS // 3600} hours of training, refused without it")
    return parser


def train_flag(flag):
    """train.py's argparse type of `flag`: a value train.py refuses is refused here too."""
    return next(action.type for action in train.build_parser()._actions if flag in action.option_strings)


def parse_config(argv=None):
    """The sweep's flags as a SweepConfig. A value given twice is run once (and said so); the grid is sorted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.lr, args.batch_size = args.lr or DEFAULT_LRS, args.batch_size or DEFAULT_BATCH_SIZES
    for flag, values in (('--lr', args.lr), ('--batch-size', args.batch_size)):
        repeated = sorted(value for value, times in collections.Counter(values).items() if times > 1)
        if repeated:
            print(f"note: {flag} {' '.join(format_number(value) for value in repeated)} given more than once; "
                  f"each value is run once")
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for but this machine has no usable CUDA device "
                     "(use --device cpu or auto)")
    return SweepConfig(lr=sorted(set(args.lr)), batch_size=sorted(set(args.batch_size)), epochs=args.epochs,
                       seeds=args.seeds, recipe=args.recipe, loss=args.loss, device=args.device,
                       data_dir=args.data_dir, out=args.out, yes=args.yes)


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
            lines = list(csv.reader(f))
    except UnicodeDecodeError:
        refuse("it is not text")
    except csv.Error as error:
        refuse(f"not a CSV file: {error}")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    if not lines:
        refuse("it is empty")
    if lines[0] != SWEEP_COLUMNS:
        refuse(f"its header is {','.join(lines[0])[:80]!r}, expected {','.join(SWEEP_COLUMNS)!r}")
    rows = {}
    for line, record in enumerate(lines[1:], start=2):
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

    key = (number('lr', float, cli.FLOAT32_TINY), number('batch_size', int, 1), number('seed', int, 0), number('epochs', int, 1),
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
            return [dict(row, epoch=int(row['epoch']), **{key: float(row[key]) for key in records.HISTORY_COLUMNS[1:]})
                    for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return None


def outputs(out):
    """The files of --out a sweep may replace: its own four and the histories already there."""
    return OUTPUT_FILES + [name for name in (os.listdir(out) if os.path.isdir(out) else []) if name.startswith('history_')]


def duration(seconds):
    """'about 3 hours', 'about 12 days', 'about 2,283 years'."""
    unit, size = next((unit, size) for unit, size in (('year', 365 * 86400), ('day', 86400), ('hour', 3600),
                                                      ('minute', 60), ('second', 1)) if seconds >= 2 * size or size == 1)
    return f"about {seconds / size:,.0f} {unit}s"


def check_grid_size(sweep, rows):
    """Refuse (InputError) a grid whose runs still to train are more than MAX_RUNS or, by a short estimate,
    MAX_SECONDS of training, unless --yes: counted without listing the runs, which may be billions."""
    done = collections.Counter(key[1] for key in sweep.done(rows))  # per batch size
    todo = {batch_size: len(sweep.lr) * sweep.seeds - done[batch_size] for batch_size in sweep.batch_size}
    runs, seconds = sum(todo.values()), sum(n * sweep.epochs * (SECONDS_PER_EPOCH + math.ceil(
        60_000 / batch_size) * SECONDS_PER_STEP) for batch_size, n in todo.items())
    if not sweep.yes and (runs > MAX_RUNS or seconds > MAX_SECONDS):
        raise InputError(f"this grid has {runs:,} runs to train ({shape(sweep)}): {duration(seconds)} of training "
                         f"at {SECONDS_PER_EPOCH:g} s per epoch + {SECONDS_PER_STEP * 1000:g} ms per step (a 2-core "
                         f"CPU's pace), over the {MAX_RUNS:,} runs or {MAX_SECONDS // 3600} hours a sweep trains "
                         f"unasked; narrow it, or add --yes to train it anyway")
    return runs


# ----------------------------------------------------------------------------- training

def train_run(config, datasets, device):
    """One run, train.py's training: returns (history of the finished epochs, status, seconds, why it diverged)."""
    started = time.perf_counter()
    history, status, why = [], 'finished', None
    try:
        for history, _ in train.train(config, train.new_model(config, device), datasets, device):
            pass
    except Diverged as error:  # raised before the diverged epoch joins the history
        status, why = 'diverged', str(error)
    return list(history), status, time.perf_counter() - started, why


def summary(history, status, seconds):
    """A run's row of sweep.csv from its history (the final epoch and the best test accuracy)."""
    last = history[-1] if history else {}
    best = max(history, key=lambda epoch: epoch['test_acc'], default={})  # the first epoch that reached it
    return dict(status=status, seconds=seconds, final_train_loss=last.get('train_loss'),
                final_test_loss=last.get('test_loss'), final_test_acc=last.get('test_acc'),
                best_test_acc=best.get('test_acc'), best_epoch=best.get('epoch'))


def best_run(sweep, rows):
    """(key, row) of the finished run of this sweep's epochs/recipe/loss with the best final test accuracy."""
    finished = [(key, row) for key, row in rows.items()
                if sweep.matches(key) and row['status'] == 'finished' and row['final_test_acc'] is not None]
    return max(finished, key=lambda item: item[1]['final_test_acc'], default=(None, None))


def count(n, thing):
    return f"{n} {thing}{'' if n == 1 else 's'}"


def shape(sweep):
    return (f"{count(len(sweep.lr), 'learning rate')} x {count(len(sweep.batch_size), 'batch size')} x "
            f"{count(sweep.seeds, 'seed')}, {count(sweep.epochs, 'epoch')}")


def describe(key):
    return f"lr {format_number(key[0])} batch {key[1]} seed {key[2]}"


def train_grid(sweep, todo, total, rows, datasets, device):
    """Train the `total` runs of `todo` one after another; after each, its history file and sweep.csv are
    written (OutputError when they cannot be)."""
    from tqdm import tqdm
    csv_path = os.path.join(sweep.out, 'sweep.csv')
    with tqdm(todo, total=total, desc='sweep', unit='run', disable=None, dynamic_ncols=True) as bar:
        for index, key in enumerate(bar, start=1):
            bar.set_description(describe(key))
            history, status, seconds, why = train_run(sweep.run_config(*key[:3]), datasets, device)
            # Both files or neither: Ctrl-C here waits until sweep.csv holds the row (a history file
            # without its row is harmless: the run is trained again and the file replaced).
            with cli.signals_deferred():
                write_text(os.path.join(sweep.out, history_name(key)), records.history_csv(history))
                row = summary(history, status, seconds)
                write_text(csv_path, sweep_csv({**rows, key: row}))
                rows[key] = row  # once in the record, not before
            result = (f"test acc {history[-1]['test_acc']:.4f}" if status == 'finished' else
                      f"diverged at {why}, {count(len(history), 'finished epoch')} kept")
            bar.write(f"[{index}/{total}] {describe(key)}: {result}  ({seconds:.1f} s)")
            sys.stdout.flush()  # one line per run, as it happens, also into a pipe or a log file
            best_key, best = best_run(sweep, rows)
            if best_key:
                bar.set_postfix_str(f"best {best['final_test_acc']:.4f} at lr {format_number(best_key[0])} "
                                    f"batch {best_key[1]}")


# ----------------------------------------------------------------------------- figures and files

def draw_figures(sweep, rows, attempt):
    """sweep.png and sweep_curves.png, each saved through attempt(save, name), from every run in sweep.csv
    with this sweep's epochs, recipe and loss (a grid extended by an earlier command is drawn whole)."""
    runs = [dict(zip(KEY_COLUMNS, key), **row) for key, row in rows.items() if sweep.matches(key)]
    if runs:
        plots_sweep.save_sweep_figures(
            runs, f"{sweep.recipe} recipe, {sweep.loss} loss, {count(sweep.epochs, 'epoch')}", sweep.out, attempt,
            lambda run: read_history(os.path.join(sweep.out, history_name(tuple(run[key] for key in KEY_COLUMNS)))))


def write_sweep_json(sweep, device, status, trained, started):
    """sweep.json: the sweep's configuration and the recipe's settings each run shares, and how it went:
    'running', then 'finished', 'interrupted' or 'failed: cannot write ...'."""
    info = dict(status=status, config=dataclasses.asdict(sweep), recipe_settings=train.RECIPES[sweep.recipe],
                runs_in_grid=sweep.size(), runs_trained_now=trained, wall_seconds=time.perf_counter() - started,
                **(records.environment(device) if device is not None else {}))
    write_text(os.path.join(sweep.out, 'sweep.json'), json.dumps(info, indent=2) + '\n')


def main(argv=None):
    sweep = parse_config(argv)  # bad flags: one line naming the flag, exit 2
    csv_path = os.path.join(sweep.out, 'sweep.csv')
    check_grid_size(sweep, read_sweep_csv(csv_path))  # before anything is written
    writing.prepare_out_dir(sweep.out, outputs(sweep.out))  # and locked: another sweep would interleave sweep.csv
    rows = read_sweep_csv(csv_path)  # again, under the lock; refused before anything in the folder changes
    total = check_grid_size(sweep, rows)
    print(f"sweep: {count(sweep.size(), 'run')} ({shape(sweep)}, {sweep.recipe} recipe, {sweep.loss} loss): "
          f"{sweep.size() - total} already in {csv_path}, {total} to train", flush=True)
    import matplotlib.figure  # noqa: F401 -- imported now, not half-way through an interrupted save
    started = time.perf_counter()
    device, before, code, failures, written = None, len(rows), 0, [], []
    try:
        if total:
            device = train.resolve_device(sweep.device)
            datasets = data.load_fashion_mnist(sweep.data_dir, device)
            write_sweep_json(sweep, device, 'running', 0, started)
            train_grid(sweep, (key for key in sweep.grid() if key not in rows), total, rows, datasets, device)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except OutputError as error:  # a full disk: the wrap-up below is still attempted
        failures.append(error)
    trained = len(rows) - before

    def attempt(save, name):  # each file of the wrap-up is attempted, whatever happened to the one before
        try:
            save()
            written.append(name)
        except OutputError as error:
            failures.append(error)
    with cli.signals_ignored():  # a second Ctrl-C must not cut the figures short
        draw_figures(sweep, rows, attempt)
        status = f"failed: {failures[0]}" if failures else 'interrupted' if code else 'finished'
        if device is not None or code == 0:
            attempt(lambda: write_sweep_json(sweep, device, status, trained, started), 'sweep.json')
    figures = ' and '.join(name for name in written if name.endswith('.png'))
    kept = f"{count(trained, 'run')} finished this time, {len(rows)} in all kept in {csv_path}" + \
        (f"; {figures} redrawn" if figures else '')
    if failures:
        stale = '' if 'sweep.json' in written or device is None else "; sweep.json still says 'running'"
        cli.say(f"error: {failures[0]}; {kept}{stale if len(failures) > 1 else ''}")
        return EXIT_BAD_INPUT
    if code == EXIT_INTERRUPTED:
        cli.say(f"\ninterrupted: {kept}")
        return code
    diverged = sum(rows[key]['status'] == 'diverged' for key in sweep.done(rows))
    best_key, best = best_run(sweep, rows)
    best_text = (f"best final test accuracy {best['final_test_acc']:.4f} at lr {format_number(best_key[0])}, "
                 f"batch {best_key[1]}, seed {best_key[2]}" if best_key else "no run finished")
    print(f"done: {count(sweep.size(), 'run')} ({trained} trained now, {diverged} diverged); {best_text}; "
          f"files in {sweep.out}/")
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
