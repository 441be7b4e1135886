"""Fashion-MNIST as tensors (d2l 3.5): each split held whole on the training device, a minibatch one row gather.

The book wraps torchvision's FashionMNIST in ToTensor and a DataLoader, which turns every image into a PIL
image and back, every epoch. The whole training set is 47 MB of uint8, so here each split is one tensor on
the device that trains, and a minibatch is one row gather from it:

    images: (N, 784) uint8        labels: (N,) int64 in 0..9        X = images / 255: (N, 784) float32 in [0, 1]

Finding the four official IDX files and checking each one is support/datafiles.py's job: a missing or
damaged file stops the run with one line naming it.

`python data.py [DIR | --data-dir DIR] [--download]` checks the data where train.py would find it:
exit 0 found and valid, 1 found nowhere (the Makefile then installs it), 2 a given folder or a file is
wrong, 130 interrupted.
"""
import os

import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli

if __name__ == '__main__':
    cli.start()  # before torch's import: Ctrl-C during it is a clean exit 130, and the streams are guarded

import torch

from support.datafiles import (DEBIAN_DIR, ENV_VAR, IMAGES_MAGIC, LABELS_MAGIC, SPLITS, TORCHVISION_ROOT,
                               DataError, DataNotFoundError, find_data_dir, locate, read_idx, write_idx)

# The book's names for the ten classes, in label order (d2l 3.5.1, get_fashion_mnist_labels).
TEXT_LABELS = ['t-shirt', 'trouser', 'pullover', 'dress', 'coat',
               'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot']
NUM_CLASSES = 10
IMAGE_SIZE = 28
NUM_INPUTS = IMAGE_SIZE * IMAGE_SIZE  # 784: the book flattens each image into a vector


def load_fashion_mnist(data_dir=None, device='cpu', download=True):
    """(train_images, train_labels, test_images, test_labels), uint8 (N, 784) and int64 (N,) on `device`."""
    folder = find_data_dir(data_dir, download=download)
    return (*load_split('train', folder, device), *load_split('test', folder, device))


def load_split(split, data_dir, device='cpu'):
    """One split as resident tensors: images (N, 784) uint8, labels (N,) int64, both on `device`."""
    images_name, labels_name, count = SPLITS[split]
    images_path, labels_path = locate(images_name, data_dir), locate(labels_name, data_dir)
    if images_path is None or labels_path is None:
        raise DataError(f"{data_dir}: missing {images_name if images_path is None else labels_name} (or .gz)")
    images = read_idx(images_path, IMAGES_MAGIC, (count, IMAGE_SIZE, IMAGE_SIZE)).reshape(count, NUM_INPUTS)
    labels = read_idx(labels_path, LABELS_MAGIC, (count,))
    if int(labels.max()) >= NUM_CLASSES:
        bad = int((labels >= NUM_CLASSES).nonzero()[0])
        raise DataError(f"{labels_path}: label {int(labels[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}")
    return images.to(device), labels.long().to(device)


def to_features(images):
    """uint8 (N, 784) images -> float32 (N, 784) features in [0, 1]: X / 255, exactly ToTensor's scaling."""
    return images.float().div_(255)


def minibatch(features, labels, index):
    """The examples `index` (B,) as a minibatch: X = features[index] (B, 784), y = labels[index] (B,).
    One row gather each, on the device the data lives on."""
    return features.index_select(0, index), labels.index_select(0, index)


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
    order = None if generator is None else torch.randperm(n, generator=generator).to(images.device)
    for start in range(0, n, batch_size):
        if order is None:
            X, y = images[start:start + batch_size], labels[start:start + batch_size]
        else:
            X, y = minibatch(images, labels, order[start:start + batch_size])
        yield (X if X.is_floating_point() else to_features(X)), y


def torchvision_root(data_dir, work_dir):
    """The data in the layout torchvision's FashionMNIST reads, work_dir/torchvision/FashionMNIST/raw/ with
    the four files uncompressed, for the book's own pipeline (bench.py, exercises.py); returns its root.

    Only the four files are read, each checked and no further than its header promises (load_split), and
    written again through cli's one write path: nothing else in data_dir is touched, and a full disk is
    OutputError("cannot write PATH: ...")."""
    root = os.path.join(work_dir, 'torchvision')
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    try:
        os.makedirs(raw, exist_ok=True)
    except OSError as error:
        raise cli.OutputError(f"cannot write {raw}: {error.strerror or error}") from None
    for split, (images_name, labels_name, count) in SPLITS.items():
        images, labels = load_split(split, data_dir)
        write_idx(os.path.join(raw, images_name), images.view(count, IMAGE_SIZE, IMAGE_SIZE))
        write_idx(os.path.join(raw, labels_name), labels.to(torch.uint8))
    return root


# ----------------------------------------------------------------------------- python data.py

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
