"""A run's records: history.csv, metrics.json, model.pt, curves.png and the final figures; compare.json.

train.py trains; this module keeps what it trained (Run, and compare() for --compare), after every epoch,
each file whole (support/writing.py), so that an interruption, a divergence or a full disk leaves files
that describe one same finished epoch, and a status that says how it ended: 'finished', 'diverged',
'interrupted' or 'failed: cannot write ...'.
"""
import copy
import csv
import dataclasses
import io
import json
import os
import statistics
import time

import torch

import data
from losses import LOSSES, softmax
from support import cli, metrics
from helpers import plots
from support.steps import Diverged
from support.cli import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, OutputError
from support.writing import write_atomically, write_text

HISTORY_COLUMNS = ['epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'seconds']
OUTPUT_FILES = ['history.csv', 'curves.png', 'metrics.json', 'model.pt', 'predictions.png', 'weights.png',
                'confusion.png', 'confidence.png', 'compare.png', 'compare.json'] + [f"history_{loss}.csv" for loss in LOSSES]
CURVES_EVERY_SECONDS = 2.0  # curves.png is redrawn at most this often (and after the last epoch): no
                            # one reads a figure faster, and drawing it costs as much as an epoch


def epochs(count):
    """'1 epoch', '2 epochs'."""
    return f"{count} epoch{'' if count == 1 else 's'}"


# ----------------------------------------------------------------------------- the files of one epoch

def history_csv(history):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(HISTORY_COLUMNS)
    for row in history:
        writer.writerow([row['epoch']] + [f"{row[key]:.6f}" for key in HISTORY_COLUMNS[1:]])
    return buffer.getvalue()


def environment(device):
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    return dict(device=str(device), device_name=name, torch_version=str(torch.__version__),
                threads=torch.get_num_threads())


def save_checkpoint(path, model, config, history, calibration=None):
    """model.pt: the weights (on the CPU: loadable without a GPU), the run's Config, its last epoch and,
    once the run has ended, the test set's calibration (predict.py reads its 'threshold')."""
    state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    checkpoint = dict(model=state, inputs='pixels / 255, flattened to (n, 784)',  # also for --recipe tuned
                      config=dataclasses.asdict(config), epoch=history[-1]['epoch'],
                      test_acc=history[-1]['test_acc'], torch_version=str(torch.__version__))
    if calibration is not None:
        checkpoint['calibration'] = calibration
    write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))


def write_metrics(out, config, history, device, status, started, extra=None):
    seconds = [row['seconds'] for row in history]
    metrics_ = dict(status=status, epochs_completed=len(history),
                    final={key: history[-1][key] for key in HISTORY_COLUMNS[1:5]} if history else None,
                    seconds_per_epoch=seconds, median_seconds_per_epoch=statistics.median(seconds) if seconds else None,
                    threads_per_epoch=[row.get('threads') for row in history],
                    wall_seconds=time.perf_counter() - started,
                    config=dataclasses.asdict(config), **environment(device), **(extra or {}))
    write_text(os.path.join(out, 'metrics.json'), json.dumps(metrics_, indent=2) + '\n')


def write_curves(out, config, history):
    plots.save_figure(plots.plot_curves({config.loss: history},
                                        f"softmax regression, {config.recipe} recipe, {config.loss} loss"),
                      os.path.join(out, 'curves.png'))


@torch.no_grad()
def write_final_figures(out, model, test_images, test_labels):
    """predictions.png, weights.png, confusion.png and confidence.png from a model that takes X/255.

    Returns the test set's calibration (metrics.calibration: ECE over 15 bins of confidence, and the
    confidence threshold that reaches 95% accuracy), without its coverage curve, for metrics.json.
    """
    features = data.to_features(test_images)
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


def earlier_run_note(out, kept):
    """What to say about the folder when this run kept nothing of its own."""
    if kept:
        return f"{kept} finished {'epoch' if kept == 1 else 'epochs'} kept in {out}/"
    if any(os.path.exists(os.path.join(out, name)) for name in ('metrics.json', 'history.csv', 'model.pt')):
        return f"no epoch finished, so nothing was kept; the files in {out}/ are an earlier run's"
    return "no epoch finished, so nothing was kept"


# ----------------------------------------------------------------------------- one run

