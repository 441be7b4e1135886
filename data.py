"""Fashion-MNIST as tensors: find the four official IDX files, validate them, serve minibatches.

The book (d2l 3.5) wraps torchvision's FashionMNIST in ToTensor and a DataLoader, which turns every
image into a PIL image and back, every epoch. The whole training set is 47 MB of uint8, so here each
split is held as one tensor on the target device and a minibatch is a row gather plus a divide by 255:

    X: (B, 784) float32 in [0, 1]     y: (B,) int64 in 0..9

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
and never opened for reading.

`python data.py [DIR | --data-dir DIR] [--download]` checks the data where train.py would find it:
exit 0 found and valid, 1 found nowhere (the Makefile then installs it), 2 a given folder or a file is
wrong, 130 interrupted.
"""
import contextlib
import gzip
import math
import os
import shutil
import zlib

import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli, reading

if __name__ == '__main__':
    cli.start()  # before torch's import: Ctrl-C during it is a clean exit 130, and the streams are guarded

import torch

# The book's names for the ten classes, in label order (d2l 3.5.1, get_fashion_mnist_labels).
TEXT_LABELS = ['t-shirt', 'trouser', 'pullover', 'dress', 'coat',
               'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot']
NUM_CLASSES = 10
IMAGE_SIZE = 28
NUM_INPUTS = IMAGE_SIZE * IMAGE_SIZE  # 784: the book flattens each image into a vector

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


def _locate(name, folder):
    """Path of `name` or `name.gz` in folder if it is a regular file (or a link to one), else None."""
    for candidate in (name, name + '.gz'):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _has_all_files(folder):
    return all(_locate(name, folder) for images, labels, _ in SPLITS.values() for name in (images, labels))


def _missing_files(folder):
    """What keeps `folder` from being a data folder: one phrase per missing or unusable file, or []."""
    lacking, unusable = [], []
    for images, labels, _ in SPLITS.values():
        for name in (images, labels):
            if _locate(name, folder):
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
        start = os.pread(raw.fileno(), 4, 0)
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


def load_split(split, data_dir, device='cpu'):
    """One split as resident tensors: images (N, 784) uint8, labels (N,) int64, both on `device`."""
    images_name, labels_name, count = SPLITS[split]
    images_path, labels_path = _locate(images_name, data_dir), _locate(labels_name, data_dir)
    if images_path is None or labels_path is None:
        raise DataError(f"{data_dir}: missing {images_name if images_path is None else labels_name} (or .gz)")
    images = read_idx(images_path, IMAGES_MAGIC, (count, IMAGE_SIZE, IMAGE_SIZE)).reshape(count, NUM_INPUTS)
    labels = read_idx(labels_path, LABELS_MAGIC, (count,))
    if int(labels.max()) >= NUM_CLASSES:
        bad = int((labels >= NUM_CLASSES).nonzero()[0])
        raise DataError(f"{labels_path}: label {int(labels[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}")
    return images.to(device), labels.long().to(device)


def load_fashion_mnist(data_dir=None, device='cpu', download=True):
    """(train_images, train_labels, test_images, test_labels), uint8 (N, 784) and int64 (N,) on `device`."""
    folder = find_data_dir(data_dir, download=download)
    return (*load_split('train', folder, device), *load_split('test', folder, device))


def torchvision_root(data_dir, work_dir):
    """A copy of the data in the layout torchvision's FashionMNIST reads, work_dir/torchvision/FashionMNIST/
    raw/<uncompressed files>, for the book's own pipeline (bench.py, exercises.py); returns its root."""
    root = os.path.join(work_dir, 'torchvision')
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    os.makedirs(raw)
    for name in os.listdir(data_dir):
        source = os.path.join(data_dir, name)
        if name.endswith('.gz'):
            with gzip.open(source) as f_in, open(os.path.join(raw, name[:-3]), 'wb') as f_out:
                shutil.copyfileobj(f_in, f_out)
        elif 'ubyte' in name:
            shutil.copy(source, raw)
    return root


def to_features(images):
    """uint8 (N, 784) images -> float32 (N, 784) features in [0, 1]: X / 255, exactly ToTensor's scaling."""
    return images.float().div_(255)


def batches(images, labels, batch_size, generator=None):
    """Yield (X, y) minibatches covering every example exactly once, the last one possibly smaller.

    images: (N, 784) uint8 -> X: (B, 784) float32 in [0, 1], as ToTensor scales (divide by 255);
            (N, 784) float -> X: (B, 784) its rows as they are (features prepared once for a whole run)
    labels: (N,) int64     -> y: (B,) int64
    With a generator the order is a fresh permutation drawn from it (shuffle=True in the book's
    DataLoader); without one, the stored order (the book's test iterator). The permutation is drawn
    on the CPU so that a seed gives the same order on every device.
    """
    n = images.shape[0]
    order = None
    if generator is not None:
        order = torch.randperm(n, generator=generator).to(images.device, non_blocking=True)
    for start in range(0, n, batch_size):
        if order is None:
            rows, y = images[start:start + batch_size], labels[start:start + batch_size]
        else:
            index = order[start:start + batch_size]
            rows, y = images.index_select(0, index), labels.index_select(0, index)
        yield (rows if rows.is_floating_point() else to_features(rows)), y


def build_parser():
    parser = cli.ArgumentParser(
        prog='data.py',
        description="Find Fashion-MNIST where train.py would and check all four files. Exit codes: 0 found and "
                    "valid, 1 found nowhere (nor downloaded, with --download), 2 a given folder or a data file "
                    "is wrong, 130 interrupted.")
    parser.add_argument('folder', nargs='?', type=cli.non_empty, metavar='DIR', help="the same as --data-dir DIR")
    parser.add_argument('--data-dir', type=cli.non_empty, metavar='DIR',
                        help=f"folder with the four IDX files (.gz or raw); default: ${ENV_VAR}, "
                             f"./{TORCHVISION_ROOT}/FashionMNIST/raw, {DEBIAN_DIR}")
    parser.add_argument('--download', action='store_true',
                        help=f"when the data is nowhere, download it with torchvision into ./{TORCHVISION_ROOT} "
                             "(default: only look)")
    return parser


def main(argv=None):
    """`python data.py [DIR | --data-dir DIR] [--download]`: say where the data is and that it is valid.

    Found nowhere is exit 1, not 2: nothing the user typed was wrong, the data is just not installed yet,
    and the Makefile's `data` target takes any failure as "install it" (then runs this again)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.folder is not None and args.data_dir is not None:
        parser.error("give the data folder once, as DIR or as --data-dir DIR")
    try:
        folder = find_data_dir(args.data_dir if args.data_dir is not None else args.folder, download=args.download)
    except DataNotFoundError as error:
        cli.say(f"error: {error}")
        return 1
    splits = [load_split(split, folder) for split in SPLITS]
    sizes = ' / '.join(f"{images.shape[0]:,} {split}" for split, (images, _) in zip(SPLITS, splits))
    print(f"data: Fashion-MNIST in {folder} ({sizes}, files valid)")
    return 0


if __name__ == '__main__':
    raise SystemExit(cli.run(main))
