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
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import losses
import train
from common import (PNG_SIGNATURE, ROOT, assert_one_line_error, children, finish, handlers_installed, running,
                     no_temporary_files, read_csv, root_scripts, send_when, start, tiny_disk, torch_is_loading)
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


# ------------------------------------------------------------------ files that cannot be written

@pytest.mark.parametrize('failure, reason', [
    (lambda tmp: open('/nonexistent/folder/x', 'w'), 'No such file or directory'),
    (lambda tmp: (_ for _ in ()).throw(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")),
     'RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos'),
    (lambda tmp: (_ for _ in ()).throw(PermissionError(13, 'Permission denied')), 'Permission denied'),
], ids=['OSError', "a library's own error", 'PermissionError'])
def test_any_failure_of_a_write_is_cannot_write_path_reason_and_leaves_the_old_file(tmp_path, failure, reason):
    path = tmp_path / 'model.pt'
    path.write_text('old and whole\n')
    with pytest.raises(cli.OutputError) as error:
        writing.write_atomically(str(path), failure)
    assert str(error.value) == f"cannot write {path}: {reason}"
    assert os.listdir(tmp_path) == ['model.pt'] and path.read_text() == 'old and whole\n'


def test_write_atomically_lets_ctrl_c_through_and_leaves_the_old_file(tmp_path):
    path = tmp_path / 'history.csv'
    path.write_text('old and whole\n')

    def half_then_ctrl_c(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        writing.write_atomically(str(path), half_then_ctrl_c)
    assert path.read_text() == 'old and whole\n' and os.listdir(tmp_path) == ['history.csv']


def test_a_full_disk_under_torch_save_is_no_space_left_on_device():
    with tiny_disk(60) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs is not permitted here (needs root)")
        with open(os.path.join(disk, 'filler'), 'wb') as f:
            f.write(bytes(40_000))
        with pytest.raises(cli.OutputError, match=r"cannot write .*model\.pt: No space left on device$"):
            writing.write_atomically(os.path.join(disk, 'model.pt'), lambda tmp: torch.save(torch.zeros(784, 10), tmp))
        assert os.listdir(disk) == ['filler']


def test_train_py_on_a_disk_that_fills_says_which_file_and_its_files_agree(train_main):
    with tiny_disk(60) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs is not permitted here (needs root)")
        code, _, err = train_main('--epochs', '5', '--out', disk)  # model.pt twice (old and new) does not fit
        history = read_csv(os.path.join(disk, 'history.csv'))
        metrics = json.loads(open(os.path.join(disk, 'metrics.json')).read())
        checkpoint = torch.load(os.path.join(disk, 'model.pt'), weights_only=True)
        names = os.listdir(disk)
    assert code == 2, err
    assert_one_line_error(err, f"error: cannot write {disk}/model.pt: No space left on device")
    assert not [name for name in names if name.endswith('.tmp')]
    assert len(history) == metrics['epochs_completed'] == checkpoint['epoch'] >= 1  # one same epoch
    # the small files still fit: metrics.json says how the run ended, the message names only model.pt's failure
    assert metrics['status'] == f"failed: cannot write {disk}/model.pt: No space left on device"
    assert 'metrics.json' not in err


def test_an_earlier_runs_file_that_cannot_be_replaced_stops_the_run_before_it_writes(train_main, tmp_path):
    (tmp_path / 'model.pt').write_bytes(b'an earlier run')
    (tmp_path / 'metrics.json').write_text('{"status": "finished"}\n')
    if not shutil.which('chattr') or subprocess.run(['chattr', '+i', str(tmp_path / 'model.pt')],
                                                    capture_output=True).returncode:
        pytest.skip("chattr +i is not permitted here (needs root and a file system that has the flag)")
    try:
        code, out, err = train_main('--epochs', '1', '--out', tmp_path)
        assert code == 2
        assert_one_line_error(err, f"error: cannot write {tmp_path / 'model.pt'}: it is immutable (chattr +i")
        assert 'epoch' not in out and sorted(os.listdir(tmp_path)) == ['metrics.json', 'model.pt']
        assert (tmp_path / 'metrics.json').read_text() == '{"status": "finished"}\n'
    finally:
        subprocess.run(['chattr', '-i', str(tmp_path / 'model.pt')])


def test_runs_preparing_the_same_folder_at_once_never_trip_on_each_others_probe(tmp_path):
    """Eight runs at once, 200 times each: one gets the folder, every other one is refused as a second run,
    never by another's probe file (each checks the folder takes new files before it asks for the lock)."""
    errors, barrier = [], threading.Barrier(8)

    def prepare(_):
        barrier.wait()
        for _ in range(200):
            try:
                writing.prepare_out_dir(str(tmp_path / 'out'), ['history.csv'])
            except cli.OutputError as error:
                errors.append(str(error))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(prepare, range(8)))
    assert len(errors) == 8 * 200 - 1 and all(' is writing to ' in error for error in errors), set(errors)
    assert os.listdir(tmp_path / 'out') == []


@pytest.mark.parametrize('make', [lambda path: path.mkdir(), getattr(os, 'mkfifo', None)], ids=['folder', 'fifo'])
def test_something_other_than_a_file_among_the_outputs_is_refused_naming_it(tmp_path, make):
    if make is None:
        pytest.skip("this platform has no FIFOs")
    make(tmp_path / 'history.csv')
    why = 'something other than a file is in the way'
    with pytest.raises(cli.OutputError) as error:
        writing.prepare_out_dir(str(tmp_path), ['metrics.json', 'history.csv'])
    assert str(error.value) == f"cannot write {tmp_path / 'history.csv'}: {why}; nothing was written"
    (os.rmdir if os.path.isdir(tmp_path / 'history.csv') else os.unlink)(tmp_path / 'history.csv')
    writing.prepare_out_dir(str(tmp_path), ['metrics.json', 'history.csv'])  # the refusal held no lock


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


# ------------------------------------------------------------------ every script that writes is locked

def writing_runs(assets, out):
    """{script: the arguments of a run that writes into `out`} for every script that prepares an output
    folder: its tiny run where that has one, else just --out (a script added at the root is checked too)."""
    runs = {}
    for script in SCRIPTS:
        with open(os.path.join(ROOT, script), encoding='utf-8') as f:
            if 'writing.prepare_out_dir(' in f.read():
                args = tiny_run(script, out, assets)
                runs[script] = args if str(out) in args else ['--out', str(out)]  # bench.py's: 30 s of work
    return runs


def test_every_script_that_writes_into_an_out_refuses_a_second_run_there(assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    writing.lock_out_dir(str(out))  # the first run, as far as the lock goes
    holder = f" (process {os.getpid()})" if os.path.exists('/proc/locks') or writing.fcntl is None else ''
    for script, args in writing_runs(assets, out).items():
        monkeypatch.setattr(sys, 'argv', [os.path.join(ROOT, script)])
        assert cli.run(importlib.import_module(script[:-3]).main, args) == 2, script
        err = capsys.readouterr().err  # predict.py may add a note on its model first
        assert_one_line_error(err.splitlines()[-1], f"error: another run{holder} is writing to {out}{os.sep} ")
        assert 'Traceback' not in err and err.count('error:') == 1 and os.listdir(out) == [], script


def test_lock_out_dir_after_prepare_out_dir_is_the_same_lock(tmp_path):
    writing.prepare_out_dir(str(tmp_path))
    held = list(writing._locks)
    writing.lock_out_dir(str(tmp_path))  # a script that still locks after preparing: nothing more
    assert writing._locks == held
    with pytest.raises(cli.OutputError, match=' is writing to '):  # but a second run's preparing is refused
        writing.prepare_out_dir(str(tmp_path))


def test_on_linux_the_lock_never_touches_the_temporary_folder(tmp_path, monkeypatch):
    if writing.fcntl is None:
        pytest.skip("without flock the lock file lives in the temporary folder")
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'no-such-folder'))  # as good as a full one
    writing.prepare_out_dir(str(tmp_path / 'out'))
    assert os.listdir(tmp_path) == ['out'] and os.listdir(tmp_path / 'out') == []