class Run:
    """A train.py run's files, kept current after every epoch and completed however the run ends:

        with records.Run(config, datasets, device) as run:
            for history, model in train(...):
                run.save(history, model)
        return run.exit_code      # 0 finished, 1 diverged, 2 a file could not be written, 130 interrupted

    save() replaces model.pt, history.csv and metrics.json ('running'), in that order (the largest first:
    a disk that fills stops the run before the small files get ahead of it), and redraws curves.png at
    most every CURVES_EVERY_SECONDS. Leaving the block, from the last saved epoch: the final figures,
    model.pt with the test set's calibration, then metrics.json with the run's status, 'finished',
    'diverged', 'interrupted' or 'failed: cannot write ...' (last: one that says 'finished' has every
    figure beside it); a Diverged, Ctrl-C or OutputError is reported in one line and not raised further.
    """

    def __init__(self, config, datasets, device):
        import matplotlib.figure  # noqa: F401 -- imported now, not half-way through an interrupted wrap-up
        self.config, self.test_images, self.test_labels, self.device = config, datasets[2], datasets[3], device
        self.started, self.next_curves = time.perf_counter(), time.monotonic() + CURVES_EVERY_SECONDS
        self.history, self.model, self.drawn = [], None, 0  # the last epoch whose three files were all written
        self.exit_code = None

    def __enter__(self):
        return self

    def save(self, history, model):
        out = self.config.out
        with cli.signals_deferred():  # the three files and the note of them go together
            save_checkpoint(os.path.join(out, 'model.pt'), model, self.config, history)
            write_text(os.path.join(out, 'history.csv'), history_csv(history))
            write_metrics(out, self.config, history, self.device, 'running', self.started)
            self.history, self.model = list(history), copy.deepcopy(model)
        if time.monotonic() >= self.next_curves:
            write_curves(out, self.config, history)
            self.drawn, self.next_curves = len(history), time.monotonic() + CURVES_EVERY_SECONDS
        cli.stop_if_requested()  # a Ctrl-C whose KeyboardInterrupt was swallowed while saving

    def __exit__(self, kind, error, traceback):
        config = self.config
        if kind is None:
            kept, note = self._wrap_up('finished')
            if note:
                cli.say(f"error: training finished, but its files are incomplete{note}; "
                        f"{earlier_run_note(config.out, kept)}")
                self.exit_code = EXIT_BAD_INPUT
            else:
                print(f"done: test accuracy {self.history[-1]['test_acc']:.4f} after {epochs(kept)}; "
                      f"median {statistics.median(row['seconds'] for row in self.history):.3f} s per epoch; "
                      f"files in {config.out}/")
                self.exit_code = 0
        elif issubclass(kind, Diverged):
            kept, note = self._wrap_up('diverged')
            hint = ("use a smaller --lr" if config.loss != 'naive'
                    else "use the stable loss (--loss scratch) or a smaller --lr")
            cli.say(f"error: training diverged at {error}; {hint} (lr was {config.lr:g}). "
                    f"{earlier_run_note(config.out, kept)}{note}")
            self.exit_code = EXIT_DIVERGED
        elif issubclass(kind, KeyboardInterrupt):
            kept, note = self._wrap_up('interrupted')
            cli.say(f"\ninterrupted: {earlier_run_note(config.out, kept)}{note}")
            self.exit_code = EXIT_INTERRUPTED
        elif issubclass(kind, OutputError):
            kept, note = self._wrap_up(f"failed: {error}")
            cli.say(f"error: {error}; {earlier_run_note(config.out, kept)}{note}")
            self.exit_code = EXIT_BAD_INPUT
        else:
            return False  # anything else is a bug: cli.run reports it
        return True

    def _wrap_up(self, status):
        """The final figures and files of the last saved epoch on disk, with `status`, each attempted even if
        one before it failed; returns (epochs kept, a note on what could not be written, or '')."""
        config, history, model, failures = self.config, self.history, self.model, []

        def attempt(write):
            try:
                return write()
            except OutputError as error:
                failures.append(error)
        with cli.signals_ignored():
            if not history:
                return 0, ''
            if self.drawn != len(history):
                attempt(lambda: write_curves(config.out, config, history))
            calibration = attempt(lambda: write_final_figures(config.out, model, self.test_images, self.test_labels))
            attempt(lambda: save_checkpoint(os.path.join(config.out, 'model.pt'), model, config, history,
                                            calibration))
            if failures and not status.startswith('failed'):
                status = f"failed: {failures[0]} (training itself {status})"
            metrics_written = attempt(lambda: write_metrics(config.out, config, history, self.device, status,
                                                            self.started, calibration and {'calibration': calibration})
                                      or True)
        note = f"; {failures[0]}" if failures else ''
        if not metrics_written:
            note += "; metrics.json could not be updated and still says 'running'"
        return len(history), note


def compare(config, datasets, device, train, initial):
    """Train a copy of the model `initial` once per loss with train.py's train(), in the same order of batches;
    overlay the curves in compare.png, each history in history_<loss>.csv, the outcome in compare.json.
    Returns the exit code."""
    started = time.perf_counter()
    histories, diverged, code = {}, {}, 0
    try:
        for loss in LOSSES:
            print(f"--- loss: {loss}")
            history_path = os.path.join(config.out, f"history_{loss}.csv")
            write_text(history_path, history_csv([]))  # a header, until the first epoch is done
            try:
                for history, _ in train(dataclasses.replace(config, loss=loss), copy.deepcopy(initial), datasets,
                                        device):
                    histories[loss] = list(history)  # first: what the wrap-up below writes again, whole
                    write_text(history_path, history_csv(history))
            except Diverged as error:
                diverged[loss] = str(error)
                kept = len(histories.get(loss, []))
                print(f"{loss} loss diverged at {error}; its finished epochs ({kept}) are in {history_path}")
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
        "no loss finished an epoch, so no compare.png was drawn"
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
