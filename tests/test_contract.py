"""The process contract, tested once over every script at the root (issue 17), and the faults at its edges
(issue 20): exit codes, one-line errors, --help, signals while starting, closed or full streams, files
that cannot be written, folders that two runs want at once; then train.py's own errors and interruptions.
Processes are started only where the process boundary is the point, all at once, three at a time."""
import importlib
import json
import os
import signal
import subprocess
import sys
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
from helpers import (ROOT, assert_one_line_error, finish, handlers_installed, no_temporary_files, read_csv,
                     root_scripts, start, tiny_disk, torch_is_loading)
from machinery import cli
from model import SoftmaxRegression

SCRIPTS = root_scripts()
STOPS = {'ctrl-c': signal.SIGINT, 'kill': signal.SIGTERM, 'terminal closed': signal.SIGHUP}


def tiny_work(script, out, assets):
    """(arguments, files it writes in `out`) of a small real run of `script`; None if none is known."""
    return {'train.py': (['--epochs', '1', '--out', out], ['history.csv', 'metrics.json', 'model.pt', 'confusion.png']),
            'sweep.py': (['--lr', '0.1', '--batch-size', '1024', '--epochs', '1', '--out', out],
                         ['sweep.csv', 'sweep.json', 'sweep.png', 'sweep_curves.png']),
            'predict.py': ([assets['image'], '--model', assets['model'], '--out', out], ['predict.png']),
            'losses.py': (['--out', out], ['stability.png']),
            'data.py': ([], []),
            'model.py': ([assets['model']], []),
            'exercises.py': (['3.4.2', '--out', out], []),
            # bench.py's smallest real run takes 30 s of CPU (test_bench.py runs it once): here, its help
            'bench.py': (['--help'], [])}.get(script)


def without_help(args):
    return [arg for arg in args if arg != '--help']


def stop_while_starting(script, args, sig, folder):
    """(exit code, stdout, stderr) of `script ARGS` sent `sig` as soon as cli.start() has run and, for a
    script that imports torch itself, torch's libraries are loading."""
    with open(os.path.join(ROOT, script), encoding='utf-8') as f:
        imports_torch = '\nimport torch' in f.read()
    process = start(script, *args, cwd=folder)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if handlers_installed(process.pid) and (not imports_torch or torch_is_loading(process.pid)):
            process.send_signal(sig)
            break
        time.sleep(0.005)
    return finish(process)


@pytest.fixture(scope='module')
def assets(tmp_path_factory, fashion_mnist):
    folder = tmp_path_factory.mktemp('assets')
    torch.save({'model': SoftmaxRegression().state_dict(), 'config': {'recipe': 'textbook', 'loss': 'scratch'},
                'epoch': 1}, folder / 'model.pt')
    Image.fromarray(fashion_mnist[2][0].reshape(28, 28).numpy()).save(folder / 'item.png')
    return dict(model=str(folder / 'model.pt'), image=str(folder / 'item.png'))


@pytest.fixture(scope='module')
def runs(tmp_path_factory, assets):
    """Every script started every way the contract covers, three processes at a time, each in an empty
    folder of its own: {(script, case): (exit code, stdout, stderr, the folder)}."""
    base = tmp_path_factory.mktemp('contract')
    cases = ('stdout full', 'help, stdout closed', 'bad flag, stderr closed', *STOPS)
    jobs = {(script, case): base / f"{script}-{case}".replace(' ', '-').replace(',', '')
            for script in SCRIPTS for case in cases}

    def run(key):
        (script, case), folder = key, jobs[key]
        folder.mkdir()
        work = tiny_work(script, str(folder / 'out'), assets) or ([], None)
        if (case == 'stdout full' and work[1] is None) or (case in STOPS and signal.getsignal(STOPS[case]) == signal.SIG_IGN):
            return None  # a stop signal this session ignores (nohup?) is ignored by what it starts, rightly
        if case in STOPS:
            return (*stop_while_starting(script, work[0], STOPS[case], str(folder)), folder)
        if case == 'help, stdout closed':  # `| head -c 0`: the reader is gone before the first line
            process = start(script, '--help', cwd=folder)
            process.stdout.close()
            return process.wait(timeout=300), '', process.stderr.read(), folder
        args = work[0] if case == 'stdout full' else [*without_help(work[0]), '--no-such-flag']
        process = start(script, *args, cwd=folder,
                        shell_suffix='> /dev/full' if case == 'stdout full' else '2>&-')
        return (*finish(process), folder)
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(jobs, pool.map(run, jobs)))


