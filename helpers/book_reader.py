"""The book's own reader (d2l 3.5.3), for bench.py's book pipeline and exercises.py's 3.5 exercises:
DataLoader(dataset, batch_size, shuffle, num_workers=4) whose workers start and stop so that an interruption
is one clean exit, on every start method; and the temporary folder its copy of the data goes to.

Importing this module imports no torch (book_loader does, when called): bench.py's parent imports it.
"""
import os
import signal
import tempfile

from support import cli


def quiet_worker(worker_id=None):
    """The book's DataLoader workers' worker_init_fn, also run first thing by a spawned worker (Windows' and
    macOS' start method), which imports the script as __mp_main__. A stop signal sent to the whole process
    group (Ctrl-C at a terminal or a console) is the parent's to act on, and it shuts its workers down
    (worker_batches): Ctrl-C and hang-up are ignored here. Kill ends a worker at once, quietly, with exit 0:
    torch's parent then sees a worker that finished, not one that failed and must be reported (torch's own
    handler does so only for a kill from the parent)."""
    for name in ('SIGINT', 'SIGHUP', 'SIGBREAK'):  # whichever this platform has
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave)


def _leave(signum, frame):
    os._exit(0)


def book_loader(dataset, batch_size, shuffle, num_workers=4, context=None):
    """The book's reader, DataLoader(dataset, batch_size, shuffle, num_workers=4) (d2l 3.5.3), for bench.py's
    book pipeline and exercises.py's 3.5.1. Its workers run module-level code only (quiet_worker) and get
    the dataset by pickling, so that they also work spawned (Windows' and macOS' start method: a fresh
    interpreter that imports the script as __mp_main__, where nothing runs its main); `context` picks the
    start method, the platform's own by default (tests/test_exercises.py forces 'spawn')."""
    from torch.utils import data as torch_data
    workers = dict(worker_init_fn=quiet_worker, multiprocessing_context=context) if num_workers else {}
    return torch_data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                 **workers)


def worker_batches(loader):
    """Iterate over the batches of `loader` (a torch DataLoader), as `for batch in loader` does, but with
    its worker processes started and shut down while stop signals are deferred (cli.signals_deferred):
    a Ctrl-C or kill never lands half-way through their start (at-fork hooks, a half-built iterator whose
    clean-up then fails) or their shutdown (torch's __del__, where Python would swallow it); it is acted on
    as soon as that is done. Iterating is not deferred: a worker that hangs can still be interrupted.
    Close the generator when done (contextlib.closing): the workers stop then, not whenever it is
    collected, and a stop that came meanwhile is raised in the caller's frame."""
    iterator = None
    try:
        with cli.signals_deferred():
            iterator = iter(loader)
        yield from iterator
    finally:
        with cli.signals_deferred():
            # the iterator's own clean-up, which its __del__ would run; none for a loader without workers
            shutdown = getattr(iterator, '_shutdown_workers', None)
            if shutdown is not None:
                shutdown()


def work_folder(prefix):
    """A new folder in the temporary folder (TMPDIR, TEMP or TMP, else the system's), for the book's copy of
    the data and the whole command's outputs; one that cannot be made is cli.OutputError, `cannot write
    PATH: reason`. The caller removes it."""
    try:
        return tempfile.mkdtemp(prefix=prefix)
    except OSError as error:
        where = error.filename or tempfile.gettempdir()
        raise cli.OutputError(f"cannot write {where}: {error.strerror or error}") from None
