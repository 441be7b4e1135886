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
from support.checkpoints import CheckpointError, describe, field, read_checkpoint, tensor_problem


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
    """(model, checkpoint) from a model.pt that train.py wrote: {'model': state dict, 'config': ..., ...}.

    Read as tensors and plain values only (support/checkpoints.py), then checked entry by entry: the state
    dict must be exactly {'W': (784, 10), 'b': (10,)} of dense floating-point values, and the logits they
    give an image must be finite numbers. nan or inf weights, or finite ones so large that O = XW + b
    overflows float32, would make every prediction argmax over nan, a constant class, and an "accuracy
    0.1000" that looks like a result: train.py never saves one (it keeps the last finite epoch), so such a
    file is damaged or from elsewhere. Everything else in the checkpoint (config, epoch, ...) is returned
    as found, unchecked: it describes the model and may be anything.
    """
    checkpoint = read_checkpoint(path, map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('model'), dict):
        raise CheckpointError(f"{path}: not a train.py checkpoint (expected a dict with a 'model' state dict)")
    model = SoftmaxRegression()
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    state = checkpoint['model']
    found = {name: describe(value) for name, value in state.items()}
    if found != expected:
        raise CheckpointError(f"{path}: holds {found or 'no tensors'}, but this model has {expected}")
    for name, tensor in state.items():
        problem = tensor_problem(tensor)
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
        # The largest |o_j| any image X in [0, 1]^784 can give: sum_i |W_ij| + |b_j|, in float64.
        largest = float((model.W.double().abs().sum(0) + model.b.double().abs()).max())
        if largest > torch.finfo(torch.float32).max:
            raise CheckpointError(f"{path}: W and b are finite but so large that an image's logits reach "
                                  f"{largest:.3g}, beyond float32's {torch.finfo(torch.float32).max:.3g}: "
                                  "the weights of a diverged or damaged run, not a trained model")
    return model, checkpoint


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