def test_every_script_has_a_tiny_run_for_the_contract(assets):
    assert [script for script in SCRIPTS if tiny_work(script, 'out', assets) is None] == [], \
        "add the script's tiny real run to tiny_work() in this file"


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_is_usage_on_stdout_and_a_bad_flag_one_line_naming_it(script, assets, tmp_path, monkeypatch, capsys):
    """In this process: argparse's messages through cli.run, as the script's own main() gives them."""
    main = importlib.import_module(script[:-3]).main
    monkeypatch.setattr(sys, 'argv', [os.path.join(ROOT, script)])  # argparse's program name
    assert cli.run(main, ['--help']) == 0
    out, err = capsys.readouterr()
    assert err == '' and out.startswith(f"usage: {script}")
    args = (tiny_work(script, str(tmp_path / 'out'), assets) or [[]])[0]
    assert cli.run(main, [*without_help(args), '--no-such-flag']) == 2
    out, err = capsys.readouterr()
    assert out == '' and not (tmp_path / 'out').exists()
    assert_one_line_error(err, f"{script}: error: unrecognized arguments: --no-such-flag (see {script} --help)")


@pytest.mark.parametrize('script', SCRIPTS)
def test_bad_input_with_stderr_closed_is_still_exit_2(runs, script):
    code, out, err, folder = runs[script, 'bad flag, stderr closed']
    assert (code, out, err) == (2, '', '') and os.listdir(folder) == []  # the line went nowhere, not into a file


@pytest.mark.parametrize('stop', STOPS)
@pytest.mark.parametrize('script', SCRIPTS)
def test_a_stop_signal_while_starting_is_exit_130_and_one_line(runs, script, stop):
    if runs[script, stop] is None:
        pytest.skip(f"this test session ignores {STOPS[stop].name} (nohup?), and so do the scripts it starts")
    code, out, err, folder = runs[script, stop]
    assert code == 130, (code, err)
    assert_one_line_error(err, 'interrupted')
    assert out == '' and os.listdir(folder) == []  # nothing written, not even the output folder


@pytest.mark.parametrize('script', SCRIPTS)
def test_a_closed_stdout_is_no_traceback_and_keeps_the_exit_code(runs, script):
    code, _, err, _ = runs[script, 'help, stdout closed']
    assert code == 0 and 'Traceback' not in err
    assert_one_line_error(err, 'note: standard output could not be written')


@pytest.mark.parametrize('script', SCRIPTS)
def test_a_full_stdout_loses_nothing_and_says_so(runs, assets, script):
    if not os.path.exists('/dev/full'):
        pytest.skip("no /dev/full on this system")
    assert runs[script, 'stdout full'] is not None, "add the script's tiny real run to tiny_work() in this file"
    code, _, err, folder = runs[script, 'stdout full']
    assert code == 0 and 'Traceback' not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith('note: standard output could not be written (No space left on device)')
    for name in tiny_work(script, '', assets)[1]:
        assert (folder / 'out' / name).stat().st_size > 0, name
    if script == 'train.py':  # the run went on to its end
        assert json.loads((folder / 'out' / 'metrics.json').read_text())['status'] == 'finished'
    assert set(os.listdir(folder)) <= {'out'}  # nothing but what was asked for


# ------------------------------------------------------------------ files that cannot be written (issue 20)

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
        cli.write_atomically(str(path), failure)
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
        cli.write_atomically(str(path), half_then_ctrl_c)
    assert path.read_text() == 'old and whole\n' and os.listdir(tmp_path) == ['history.csv']


