"""data.py on the real Fashion-MNIST, and on tiny hand-made broken IDX files; `python data.py` on what only
it meets (a memory limit, Ctrl-C while it decompresses); its process contract is test_contract.py's."""
import gzip
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import data
from common import (ROOT, assert_one_line_error, finish, has_open, link_real_files, make_fifo, no_longer_than,
                    send_when, start, tiny_disk)
from support import cli, datafiles

N_TRAIN, N_TEST = 60_000, 10_000


def test_splits_have_the_books_shapes_and_dtypes(fashion_mnist):
    train_images, train_labels, test_images, test_labels = fashion_mnist
    assert train_images.shape == (N_TRAIN, 784) and train_images.dtype == torch.uint8
    assert test_images.shape == (N_TEST, 784) and test_images.dtype == torch.uint8
    assert train_labels.shape == (N_TRAIN,) and train_labels.dtype == torch.int64
    assert test_labels.shape == (N_TEST,) and test_labels.dtype == torch.int64


def test_every_class_has_6000_training_and_1000_test_images(fashion_mnist):
    _, train_labels, _, test_labels = fashion_mnist
    assert torch.bincount(train_labels).tolist() == [6000] * 10
    assert torch.bincount(test_labels).tolist() == [1000] * 10


def test_pixels_span_0_to_255_and_batches_scale_them_to_0_1(fashion_mnist):
    train_images, train_labels, _, _ = fashion_mnist
    assert int(train_images.min()) == 0 and int(train_images.max()) == 255
    X, y = next(data.batches(train_images, train_labels, 256))
    assert X.dtype == torch.float32 and X.shape == (256, 784) and y.shape == (256,)
    assert float(X.min()) >= 0.0 and float(X.max()) <= 1.0
    # ToTensor's scaling, exactly: the first image, divided by 255
    assert torch.equal(X[0], train_images[0].float() / 255)


def test_the_first_test_image_is_an_ankle_boot(fashion_mnist):
    _, _, _, test_labels = fashion_mnist
    assert data.TEXT_LABELS[int(test_labels[0])] == 'ankle boot'
    assert data.TEXT_LABELS == ['t-shirt', 'trouser', 'pullover', 'dress', 'coat',
                                'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot']


def _epoch_order(images, batch_size, seed):
    """The order in which one shuffled epoch visits the examples: label each example with its index."""
    index = torch.arange(images.shape[0])
    generator = torch.Generator().manual_seed(seed)
    return [y for _, y in data.batches(images, index, batch_size, generator)]


def test_an_epoch_visits_every_example_exactly_once_keeping_the_last_partial_batch(fashion_mnist):
    train_images = fashion_mnist[0]
    order = _epoch_order(train_images, 256, seed=0)
    assert len(order) == 235  # 234 full batches of 256 and one of 96
    assert [len(y) for y in order[:-1]] == [256] * 234 and len(order[-1]) == 96
    visited = torch.cat(order)
    assert torch.equal(visited.sort().values, torch.arange(N_TRAIN))
    assert not torch.equal(visited, torch.arange(N_TRAIN))  # and it is shuffled


def test_each_batch_pairs_an_image_with_its_own_label(fashion_mnist):
    train_images, train_labels, _, _ = fashion_mnist
    generator = torch.Generator().manual_seed(3)
    index = torch.arange(N_TRAIN)
    shuffled_index = [y for _, y in data.batches(train_images, index, 1000, torch.Generator().manual_seed(3))]
    for (X, y), rows in zip(data.batches(train_images, train_labels, 1000, generator), shuffled_index):
        assert torch.equal(y, train_labels[rows])
        assert torch.equal(X, train_images[rows].float() / 255)


