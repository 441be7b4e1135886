"""The process contract, tested once over every script at the root, and the faults at its edges: exit codes,
one-line errors, --help, signals while starting or landing anywhere, closed or full streams, files that
cannot be written, folders that two runs want at once; then train.py's own errors and interruptions.

A script is started as a process only where the process boundary is the point, twice: once sent a stop
signal while it starts, once with a stream that fails. Each start imports torch (seconds of CPU), so the
three stop signals and the three stream faults rotate over the scripts (the table CONTRACT), each one
covered by two scripts or more; everything else runs in this process, through cli.run as __main__ does."""
import importlib
import json
import os
import shutil
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import losses
import train
from common import (PNG_SIGNATURE, ROOT, assert_one_line_error, finish, handlers_installed, no_temporary_files,
                    read_csv, root_scripts, send_when, start, torch_is_loading)
from support import cli, writing
from helpers import records
from model import SoftmaxRegression


SCRIPTS = root_scripts()
STOPS = {'ctrl-c': signal.SIGINT, 'kill': signal.SIGTERM, 'terminal closed': getattr(signal, 'SIGHUP', None)}
POSIX = os.name == 'posix'  # sh for redirections, /proc to watch a process, SIGHUP, FIFOs, chattr
FAULTS = {  # how a stream fails -> how the script is started, what the one note on stderr says
    'stdout full': ('> /dev/full', 'No space left on device'),  # its output redirected to a full disk
    'stdout closed': ('', 'Broken pipe'),  # `| head -c 0`: the reader is gone before the first line
    'stderr closed': ('2>&-', None),  # and given a bad flag: the exit code is all that tells
}
CONTRACT = {  # script: (the stop sent while it starts, the stream that fails in its tiny real run, that run's
    # arguments, the files it writes in OUT); MODEL and IMAGE are a checkpoint and a photo made for it
    'bench.py': ('ctrl-c', 'stderr closed', '--help', ''),  # its smallest real run: 30 s of CPU (test_bench.py)
    'concise.py': ('ctrl-c', 'stdout closed', '--epochs 1 --out OUT', 'history.csv'),
    'data.py': ('kill', 'stdout closed', '', ''),
    'exercises.py': ('terminal closed', 'stderr closed', '3.4.2 --out OUT', ''),
    'losses.py': ('ctrl-c', 'stdout full', '--out OUT', 'stability.png'),
    'model.py': ('kill', 'stdout closed', 'MODEL', ''),
    'predict.py': ('terminal closed', 'stdout closed', 'IMAGE --model MODEL --out OUT', 'predict.png'),
    'sweep.py': ('terminal closed', 'stdout full', '--lr 0.1 --batch-size 1024 --epochs 1 --out OUT',
                 'sweep.csv sweep.json sweep.png sweep_curves.png'),
    'train.py': ('kill', 'stdout full', '--epochs 1 --out OUT', 'history.csv metrics.json model.pt confusion.png'),
}


def tiny_run(script, out, assets):
    """The arguments of `script`'s tiny real run, writing into `out`; none for a script not in CONTRACT."""
    places = dict(OUT=str(out), MODEL=assets['model'], IMAGE=assets['image'])
    return [places.get(arg, arg) for arg in CONTRACT.get(script, ('', '', ''))[2].split()]


def without_help(args):
    return [arg for arg in args if arg != '--help']


def scripts_whose(column, *values):
    return [script for script in SCRIPTS if CONTRACT.get(script, (None, None))[column] in values]


def stop_while_starting(script, args, sig, folder):
    """(exit code, stdout, stderr) of `script ARGS` sent `sig` as soon as cli.start() has run and, for a
    script that imports torch itself, torch's libraries are loading."""
    with open(os.path.join(ROOT, script), encoding='utf-8') as f:
        imports_torch = '\nimport torch' in f.read()
    return send_when(start(script, *args, cwd=folder), sig,
                     lambda pid: handlers_installed(pid) and (not imports_torch or torch_is_loading(pid)))


