"""support/writing.py: files written whole whatever fails underneath (a full disk, a library's own error, a
file that cannot be replaced, Ctrl-C), and the output folder checked and locked: every script that writes
refuses a second run into its folder, with flock on Linux and a lock file in the temporary folder without."""
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from common import ROOT, assert_one_line_error, read_csv, tiny_disk
from support import cli, writing
from test_contract import SCRIPTS, assets, tiny_run  # noqa: F401 -- assets: the fixture, shared


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
