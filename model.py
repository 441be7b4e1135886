"""Softmax regression's linear layer, O = XW + b (d2l 3.4.2 and 3.6.1).

    X: (n, d) flattened images, d = 784      W: (d, q) weights, q = 10      b: (q,) bias
    O: (n, q) logits; softmax(O) turns each row into class probabilities (losses.py)

`python model.py outputs/model.pt [--data-dir DIR]` loads a checkpoint that train.py wrote and prints what
it holds and its accuracy on the test set. Exit 0 done, 2 the checkpoint (or the data) is unusable, one line
saying why, 130 interrupted.
"""
import os
import pickle
import re
import stat
import sys
import warnings
import zipfile

import machinery.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from machinery import cli

if __name__ == '__main__':
    cli.start()  # before torch's import: Ctrl-C during it is a clean exit 130, and the streams are guarded

import torch
from torch import nn

import data
from data import NUM_CLASSES, NUM_INPUTS


class CheckpointError(cli.InputError):
    """model.pt is missing, corrupt, or not a checkpoint of this model; the message says which."""


class SoftmaxRegression(nn.Module):
    """O = XW + b, with W drawn from N(0, sigma^2) and b = 0 as in the book (d2l 3.6.1)."""

    def __init__(self, num_inputs=NUM_INPUTS, num_outputs=NUM_CLASSES, sigma=0.01):
        super().__init__()
        # W is (784, 10) as in the book, but its storage is the transpose: (10, 784) contiguous,
        # W = storage.T. Every GEMM then reads memory in the order BLAS prefers; measured on this
        # machine's 2 cores, a (784, 10) row-major W made X @ W 2.3x slower and the weight gradient
        # X.T @ G 2.9x slower. The arithmetic and the distribution of W are the book's.
        storage = torch.normal(0.0, sigma, size=(num_outputs, num_inputs))
        self.W = nn.Parameter(storage.T)
        self.b = nn.Parameter(torch.zeros(num_outputs))

    def forward(self, X):
        """X: (n, 784) or (n, 1, 28, 28) images -> O: (n, 10) logits."""
        X = X.reshape(-1, self.W.shape[0])  # the book's X.reshape((-1, W.shape[0]))
        return torch.addmm(self.b, X, self.W)  # XW + b, the bias added inside the GEMM

    def gradients(self, X, dO):
        """The layer's backward by hand: dW = X^T dO (784, 10), db = sum_i dO_i (10,).

        X: (n, 784) the forward's input, dO: (n, 10) the loss's gradient with respect to O.
        Computed as (dO^T X)^T so that the GEMM writes W's (10, 784) storage order directly.
        """
        return (dO.T @ X).T, dO.sum(0)


# A train.py checkpoint is about 33 KB: W and b (7,850 float32) and a small dict of settings. Anything far
# larger is not one, and is refused from its size (and, for a zip, the sizes its directory promises)
# before a byte of it is unpacked.
MAX_CHECKPOINT_BYTES = 16 * 2**20