def test_without_flock_a_lock_file_in_the_temporary_folder_refuses_a_second_run(tmp_path, monkeypatch, train_main):
    """Windows has no flock: the lock is a file in the system's temporary folder, named after the output
    folder's real path (filelock holds it), so that nothing is added among the outputs."""
    monkeypatch.setattr(writing, 'fcntl', None)
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))
    (tmp_path / 'tmp').mkdir()
    out = tmp_path / 'out'
    writing.prepare_out_dir(str(out))  # the first run
    code, printed, err = train_main('--out', out, '--epochs', '1')
    assert code == 2 and 'epoch' not in printed
    assert_one_line_error(err, f"error: another run (process {os.getpid()}) is writing to {out}{os.sep} right now")
    assert os.listdir(out) == [] and len(os.listdir(tmp_path / 'tmp')) == 2  # the lock file and its holder's pid
    with pytest.raises(cli.OutputError, match=' is writing to '):  # the same folder by another name
        writing.prepare_out_dir(str(tmp_path / 'tmp' / '..' / 'out'))
    while writing._locks:
        writing.release_lock(writing._locks.pop())
    assert not [name for name in os.listdir(tmp_path / 'tmp') if name.endswith('.pid')]
    writing.prepare_out_dir(str(out))  # released, as by the end of the first run's process: free again
    (tmp_path / 'a-file').write_text('not a folder')
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'a-file'))
    with pytest.raises(cli.OutputError, match=f"^cannot lock output folder {tmp_path / 'other'}: "):
        writing.prepare_out_dir(str(tmp_path / 'other'))


