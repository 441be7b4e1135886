"""Softmax regression's linear layer, O = XW + b (d2l 3.4.2 and 3.6.1).

    X: (n, d) flattened images, d = 784      W: (d, q) weights, q = 10      b: (q,) bias
    O: (n, q) logits; softmax(O) turns each row into class probabilities (losses.py)

`python model.py outputs/model.pt [--data-dir DIR]` loads a checkpoint that train.py wrote and prints what
it holds and its accuracy on the test set. Exit 0 done, 2 the checkpoint (or the data) is unusable, one line
saying why, 130 interrupted.
"""
import sys

import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli

if __name__ == '__main__':
    cli.start()  # before torch's import: Ctrl-C during it is a clean exit 130, and the streams are guarded

import torch
from torch import nn

import data
from data import NUM_CLASSES, NUM_INPUTS
from helpers.records import CheckpointError, field, load_checkpoint  # noqa: F401 -- model.load_checkpoint, as before


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
        accuracy = float((model(data.to_features(test_images)).argmax(1) == test_labels).float().mean())
    config = checkpoint.get('config')
    config = config if isinstance(config, dict) else {}
    print(f"{args.checkpoint}: epoch {field(checkpoint.get('epoch'), int)}, {field(config.get('recipe'))} recipe, "
          f"{field(config.get('loss'))} loss; W {tuple(model.W.shape)}, b {tuple(model.b.shape)}; "
          f"test accuracy {accuracy:.4f}")
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
