"""The four Fashion-MNIST IDX files: where they are, and each one read no further than its header promises.

Where the data comes from, first match wins:
  1. --data-dir DIR (train.py) or the FASHION_MNIST_DIR environment variable
  2. ./data/FashionMNIST/raw              (torchvision's own layout)
  3. /usr/share/datasets/fashion-mnist    (Debian's package dataset-fashion-mnist)
  4. a download with torchvision into ./data (needs the network)
Each folder holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
t10k-labels-idx1-ubyte, each either gzipped (.gz) or raw.

A file is read no further than its header promises: the 16-byte header (8 for labels) is read and checked
first, then exactly N*28*28 (N) payload bytes, then one byte more to prove there is nothing else. A header
that says 2^31 images, or a file with gigabytes after the promised payload, is refused having read a few
bytes more than a valid file. Anything that is not a regular file (a folder, a FIFO, /dev/zero) is named
and never opened for reading. Every problem is a DataError naming the file and what to do.
"""
import contextlib
import gzip
import math
import os
import zlib

import torch

from support import cli, reading, writing

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
TORCHVISION_ROOT = 'data'  # torchvision keeps FashionMNIST/raw/ below this
ENV_VAR = 'FASHION_MNIST_DIR'

# split -> (images file, labels file, number of examples)
SPLITS = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 60_000),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte', 10_000),
}
# The IDX magic number is 0x0000 0x08 (unsigned byte) then the number of dimensions.
IMAGES_MAGIC = 0x0803  # 2051: uint8, 3 dims (N, 28, 28)
LABELS_MAGIC = 0x0801  # 2049: uint8, 1 dim (N,)

HOW_TO_GET_DATA = (
    "Provide Fashion-MNIST one of three ways: "
    f"(1) pass --data-dir DIR or set {ENV_VAR}=DIR, DIR holding the four official IDX files "
    "(gzipped or not); "
    f"(2) as root, 'apt-get install dataset-fashion-mnist' (files go to {DEBIAN_DIR}); "
    f"(3) run once with network access so torchvision downloads it into ./{TORCHVISION_ROOT}.")


class DataError(cli.InputError):
    """The data is missing or is not the official Fashion-MNIST; the message says which file and why."""


class DataNotFoundError(DataError):
    """No folder was given and none of the usual places holds the data (and no download was possible)."""


def locate(name, folder):
    """Path of `name` or `name.gz` in folder if it is a regular file (or a link to one), else None."""
    for candidate in (name, name + '.gz'):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _has_all_files(folder):
    return all(locate(name, folder) for images, labels, _ in SPLITS.values() for name in (images, labels))


def _missing_files(folder):
    """What keeps `folder` from being a data folder: one phrase per missing or unusable file, or []."""
    lacking, unusable = [], []
    for images, labels, _ in SPLITS.values():
        for name in (images, labels):
            if locate(name, folder):
                continue
            odd = [f"has {candidate}, but it {reading.not_a_regular_file(os.path.join(folder, candidate))}"
                   for candidate in (name, name + '.gz') if os.path.lexists(os.path.join(folder, candidate))]
            if odd:
                unusable += odd
            else:
                lacking.append(name)
    problems = [f"lacks {', '.join(lacking)} (nor .gz)"] if lacking else []
    return problems + unusable


def find_data_dir(data_dir=None, download=True):
    """The folder holding the four IDX files, searched in the order the module docstring gives.

    An explicit folder that is an empty string ('' from an unset shell variable, or FASHION_MNIST_DIR set
    to '') is refused rather than taken as "not given": the user meant some folder, and a search elsewhere
    could silently use other data than the one they named."""
    if data_dir is not None:
        explicit = os.fspath(data_dir)
        if not explicit:
            raise DataError("the data folder given is empty (an unset shell variable?); give the folder with "
                            "the four Fashion-MNIST files, or leave it out to search the usual places")
    else:
        explicit = os.environ.get(ENV_VAR)
        if explicit == '':
            raise DataError(f"{ENV_VAR} is set but empty (an unset shell variable?); set it to the folder with "
                            f"the four Fashion-MNIST files, or unset it to search the usual places")
    if explicit is not None:
        if not os.path.isdir(explicit):
            problem = "is a file, not a folder" if os.path.exists(explicit) else "does not exist"
            raise DataError(f"data folder {explicit} {problem}. " + HOW_TO_GET_DATA)
        problems = _missing_files(explicit)
        if problems:
            raise DataError(f"data folder {explicit} {'; '.join(problems)}. " + HOW_TO_GET_DATA)
        return explicit
    torchvision_dir = os.path.join(TORCHVISION_ROOT, 'FashionMNIST', 'raw')
    for folder in (torchvision_dir, DEBIAN_DIR):
        if _has_all_files(folder):
            return folder
    if not download:
        raise DataNotFoundError(f"Fashion-MNIST is neither in ./{torchvision_dir} nor in {DEBIAN_DIR}. "
                                + HOW_TO_GET_DATA)
    return _download(torchvision_dir)