def test_a_full_disk_under_torch_save_is_no_space_left_on_device():
    with tiny_disk(60) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs is not permitted here (needs root)")
        with open(os.path.join(disk, 'filler'), 'wb') as f:
            f.write(bytes(40_000))
        with pytest.raises(cli.OutputError, match=r"cannot write .*model\.pt: No space left on device$"):
            cli.write_atomically(os.path.join(disk, 'model.pt'), lambda tmp: torch.save(torch.zeros(784, 10), tmp))
        assert os.listdir(disk) == ['filler']


def test_train_py_on_a_disk_that_fills_says_which_file_and_its_files_agree(tmp_path):
    with tiny_disk(60) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs is not permitted here (needs root)")
        code, _, err = finish(start('train.py', '--epochs', '5', '--out', disk))
        history = read_csv(os.path.join(disk, 'history.csv'))
        metrics = json.loads(open(os.path.join(disk, 'metrics.json')).read())
        checkpoint = torch.load(os.path.join(disk, 'model.pt'), weights_only=True)
        names = os.listdir(disk)
    assert code == 2, err
    assert_one_line_error(err, f"error: cannot write {disk}/model.pt: No space left on device")
    assert not [name for name in names if name.endswith('.tmp')]
    assert len(history) == metrics['epochs_completed'] == checkpoint['epoch'] >= 1  # one same epoch
    assert metrics['status'].startswith('failed: cannot write') or "metrics.json" in err


def test_an_earlier_runs_file_that_cannot_be_replaced_stops_the_run_before_it_writes(tmp_path):
    (tmp_path / 'model.pt').write_bytes(b'an earlier run')
    (tmp_path / 'metrics.json').write_text('{"status": "finished"}\n')
    if subprocess.run(['chattr', '+i', str(tmp_path / 'model.pt')], capture_output=True).returncode:
        pytest.skip("chattr +i is not permitted here (needs root and a file system that has the flag)")
    try:
        code, out, err = finish(start('train.py', '--epochs', '1', '--out', tmp_path))
        assert code == 2
        assert_one_line_error(err, f"error: cannot write {tmp_path}/model.pt: it is immutable (chattr +i")
        assert 'epoch' not in out and sorted(os.listdir(tmp_path)) == ['metrics.json', 'model.pt']
        assert (tmp_path / 'metrics.json').read_text() == '{"status": "finished"}\n'
    finally:
        subprocess.run(['chattr', '-i', str(tmp_path / 'model.pt')])


def test_a_finished_run_leaves_no_lock_file_and_the_folder_stays_locked_while_it_runs(tmp_path):
    cli.prepare_out_dir(str(tmp_path))
    cli.lock_out_dir(str(tmp_path))  # as a run does
    with pytest.raises(cli.OutputError, match=rf"another run \(process {os.getpid()}\) is writing to {tmp_path}/"):
        cli.lock_out_dir(str(tmp_path))  # a second open of the folder: another run, as far as flock goes
    assert os.listdir(tmp_path) == []


