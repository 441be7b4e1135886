"""data.py on the real Fashion-MNIST, and on tiny hand-made broken IDX files."""
import gzip
import os

import pytest
import torch

import data
from data import DataError

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


# ---------------------------------------------------------------- where the data is looked for

def _link_real_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    source = data.find_data_dir(download=False)
    for name in os.listdir(source):
        os.symlink(os.path.join(source, name), folder / name)
    return folder


def test_data_dir_flag_wins_over_the_environment_variable(tmp_path, monkeypatch):
    flagged = _link_real_files(tmp_path / 'flagged')
    monkeypatch.setenv(data.ENV_VAR, str(_link_real_files(tmp_path / 'env')))
    assert data.find_data_dir(str(flagged), download=False) == str(flagged)
    assert data.find_data_dir(None, download=False) == str(tmp_path / 'env')


def test_torchvision_layout_in_the_working_folder_comes_before_debian(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    _link_real_files(tmp_path / 'data' / 'FashionMNIST' / 'raw')
    assert data.find_data_dir(download=False) == os.path.join('data', 'FashionMNIST', 'raw')


def test_raw_uncompressed_files_load_like_gzipped_ones(tmp_path, fashion_mnist):
    source = data.find_data_dir(download=False)
    for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        with gzip.open(os.path.join(source, name + '.gz')) as f:
            (tmp_path / name).write_bytes(f.read())
    images, labels = data.load_split('test', str(tmp_path))
    assert torch.equal(images, fashion_mnist[2]) and torch.equal(labels, fashion_mnist[3])


def test_nowhere_to_be_found_lists_the_three_ways_to_provide_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, 'DEBIAN_DIR', str(tmp_path / 'no-debian'))
    with pytest.raises(DataError) as error:
        data.find_data_dir(download=False)
    message = str(error.value)
    assert '--data-dir' in message and 'apt-get install dataset-fashion-mnist' in message
    assert 'download' in message


def test_an_empty_data_dir_names_the_missing_files(tmp_path):
    with pytest.raises(DataError, match='lacks train-images-idx3-ubyte'):
        data.find_data_dir(str(tmp_path), download=False)


# ---------------------------------------------------------------- broken files, made by hand

def _idx(magic, dims, payload=b''):
    return magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in dims) + payload


def _read_labels(path):
    return data.read_idx(str(path), data.LABELS_MAGIC, (3,))


def test_a_tiny_valid_idx_file_parses(tmp_path):
    path = tmp_path / 'labels'
    path.write_bytes(_idx(data.LABELS_MAGIC, [3], bytes([9, 0, 4])))
    assert _read_labels(path).tolist() == [9, 0, 4]


@pytest.mark.parametrize('content, message', [
    (_idx(data.IMAGES_MAGIC, [3, 28, 28]), 'wrong magic number 2051 .* looks like images'),
    (b'<html><body>404 Not Found</body></html>', 'wrong magic number'),
    (_idx(data.LABELS_MAGIC, [5], bytes(5)), 'holds 5 examples, expected 3'),
    (_idx(data.LABELS_MAGIC, [3], bytes(2)), 'truncated'),
    (b'\x00\x00', 'too short'),
])
def test_broken_raw_files_raise_data_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / 'train-labels-idx1-ubyte'
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        _read_labels(path)
    assert str(path) in str(error.value)


def test_images_of_the_wrong_size_are_rejected(tmp_path):
    path = tmp_path / 'images'
    path.write_bytes(_idx(data.IMAGES_MAGIC, [2, 32, 32], bytes(2 * 32 * 32)))
    with pytest.raises(DataError, match='images are 32x32, expected 28x28'):
        data.read_idx(str(path), data.IMAGES_MAGIC, (2, 28, 28))


def test_a_truncated_gzip_is_named_as_such(tmp_path):
    whole = gzip.compress(_idx(data.LABELS_MAGIC, [3], bytes(3)) + bytes(5000))
    path = tmp_path / 'train-labels-idx1-ubyte.gz'
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match='not a complete gzip file'):
        _read_labels(path)


def test_a_gzip_file_without_its_gz_suffix_is_named_as_such(tmp_path):
    path = tmp_path / 'train-labels-idx1-ubyte'
    path.write_bytes(gzip.compress(_idx(data.LABELS_MAGIC, [3], bytes(3))))
    with pytest.raises(DataError, match='this is a gzip file; name it train-labels-idx1-ubyte.gz'):
        _read_labels(path)


def test_an_html_page_saved_as_gz_is_not_gzip(tmp_path):
    path = tmp_path / 'train-labels-idx1-ubyte.gz'
    path.write_bytes(b'<!DOCTYPE html><html><body>Access denied</body></html>')
    with pytest.raises(DataError, match='not a complete gzip file') as error:
        _read_labels(path)
    assert str(path) in str(error.value)


def test_labels_outside_0_to_9_are_rejected_with_their_position(tmp_path):
    source = data.find_data_dir(download=False)
    os.symlink(os.path.join(source, 't10k-images-idx3-ubyte.gz'), tmp_path / 't10k-images-idx3-ubyte.gz')
    labels = bytearray(N_TEST)
    labels[1234] = 12
    (tmp_path / 't10k-labels-idx1-ubyte').write_bytes(_idx(data.LABELS_MAGIC, [N_TEST], bytes(labels)))
    with pytest.raises(DataError, match='label 12 at index 1234 is outside 0..9'):
        data.load_split('test', str(tmp_path))


def test_swapped_files_are_caught_by_the_magic_number(tmp_path):
    source = data.find_data_dir(download=False)
    # the test labels saved under the test images' name, and the other way round
    os.symlink(os.path.join(source, 't10k-labels-idx1-ubyte.gz'), tmp_path / 't10k-images-idx3-ubyte.gz')
    os.symlink(os.path.join(source, 't10k-images-idx3-ubyte.gz'), tmp_path / 't10k-labels-idx1-ubyte.gz')
    with pytest.raises(DataError, match='t10k-images-idx3-ubyte.gz: wrong magic number 2049'):
        data.load_split('test', str(tmp_path))
