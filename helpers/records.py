"""A run's records: history.csv, metrics.json, model.pt (saved and loaded), the final figures, compare.json.

train.py trains; this module keeps what it trained. run() and compare() call train.py's train() and
write after every epoch, each file whole (cli.write_atomically), so that an interruption, a divergence
or a full disk leaves files that describe one same finished epoch, and a status that says how it ended:
'finished', 'diverged', 'interrupted' or 'failed: cannot write ...'.
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
from support.cli import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, OutputError, write_atomically, write_text

HISTORY_COLUMNS = ['epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'seconds']
OUTPUT_FILES = ['history.csv', 'curves.png', 'metrics.json', 'model.pt', 'predictions.png', 'weights.png',
                'confusion.png', 'confidence.png', 'compare.png', 'compare.json'] + [f"history_{loss}.csv" for loss in LOSSES]
CURVES_EVERY_SECONDS = 2.0  # curves.png is redrawn at most this often (and after the last epoch): no
                            # one reads a figure faster, and drawing it costs as much as an epoch


class Diverged(Exception):
    """The loss became nan or inf: at `step` (a number, or a phrase such as 'evaluation on the test set')
    of `epoch`, with the value `loss`."""

    def __init__(self, epoch, step, loss):
        where = f"step {step}" if isinstance(step, int) else step
        super().__init__(f"epoch {epoch}, {where}: loss is {loss}")
        self.epoch, self.step, self.loss = epoch, step, loss


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

def run(config, datasets, device, train, model):
    """Train `model` with train(config, model, datasets, device, on_epoch) and keep its files current;
    returns the exit code: 0 finished, 1 diverged, 2 a file could not be written, 130 interrupted.

    After every epoch model.pt, history.csv and metrics.json ('running') are replaced, in that order (the
    largest first: a disk that fills stops the run before the small files get ahead of it). At the end,
    from the last epoch all three hold: the final figures, model.pt with the test set's calibration, then
    metrics.json with the run's status (last: one that says 'finished' has every figure beside it).
    """
    started = time.perf_counter()
    written = dict(history=[], model=None, drawn=0)  # the last epoch whose three files were all written
    next_curves = time.monotonic() + CURVES_EVERY_SECONDS

    def on_epoch(history, model_):
        nonlocal next_curves
        with cli.signals_deferred():  # the three files and the note of them go together
            save_checkpoint(os.path.join(config.out, 'model.pt'), model_, config, history)
            write_text(os.path.join(config.out, 'history.csv'), history_csv(history))
            write_metrics(config.out, config, history, device, 'running', started)
            written.update(history=list(history), model=copy.deepcopy(model_))
        if time.monotonic() >= next_curves:
            write_curves(config.out, config, history)
            written['drawn'], next_curves = len(history), time.monotonic() + CURVES_EVERY_SECONDS

    def wrap_up(status):
        """The final figures and files of the last epoch on disk, with `status`, each attempted even if
        one before it failed; returns (epochs kept, a note on what could not be written, or '')."""
        history, model_, failures = written['history'], written['model'], []

        def attempt(write):
            try:
                return write()
            except OutputError as error:
                failures.append(error)
        with cli.signals_ignored():
            if not history:
                return 0, ''
            if written['drawn'] != len(history):
                attempt(lambda: write_curves(config.out, config, history))
            calibration = attempt(lambda: write_final_figures(config.out, model_, datasets[2], datasets[3]))
            attempt(lambda: save_checkpoint(os.path.join(config.out, 'model.pt'), model_, config, history,
                                            calibration))
            if failures and not status.startswith('failed'):
                status = f"failed: {failures[0]} (training itself {status})"
            metrics_written = attempt(lambda: write_metrics(config.out, config, history, device, status, started,
                                                            calibration and {'calibration': calibration})
                                      or True)
        note = f"; {failures[0]}" if failures else ''
        if not metrics_written:
            note += "; metrics.json could not be updated and still says 'running'"
        return len(history), note

    try:
        history = train(config, model, datasets, device, on_epoch)
        kept, note = wrap_up('finished')  # inside the try: a Ctrl-C landing before it still gets a wrap-up
    except Diverged as diverged:
        kept, note = wrap_up('diverged')
        hint = ("use a smaller --lr" if config.loss != 'naive'
                else "use the stable loss (--loss scratch) or a smaller --lr")
        cli.say(f"error: training diverged at {diverged}; {hint} (lr was {config.lr:g}). "
                f"{earlier_run_note(config.out, kept)}{note}")
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        kept, note = wrap_up('interrupted')
        cli.say(f"\ninterrupted: {earlier_run_note(config.out, kept)}{note}")
        return EXIT_INTERRUPTED
    except OutputError as error:
        kept, note = wrap_up(f"failed: {error}")
        cli.say(f"error: {error}; {earlier_run_note(config.out, kept)}{note}")
        return EXIT_BAD_INPUT
    if note:
        cli.say(f"error: training finished, but its files are incomplete{note}; "
                f"{earlier_run_note(config.out, kept)}")
        return EXIT_BAD_INPUT
    print(f"done: test accuracy {history[-1]['test_acc']:.4f} after {epochs(len(history))}; "
          f"median {statistics.median(row['seconds'] for row in history):.3f} s per epoch; "
          f"files in {config.out}/")
    return 0


def compare(config, datasets, device, train, initial):
    """Train a copy of the model `initial` once per loss, in the same order of batches; overlay the curves
    in compare.png, each history in history_<loss>.csv, the outcome in compare.json. Returns the exit code."""
    started = time.perf_counter()
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