def test_a_file_held_open_elsewhere_is_retried_then_one_line(tmp_path, monkeypatch):
    """Windows refuses to rename over a file another program holds open (a picture viewer showing
    curves.png): write_atomically retries for REPLACE_RETRY_SECONDS (0 elsewhere), then says so."""
    path = tmp_path / 'curves.png'
    path.write_text('old')
    real_replace, held = os.replace, [3]

    def replace(source, target):
        if held[0]:
            held[0] -= 1
            raise PermissionError(13, 'Access is denied', str(target))
        return real_replace(source, target)
    monkeypatch.setattr(writing, 'REPLACE_RETRY_SECONDS', 0.5)
    monkeypatch.setattr(writing.os, 'replace', replace)
    writing.write_text(str(path), 'new')  # let go after three tries
    assert path.read_text() == 'new' and held == [0] and os.listdir(tmp_path) == ['curves.png']
    held[0], started = 10**9, time.monotonic()  # never let go
    with pytest.raises(cli.OutputError) as error:
        writing.write_text(str(path), 'newer')
    assert 0.5 <= time.monotonic() - started < 2.5
    assert str(error.value) == f"cannot write {path}: Access is denied (is it open in another program?)"
    assert path.read_text() == 'new' and os.listdir(tmp_path) == ['curves.png']


# ------------------------------------------------------------------ a stop wherever it lands
# Python swallows an exception raised in a __del__, a weakref callback or an at-fork hook; a library may
# catch it. The stop must hold wherever the signal's KeyboardInterrupt lands.

def stop_inside(catch):
    """A main() that is sent kill inside a block whose exceptions `catch` swallows, then carries on for
    a while; it records how far it got."""
    reached = []

    def main(argv):
        catch(lambda: signal.raise_signal(signal.SIGTERM))
        reached.append('after the block')
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            pass
        reached.append('carried on to the end')
        return 0
    return main, reached


def in_a_del(send):
    class Finalized:
        def __del__(self):
            send()
            for _ in range(10_000):  # the handler runs here, inside __del__
                pass
    Finalized()


def in_a_bare_except(send):
    try:
        send()
        for _ in range(10_000):
            pass
    except BaseException:  # as a library's clean-up might
        pass


@pytest.mark.parametrize('catch', [in_a_del, in_a_bare_except], ids=['a __del__', 'a bare except'])
def test_kill_swallowed_where_it_lands_still_stops_the_run_with_one_line(catch, capsys):
    skip_if_ignored(signal.SIGTERM)
    main, reached = stop_inside(catch)
    assert cli.run(main) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"  # nothing about where it was swallowed
    if catch is in_a_del:  # delivered again at once, to the code after the __del__
        assert 'carried on to the end' not in reached


def test_an_error_the_stop_caused_is_reported_as_the_stop(capsys):
    skip_if_ignored(signal.SIGTERM)

    def main(argv):
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:  # a half-built object's clean-up fails, or a worker's queue is gone
            raise AttributeError("'_MultiProcessingDataLoaderIter' object has no attribute '_workers_status'")
    assert cli.run(main) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_a_forked_child_gets_a_fresh_interpreters_handlers_and_dies_of_kill_quietly(tmp_path):
    """A DataLoader worker forked from a run is not the run: kill ends it at once and says nothing, as
    multiprocessing's terminate() expects; Ctrl-C is the KeyboardInterrupt torch's workers handle; it holds
    no copy of the run's lock, which would outlive a run killed outright."""
    if not hasattr(os, 'fork') or not os.path.isdir('/proc/self/fd'):
        pytest.skip("no fork here (workers are spawned, fresh interpreters already), or no /proc")
    code = '''if True:
        import os, signal, sys
        from support import cli, writing
        def main(argv):
            writing.prepare_out_dir(sys.argv[1])
            pid = os.fork()
            if pid == 0:
                ok = signal.getsignal(signal.SIGINT) is signal.default_int_handler
                os.write(1, b'child handlers fresh\\n' if ok else b'child handlers inherited\\n')
                held = [fd for fd in os.listdir('/proc/self/fd') if os.path.realpath(f'/proc/self/fd/{fd}')
                        == os.path.realpath(sys.argv[1])]
                os.write(1, b'child holds the lock\\n' if held else b'child holds no lock\\n')
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10**7):
                    pass
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            print(f"child ended by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}")
            return 0
        sys.exit(cli.run(main))'''
    done = subprocess.run([sys.executable, '-c', code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (0, '')
    assert done.stdout == f"child handlers fresh\nchild holds no lock\nchild ended by signal {int(signal.SIGTERM)}\n"


_armed = []  # the stop signal an at-fork hook sends once, as the next worker process starts


def _send_as_a_worker_starts():
    if _armed:
        signal.raise_signal(_armed.pop())
        for _ in range(10_000):  # the handler runs here, in the hook, where Python swallows its exception
            pass


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_parent=_send_as_a_worker_starts)


def send_on_call(monkeypatch, cls, name, when):
    """cls.name wrapped: the first call for which when(count of calls, *args) holds sends kill first."""
    original, calls = getattr(cls, name), []

    def wrapper(self, *args, **kwargs):
        calls.append(1)
        if calls[0] and when(len(calls), *args, **kwargs):
            calls[0] = 0
            signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, name, wrapper)