def with_a_failing_stream(script, args, fault, folder):
    """(exit code, stdout, stderr) of `script ARGS` with the stream of `fault` failing; a bad flag added
    where stderr is closed."""
    if fault == 'stdout closed':
        process = start(script, *args, cwd=folder)
        process.stdout.close()
        err = process.stderr.read()
        return process.wait(timeout=300), '', err
    if fault == 'stderr closed':
        args = [*without_help(args), '--no-such-flag']
    return finish(start(script, *args, cwd=folder, shell_suffix=FAULTS[fault][0]))


@pytest.fixture(scope='module')
def assets(tmp_path_factory, fashion_mnist):
    folder = tmp_path_factory.mktemp('assets')
    torch.save({'model': SoftmaxRegression().state_dict(), 'config': {'recipe': 'textbook', 'loss': 'scratch'},
                'epoch': 1}, folder / 'model.pt')
    Image.fromarray(fashion_mnist[2][0].reshape(28, 28).numpy()).save(folder / 'item.png')
    return dict(model=str(folder / 'model.pt'), image=str(folder / 'item.png'))


@pytest.fixture(scope='module')
def runs(tmp_path_factory, assets):
    """Every script started as CONTRACT says, three processes at a time, each in an empty folder of its own:
    {(script, 'stop' or 'fault'): (exit code, stdout, stderr, the folder)}."""
    if not os.path.exists(f'/proc/{os.getpid()}/status'):
        pytest.skip("watching a script start needs /proc (Linux), and its redirections sh")
    base = tmp_path_factory.mktemp('contract')

    def run(job):
        (script, case), folder = job, base / '-'.join(job)
        folder.mkdir()
        (stop, fault, *_), args = CONTRACT[script], tiny_run(script, folder / 'out', assets)
        if case == 'stop':
            return (*stop_while_starting(script, args, STOPS[stop], str(folder)), folder)
        return (*with_a_failing_stream(script, args, fault, str(folder)), folder)
    jobs = [(script, case) for case in ('stop', 'fault') for script in SCRIPTS if script in CONTRACT]
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(jobs, pool.map(run, jobs)))


def test_every_script_has_a_row_in_the_contract():
    assert [script for script in SCRIPTS if script not in CONTRACT] == [], \
        "add the script to CONTRACT in this file: the stop and the stream fault it gets, and its tiny real run"


def test_each_stop_and_each_stream_fault_is_covered_by_two_scripts_or_more():
    for column, cases in enumerate((STOPS, FAULTS)):
        for case in cases:
            assert len(scripts_whose(column, case)) >= 2, case


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_is_usage_on_stdout_and_a_bad_flag_one_line_naming_it(script, assets, tmp_path, monkeypatch, capsys):
    """In this process: argparse's messages through cli.run, as the script's own main() gives them."""
    main = importlib.import_module(script[:-3]).main
    monkeypatch.setattr(sys, 'argv', [os.path.join(ROOT, script)])  # argparse's program name
    assert cli.run(main, ['--help']) == 0
    out, err = capsys.readouterr()
    assert err == '' and out.startswith(f"usage: {script}")
    assert cli.run(main, [*without_help(tiny_run(script, tmp_path / 'out', assets)), '--no-such-flag']) == 2
    out, err = capsys.readouterr()
    assert out == '' and not (tmp_path / 'out').exists()
    assert_one_line_error(err, f"{script}: error: unrecognized arguments: --no-such-flag (see {script} --help)")


@pytest.mark.parametrize('script', SCRIPTS)
def test_a_stop_signal_while_starting_is_exit_130_and_one_line(runs, script):
    skip_if_ignored(STOPS[CONTRACT[script][0]])
    code, out, err, folder = runs[script, 'stop']
    assert code == 130, (code, err)
    assert_one_line_error(err, 'interrupted')
    assert out == '' and os.listdir(folder) == []  # nothing written, not even the output folder


@pytest.mark.parametrize('script', scripts_whose(1, 'stderr closed'))
def test_bad_input_with_stderr_closed_is_still_exit_2(runs, script):
    code, out, err, folder = runs[script, 'fault']
    assert (code, out, err) == (2, '', '') and os.listdir(folder) == []  # the line went nowhere, not into a file