def test_same_seed_same_order_different_seed_different_order(fashion_mnist):
    test_images = fashion_mnist[2]
    first, again = torch.cat(_epoch_order(test_images, 256, 0)), torch.cat(_epoch_order(test_images, 256, 0))
    other = torch.cat(_epoch_order(test_images, 256, 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_consecutive_epochs_of_one_generator_are_different_permutations(fashion_mnist):
    test_images = fashion_mnist[2]
    generator = torch.Generator().manual_seed(0)
    index = torch.arange(N_TEST)
    epoch1 = torch.cat([y for _, y in data.batches(test_images, index, 256, generator)])
    epoch2 = torch.cat([y for _, y in data.batches(test_images, index, 256, generator)])
    assert not torch.equal(epoch1, epoch2)
    assert torch.equal(epoch2.sort().values, index)


def test_without_a_generator_batches_keep_the_stored_order(fashion_mnist):
    _, _, test_images, test_labels = fashion_mnist
    labels = torch.cat([y for _, y in data.batches(test_images, test_labels, 3000)])
    assert torch.equal(labels, test_labels)


def test_float_features_are_served_as_they_are(fashion_mnist):
    features = fashion_mnist[2].float() * 7  # anything prepared once for a run, e.g. standardised
    X, _ = next(data.batches(features, fashion_mnist[3], 10))
    assert torch.equal(X, features[:10])


# ---------------------------------------------------------------- python data.py, in this process

def test_main_exits_1_when_the_data_is_found_nowhere(tmp_path, monkeypatch, capsys):
    # 1, not 2: nothing typed was wrong; the Makefile's `data` target takes it as "install it"
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datafiles, 'DEBIAN_DIR', str(tmp_path / 'no-debian'))
    assert data.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: Fashion-MNIST is neither in') and err.count('\n') == 1


@pytest.mark.parametrize('argv, download', [([], False), (['--download'], True)])
def test_main_downloads_only_when_asked(tmp_path, monkeypatch, capsys, argv, download):
    asked = []

    def nowhere(data_dir=None, download=True):
        asked.append(download)
        raise data.DataNotFoundError("nowhere")
    monkeypatch.setattr(data, 'find_data_dir', nowhere)
    assert data.main(argv) == 1
    assert asked == [download] and capsys.readouterr().err == 'error: nowhere\n'


@pytest.mark.parametrize('argv, message', [
    ([''], 'argument DIR: is empty (an unset shell variable?)'),
    (['a', 'b'], 'unrecognized arguments: b'),
    (['a', '--data-dir', 'b'], 'give the data folder once'),
    (['--data-dir', ''], 'argument --data-dir: is empty'),
    (['--data-dir'], 'argument --data-dir: expected one argument'),
    (['--verbose'], 'unrecognized arguments: --verbose'),
])
def test_main_refuses_bad_command_lines_with_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        data.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('data.py: error: ') and message in err and err.count('\n') == 1


def test_main_says_where_the_data_is_and_that_it_is_valid(monkeypatch, capsys):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(ROOT)  # where the Makefile runs it
    assert cli.run(data.main, []) == 0
    out, err = capsys.readouterr()
    assert out.startswith('data: Fashion-MNIST in ') and '(60,000 train / 10,000 test, files valid)' in out
    assert err == '' and out.count('\n') == 1


def test_main_help_names_the_data_folder_flag(capsys):
    assert cli.run(data.main, ['--help']) == 0
    out, err = capsys.readouterr()
    assert out.startswith('usage: data.py') and '--data-dir DIR' in out and err == ''


def test_main_refuses_a_fifo_and_dev_zero_without_opening_them_one_line_exit_2(tmp_path, capsys):
    folder = link_real_files(tmp_path / 'hostile')
    for name, make in {'train-images-idx3-ubyte.gz': make_fifo,  # opening it would wait for a writer forever
                       't10k-labels-idx1-ubyte.gz': lambda path: os.symlink('/dev/zero', path)}.items():  # endless
        os.remove(folder / name)
        make(folder / name)
    with no_longer_than(60):
        assert cli.run(data.main, ['--data-dir', str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out == ''
    assert_one_line_error(err, 'error: data folder ', 'has train-images-idx3-ubyte.gz, but it is a FIFO',
                          'has t10k-labels-idx1-ubyte.gz, but it is a device, not a file')


def test_the_copy_for_torchvision_reads_only_the_four_files_and_torchvision_reads_it_back(tmp_path, fashion_mnist):
    """A FIFO and an endless device beside the four files are never opened: the copy is the four checked files."""
    from torchvision.datasets import FashionMNIST
    folder = link_real_files(tmp_path / 'with-strangers')
    make_fifo(folder / 'notes.gz')  # opening it would wait for a writer forever
    os.symlink('/dev/zero', folder / 'extra-ubyte')  # reading it would fill the disk
    with no_longer_than(60):
        root = data.torchvision_root(str(folder), str(tmp_path / 'work'))
    assert sorted(os.listdir(os.path.join(root, 'FashionMNIST', 'raw'))) == sorted(
        name for images, labels, _ in data.SPLITS.values() for name in (images, labels))
    test_set = FashionMNIST(root, train=False)
    assert torch.equal(test_set.data.reshape(-1, 784), fashion_mnist[2])
    assert torch.equal(test_set.targets, fashion_mnist[3])


def test_the_copy_for_torchvision_on_a_full_disk_is_cannot_write_path(fashion_mnist):
    with tiny_disk(2048) as work:
        if work is None:
            pytest.skip("mounting a small tmpfs is not permitted here (needs root)")
        with pytest.raises(cli.OutputError, match=r"^cannot write .*No space left on device$"):
            data.torchvision_root(data.find_data_dir(download=False), work)
        assert [name for _, _, names in os.walk(work) for name in names if name.endswith('.tmp')] == []


# ---------------------------------------------------------------- python data.py, as a user runs it
# The process contract (exit codes, signals while starting, closed streams) is tests/test_contract.py's;
# here, what only data.py does: a memory limit it must stay under, and Ctrl-C while it decompresses.

ENV = {name: value for name, value in os.environ.items() if name not in (data.ENV_VAR, 'TRACEBACK')}


def _real_gzip(name):
    """The real file `name` as gzip bytes, whichever form it is installed in."""
    path = data.locate(name, data.find_data_dir(download=False))
    with open(path, 'rb') as f:
        content = f.read()
    return content if path.endswith('.gz') else gzip.compress(content, compresslevel=1)


@pytest.fixture(scope='module')
def data_py_runs(tmp_path_factory):
    """`python data.py` on gigabytes of payload under a memory limit, and `python data.py` sent Ctrl-C while
    it decompresses the training images, started together, each in an empty folder of its own:
    {case: (exit code, stdout, stderr, the folder)}."""
    base = tmp_path_factory.mktemp('data-py')
    # The real training images followed by 4 GiB of zeros (gzip members of 1 MiB each): a valid header and
    # gigabytes of payload, under `ulimit -d` of 1.5 GB, so that reading it whole would fail, not swap.
    oversized = link_real_files(base / 'oversized')
    os.remove(data.locate('train-images-idx3-ubyte', str(oversized)))  # the link to the real file, .gz or not
    (oversized / 'train-images-idx3-ubyte.gz').write_bytes(
        _real_gzip('train-images-idx3-ubyte') + gzip.compress(bytes(2**20)) * 4096)

    def run(case):
        folder = base / case.replace(' ', '-')
        folder.mkdir()
        if case == 'gigabytes of payload':
            process = start('data.py', oversized, cwd=folder, env=ENV, shell_prefix='ulimit -d 1500000; ')
            return (*finish(process), folder)
        process = start('data.py', cwd=folder, env=ENV)  # Ctrl-C while it decompresses the training images
        return (*send_when(process, signal.SIGINT, lambda pid: has_open(pid, 'train-images-idx3-ubyte'), 300), folder)
    cases = ('gigabytes of payload', 'ctrl-c while reading')
    with ThreadPoolExecutor(len(cases)) as pool:
        return dict(zip(cases, pool.map(run, cases)))


def test_data_py_reads_no_further_than_the_header_promises_under_a_memory_limit(data_py_runs):
    code, out, err, folder = data_py_runs['gigabytes of payload']
    assert (code, out) == (2, ''), (code, err)
    assert_one_line_error(err, 'error: ', 'train-images-idx3-ubyte.gz: more data than the 47040016 bytes '
                                          'decompressed its header promises')
    assert 'Warning' not in err and os.listdir(folder) == []


def test_data_py_interrupted_while_reading_exits_130_with_one_line(data_py_runs):
    code, out, err, folder = data_py_runs['ctrl-c while reading']
    assert code == 130, (code, err)
    assert err.strip() == 'interrupted' and out == '' and os.listdir(folder) == []
