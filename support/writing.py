"""Files written whole, and the output folder checked and locked before a run writes into it: the write path
every script's files take (support/cli.py's other half, kept apart for its length).

    write_atomically(path, write), write_text(path, text)   a temporary file renamed over the old one
    prepare_out_dir(out, outputs)                           the folder made, checked writable, locked
"""
import atexit
import contextlib
import errno
import hashlib
import os
import shutil
import stat
import struct
import tempfile
import time

from support.cli import InputError, OutputError, first_line, signals_deferred

try:
    import fcntl  # POSIX: the --out lock is an flock on the folder itself (lock_out_dir)
except ImportError:  # Windows: a lock file in the system's temporary folder instead
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)


def _why_not_written(error, folder):
    """Why a write failed, to end "cannot write PATH: ...". A library writing from its own C code says
    "disk full" in its own words (torch: "unexpected pos 1280 vs 1174"): the file system is asked."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    with contextlib.suppress(OSError):
        if hasattr(os, 'statvfs'):
            space = os.statvfs(folder)
            free = space.f_bfree if _is_root() else space.f_bavail  # root may use the reserved blocks
            if free == 0 or space.f_ffree == 0:
                return os.strerror(errno.ENOSPC)
        elif shutil.disk_usage(folder).free == 0:  # Windows: the space this user may use
            return os.strerror(errno.ENOSPC)
    return f"{type(error).__name__}: {first_line(error)}"


def _is_root():
    return hasattr(os, 'geteuid') and os.geteuid() == 0  # Windows has no root that ignores permissions


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
            _replace(tmp, path)
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


# Windows refuses to rename over a file another program holds open (a picture viewer showing curves.png
# while the run redraws it, a virus scanner reading the file just written): PermissionError. Such holds are
# often brief, so the rename is retried for a while before the run says so. Elsewhere a rename over a file
# never waits on its readers, and a PermissionError there is final.
REPLACE_RETRY_SECONDS = 2.0 if os.name == 'nt' else 0.0


def _replace(tmp, path):
    deadline = time.monotonic() + REPLACE_RETRY_SECONDS
    while True:
        try:
            return os.replace(tmp, path)
        except PermissionError as error:
            if time.monotonic() >= deadline:
                if REPLACE_RETRY_SECONDS:
                    raise PermissionError(error.errno, f"{error.strerror or error} (is it open in another "
                                                       f"program?)") from None
                raise
            time.sleep(0.05)


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


def _chattr_flags(path):
    """Linux's chattr flags of the file `path` (FS_IMMUTABLE_FL, ...); 0 where they cannot be read."""
    if fcntl is None or not hasattr(os, 'O_NONBLOCK'):
        return 0
    flags, fd = 0, None
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        flags = struct.unpack('i', fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4])[0]
    if fd is not None:
        os.close(fd)
    return flags


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
        if os.name == 'nt':  # Windows: a read-only file cannot be renamed over
            return "it is read-only (attrib -r lifts that), so this run cannot replace it"
        flags = _chattr_flags(path)
        if flags & (FS_IMMUTABLE_FL | FS_APPEND_FL):
            kind = 'immutable' if flags & FS_IMMUTABLE_FL else 'append-only'
            return f"it is {kind} (chattr +{kind[0]}; chattr -{kind[0]} lifts that), so this run cannot replace it"
        if _is_root():
            return "it cannot be replaced (writing to it is refused even to root)"
    return None


def prepare_out_dir(out, outputs=(), flag='--out'):
    """Make the output folder, lock it for this run (lock_out_dir), and check, before any work starts, that
    this run can write there: the folder takes new files, and each of `outputs` (file names in it) that an
    earlier run left is a regular file this run can replace. Otherwise OutputError naming the folder or the
    file, with nothing written. Every script that writes into an output folder calls this first."""
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
    lock = _lock(out, flag)
    for name in outputs:
        why = _cannot_replace(os.path.join(out, name))
        if why:
            release_lock(_locks.pop(_locks.index(lock)))  # refused with nothing written, nothing held
            raise OutputError(f"cannot write {os.path.join(out, name)}: {why}; nothing was written")


