"""What every script's main() shares: clear errors, exit codes that tell the truth, clean stops on Ctrl-C or
kill, and output streams that may close at any moment (files written whole: support/writing.py).

    exit 0    what was asked was done
    exit 1    training diverged (a loss became nan/inf), or something unexpected broke
    exit 2    bad input: a flag, a data file, a checkpoint, an output folder; one line says which and why
    exit 130  interrupted (Ctrl-C, a plain `kill`, or the terminal closing); every finished result is kept

A script follows one pattern, and gets all of the above from it:

    import support.threads   # first, before torch loads: the environment its libraries read
    from support import cli
    if __name__ == '__main__':
        cli.start()          # before the slow imports: a signal while torch imports is a clean exit 130
    import torch
    def main(argv=None):     # returns an exit code; raises cli.InputError (or a subclass) for bad input
    if __name__ == '__main__':
        sys.exit(cli.run(main))

Only the standard library is imported here, so cli.start() runs before anything slow.
"""
import _thread
import argparse
import contextlib
import math
import os
import signal
import struct
import sys
import threading
import time

EXIT_DONE, EXIT_DIVERGED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
# Ctrl-C, kill, the terminal closed (POSIX), Ctrl-Break (Windows): whichever this platform has
STOP_SIGNALS = tuple(getattr(signal, name) for name in ('SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK')
                     if hasattr(signal, name))


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

_stop_requested = []  # the stop signals that arrived while this run's main() ran, in order
_in_main = []  # [True] while main() runs: only then does a stop signal raise KeyboardInterrupt
_stopped = []  # [True] once a run ended interrupted: what its teardown still prints is noise
_undelivered = []  # [signal] while a stop swallowed somewhere has not yet reached code that can act on it


def _exit_while_starting(signum, frame):
    # Nothing has been written yet, so there is nothing to keep; an exception raised here could be
    # swallowed by a bare `except:` in some library's import code, so leave at once.
    say("\ninterrupted")
    os._exit(EXIT_INTERRUPTED)


def _interrupt(signum, frame):
    # Remembered wherever its KeyboardInterrupt lands: Python swallows it in a __del__ or an at-fork hook
    # (logging's, as a DataLoader starts its workers), a library may catch it; _unraisable delivers it
    # again, the loops ask stop_if_requested, run() never reports 0 after it. After main(), the run is
    # being reported: a late signal must not cut that short, nor turn a finished run into exit 130.
    if _in_main:
        _stop_requested.append(signum)
        if _inside(_unraisable, frame):  # it would be swallowed in there again: delivered once out
            _undelivered[:] = [signum]
            return
        del _undelivered[:]
        raise KeyboardInterrupt


def _inside(function, frame):
    while frame is not None and frame.f_code is not function.__code__:
        frame = frame.f_back
    return frame is not None


def stop_if_requested():
    """Raise KeyboardInterrupt if Ctrl-C or kill arrived and its exception was lost somewhere."""
    if _stop_requested:
        raise KeyboardInterrupt


_previous_unraisablehook = [sys.unraisablehook]


def _unraisable(unraisable):
    """sys.unraisablehook. After a stop, what Python could not raise (in a __del__, a half-built object's
    clean-up) is its consequence, not news: not printed. The stop's own KeyboardInterrupt, swallowed there,
    is delivered again, until code that can act on it gets it."""
    seen = len(_stop_requested)
    if not (_stop_requested or _stopped):
        _previous_unraisablehook[0](unraisable)
    if _in_main and _stop_requested and (issubclass(unraisable.exc_type, KeyboardInterrupt)
                                         or len(_stop_requested) > seen):  # or a stop arrived in here
        _undelivered[:] = [_stop_requested[-1]]
        threading.Thread(target=_deliver_again, daemon=True).start()