@pytest.mark.parametrize('script', scripts_whose(1, 'stdout full', 'stdout closed'))
def test_a_stdout_that_fails_loses_nothing_keeps_the_exit_code_and_says_so(runs, script):
    fault = CONTRACT[script][1]
    if fault == 'stdout full' and not os.path.exists('/dev/full'):
        pytest.skip("no /dev/full on this system")
    code, _, err, folder = runs[script, 'fault']
    assert code == 0 and 'Traceback' not in err and 'Warning' not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"note: standard output could not be written ({FAULTS[fault][1]})"), lines
    for name in CONTRACT[script][3].split():
        assert (folder / 'out' / name).stat().st_size > 0, name
    if script == 'train.py':  # the run went on to its end
        assert json.loads((folder / 'out' / 'metrics.json').read_text())['status'] == 'finished'
    assert set(os.listdir(folder)) <= {'out'}  # nothing but what was asked for


# ------------------------------------------------------------------ train.py: bad input, in this process

BAD_FLAGS = {'zero epochs': ['--epochs', '0'], 'epochs by the billion': ['--epochs', '9' * 23],
             'nan lr': ['--lr', 'nan'], 'inf lr': ['--lr', 'inf'], 'word lr': ['--lr', 'fast'],
             'zero lr': ['--lr', '0'], 'negative lr': ['--lr', '-0.1'], 'lr over float32': ['--lr', '3.5e38'],
             'lr under float32': ['--lr', '1e-46'], 'zero batch': ['--batch-size', '0'],
             'fractional batch': ['--batch-size', '2.5'], 'batch over the training set': ['--batch-size', '60001'],
             'unknown loss': ['--loss', 'hinge'], 'unknown device': ['--device', 'tpu'],
             'unknown recipe': ['--recipe', 'fast'], 'huge seed': ['--seed', '9' * 23],
             'negative seed': ['--seed', '-1'], 'empty data dir': ['--data-dir', ''], 'empty out': ['--out', '']}


@pytest.mark.parametrize('case', BAD_FLAGS)
def test_a_bad_flag_of_train_py_names_the_flag(train_main, tmp_path, case):
    code, out, err = train_main('--out', tmp_path / 'never', *BAD_FLAGS[case])
    assert (code, out) == (2, '')
    assert_one_line_error(err, f"error: argument {BAD_FLAGS[case][0]}", '--help')
    assert not (tmp_path / 'never').exists()


def test_cuda_asked_for_without_cuda_is_a_clear_error(train_main, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is valid here")
    code, _, err = train_main('--out', tmp_path, '--device', 'cuda')
    assert code == 2
    assert_one_line_error(err, 'argument --device: cuda was asked for but this machine has no usable CUDA device')


@pytest.mark.parametrize('make_out', [lambda tmp: tmp / 'a-file' / 'outputs', lambda tmp: tmp / 'a-file',
                                      lambda tmp: '/proc/outputs-cannot-live-here', lambda tmp: tmp / 'dangling'],
                         ids=['under a file', 'a file', 'under /proc', 'a dangling link'])
def test_an_unusable_out_fails_before_training_starts(train_main, tmp_path, make_out, request):
    if not os.path.isdir('/proc') and 'proc' in request.node.callspec.id:
        pytest.skip("no /proc on this platform")
    (tmp_path / 'a-file').write_text('I am a file')
    try:
        (tmp_path / 'dangling').symlink_to(tmp_path / 'gone')
    except OSError:  # Windows lets only some users make links
        pytest.skip("links cannot be made here")
    code, out, err = train_main('--out', make_out(tmp_path), '--epochs', '1')
    assert code == 2 and 'epoch' not in out
    assert_one_line_error(err, 'error: ', str(make_out(tmp_path)))


def test_bad_data_is_one_line_naming_the_file_or_the_folder_and_exit_2(tmp_path, monkeypatch, capsys):
    real = data.find_data_dir(download=False)
    folder = tmp_path / 'fashion'
    folder.mkdir()
    for name in os.listdir(real):
        try:
            os.symlink(os.path.join(real, name), folder / name)
        except OSError:  # Windows lets only some users make links
            shutil.copy(os.path.join(real, name), folder / name)
    broken = next(name for name in os.listdir(folder) if name.startswith('t10k-labels'))
    os.remove(folder / broken)
    (folder / broken).write_bytes(b'<html><body>502 Bad Gateway</body></html>')
    assert cli.run(train.main, ['--data-dir', str(folder), '--out', str(tmp_path / 'out'), '--epochs', '1']) == 2
    assert_one_line_error(capsys.readouterr().err, 'error: ', broken)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / 'nowhere'))  # honoured, and checked
    assert cli.run(train.main, ['--out', str(tmp_path / 'out2'), '--epochs', '1']) == 2
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / 'nowhere'), 'does not exist', 'download')
    assert os.listdir(tmp_path / 'out') == os.listdir(tmp_path / 'out2') == []


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_first(train_main, tmp_path):
    writing.lock_out_dir(str(tmp_path))  # as a run does: this process is the other run, as far as the lock goes
    code, out, err = train_main('--out', tmp_path, '--epochs', '1')
    assert code == 2 and 'epoch' not in out
    holder = f" (process {os.getpid()})" if os.path.exists('/proc/locks') or writing.fcntl is None else ''
    assert_one_line_error(err, f"another run{holder} is writing to {tmp_path}{os.sep} right now; wait for it "
                               "to finish or choose another --out")
    assert os.listdir(tmp_path) == []  # the lock is on the folder itself: no .lock file


