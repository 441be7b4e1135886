"""model.pt read safely: a regular file of a checkpoint's size, loaded as tensors and plain values only.

model.load_checkpoint checks what it holds; this module gets it off the disk without running anything the
file carries, and says in one line why a file is not a checkpoint.
"""
import pickle
import re
import warnings
import zipfile

import torch

from support import cli, reading


class CheckpointError(cli.InputError):
    """model.pt is missing, corrupt, or not a checkpoint of this model; the message says which."""


# A train.py checkpoint is about 33 KB: W and b (7,850 float32) and a small dict of settings. Anything far
# larger is not one, and is refused from its size (and, for a zip, the sizes its directory promises)
# before a byte of it is unpacked.
MAX_CHECKPOINT_BYTES = 16 * 2**20


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


def read_checkpoint(path, map_location='cpu'):
    """torch.load(path) with weights_only=True, after checking what the file is and how big; the object,
    or CheckpointError with one line."""
    try:
        f, size = reading.open_regular_file(path, 'a checkpoint file')
    except reading.NotAFile as why:
        raise CheckpointError(f"{path}: {'no such file' if str(why) == 'does not exist' else why}") from None
    with f:
        if size == 0:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (the file is empty)")
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: {size:,} bytes, far more than a checkpoint of this model "
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


def describe(value):
    """A state-dict entry in a few characters: its shape if a tensor, else its type."""
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    return 'nested tensor' if value.is_nested else tuple(value.shape)  # a nested tensor has no single shape


def tensor_problem(tensor):
    """Why `tensor` cannot hold weights (a meta, sparse, nested, quantized or non-float tensor), or None."""
    if tensor.device.type == 'meta':
        return "is a meta tensor (a shape with no values)"
    if tensor.layout != torch.strided or tensor.is_nested:
        return f"is a {str(tensor.layout).replace('torch.', '')} tensor, not dense weights"
    if tensor.is_quantized or not tensor.is_floating_point():
        return f"holds {str(tensor.dtype).replace('torch.', '')} values, not floating-point weights"
    return None


def field(value, kind=str):
    """A checkpoint's setting as printable text: a short one-line string (kind=str) or a whole number
    (kind=int), else '?'. The settings describe the model and may be anything, or missing."""
    if kind is int:  # bounded: str() of a 5,000-digit int raises, and no run has a trillion epochs
        return str(value) if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12 else '?'
    return value if isinstance(value, str) and value.isprintable() and 0 < len(value) <= 40 else '?'