def _deliver_again():
    # In another thread, until the main one, out of this hook and of what swallowed the stop, has raised it:
    # _thread.interrupt_main calls the signal's handler in the main thread (not while the signal is ignored).
    # Only while the main thread stands in the project's own code: raised inside a library, the exception
    # could land between a lock's acquire and the try that releases it (multiprocessing's queues do this),
    # and the clean-up that follows would wait for that lock for ever. From our code, it is raised at the
    # latest as the next function is entered, before that function takes anything.
    main = threading.main_thread().ident
    while _undelivered and _in_main:
        time.sleep(0.01)
        frame = sys._current_frames().get(main)
        if frame is None or not _is_ours(frame.f_code.co_filename):
            continue
        with contextlib.suppress(IndexError):
            _thread.interrupt_main(_undelivered[-1])


_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_ours = {}  # code file name -> whether it is the project's own (decided once: no system call while deciding)


def _is_ours(filename):
    if filename not in _ours:
        _ours[filename] = (os.path.abspath(filename).startswith(_PROJECT)
                           and 'site-packages' not in filename and os.sep + '.venv' + os.sep not in filename)
    return _ours[filename]


def _forget_in_child():
    # A forked child (a DataLoader worker) is not the run: it gets the handlers a fresh interpreter has, as
    # a spawned worker does on Windows and macOS: Ctrl-C is a KeyboardInterrupt (torch's workers expect it),
    # kill and hang-up end it (multiprocessing's terminate() expects that), and none of the run's records.
    # (Its copies of the run's folder locks: support/writing.py.)
    with contextlib.suppress(ValueError):  # forked from another thread: signals are not this thread's
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) in (_interrupt, _exit_while_starting):
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    del _stop_requested[:], _in_main[:], _stopped[:], _undelivered[:]


if hasattr(os, 'register_at_fork'):  # not on Windows, where workers are spawned
    os.register_at_fork(after_in_child=_forget_in_child)


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
                signal.raise_signal(pending[0])


@contextlib.contextmanager
def signals_ignored():
    """While the last files of a run are written, a second Ctrl-C (or kill) must not cut them short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (STOP_SIGNALS if _on_main_thread() else ())}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def first_line(error):
    """An exception's message cut to its first line, at most 300 characters: what a one-line error can hold."""
    return (str(error).strip().splitlines() or [''])[0][:300]


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
    del _stop_requested[:], _stopped[:]
    if sys.unraisablehook is not _unraisable:
        _previous_unraisablehook[0], sys.unraisablehook = sys.unraisablehook, _unraisable
    for sig in original:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _interrupt)
    try:
        _in_main.append(True)
        try:
            code = main(argv)
        finally:
            del _in_main[:], _undelivered[:]  # from here on a stop signal is only recorded: the run is reported
        if code == EXIT_DONE and _stop_requested:  # asked to stop, and its KeyboardInterrupt was swallowed
            raise KeyboardInterrupt
    except InputError as error:  # a name holding a newline (a path, a folder) still makes one line
        say("error: " + str(error).replace('\n', '\\n').replace('\r', '\\r'))
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
        if _stop_requested:  # broken by the stop (a half-built object, a worker gone): the stop is the news
            say("\ninterrupted")
            code = EXIT_INTERRUPTED
        else:
            say(f"error: unexpected {type(error).__name__}: {first_line(error)} (run with TRACEBACK=1 to see where)")
            code = EXIT_DIVERGED
    finally:
        with contextlib.suppress(ValueError, OSError):
            # After main, a late Ctrl-C must not turn a finished run into exit 130; a caller that was
            # not a script (a test calling run() in-process) gets its own handlers back.
            for sig, handler in original.items():
                signal.signal(sig, signal.SIG_IGN if handler is _exit_while_starting else handler)
    if _stop_requested or code == EXIT_INTERRUPTED:
        _stopped.append(True)  # what this run's clean-up still prints (in a __del__, at exit) is not news
    _stop_requested.clear()  # a caller's next main() starts afresh
    sys.stdout.flush()
    if 'stdout' in _lost_streams:
        say(f"note: standard output could not be written ({_lost_streams['stdout']}), so what followed was "
            "discarded; the work itself went on")
    sys.stderr.flush()
    return code
