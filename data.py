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
"""
import gzip
import os
import zlib

import torch

from cli import InputError

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


class DataError(InputError):
    """The data is missing or is not the official Fashion-MNIST; the message says which file and why."""


def _locate(name, folder):
    """Path of `name` or `name.gz` in folder, or None."""
    for candidate in (name, name + '.gz'):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _has_all_files(folder):
    return all(_locate(name, folder) for images, labels, _ in SPLITS.values() for name in (images, labels))


def find_data_dir(data_dir=None, download=True):
    """The folder holding the four IDX files, searched in the order the module docstring gives."""
    explicit = data_dir or os.environ.get(ENV_VAR)
    if explicit:
        if not os.path.isdir(explicit):
            problem = "is a file, not a folder" if os.path.exists(explicit) else "does not exist"
            raise DataError(f"data folder {explicit} {problem}. " + HOW_TO_GET_DATA)
        missing = [name for images, labels, _ in SPLITS.values() for name in (images, labels)
                   if not _locate(name, explicit)]
        if missing:
            raise DataError(f"data folder {explicit} lacks {', '.join(missing)} (nor .gz). " + HOW_TO_GET_DATA)
        return explicit
    torchvision_dir = os.path.join(TORCHVISION_ROOT, 'FashionMNIST', 'raw')
    for folder in (torchvision_dir, DEBIAN_DIR):
        if _has_all_files(folder):
            return folder
    if not download:
        raise DataError(f"Fashion-MNIST is neither in ./{torchvision_dir} nor in {DEBIAN_DIR}. " + HOW_TO_GET_DATA)
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
        raise DataError(f"Fashion-MNIST is neither in ./{torchvision_dir} nor in {DEBIAN_DIR}, and the download "
                        f"failed ({reason}). " + HOW_TO_GET_DATA) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return torchvision_dir


def _read_bytes(path):
    try:
        if path.endswith('.gz'):
            with gzip.open(path, 'rb') as f:
                return f.read()
        with open(path, 'rb') as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{path}: not a complete gzip file ({error}); download it again") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def read_idx(path, magic, shape):
    """Parse one IDX file into a uint8 tensor of `shape`, checking every header field.

    IDX layout: a big-endian int32 magic number (0x08 = uint8, then the number of dimensions),
    one big-endian int32 per dimension, then the values row-major. torchvision's reader
    (datasets.mnist.read_sn3_pascalvincent_tensor) takes only uncompressed paths and checks the
    header with bare asserts; we need a sentence naming the file and the field, so the header is
    checked here and the payload is one frombuffer.
    """
    data = _read_bytes(path)
    header_size = 4 * (1 + len(shape))
    if len(data) < header_size:
        raise DataError(f"{path}: file too short ({len(data)} bytes) for an IDX header; download it again")
    found_magic = int.from_bytes(data[0:4], 'big')
    if data[:2] == b'\x1f\x8b':  # gzip's signature under a raw file's name
        raise DataError(f"{path}: this is a gzip file; name it {os.path.basename(path)}.gz or decompress it")
    if found_magic != magic:
        kind = {IMAGES_MAGIC: 'images', LABELS_MAGIC: 'labels'}.get(found_magic, 'not an IDX uint8 file')
        raise DataError(f"{path}: wrong magic number {found_magic} (expected {magic}; this looks like {kind}). "
                        "Are the files swapped or renamed?")
    dims = tuple(int.from_bytes(data[4 * (i + 1):4 * (i + 2)], 'big') for i in range(len(shape)))
    if dims[0] != shape[0]:
        raise DataError(f"{path}: holds {dims[0]} examples, expected {shape[0]}")
    if dims[1:] != tuple(shape[1:]):
        raise DataError(f"{path}: images are {'x'.join(map(str, dims[1:]))}, expected "
                        f"{'x'.join(map(str, shape[1:]))}")
    expected_size = header_size + int(torch.tensor(shape).prod())
    if len(data) != expected_size:
        raise DataError(f"{path}: {len(data)} bytes where the header promises {expected_size}; "
                        "the file is truncated or damaged, download it again")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header_size).view(shape)


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
        yield (rows if rows.is_floating_point() else rows.float().div_(255)), y


def main():
    """`python data.py`: say where the data is and that it is valid; exit 1 when it cannot be found here."""
    import sys
    try:
        folder = find_data_dir(sys.argv[1] if len(sys.argv) > 1 else None, download=False)
        splits = [load_split(split, folder) for split in SPLITS]
    except DataError as error:
        print(f"data: {error}", file=sys.stderr)
        return 1
    sizes = ' / '.join(f"{images.shape[0]:,} {split}" for split, (images, _) in zip(SPLITS, splits))
    print(f"data: Fashion-MNIST in {folder} ({sizes}, files valid)")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
