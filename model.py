"""Softmax regression's linear layer, O = XW + b (d2l 3.4.2 and 3.6.1).

    X: (n, d) flattened images, d = 784      W: (d, q) weights, q = 10      b: (q,) bias
    O: (n, q) logits; softmax(O) turns each row into class probabilities (losses.py)
"""
import sys

import torch

from cli import InputError
from torch import nn

from data import NUM_CLASSES, NUM_INPUTS


class CheckpointError(InputError):
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


def load_checkpoint(path, map_location='cpu'):
    """(model, checkpoint) from a model.pt that train.py wrote: {'model': state dict, 'config': ..., ...}."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as error:  # torch.load raises many kinds: pickle, zip, EOF, unsupported global...
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = next((line for line in lines if 'Unsupported global' in line), lines[0])[:200]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('model'), dict):
        raise CheckpointError(f"{path}: not a train.py checkpoint (expected a dict with a 'model' state dict)")
    model = SoftmaxRegression()
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    state = checkpoint['model']
    found = {name: tuple(tensor.shape) for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}
    if found != expected:
        raise CheckpointError(f"{path}: holds {found or 'no tensors'}, but this model has {expected}")
    model.load_state_dict(state)
    return model, checkpoint


def main(argv=None):
    """`python model.py outputs/model.pt`: what a checkpoint holds, and its accuracy on the test set."""
    import argparse
    import data
    parser = argparse.ArgumentParser(description="Load a model.pt written by train.py and evaluate it.")
    parser.add_argument('checkpoint', help="path to model.pt")
    args = parser.parse_args(argv)
    try:
        model, checkpoint = load_checkpoint(args.checkpoint)
        _, _, test_images, test_labels = data.load_fashion_mnist(download=False)
    except (CheckpointError, data.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with torch.no_grad():
        accuracy = float((model(test_images.float() / 255).argmax(1) == test_labels).float().mean())
    config = checkpoint.get('config', {})
    print(f"{args.checkpoint}: epoch {checkpoint.get('epoch')}, {config.get('recipe')} recipe, "
          f"{config.get('loss')} loss; W {tuple(model.W.shape)}, b {tuple(model.b.shape)}; "
          f"test accuracy {accuracy:.4f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
