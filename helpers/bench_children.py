"""bench.py's processes: each measurement in a child of its own, the busy neighbour, and their cleanup.

This module never imports torch nor support.threads: bench.py's parent process imports it, and the
book's child must inherit the environment the user gave bench.py, not the one train.py sets.
"""
import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time

from support import cli


class ChildFailed(Exception):
    """A child process failed for a reason other than bad input; the message is the one line to print."""


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded here, in the parent: a child between fork and exec should only call into it


def die_with_parent():
    """In a child, before exec: be killed if its parent dies without cleaning up (kill -9)."""
    try:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, Linux only
    except Exception:  # elsewhere the parent's own cleanup still kills its children
        pass


class Children:
    """Starts the measurement processes one at a time, each in its own session (a Ctrl-C at the terminal
    reaches only bench.py, which then kills the child's whole process group, DataLoader workers and busy
    neighbour included), with stdout and stderr in files of the work folder."""

    def __init__(self, work_dir):
        self.work_dir, self.running, self.count = work_dir, [], 0
        self.log = []  # (what, wall seconds) of each finished process, in order

    def run(self, command, what):
        """Run `command` to the end: (stdout, wall seconds, peak RSS MB of the process itself). A failure
        raises cli.InputError (the child's exit 2: bad input), KeyboardInterrupt (its exit 130) or
        ChildFailed, each with the child's last line on stderr."""
        self.count += 1
        paths = [os.path.join(self.work_dir, f"child-{self.count}.{stream}") for stream in ('out', 'err')]
        with open(paths[0], 'wb') as out, open(paths[1], 'wb') as err:
            with cli.signals_deferred():  # the process is recorded before a Ctrl-C can act
                start = time.perf_counter()
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                           start_new_session=True, preexec_fn=die_with_parent)
                self.running.append(process)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        with cli.signals_deferred():
            process.returncode = os.waitstatus_to_exitcode(status)
            self.running.remove(process)
        code = process.returncode
        self.log.append((what, wall))
        with open(paths[0]) as f:
            stdout = f.read()
        if code == 0:
            return stdout, wall, usage.ru_maxrss / 1024
        with open(paths[1], errors='replace') as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        last = lines[-1] if lines else ''
        message = last[len('error: '):] if last.startswith('error: ') else last
        if code == cli.EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if code == cli.EXIT_BAD_INPUT:
            raise cli.InputError(message if last.startswith('error: ') else f"{what}: {last or 'bad input'}")
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            raise ChildFailed(f"{what} was killed by {name}" + (" (out of memory?)" if -code == 9 else "")
                              + (f"; its last words: {message}" if message else ""))
        raise ChildFailed(f"{what} failed (exit {code}): {message or 'no message'}")

    def kill_all(self):
        """Kill whatever is still running, with its process group, and reap it."""
        for process in self.running:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(process.pid, 0)
        self.running.clear()


@contextlib.contextmanager
def busy_neighbour():
    """One busy single-threaded process (`python -c "while True: pass"`) for as long as the block runs:
    what a user's other work looks like to a training run. Started in this process's group (a parent
    that kills the group kills it too) and killed with this process if that dies first."""
    process = subprocess.Popen([sys.executable, '-c', 'while True: pass'], stdin=subprocess.DEVNULL,
                               preexec_fn=die_with_parent)
    try:
        time.sleep(0.1)  # its interpreter has started: busy from the first step on
        yield process
    finally:
        process.kill()
        process.wait()


def peak_rss_mb():
    """Peak resident memory of this process plus the largest of its finished children (the book's
    DataLoader workers), in MB; Linux reports KiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def whole_pair(children, train_command, floor_command, index):
    """One run of train.py's whole command and one of its floor process, alternating which goes first."""
    pair = {}
    for key in (('train.py', 'floor') if index % 2 == 0 else ('floor', 'train.py')):
        command = train_command if key == 'train.py' else floor_command
        stdout, wall, rss = children.run(command, f"the whole command ({key})")
        pair[key] = dict(seconds=wall, peak_rss_mb=rss)
        if key == 'floor':
            # Each floor epoch ran with 1 thread and with all of them: the process's time counts only the
            # faster run of each (its start-up, imports and data loading as measured, from the outside).
            floor = json.loads(stdout.strip().splitlines()[-1])['floor']
            pair[key].update(process_seconds=wall, seconds=wall - floor['total'] + sum(floor['seconds']))
    return pair