def test_divergence_is_one_line_with_a_hint_and_an_earlier_runs_files_stay_whole(train_main, tmp_path, finished_run):
    out = shutil.copytree(finished_run, tmp_path / 'out')  # an earlier run's files
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    code, _, err = train_main('--loss', 'naive', '--lr', '10', '--out', out)  # exp(o) overflows at once
    assert code == 1
    assert_one_line_error(err, 'diverged at epoch 1, step', 'loss is', '--loss scratch', 'smaller --lr',
                          'nothing was kept', "earlier run's")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_divergence_after_finished_epochs_keeps_them(train_main, tmp_path, monkeypatch):
    # A nan in the 300th training step's loss: 235 steps come first, so that is epoch 2, step 65.
    steps = []

    def nan_at_step_300(O, y, reduction='mean'):
        if torch.is_grad_enabled():  # a training step's loss; the evaluation's runs without autograd
            steps.append(1)
        return F.cross_entropy(O, y, reduction=reduction) * (float('nan') if len(steps) == 300 else 1)
    monkeypatch.setitem(losses.LOSSES, 'torch', nan_at_step_300)  # train.LOSSES is this same dict
    code, _, err = train_main('--epochs', '3', '--loss', 'torch', '--out', tmp_path)
    assert code == 1 and 'diverged at epoch 2, step 65: loss is nan' in err, err
    assert [row['epoch'] for row in read_csv(tmp_path / 'history.csv')] == ['1']
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert metrics['status'] == 'diverged' and metrics['epochs_completed'] == 1
    for name in ('curves.png', 'model.pt', 'predictions.png', 'weights.png', 'confusion.png'):
        assert (tmp_path / name).stat().st_size > 0, name
    assert torch.isfinite(torch.load(tmp_path / 'model.pt', weights_only=True)['model']['W']).all()
    assert no_temporary_files(tmp_path)


def test_compare_where_every_loss_diverges_says_so_and_exits_1(train_main, tmp_path):
    code, out, err = train_main('--compare', '--lr', '3e38', '--out', tmp_path)
    assert code == 1 and 'done' not in out
    assert 'every loss diverged' in err and 'no compare.png' in err and 'Traceback' not in err
    assert not (tmp_path / 'compare.png').exists()


# ------------------------------------------------------------------ train.py interrupted mid-run
# In this process, through cli.run: each signal is raised in this process from inside the run, at the moment
# it is meant to land (a process sent one from outside would take it wherever it happened to be); raised,
# not sent with os.kill, which on Windows ends a process instead.

