"""What every script's main() shares: clear errors, exit codes that tell the truth, files written whole,
clean stops on Ctrl-C or kill, and output streams that may close at any moment.

    exit 0    what was asked was done
    exit 1    training diverged (a loss became nan/inf), or something unexpected broke
    exit 2    bad input: a flag, a data file, a checkpoint, an output folder; one line says which and why
    exit 130  interrupted (Ctrl-C, a plain `kill`, or the terminal closing); every finished result is kept

A script follows one pattern, and gets all of the above from it:

    from support import cli
    if __name__ == '__main__':
        cli.start()          # before the slow imports: a signal while torch imports is a clean exit 130
    import torch
    def main(argv=None):     # returns an exit code; raises cli.InputError (or a subclass) for bad input
    if __name__ == '__main__':
        sys.exit(cli.run(main))

Only the standard library is imported here, so cli.start() runs before anything slow.
"""
import argparse
import contextlib
import errno
import fcntl
import math
import os
import signal
import stat
import struct
import sys
import tempfile
import threading

EXIT_DONE, EXIT_DIVERGED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, the terminal closed


class InputError(Exception):
    """Bad input the user can fix (a flag, a file, a folder). The message is the one line they see."""


class OutputError(InputError):
    """An output folder or file cannot be created or written."""


# ----------------------------------------------------------------------------- output streams

_lost_streams = {}  # 'stdout'/'stderr' -> why writing to it stopped (closed pipe, full disk, ...)


class _GuardedStream:
    """stdout or stderr that never raises: when a write fails (the reader of a pipe went away, the disk is
    full, the descriptor was closed) the stream is pointed at /dev/null and the run goes on without it.
    A script's work must not be lost because nobody is reading what it prints."""

    def __init__(self, stream, name):
        self._stream, self._name = stream, name

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as error:
            self._lose(error)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError) as error:
            self._lose(error)

    def _lose(self, error):
        _lost_streams.setdefault(self._name, getattr(error, 'strerror', None) or str(error) or 'closed')
        # Point the descriptor at /dev/null, so that whatever is still buffered (and Python's own flush at
        # exit) goes nowhere instead of raising "Exception ignored ... BrokenPipeError".
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()
        self._stream = open(os.devnull, 'w')

    def isatty(self):
        with contextlib.suppress(OSError, ValueError):
            return self._stream.isatty()
        return False

    def __getattr__(self, name):  # encoding, fileno, errors, ...: what tqdm and print look for
        return getattr(self._stream, name)


def _guard_streams():
    """Give the process working stdin/stdout/stderr descriptors and streams that never raise."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # started with e.g. 2>&-: a file opened later would get this number and our errors
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
            if fd:
                _lost_streams.setdefault('stdout' if fd == 1 else 'stderr', 'closed')
    for name in ('stdout', 'stderr'):
        stream = getattr(sys, name)
        if isinstance(stream, _GuardedStream):
            continue
        if stream is None:  # Python leaves sys.stderr None when descriptor 2 was closed at start
            stream = open(os.devnull, 'w')
            _lost_streams.setdefault(name, 'closed')
        setattr(sys, name, _GuardedStream(stream, name))


def say(message):
    """One line on stderr, flushed now; never fails."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- signals

_stop_requested = []  # Ctrl-C / kill seen: checked by long loops in case the KeyboardInterrupt was swallowed


def _exit_while_starting(signum, frame):
    # Nothing has been written yet, so there is nothing to keep; an exception raised here could be
    # swallowed by a bare `except:` in some library's import code, so leave at once.
    say("\ninterrupted")
    os._exit(EXIT_INTERRUPTED)


def _interrupt(signum, frame):
    # The KeyboardInterrupt can land inside code that swallows it (an import lock's weakref callback did,
    # in a test), so the request is also remembered and the loops raise it again (stop_if_requested).
    _stop_requested.append(signum)
    raise KeyboardInterrupt


def stop_if_requested():
    """Raise KeyboardInterrupt if Ctrl-C or kill arrived and its exception was lost somewhere."""
    if _stop_requested:
        raise KeyboardInterrupt


