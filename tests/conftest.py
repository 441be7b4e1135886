"""Shared fixtures: the real Fashion-MNIST, loaded once per test session."""
import pytest

import data


@pytest.fixture(scope='session')
def fashion_mnist():
    """(train_images, train_labels, test_images, test_labels) on the CPU, from wherever data.py finds them
    (downloading it into ./data only where it is nowhere to be found)."""
    return data.load_fashion_mnist(download=True)