def test_runs_preparing_the_same_folder_at_once_never_trip_on_each_others_probe(tmp_path):
    errors, barrier = [], threading.Barrier(8)

    def prepare():
        barrier.wait()
        for _ in range(200):
            try:
                cli.prepare_out_dir(str(tmp_path / 'out'), ['history.csv'])
            except cli.OutputError as error:
                errors.append(error)
    threads = [threading.Thread(target=prepare) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and os.listdir(tmp_path / 'out') == []


@pytest.mark.parametrize('make, why', [
    (lambda path: path.mkdir(), 'something other than a file is in the way'),
    (lambda path: os.mkfifo(path), 'something other than a file is in the way'),
])
def test_something_other_than_a_file_among_the_outputs_is_refused_naming_it(tmp_path, make, why):
    make(tmp_path / 'history.csv')
    with pytest.raises(cli.OutputError, match=f"cannot write {tmp_path}/history.csv: {why}; nothing was written"):
        cli.prepare_out_dir(str(tmp_path), ['metrics.json', 'history.csv'])


# ------------------------------------------------------------------ train.py: bad input, in this process

@pytest.fixture
def train_main(fashion_mnist, monkeypatch, capsys):
    """cli.run(train.main, argv) on the session's copy of the data: (exit code, stdout, stderr)."""
    monkeypatch.setattr(train.data, 'load_fashion_mnist', lambda *args, **kwargs: fashion_mnist)

    def run(*argv):
        held = len(cli._locks)
        code = cli.run(train.main, ['--device', 'cpu', *map(str, argv)])
        while len(cli._locks) > held:  # the folder is released, as when a process ends
            os.close(cli._locks.pop())
        return (code, *capsys.readouterr())
    return run


BAD_FLAGS = {'zero epochs': ['--epochs', '0'], 'epochs by the billion': ['--epochs', '9' * 23],
             'nan lr': ['--lr', 'nan'], 'inf lr': ['--lr', 'inf'], 'word lr': ['--lr', 'fast'],
             'zero lr': ['--lr', '0'], 'negative lr': ['--lr', '-0.1'], 'lr over float32': ['--lr', '3.5e38'],
             'lr under float32': ['--lr', '1e-46'], 'zero batch': ['--batch-size', '0'],
             'fractional batch': ['--batch-size', '2.5'], 'batch over the training set': ['--batch-size', '60001'],
             'unknown loss': ['--loss', 'hinge'], 'unknown device': ['--device', 'tpu'],
             'unknown recipe': ['--recipe', 'fast'], 'huge seed': ['--seed', '9' * 23], 'negative seed': ['--seed', '-1'],
             'empty data dir': ['--data-dir', ''], 'empty out': ['--out', '']}


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
                                      lambda tmp: '/proc/outputs-cannot-live-here', lambda tmp: tmp / 'dangling'])
def test_an_unusable_out_fails_before_training_starts(train_main, tmp_path, make_out):
    (tmp_path / 'a-file').write_text('I am a file')
    (tmp_path / 'dangling').symlink_to(tmp_path / 'gone')
    code, out, err = train_main('--out', make_out(tmp_path), '--epochs', '1')
    assert code == 2 and 'epoch' not in out
    assert_one_line_error(err, 'error: ', str(make_out(tmp_path)))


def test_bad_data_is_one_line_naming_the_file_or_the_folder_and_exit_2(tmp_path, monkeypatch, capsys):
    real = data.find_data_dir(download=False)
    folder = tmp_path / 'fashion'
    folder.mkdir()
    for name in os.listdir(real):
        os.symlink(os.path.join(real, name), folder / name)
    broken = next(name for name in os.listdir(folder) if name.startswith('t10k-labels'))
    os.remove(folder / broken)
    (folder / broken).write_bytes(b'<html><body>502 Bad Gateway</body></html>')
    assert cli.run(train.main, ['--data-dir', str(folder), '--out', str(tmp_path / 'out'), '--epochs', '1']) == 2
    assert_one_line_error(capsys.readouterr().err, 'error: ', broken)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / 'nowhere'))  # honoured, and checked
    assert cli.run(train.main, ['--out', str(tmp_path / 'out2'), '--epochs', '1']) == 2
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / 'nowhere'), 'does not exist', 'download')
    assert os.listdir(tmp_path / 'out') == os.listdir(tmp_path / 'out2') == []


def test_a_second_run_into_a_folder_in_use_is_refused(train_main, tmp_path):
    cli.lock_out_dir(str(tmp_path))  # as if another run were writing there
    code, out, err = train_main('--out', tmp_path, '--epochs', '1')
    assert code == 2 and 'epoch' not in out
    assert_one_line_error(err, 'another run', f"is writing to {tmp_path}/")