_locks = []  # an flocked descriptor (POSIX) or (lock file, FileLock) per folder; held until the process ends


def lock_out_dir(out, flag='--out'):
    """The lock prepare_out_dir takes; nothing if this process holds it on `out` already."""
    if not _held(out):
        _lock(out, flag)


def _held(out):
    for lock in _locks:
        with contextlib.suppress(OSError):
            if lock[0] == _lock_file(out) if isinstance(lock, tuple) else os.path.samestat(os.fstat(lock), os.stat(out)):
                return True
    return False


def release_lock(lock):
    """Give up one of _locks (removed from it by the caller), as the end of the process would."""
    if isinstance(lock, tuple):
        _remove(lock[0] + '.pid')
        lock[1].release()
    else:
        os.close(lock)


def _refused(out, flag, holder):
    return OutputError(f"another run{f' (process {holder})' if holder else ''} is writing to {out}{os.sep} "
                       f"right now; wait for it to finish or choose another {flag}")


def _lock(out, flag):
    """Refuse a second run writing into the folder `out` at once (their files would interleave), this
    process's own main() called again included; the lock taken is appended to _locks and returned. The flock
    is on the folder itself (no file among the outputs); the system releases it however the process ends."""
    if fcntl is None:
        return _lock_elsewhere(out, flag)
    try:
        fd = os.open(out, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    except OSError as error:
        raise OutputError(f"cannot use output folder {out}: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _refused(out, flag, _lock_holder(out)) from None
        raise OutputError(f"cannot lock output folder {out}: {error.strerror or error}") from None
    _locks.append(fd)
    return fd


def _lock_holder(out):
    """The pid of the process holding an flock on the folder `out`, from /proc/locks (Linux); None if unknown."""
    with contextlib.suppress(OSError, ValueError, StopIteration, AttributeError):
        info = os.stat(out)
        inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        with open('/proc/locks') as f:  # "1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF"
            fields = next(fields for fields in map(str.split, f) if 'FLOCK' in fields and inode in fields)
        return int(fields[fields.index(inode) - 1])


def _lock_file(out):
    """The lock file of the folder `out` where there is no flock: in the system's temporary folder, named
    after the folder's real path, so that no file is added among the outputs."""
    key = hashlib.sha256(os.fsencode(os.path.normcase(os.path.realpath(out)))).hexdigest()[:32]
    return os.path.join(tempfile.gettempdir(), f"softmax-out-{key}.lock")


def _lock_elsewhere(out, flag):
    """_lock without flock (Windows): the lock file of `out`, held with filelock (torch installs it), which
    the system releases however the process ends; runs sharing the temporary folder (the same user's TEMP)
    see each other's. The holder's pid is written beside it, for the message."""
    import filelock
    try:
        path = _lock_file(out)
        with open(path, 'a'):  # filelock takes a lock file it cannot create for one someone else holds
            pass
        lock = filelock.FileLock(path)
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = None
        with contextlib.suppress(OSError, ValueError):
            with open(path + '.pid') as f:
                holder = int(f.read())
        raise _refused(out, flag, holder) from None
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ''
        raise OutputError(f"cannot lock output folder {out}: {error.strerror or error}{where}") from None
    _locks.append((path, lock))
    with contextlib.suppress(OutputError):  # the pid only names the holder in a refusal
        write_text(path + '.pid', f"{os.getpid()}\n")
        atexit.register(_remove, path + '.pid')  # before the lock goes, as the process ends
    return _locks[-1]


def _close_locks_in_child():
    # A forked child (a DataLoader worker) must not keep the run's folder locked if it outlives the run;
    # closing its copy of the descriptor leaves the run's own lock in place.
    for fd in [lock for lock in _locks if isinstance(lock, int)]:
        _locks.remove(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


if hasattr(os, 'register_at_fork'):  # not on Windows, where workers are spawned
    os.register_at_fork(after_in_child=_close_locks_in_child)