def _not_a_file(path):
    """Why `path` cannot be a checkpoint file, or None. Asked before opening it: a FIFO would block the
    open and /dev/zero would never end."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such file" if not os.path.islink(path) else f"a link to {os.readlink(path)}, which does not exist"
    except OSError as error:
        return f"cannot read ({error.strerror or error})"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a checkpoint file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a FIFO or a device?), not a checkpoint file"
    return None


def _load_failure(path, error, is_zip):
    """One line for an exception from torch.load, without torch's advice to load with weights_only=False
    (which runs whatever code the file carries) and without its paragraphs."""
    text = str(error)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"{path}: refused to load: it asks for the Python object {unsafe.group(1)}, and a checkpoint "
                "is loaded as tensors and plain values only (anything more could run code from the file)")
    if isinstance(error, pickle.UnpicklingError):
        if not is_zip:  # 'Unsupported operand 60' for an HTML page: not torch.save's output at all
            return f"{path}: not a readable PyTorch checkpoint (neither a zip archive nor pickled tensors)"
        detail = next((line.strip() for line in text.split('WeightsUnpickler error:')[-1].splitlines()
                       if line.strip()), '')
        detail = '' if 'weights_only' in detail or len(detail) > 120 else f" ({detail.split('. ')[0]})"
        return f"{path}: refused to load: its pickled data holds more than tensors and plain values{detail}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), '')
    first = re.sub(r'^\[enforce fail at [^\]]*\]\s*\.?\s*', '', first)  # c10's "where", not "what"
    first = first.split('. ')[0].rstrip('.') or type(error).__name__  # torch's first sentence; the rest is boilerplate
    if 'weights_only' in first:
        first = type(error).__name__
    return f"{path}: not a readable PyTorch checkpoint ({first[:200]})"


def _torch_load(path, map_location):
    """torch.load(path) with weights_only=True, after checking what the file is and how big; the object,
    or CheckpointError with one line."""
    problem = _not_a_file(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO swapped in cannot block us
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    with open(fd, 'rb') as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path}: is not a regular file, not a checkpoint file")
        if info.st_size == 0:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (the file is empty)")
        if info.st_size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: {info.st_size:,} bytes, far more than a checkpoint of this model "
                                  f"(about 33 KB); not a train.py checkpoint")
        try:
            # A zip's directory says how big each entry unpacks to: a compressed bomb is refused from it.
            is_zip = f.read(4) == b'PK\x03\x04'
            unpacked = sum(entry.file_size for entry in zipfile.ZipFile(f).infolist()) if is_zip else 0
            f.seek(0)
        except (zipfile.BadZipFile, EOFError, ValueError, OSError):  # torch's own words: "Invalid argument"
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (a truncated or damaged zip "
                                  "archive)") from None
        if unpacked > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: its entries unpack to {unpacked:,} bytes, far more than a checkpoint "
                                  "of this model (about 33 KB); not a train.py checkpoint")
        try:
            # torch warns about sparse tensors, TypedStorage and its defaults: none of it is the user's to act
            # on, and the one thing to say is the CheckpointError below.
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                return torch.load(f, map_location=map_location, weights_only=True)
        except Exception as error:  # torch.load raises many kinds: pickle, zip, EOF, unsupported global...
            raise CheckpointError(_load_failure(path, error, is_zip)) from None


def _describe(value):
    """A state-dict entry in a few characters: its shape if a tensor, else its type."""
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    return 'nested tensor' if value.is_nested else tuple(value.shape)  # a nested tensor has no single shape


def _tensor_problem(tensor):
    """Why `tensor` cannot hold weights (a meta, sparse, nested, quantized or non-float tensor), or None."""
    if tensor.device.type == 'meta':
        return "is a meta tensor (a shape with no values)"
    if tensor.layout != torch.strided or tensor.is_nested:
        return f"is a {str(tensor.layout).replace('torch.', '')} tensor, not dense weights"
    if tensor.is_quantized or not tensor.is_floating_point():
        return f"holds {str(tensor.dtype).replace('torch.', '')} values, not floating-point weights"
    return None


def load_checkpoint(path, map_location='cpu'):
    """(model, checkpoint) from a model.pt that train.py wrote: {'model': state dict, 'config': ..., ...}.

    Loaded with weights_only=True (tensors and plain values, never code), then checked entry by entry: the
    state dict must be exactly {'W': (784, 10), 'b': (10,)} of dense floating-point values, every one of
    them finite. A checkpoint of nan or inf weights is refused: its predictions are argmax over nan, a
    constant class, and an "accuracy 0.1000" would look like a result. train.py never saves one (it keeps
    the last finite epoch), so such a file is damaged or from elsewhere. Everything else in the checkpoint
    (config, epoch, ...) is returned as found, unchecked: it describes the model and may be anything.
    """
    checkpoint = _torch_load(path, map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('model'), dict):
        raise CheckpointError(f"{path}: not a train.py checkpoint (expected a dict with a 'model' state dict)")
    model = SoftmaxRegression()
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    state = checkpoint['model']
    found = {name: _describe(value) for name, value in state.items()}
    if found != expected:
        raise CheckpointError(f"{path}: holds {found or 'no tensors'}, but this model has {expected}")
    for name, tensor in state.items():
        problem = _tensor_problem(tensor)
        if problem:
            raise CheckpointError(f"{path}: {name} {problem}; not a checkpoint of this model")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # copy_ instead of load_state_dict: only the two checked tensors are used, converted to float32,
            # and nothing else the file's dict carries (such as _metadata) has a say.
            parameter.copy_(state[name])
            bad = int((~torch.isfinite(parameter)).sum())
            if bad:
                raise CheckpointError(f"{path}: {name} holds {bad} non-finite values (nan or inf) out of "
                                      f"{parameter.numel()}: the weights of a diverged or damaged run, not a "
                                      "trained model")
    return model, checkpoint


def _field(value, kind=str):
    """A checkpoint's setting as printable text: a short one-line string (kind=str) or a whole number
    (kind=int), else '?'. The settings describe the model and may be anything, or missing."""
    if kind is int:  # bounded: str() of a 5,000-digit int raises, and no run has a trillion epochs
        return str(value) if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12 else '?'
    return value if isinstance(value, str) and value.isprintable() and 0 < len(value) <= 40 else '?'


def build_parser():
    parser = cli.ArgumentParser(prog='model.py',
                                description="Load a model.pt written by train.py and evaluate it on the "
                                            "Fashion-MNIST test set. Exit codes: 0 done, 2 the checkpoint or "
                                            "the data is unusable, 130 interrupted.")
    parser.add_argument('checkpoint', type=cli.non_empty, help="path to model.pt")
    parser.add_argument('--data-dir', type=cli.non_empty, metavar='DIR',
                        help=f"folder with the Fashion-MNIST IDX files; default: ${data.ENV_VAR}, "
                             f"./{data.TORCHVISION_ROOT}/FashionMNIST/raw, {data.DEBIAN_DIR} (no download)")
    return parser


def main(argv=None):
    """`python model.py outputs/model.pt`: what a checkpoint holds, and its accuracy on the test set.

    The checkpoint is checked before the data is read, so a bad file is reported at once."""
    args = build_parser().parse_args(argv)
    model, checkpoint = load_checkpoint(args.checkpoint)
    test_images, test_labels = data.load_split('test', data.find_data_dir(args.data_dir, download=False))
    with torch.no_grad():
        accuracy = float((model(test_images.float() / 255).argmax(1) == test_labels).float().mean())
    config = checkpoint.get('config')
    config = config if isinstance(config, dict) else {}
    print(f"{args.checkpoint}: epoch {_field(checkpoint.get('epoch'), int)}, {_field(config.get('recipe'))} recipe, "
          f"{_field(config.get('loss'))} loss; W {tuple(model.W.shape)}, b {tuple(model.b.shape)}; "
          f"test accuracy {accuracy:.4f}")
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
