"""Input files read safely: only a regular file is opened, and nothing a FIFO or a device does can hang us."""
import os
import stat

from support.cli import InputError


def not_a_regular_file(path, what='a file'):
    """Why `path` is not a regular file to read, as the end of a sentence ("is a FIFO (named pipe), not a
    file"); None when it is one. Asked before opening: a FIFO would block open() until a writer came, a
    device such as /dev/zero would hand out bytes forever, and opening some devices does something."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"is a link to {os.readlink(path)}, which does not exist"
        return "does not exist"
    except OSError as error:
        return f"cannot be examined ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISCHR, 'a device'),
             (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket')]
    kind = next((name for test, name in kinds if test(mode)), 'not a regular file')
    return f"is {kind}, not {what}"


class NotAFile(InputError):
    """Why a file to read is not a regular file or cannot be opened: the end of a sentence after its path."""


def open_regular_file(path, what='a file'):
    """(binary file object, size in bytes) of `path`, opened for reading; raises NotAFile otherwise.

    Only a regular file is opened, and non-blocking, so that a FIFO swapped in after the check cannot hang
    us; fstat then confirms what was opened (O_NONBLOCK changes nothing for a regular file). Windows has no
    O_NONBLOCK (nor FIFOs that open() could block on) and opens in text mode unless told O_BINARY."""
    problem = not_a_regular_file(path, what)
    if problem:
        raise NotAFile(problem)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0))
    except OSError as error:
        raise NotAFile(f"cannot read ({error.strerror or error})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotAFile("is not a regular file")
    return open(fd, 'rb'), info.st_size
