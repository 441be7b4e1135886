"""bench.py's processes: each measurement in a child of its own, the busy neighbour, and their cleanup.

Importing this module imports neither torch nor support.threads: bench.py's parent process imports it, and
the book's child must inherit the environment the user gave bench.py, not the one train.py sets.
"""
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

from support import cli

try:
    import resource  # POSIX: the peak memory of this process and of its children
except ImportError:  # Windows: peak memory is reported as unknown
    resource = None


class ChildFailed(Exception):
    """A child process failed for a reason other than bad input; the message is the one line to print."""


# ----------------------------------------------------------------------------- bench.py's measuring processes

def _libc():
    if not sys.platform.startswith('linux'):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded here, in the parent: a child between fork and exec should only call into it
PR_SET_PDEATHSIG = 1


def die_with_parent():
    """In a child, before exec: be killed if its parent dies without cleaning up (kill -9). Linux only;
    elsewhere a measuring child outlives such a parent until its measurement ends."""
    with contextlib.suppress(Exception):
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _own_group():
    """Popen's options that put a child in a process group of its own: a Ctrl-C at the terminal then
    reaches only bench.py, which stops the child with everything it started (kill_all)."""
    if os.name == 'nt':  # Windows: no sessions; a new process group gets no console Ctrl-C
        return dict(creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
    return dict(start_new_session=True, preexec_fn=die_with_parent if _LIBC is not None else None)


def _kill(process):
    """Kill a child with its process group where the platform has them (its DataLoader workers and busy
    neighbour go too). Elsewhere the child alone: the book's workers leave when torch's watch over them
    sees their parent gone, the busy neighbour when its stdin pipe closes."""
    with contextlib.suppress(OSError):
        if hasattr(os, 'killpg') and hasattr(signal, 'SIGKILL'):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()


def _maxrss_mb(maxrss):
    """getrusage's ru_maxrss in MB: bytes on macOS, KiB elsewhere."""
    return maxrss / (2**20 if sys.platform == 'darwin' else 1024)


class _Tail(threading.Thread):
    """Reads a child's stdout or stderr pipe to its end, keeping the last `limit` bytes. Pipes, not files in
    the temporary folder: a full disk there must not swallow the child's one line saying so."""

    def __init__(self, pipe, limit=1 << 20):
        super().__init__(daemon=True)
        self.pipe, self.limit, self.data = pipe, limit, bytearray()
        self.start()

    def run(self):
        with contextlib.suppress(OSError, ValueError), self.pipe:
            while chunk := self.pipe.read1(65536):
                self.data += chunk
                del self.data[:-self.limit]

    def text(self):
        self.join(timeout=10)  # a grandchild still holding the pipe must not hold bench.py
        return bytes(self.data).decode(errors='replace')


class Children:
    """Starts the measurement processes one at a time, each in a process group of its own (a Ctrl-C at the
    terminal reaches only bench.py, which then kills the child's whole group, DataLoader workers and busy
    neighbour included), reading their stdout and stderr through pipes."""

    def __init__(self, work_dir):
        self.work_dir, self.running, self.count = work_dir, [], 0
        self.log = []  # (what, wall seconds) of each finished process, in order

    def run(self, command, what):
        """Run `command` to the end: (stdout, wall seconds, peak RSS MB of the process itself, None where
        the platform does not report it). A failure raises cli.InputError (the child's exit 2: bad input),
        KeyboardInterrupt (its exit 130) or ChildFailed, each with the child's last line on stderr."""
        self.count += 1
        with cli.signals_deferred():  # the process is recorded before a Ctrl-C can act
            start = time.perf_counter()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, **_own_group())
            self.running.append(process)
        out, err = _Tail(process.stdout), _Tail(process.stderr)
        rss = None
        if hasattr(os, 'wait4'):  # POSIX: the exit status and the child's own peak memory at once
            _, status, usage = os.wait4(process.pid, 0)
            code, rss = os.waitstatus_to_exitcode(status), _maxrss_mb(usage.ru_maxrss)
        else:
            code = process.wait()
        wall = time.perf_counter() - start
        with cli.signals_deferred():
            process.returncode = code
            self.running.remove(process)
        self.log.append((what, wall))
        stdout = out.text()
        if code == 0:
            return stdout, wall, rss
        lines = [line.strip() for line in err.text().splitlines() if line.strip()]
        last = lines[-1] if lines else ''
        message = last[len('error: '):] if last.startswith('error: ') else last
        if code == cli.EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if code == cli.EXIT_BAD_INPUT:
            raise cli.InputError(message if last.startswith('error: ') else f"{what}: {last or 'bad input'}")
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            raise ChildFailed(f"{what} was killed by {name}" + (" (out of memory?)" if name == 'SIGKILL' else "")
                              + (f"; its last words: {message}" if message else ""))
        raise ChildFailed(f"{what} failed (exit {code}): {message or 'no message'}")

    def kill_all(self):
        """Kill whatever is still running, with its process group, and reap it."""
        for process in self.running:
            _kill(process)
            with contextlib.suppress(OSError):
                process.wait()
        self.running.clear()


# The busy neighbour: one single-threaded loop, and a thread that waits for its stdin to close (its parent
# gone, however it went, on every platform) and then ends the process.
NEIGHBOUR = ("import os, sys, threading\n"
             "threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()\n"
             "while True: pass")


@contextlib.contextmanager
def busy_neighbour():
    """One busy single-threaded process (`python -c "while True: pass"`) for as long as the block runs:
    what a user's other work looks like to a training run. Started in this process's group (a parent
    that kills the group kills it too), and it leaves by itself when this process ends, killed or not."""
    process = subprocess.Popen([sys.executable, '-c', NEIGHBOUR], stdin=subprocess.PIPE)
    try:
        time.sleep(0.1)  # its interpreter has started: busy from the first step on
        yield process
    finally:
        process.kill()
        process.wait()
        process.stdin.close()


def peak_rss_mb():
    """Peak resident memory of this process plus the largest of its finished children (the book's
    DataLoader workers), in MB; None where the platform does not report it."""
    if resource is None:
        return None
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return _maxrss_mb(own + children)


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
