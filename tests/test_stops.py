"""A stop (Ctrl-C, kill) wherever it lands is exit 130 and one line: swallowed in a __del__ or a bare except,
in an error it caused, in a forked child, in a DataLoader's workers as they start, read or shut down, and in
exercises.py's book reader end to end."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from common import ROOT, assert_one_line_error, children, finish, running, start
from support import cli
from test_contract import skip_if_ignored


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