def _on_main_thread():
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C or kill during the block is remembered and acted on as soon as the block is done: a file
    being renamed into place, or a temporary file being cleaned up, is never cut short."""
    pending = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
                for sig in (STOP_SIGNALS if _on_main_thread() else ())}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), pending[0])


@contextlib.contextmanager
def signals_ignored():
    """While the last files of a run are written, a second Ctrl-C (or kill) must not cut them short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (STOP_SIGNALS if _on_main_thread() else ())}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- files, written whole

_UMASK = os.umask(0)
os.umask(_UMASK)


def _why_not_written(error, folder):
    """Why a write failed, to end "cannot write PATH: ...". A library writing from its own C code says
    "disk full" in its own words (torch: "unexpected pos 1280 vs 1174"): the file system is asked."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    with contextlib.suppress(OSError):
        space = os.statvfs(folder)
        free = space.f_bfree if os.geteuid() == 0 else space.f_bavail  # root may use the reserved blocks
        if free == 0 or space.f_ffree == 0:
            return os.strerror(errno.ENOSPC)
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error):
    return (str(error).strip().splitlines() or [''])[0][:300]


def write_atomically(path, write):
    """Call write(tmp_path), then rename tmp over path: a reader, a crash or Ctrl-C sees the old file or the
    new one, never half of one, and no temporary file is left. Any failure of the write (OSError, a full
    disk, a library's own error) is OutputError("cannot write PATH: reason"); Ctrl-C passes through."""
    folder = os.path.dirname(path) or '.'
    with signals_deferred():
        tmp = reason = None
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
            os.close(fd)
            write(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
            os.replace(tmp, path)
        except BaseException as error:
            if isinstance(error, (KeyboardInterrupt, SystemExit, MemoryError, InputError)):
                _remove(tmp)
                raise
            reason = _why_not_written(error, folder)  # asked before the temporary file frees its space
        if reason is not None:
            # Raised here, outside the except clause, so the OutputError does not carry the library's
            # error as its context: that error's frames hold the writer (torch's keeps the temporary
            # file open), and the space stays taken for as long as anyone holds the OutputError.
            _remove(tmp)
            raise OutputError(f"cannot write {path}: {reason}")


def _remove(tmp):
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_text(path, text):
    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            f.write(text)
    write_atomically(path, write)


FS_IOC_GETFLAGS, FS_IMMUTABLE_FL, FS_APPEND_FL = 0x80086601, 0x10, 0x20  # linux/fs.h (chattr's flags)


def _cannot_replace(path):
    """Why this run could not replace the existing file `path` with its own (a rename over it), or None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"it cannot be examined ({error.strerror or error})"
    if not stat.S_ISREG(info.st_mode):
        return "something other than a file is in the way"
    if not os.access(path, os.W_OK):  # mode bits alone do not stop a rename over it; chattr's flags do
        flags, fd = 0, None
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            flags = struct.unpack('i', fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4])[0]
        if fd is not None:
            os.close(fd)
        if flags & (FS_IMMUTABLE_FL | FS_APPEND_FL):
            kind = 'immutable' if flags & FS_IMMUTABLE_FL else 'append-only'
            return f"it is {kind} (chattr +{kind[0]}; chattr -{kind[0]} lifts that), so this run cannot replace it"
        if os.geteuid() == 0:
            return "it cannot be replaced (writing to it is refused even to root)"
    return None


def prepare_out_dir(out, outputs=(), flag='--out'):
    """Make the output folder and check, before any work starts, that this run can write there: the folder
    takes new files, and each of `outputs` (file names in it) that an earlier run left is a regular file
    this run can replace. Otherwise OutputError naming the folder or the file, with nothing written."""
    if not out:
        raise OutputError(f"{flag} is empty; give a folder name, e.g. {flag} outputs")
    if os.path.islink(out) and not os.path.exists(out):
        raise OutputError(f"cannot use {out} as the output folder: it is a link to {os.readlink(out)}, "
                          f"which does not exist")
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"cannot write to output folder {out}: it is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        with signals_deferred():  # a name of its own: two runs may be preparing the same folder at once
            fd, probe = tempfile.mkstemp(dir=out, prefix='.write-test-')
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        raise OutputError(f"cannot write to output folder {out}: {error.strerror or error}") from None
    for name in outputs:
        why = _cannot_replace(os.path.join(out, name))
        if why:
            raise OutputError(f"cannot write {os.path.join(out, name)}: {why}; nothing was written")


_locks = []  # descriptors of the locked output folders: a lock lasts as long as the process


def _lock_holder(out):
    """The pid of the process holding an flock on the folder `out`, from /proc/locks; None if unknown."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        info = os.stat(out)
        inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        with open('/proc/locks') as f:  # "1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF"
            fields = next(fields for fields in map(str.split, f) if 'FLOCK' in fields and inode in fields)
        return int(fields[fields.index(inode) - 1])


def lock_out_dir(out, flag='--out'):
    """Refuse a second run writing into the same folder at once (their files would interleave). The flock
    is on the folder itself (no file among the outputs); the system releases it however the process ends."""
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise OutputError(f"cannot use output folder {out}: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _lock_holder(out)
            raise OutputError(f"another run{f' (process {holder})' if holder else ''} is writing to {out}/ "
                              f"right now; wait for it to finish or choose another {flag}") from None
        raise OutputError(f"cannot lock output folder {out}: {error.strerror or error}") from None
    _locks.append(fd)


# ----------------------------------------------------------------------------- command-line flags

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `PROG: error: argument --flag: why (see PROG --help)`, exit 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def exit(self, status=0, message=None):
        if message:
            say(message.rstrip('\n'))
        sys.exit(status)


def whole_number(low, high=None):
    """An argparse type: an integer n with low <= n (< high when given)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value >= high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high - 1}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


FLOAT32_TINY, FLOAT32_MAX = 2.0 ** -126, struct.unpack('f', struct.pack('I', 0x7F7FFFFF))[0]


def positive_float32(text):
    """An argparse type: a positive normal float32 (a learning rate): 1.2e-38 <= x <= 3.4e38. Anything
    outside would become 0 or inf in the float32 arithmetic it feeds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    if not FLOAT32_TINY <= value <= FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"must be between {FLOAT32_TINY:.4g} and {FLOAT32_MAX:.4g} "
                                         f"(a normal float32), got {text}")
    return value


def non_empty(text):
    """An argparse type for a path: an empty value is a mistake (often an unset shell variable)."""
    if not text:
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?); give a path")
    return text


# ----------------------------------------------------------------------------- the run

_started = []


def start():
    """First thing in a script run as a program: working streams, and Ctrl-C or kill while the slow
    imports run (torch takes a second) exits 130 with one line instead of a traceback or a silent 143."""
    if _started:
        return
    _started.append(True)
    _guard_streams()
    if _on_main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) != signal.SIG_IGN:  # ignored on purpose (nohup, a background job): keep
                signal.signal(sig, _exit_while_starting)


