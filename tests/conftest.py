"""Shared fixtures: the real Fashion-MNIST, loaded once per test session, and one finished train.py run;
train.py's main() as the command line runs it; output folders locked by a script's main() called in this
process are released after each test (a lock lasts as long as a process)."""
import pytest

import data
from common import released_locks, train_in_process
from support import cli


@pytest.fixture(scope='session')
def fashion_mnist():
    """(train_images, train_labels, test_images, test_labels) on the CPU, from wherever data.py finds them
    (downloading it into ./data only where it is nowhere to be found)."""
    return data.load_fashion_mnist(download=True)


@pytest.fixture(scope='session')
def finished_run(tmp_path_factory, fashion_mnist):
    """The --out folder of a finished two-epoch train.py run with the book's recipe; read it, never write it."""
    out = tmp_path_factory.mktemp('finished-run')
    assert train_in_process(fashion_mnist, '--epochs', '2', '--out', out) == 0
    return out


@pytest.fixture
def train_main(fashion_mnist, capsys):
    """`python train.py --device cpu ARGV` in this process, through cli.run, on the session's copy of the data:
    run(*argv) -> (exit code, stdout, stderr)."""
    def run(*argv):
        code = cli.run(lambda argv: train_in_process(fashion_mnist, *argv), list(map(str, argv)))
        return (code, *capsys.readouterr())
    return run


@pytest.fixture(autouse=True)
def release_output_folders():
    with released_locks():
        yield