def test_divergence_is_one_line_with_a_hint_and_an_earlier_runs_files_stay_whole(train_main, tmp_path):
    assert train_main('--epochs', '1', '--out', tmp_path)[0] == 0
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert '.lock' not in before  # issue 17: the folder itself is locked
    code, _, err = train_main('--loss', 'naive', '--lr', '10', '--out', tmp_path)  # exp(o) overflows at once
    assert code == 1
    assert_one_line_error(err, 'diverged at epoch 1, step', 'loss is', '--loss scratch', 'smaller --lr',
                          'nothing was kept', "earlier run's")
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_divergence_after_finished_epochs_keeps_them(train_main, tmp_path, monkeypatch):
    # A nan in the 300th call of the loss: 235 steps come first, so that is epoch 2, step 65; its nan
    # gradient makes the weights nan, so step 66's logits are the first nan.
    calls = []

    def nan_at_step_300(O, y):
        calls.append(1)
        return F.cross_entropy(O, y) * (float('nan') if len(calls) == 300 else 1)
    monkeypatch.setitem(losses.LOSSES, 'torch', nan_at_step_300)  # train.LOSSES is this same dict
    code, _, err = train_main('--epochs', '3', '--loss', 'torch', '--out', tmp_path)
    assert code == 1 and 'diverged at epoch 2, step 66: loss is nan' in err
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

INTERRUPTIONS = {  # (flags, the signals sent, once this history file has this many rows)
    'ctrl-c as epoch 1 is saved': ([], [signal.SIGINT], 'history.csv', 1),
    'kill, then ctrl-c twice': ([], [signal.SIGTERM, signal.SIGINT, signal.SIGINT], 'history.csv', 2),
    'terminal closed': ([], [signal.SIGHUP], 'history.csv', 1),
    'compare': (['--compare'], [signal.SIGINT], 'history_naive.csv', 2),
}


@pytest.fixture(scope='module')
def interrupted(tmp_path_factory):
    """Every interruption of a long run at once: {case: (exit code, stderr, its folder)}."""
    def run(case):
        flags, signals, history, rows = INTERRUPTIONS[case]
        out = tmp_path_factory.mktemp(case.replace(' ', '-'))
        process = start('train.py', '--epochs', '1000', '--out', out, *flags)
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            if (out / history).exists() and len(read_csv(out / history)) >= rows:
                for sig in signals:
                    process.send_signal(sig)
                    time.sleep(0.05)
                break
            time.sleep(0.02)
        code, _, err = finish(process)
        return code, err, out
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(INTERRUPTIONS, pool.map(run, INTERRUPTIONS)))


@pytest.mark.parametrize('case', [case for case in INTERRUPTIONS if case != 'compare'])
def test_an_interrupted_run_keeps_its_finished_epochs_in_step_and_exits_130(interrupted, case):
    code, err, out = interrupted[case]
    assert code == 130 and 'Traceback' not in err and 'interrupted' in err
    rows = len(read_csv(out / 'history.csv'))
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['status'] == 'interrupted' and metrics['epochs_completed'] == rows >= 1
    assert torch.load(out / 'model.pt', weights_only=True)['epoch'] == rows  # one same epoch
    for name in ('curves.png', 'predictions.png', 'weights.png', 'confusion.png'):
        assert (out / name).read_bytes()[:4] == b'\x89PNG', name
    assert no_temporary_files(out) and not (out / '.lock').exists()


def test_an_interrupted_compare_keeps_each_file_in_step(interrupted):
    code, err, out = interrupted['compare']
    assert code == 130 and 'Traceback' not in err
    report = json.loads((out / 'compare.json').read_text())
    assert len(read_csv(out / 'history_naive.csv')) == report['final']['naive']['epoch']
    assert (out / 'compare.png').is_file() and no_temporary_files(out)


def test_ctrl_c_just_after_the_last_epoch_still_wraps_up(tmp_path):
    process = start('train.py', '--epochs', '2', '--out', tmp_path)
    for line in process.stdout:  # the last epoch's line comes right before the wrap-up
        if line.startswith('epoch   2/2'):
            process.send_signal(signal.SIGINT)
            break
    code, _, err = finish(process)
    assert code in (0, 130) and 'Traceback' not in err
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert metrics['status'] == ('finished' if code == 0 else 'interrupted')
    assert metrics['epochs_completed'] == 2 and 'calibration' in metrics
    for name in ('curves.png', 'predictions.png', 'weights.png', 'confusion.png', 'confidence.png'):
        assert (tmp_path / name).is_file(), name
    assert no_temporary_files(tmp_path)
