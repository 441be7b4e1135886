"""Shared fixtures: the real Fashion-MNIST, loaded once per test session; output folders locked by a
script's main() called in this process are released after each test (a lock lasts as long as a process)."""
import os

import pytest

import data
from machinery import cli


@pytest.fixture(scope='session')
def fashion_mnist():
    """(train_images, train_labels, test_images, test_labels) on the CPU, from wherever data.py finds them
    (downloading it into ./data only where it is nowhere to be found)."""
    return data.load_fashion_mnist(download=True)


@pytest.fixture(autouse=True)
def release_output_folders():
    held = len(cli._locks)
    yield
    while len(cli._locks) > held:
        os.close(cli._locks.pop())