def _download(torchvision_dir):
    import socket
    from torchvision.datasets import FashionMNIST
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # an offline machine should fail fast, not hang
    try:
        FashionMNIST(TORCHVISION_ROOT, train=True, download=True)
        FashionMNIST(TORCHVISION_ROOT, train=False, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ... when offline
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = ' '.join(dict.fromkeys([lines[0], lines[-1]]))[:200]
        raise DataNotFoundError(f"Fashion-MNIST is neither in ./{torchvision_dir} nor in {DEBIAN_DIR}, and the "
                                f"download failed ({reason}). " + HOW_TO_GET_DATA) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return torchvision_dir


GZIP_SIGNATURE = b'\x1f\x8b'
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # BadGzipFile is an OSError: catch these first


@contextlib.contextmanager
def _open_idx(path):
    """(stream of the file's IDX bytes, its size on disk): decompressed for .gz, as it is otherwise."""
    try:
        raw, size = reading.open_regular_file(path)
    except reading.NotAFile as why:
        raise DataError(f"{path}: {why}; expected a Fashion-MNIST data file") from None
    with raw:
        if not path.endswith('.gz'):
            yield raw, size
            return
        start = raw.read(4)
        raw.seek(0)
        if start[:2] != GZIP_SIGNATURE and start[:3] == b'\x00\x00\x08':  # IDX's magic: a raw file named .gz
            raise DataError(f"{path}: this is an uncompressed IDX file, not gzip; name it "
                            f"{os.path.basename(path)[:-3]} or compress it")
        with gzip.GzipFile(fileobj=raw, mode='rb') as unzipped:
            yield unzipped, size


def _read_into(stream, buffer):
    """Fill `buffer` from `stream`, stopping early only at the end of the data; the bytes read."""
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def read_idx(path, magic, shape):
    """Parse one IDX file into a uint8 tensor of `shape`, checking every header field before the payload.

    IDX layout: a big-endian int32 magic number (0x08 = uint8, then the number of dimensions), one
    big-endian int32 per dimension, then prod(dims) values row-major: header 4 * (1 + ndim) bytes,
    payload prod(shape) bytes, and nothing after. torchvision's reader
    (datasets.mnist.read_sn3_pascalvincent_tensor) takes only uncompressed paths, reads the whole file
    and checks the header with bare asserts; here the header is read and checked first (magic, then
    each dimension against `shape`), so a wrong or absurd header costs a few bytes, then exactly the
    promised payload is read into the tensor's buffer, then one byte more must not exist.
    """
    header_size, payload_size = 4 * (1 + len(shape)), math.prod(shape)
    expected_size = header_size + payload_size
    gzipped = path.endswith('.gz')
    decompressed = ' decompressed' if gzipped else ''
    with _open_idx(path) as (stream, disk_size):
        try:
            header = stream.read(header_size)
            if len(header) < header_size:
                raise DataError(f"{path}: file too short ({len(header)} bytes{decompressed}) for an IDX header; "
                                "download it again")
            if header[:2] == GZIP_SIGNATURE and not gzipped:
                raise DataError(f"{path}: this is a gzip file; name it {os.path.basename(path)}.gz or "
                                "decompress it")
            found_magic = int.from_bytes(header[0:4], 'big')
            if found_magic != magic:
                kind = {IMAGES_MAGIC: 'images', LABELS_MAGIC: 'labels'}.get(found_magic, 'not an IDX uint8 file')
                raise DataError(f"{path}: wrong magic number {found_magic} (expected {magic}; this looks like "
                                f"{kind}). Are the files swapped or renamed?")
            dims = tuple(int.from_bytes(header[4 * (i + 1):4 * (i + 2)], 'big') for i in range(len(shape)))
            if dims[0] != shape[0]:
                raise DataError(f"{path}: holds {dims[0]} examples, expected {shape[0]}")
            if dims[1:] != tuple(shape[1:]):
                raise DataError(f"{path}: images are {'x'.join(map(str, dims[1:]))}, expected "
                                f"{'x'.join(map(str, shape[1:]))}")
            if not gzipped and disk_size != expected_size:  # a raw file's size is known before reading it
                problem = "truncated or damaged" if disk_size < expected_size else "longer than it should be"
                raise DataError(f"{path}: {disk_size} bytes where the header promises {expected_size}; the file "
                                f"is {problem}, download it again")
            payload = bytearray(payload_size)
            got = _read_into(stream, payload)
            if got < payload_size:
                raise DataError(f"{path}: {header_size + got} bytes{decompressed} where the header promises "
                                f"{expected_size}; the file is truncated or damaged, download it again")
        except _GZIP_ERRORS as error:
            raise DataError(f"{path}: not a complete gzip file ({error or type(error).__name__}); "
                            "download it again") from None
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
        try:
            # One byte more, not the rest: proves the file ends here, and for gzip reaches the end of the
            # compressed stream, where its CRC and length are checked.
            extra = stream.read(1)
        except _GZIP_ERRORS as error:
            raise DataError(f"{path}: the gzip data is damaged or followed by other bytes "
                            f"({error or type(error).__name__}); download it again") from None
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
        if extra:
            raise DataError(f"{path}: more data than the {expected_size} bytes{decompressed} its header "
                            "promises; the file is damaged or not the official one, download it again")
    if not payload_size:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(payload, dtype=torch.uint8).view(shape)


def write_idx(path, tensor):
    """Write a uint8 tensor as an uncompressed IDX file (the magic 0x08, its dimensions, its bytes), whole or
    not at all (writing.write_atomically): a full disk is OutputError("cannot write PATH: ...")."""
    header = bytes([0, 0, 0x08, tensor.dim()]) + b''.join(n.to_bytes(4, 'big') for n in tensor.shape)

    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(header)
            f.write(tensor.contiguous().numpy().tobytes())
    writing.write_atomically(path, write)