def _stderr_to_devnull(worker_id):
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


@pytest.mark.parametrize('moment', ['a worker starting', 'the workers shut down', 'the workers reading'])
def test_kill_wherever_it_lands_in_a_dataloader_with_workers_is_exit_130_and_one_line(moment, monkeypatch, capfd):
    """In this process, the kill sent at the moment named: in an at-fork hook as a worker starts (where
    Python swallows exceptions: logging's hook did), in a loader's clean-up as its __del__ shuts its
    workers down (swallowed too), or in the middle of reading. What the raw loader's workers print as torch
    tears them down is torch's (exercises.py's reader keeps them quiet: test_exercises.py, and the plain kill
    of exercises.py below): here their stderr goes nowhere, and this process's alone is checked."""
    from torch.utils.data import DataLoader, TensorDataset, dataloader
    skip_if_ignored(signal.SIGTERM)
    if moment == 'a worker starting':
        if not hasattr(os, 'register_at_fork'):
            pytest.skip("workers are spawned here: no at-fork hook runs")
        _armed.append(signal.SIGTERM)
    elif moment == 'the workers shut down':
        send_on_call(monkeypatch, dataloader._MultiProcessingDataLoaderIter, '_mark_worker_as_unavailable',
                     lambda count, worker_id, shutdown=False: shutdown)
    else:
        send_on_call(monkeypatch, dataloader._MultiProcessingDataLoaderIter, '_next_data', lambda count: count == 3)
    reached = []

    def main(argv):
        loader = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=8, num_workers=2,
                            worker_init_fn=_stderr_to_devnull)
        next(iter(loader))  # a first iterator, dropped at once: its __del__ shuts its workers down
        for _ in loader:  # a second one reads every batch
            pass
        deadline = time.monotonic() + 2  # time enough for a stop delivered again, under any load
        while time.monotonic() < deadline:
            pass
        reached.append('the end')
        return 0
    try:
        assert cli.run(main) == 130
    finally:
        del _armed[:]
        for child in __import__('multiprocessing').active_children():  # the process's exit would end them
            child.terminate()
    assert reached == [] and capfd.readouterr().err == "\ninterrupted\n"


def test_a_plain_kill_of_exercises_3_5_1_as_its_workers_start_is_exit_130_one_line_and_no_worker_left():
    """End to end, the book's reader as exercises.py runs it (4 worker processes): a plain kill as the
    first workers start (their at-fork hooks run in this window, where Python swallows exceptions) is exit
    130 and one line, whatever the workers print, and no worker outlives the run. The moments in between
    are the in-process test's above; each process costs seconds of torch's import."""
    if not os.path.exists(f'/proc/{os.getpid()}/task/{os.getpid()}/children'):
        pytest.skip("watching the workers needs /proc (Linux)")
    skip_if_ignored(signal.SIGTERM)
    folder = tempfile.mkdtemp(prefix='kill-exercise-')
    process, workers = start('exercises.py', '3.5.1', '--out', folder), set()
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and len(workers) < 2:  # one: a subprocess's
        workers = children(process.pid)  # fork before its exec; two: the workers, the later ones still to come
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process, timeout=60)
    names = os.listdir(folder)
    shutil.rmtree(folder)
    assert workers and code == 130, (workers, code, err)
    assert_one_line_error(err, 'interrupted')
    assert names == [] and 'saved' not in out  # stopped, not carried on to the end
    deadline = time.monotonic() + 5
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if running(pid)] == []
