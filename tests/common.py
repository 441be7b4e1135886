"""What the tests share: where the scripts are; starting one, signalling it at a chosen moment, waiting for it
and reading its one line; train.py's main() run in this process; a disk that fills and a clock for what
could hang."""
import contextlib
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@contextlib.contextmanager
def released_locks():
    """Output folders locked inside the block, by a script's main() called in this process, are released at
    its end, as they are when a process ends."""
    from support import writing
    held = len(writing._locks)
    try:
        yield
    finally:
        while len(writing._locks) > held:
            writing.release_lock(writing._locks.pop())


def train_in_process(datasets, *argv):
    """train.main(['--device', 'cpu', *ARGV]) in this process on `datasets` (the session's copy of the data,
    not read again from its files): the exit code."""
    import train
    with pytest.MonkeyPatch.context() as patch, released_locks():
        patch.setattr(train.data, 'load_fashion_mnist', lambda *args, **kwargs: datasets)
        return train.main(['--device', 'cpu', *map(str, argv)])


def root_scripts():
    """Every program at the repository's root (a .py file with a `__main__` block): the process contract's
    test is parametrized over these, so a script added there is checked too."""
    def is_program(name):
        with open(os.path.join(ROOT, name), encoding='utf-8') as f:
            return "if __name__ == '__main__':" in f.read()
    return sorted(name for name in os.listdir(ROOT) if name.endswith('.py') and is_program(name))


def start(script, *args, cwd=ROOT, env=None, shell_prefix='', shell_suffix='', **popen):
    """`python SCRIPT ARGS` started with text pipes; shell_prefix (e.g. 'ulimit -d 1000; ') and shell_suffix
    (e.g. '> /dev/full 2>&-') run it through sh, with those limits and redirections."""
    command = [sys.executable, os.path.join(ROOT, script), *map(str, args)]
    if shell_prefix or shell_suffix:
        command = ['sh', '-c', f'{shell_prefix}exec "$0" "$@" {shell_suffix}', *command]
    streams = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    return subprocess.Popen(command, cwd=cwd, env=env, text=True, **{**streams, **popen})


def finish(process, timeout=300):
    """(exit code, stdout, stderr) of a started subprocess.Popen with text pipes."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out or '', err or ''


def assert_one_line_error(err, *fragments):
    """stderr is exactly one non-blank line, no traceback, holding every fragment."""
    assert 'Traceback' not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def no_temporary_files(folder):
    return [name for name in os.listdir(folder) if name.endswith('.tmp')] == []


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def handlers_installed(pid):
    """Whether process `pid` catches SIGTERM: cli.start() has run (Python alone catches only SIGINT)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open(f'/proc/{pid}/status') as f:
            caught = int(next(line for line in f if line.startswith('SigCgt:')).split()[1], 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))
    return False


def has_open(pid, fragment):
    """Whether process `pid` has a file whose path contains `fragment` open right now."""
    with contextlib.suppress(OSError):
        for fd in os.listdir(f'/proc/{pid}/fd'):
            with contextlib.suppress(OSError):
                if fragment in os.readlink(f'/proc/{pid}/fd/{fd}'):
                    return True
    return False


def children(pid):
    """The pids of process `pid`'s children that run the same program (forked: DataLoader workers), from
    /proc (Linux); an empty set where that cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            program = f.read()
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            found = set()
            for child in map(int, f.read().split()):
                with contextlib.suppress(OSError), open(f'/proc/{child}/cmdline', 'rb') as c:
                    if c.read() == program:
                        found.add(child)
            return found
    return set()


def send_when(process, sig, moment, timeout=120):
    """Send `sig` to a started process as soon as moment(its pid) holds; then (exit code, stdout, stderr)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if moment(process.pid):
            process.send_signal(sig)
            break
        time.sleep(0.005)
    return finish(process)


def torch_is_loading(pid):
    """Whether process `pid` has mapped libtorch: it is importing torch or past that."""
    with contextlib.suppress(OSError):
        with open(f'/proc/{pid}/maps') as maps:
            return 'libtorch' in maps.read()
    return False


@contextlib.contextmanager
def no_longer_than(seconds):
    """Fail instead of hanging when something blocks (opening a FIFO waits for a writer forever)."""
    def fail(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")
    if not hasattr(signal, 'setitimer'):  # Windows: no timer signal (and no FIFO that open() blocks on)
        yield
        return
    previous = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def tiny_disk(kilobytes):
    """A folder on a tmpfs of `kilobytes` KB, a disk that fills; None where mounting is not permitted (not
    root, or not Linux)."""
    folder = tempfile.mkdtemp(prefix='tiny-disk-')
    try:
        mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={kilobytes}k', 'tmpfs', folder],
                                 capture_output=True).returncode == 0
    except OSError:  # no mount command (Windows)
        mounted = False
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(['umount', '-l', folder], capture_output=True)
        os.rmdir(folder)


def odd_data_folder(folder, zeros):
    """The four real data files (links to them) beside what must never be opened: notes.gz, a FIFO (opening
    it waits for a writer for ever) and, when `zeros`, extra-ubyte, a link to /dev/zero (endless)."""
    import data
    real = data.find_data_dir(download=False)
    os.makedirs(folder)
    for images, labels, _ in data.SPLITS.values():
        for name in os.listdir(real):
            if name.startswith((images, labels)):
                os.symlink(os.path.abspath(os.path.join(real, name)), os.path.join(folder, name))
    if hasattr(os, 'mkfifo'):  # Windows has no FIFO
        os.mkfifo(os.path.join(folder, 'notes.gz'))
    if zeros:
        os.symlink('/dev/zero', os.path.join(folder, 'extra-ubyte'))
    return str(folder)


def running(pid):
    """Whether process `pid` still runs: a zombie has ended (an orphan that init here never reaps, e.g. the
    ldconfig that ctypes starts while torch imports, which a fork-and-exec briefly shows as a worker)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def make_fifo(path):
    """A FIFO at `path` (opening it for reading waits for a writer forever); the test is skipped where the
    system has none (Windows)."""
    if not hasattr(os, 'mkfifo'):
        pytest.skip("this system has no FIFOs (named pipes)")
    os.mkfifo(path)


def link_real_files(folder):
    """`folder` (a pathlib.Path, made if need be) holding links to the real data's files."""
    import data
    folder.mkdir(parents=True, exist_ok=True)
    source = data.find_data_dir(download=False)
    for name in os.listdir(source):
        os.symlink(os.path.join(source, name), folder / name)
    return folder