def run(main, argv=None):
    """Run main(argv) -> exit code under the rules in this module's docstring; return the exit code."""
    original = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if _on_main_thread() else {}
    start()
    _stop_requested.clear()
    for sig in original:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _interrupt)
    try:
        code = main(argv)
    except InputError as error:
        say(f"error: {error}")
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        say("\ninterrupted")
        code = EXIT_INTERRUPTED
    except SystemExit as exit_:  # argparse: --help (0) or a bad flag (2, its one line already printed)
        if isinstance(exit_.code, str):
            say(exit_.code)
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_DIVERGED)
    except MemoryError:
        say("error: out of memory")
        code = EXIT_DIVERGED
    except Exception as error:  # a bug, or something this project did not foresee: one line, not a traceback
        if os.environ.get('TRACEBACK'):
            import traceback
            traceback.print_exc()
        say(f"error: unexpected {type(error).__name__}: {_first_line(error)} (run with TRACEBACK=1 to see where)")
        code = EXIT_DIVERGED
    finally:
        with contextlib.suppress(ValueError, OSError):
            # After main, a late Ctrl-C must not turn a finished run into exit 130; a caller that was
            # not a script (a test calling run() in-process) gets its own handlers back.
            for sig, handler in original.items():
                signal.signal(sig, signal.SIG_IGN if handler is _exit_while_starting else handler)
    sys.stdout.flush()
    if 'stdout' in _lost_streams:
        say(f"note: standard output could not be written ({_lost_streams['stdout']}), so what followed was "
            "discarded; the work itself went on")
    sys.stderr.flush()
    return code