def send_before(monkeypatch, module, name, when, *signals):
    """module.name(...) replaced by a wrapper that, the first time when(*args) holds, sends `signals` to this
    process, then does what module.name did."""
    original, sent = getattr(module, name), []

    def wrapper(*args, **kwargs):
        if not sent and when(*args):
            sent.append(True)
            for sig in signals:
                signal.raise_signal(sig)
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapper)
    return sent


def skip_if_ignored(*signals):
    for sig in signals:
        if sig is None:
            pytest.skip("this platform has no such signal (SIGHUP: POSIX only)")
        if signal.getsignal(sig) == signal.SIG_IGN:
            pytest.skip(f"this test session ignores {sig.name} (nohup?), and so would what it starts")


def assert_in_step(out, epochs):
    """history.csv, metrics.json and model.pt describe the same `epochs` finished epochs, every figure is
    there, and nothing else is: no temporary file, no .lock."""
    assert len(read_csv(out / 'history.csv')) == epochs
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['status'] == 'interrupted' and metrics['epochs_completed'] == epochs
    assert torch.load(out / 'model.pt', weights_only=True)['epoch'] == epochs
    for name in ('curves.png', 'predictions.png', 'weights.png', 'confusion.png', 'confidence.png'):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    assert no_temporary_files(out) and not (out / '.lock').exists()
    return metrics


def test_kill_as_an_epoch_is_saved_then_ctrl_c_and_hangup_while_wrapping_up_keep_it_in_step(
        train_main, tmp_path, monkeypatch):
    skip_if_ignored(signal.SIGTERM, signal.SIGINT, STOPS['terminal closed'])
    # kill between model.pt and history.csv of epoch 1: it waits until the three files are written
    killed = send_before(monkeypatch, records, 'write_text', lambda path, text: path.endswith('history.csv'),
                         signal.SIGTERM)
    # Ctrl-C twice and the terminal closing while the last files are written: they must not cut them short
    later = send_before(monkeypatch, records, 'write_final_figures', lambda *args: True,
                        signal.SIGINT, signal.SIGINT, STOPS['terminal closed'])
    code, out, err = train_main('--epochs', '3', '--out', tmp_path)
    assert killed and later
    assert code == 130 and 'Traceback' not in err and 'interrupted: 1 finished epoch kept' in err, err
    assert 'epoch   2/3' not in out  # the kill landed in epoch 1's files, not later
    assert_in_step(tmp_path, 1)


def test_an_interrupted_compare_keeps_each_file_in_step(train_main, tmp_path, monkeypatch):
    skip_if_ignored(STOPS['terminal closed'])
    # the terminal closes once the naive loss's first epoch is done, before its file is written
    sent = send_before(monkeypatch, records, 'write_text',
                       lambda path, text: path.endswith('history_naive.csv') and text.count('\n') == 2,
                       STOPS['terminal closed'])
    code, _, err = train_main('--compare', '--epochs', '3', '--out', tmp_path)
    assert sent and code == 130 and 'Traceback' not in err, err
    report = json.loads((tmp_path / 'compare.json').read_text())
    assert report['status'] == 'interrupted' and report['trained'] == ['naive']
    assert len(read_csv(tmp_path / 'history_naive.csv')) == report['final']['naive']['epoch'] == 1
    assert (tmp_path / 'compare.png').is_file() and no_temporary_files(tmp_path)


def test_ctrl_c_just_after_the_last_epoch_still_wraps_up(train_main, tmp_path, monkeypatch):
    skip_if_ignored(signal.SIGINT)

    def ctrl_c_after_the_last_line(*args, **kwargs):  # the last epoch's line comes right before the wrap-up
        print(*args, **kwargs)
        if str(args[0]).startswith('epoch   1/1'):
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(train, 'print', ctrl_c_after_the_last_line, raising=False)  # train.py's print
    code, out, err = train_main('--epochs', '1', '--out', tmp_path)
    assert code == 130 and 'epoch   1/1' in out and 'Traceback' not in err, err
    metrics = assert_in_step(tmp_path, 1)
    assert 'calibration' in metrics
