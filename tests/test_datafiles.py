"""support/datafiles.py through data.py: where the four IDX files are looked for, and every way a file can be
broken, absurd, endless or not a file at all, each refused in one line naming it, having read no further than
its header promises. Tiny hand-made files only for broken input; the real data for the rest."""
import gzip
import os
import re
import time

import pytest
import torch

import data
from common import link_real_files, make_fifo, no_longer_than
from data import DataError
from support import datafiles

N_TEST = 10_000


# ---------------------------------------------------------------- where the data is looked for

def test_data_dir_flag_wins_over_the_environment_variable(tmp_path, monkeypatch):
    flagged = link_real_files(tmp_path / 'flagged')
    monkeypatch.setenv(data.ENV_VAR, str(link_real_files(tmp_path / 'env')))
    assert data.find_data_dir(str(flagged), download=False) == str(flagged)
    assert data.find_data_dir(None, download=False) == str(tmp_path / 'env')


def test_torchvision_layout_in_the_working_folder_comes_before_debian(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    link_real_files(tmp_path / 'data' / 'FashionMNIST' / 'raw')
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
    monkeypatch.setattr(datafiles, 'DEBIAN_DIR', str(tmp_path / 'no-debian'))
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


_LABELS = _idx(data.LABELS_MAGIC, [3], bytes(3))
_WHOLE_GZIP = gzip.compress(_LABELS + bytes(5000))


@pytest.mark.parametrize('name, content, message', [
    ('', _idx(data.IMAGES_MAGIC, [3, 28, 28]), 'wrong magic number 2051 .* looks like images'),
    ('', b'<html><body>404 Not Found</body></html>', 'wrong magic number'),
    ('', _idx(data.LABELS_MAGIC, [5], bytes(5)), 'holds 5 examples, expected 3'),
    ('', _idx(data.LABELS_MAGIC, [3], bytes(2)), 'truncated'),
    ('', b'\x00\x00', 'too short'),
    ('.gz', _WHOLE_GZIP[:len(_WHOLE_GZIP) // 2], 'not a complete gzip file'),
    ('', gzip.compress(_LABELS), 'this is a gzip file; name it train-labels-idx1-ubyte.gz'),
    ('.gz', b'<!DOCTYPE html><html><body>Access denied</body></html>', 'not a complete gzip file'),
    ('.gz', _LABELS, 'uncompressed IDX file, not gzip; name it train-labels-idx1-ubyte '),
], ids=['images', 'html', 'more examples', 'truncated', 'too short', 'truncated gzip', 'gzip without .gz',
        'html as .gz', 'raw as .gz'])
def test_broken_files_raise_data_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / ('train-labels-idx1-ubyte' + name)
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        _read_labels(path)
    assert str(error.value).startswith(f"{path}: ")


def test_images_of_the_wrong_size_are_rejected(tmp_path):
    path = tmp_path / 'images'
    path.write_bytes(_idx(data.IMAGES_MAGIC, [2, 32, 32], bytes(2 * 32 * 32)))
    with pytest.raises(DataError, match='images are 32x32, expected 28x28'):
        data.read_idx(str(path), data.IMAGES_MAGIC, (2, 28, 28))


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


# ---------------------------------------------------------------- read no further than the header promises

@pytest.mark.parametrize('compress', [bytes, gzip.compress], ids=['raw', 'gz'])
@pytest.mark.parametrize('dims, message', [
    ([2**31], 'holds 2147483648 examples, expected 3'),
    ([2**32 - 1], 'holds 4294967295 examples, expected 3'),
])
def test_an_absurd_header_is_refused_from_the_header_alone(tmp_path, compress, dims, message):
    # the header alone: no payload follows, so reading any further would be a truncation error instead
    path = tmp_path / ('train-labels-idx1-ubyte' + ('.gz' if compress is gzip.compress else ''))
    path.write_bytes(compress(_idx(data.LABELS_MAGIC, dims)))
    with pytest.raises(DataError, match=message):
        _read_labels(path)


def test_absurd_image_dimensions_are_refused_from_the_header_alone(tmp_path):
    path = tmp_path / 'images.gz'
    path.write_bytes(gzip.compress(_idx(data.IMAGES_MAGIC, [2, 2**31 - 1, 2**31 - 1])))
    with pytest.raises(DataError, match='images are 2147483647x2147483647, expected 28x28'):
        data.read_idx(str(path), data.IMAGES_MAGIC, (2, 28, 28))


def test_a_raw_file_longer_than_its_header_promises_is_refused_by_its_size(tmp_path):
    path = tmp_path / 'train-labels-idx1-ubyte'
    path.write_bytes(_idx(data.LABELS_MAGIC, [3], bytes(3) + b'x'))
    with pytest.raises(DataError, match='12 bytes where the header promises 11; the file is longer') as error:
        _read_labels(path)
    assert str(path) in str(error.value)


def test_a_gzip_longer_than_its_header_promises_is_refused(tmp_path):
    path = tmp_path / 'train-labels-idx1-ubyte.gz'
    path.write_bytes(gzip.compress(_idx(data.LABELS_MAGIC, [3], bytes(4))))
    with pytest.raises(DataError, match='more data than the 11 bytes decompressed its header promises') as error:
        _read_labels(path)
    assert str(path) in str(error.value)


def test_gigabytes_after_the_promised_payload_are_refused_without_reading_them(tmp_path):
    # 512 gzip members of 1 MiB of zeros each (a gzip file may hold several; readers concatenate them):
    # 0.5 GiB once decompressed, in half a megabyte. Reading one byte past the payload must be enough.
    path = tmp_path / 'train-labels-idx1-ubyte.gz'
    path.write_bytes(gzip.compress(_idx(data.LABELS_MAGIC, [3], bytes(3))) + gzip.compress(bytes(2**20)) * 512)
    started = time.process_time()
    with pytest.raises(DataError, match='more data than the 11 bytes'):
        _read_labels(path)
    assert time.process_time() - started < 0.5  # decompressing it all takes seconds


@pytest.mark.parametrize('damage, message', [
    (lambda whole: whole + b'garbage after the gzip data', 'gzip data is damaged or followed by other bytes'),
    (lambda whole: whole[:-8] + bytes([whole[-8] ^ 1]) + whole[-7:], 'CRC check failed'),
])
def test_damage_after_the_payload_is_caught_by_the_extra_byte_read(tmp_path, damage, message):
    path = tmp_path / 'train-labels-idx1-ubyte.gz'
    path.write_bytes(damage(gzip.compress(_idx(data.LABELS_MAGIC, [3], bytes(3)))))
    with pytest.raises(DataError, match=message) as error:
        _read_labels(path)
    assert str(path) in str(error.value) and 'download it again' in str(error.value)


# ---------------------------------------------------------------- things that are not data files

@pytest.mark.parametrize('make, message', [  # none of them may be opened for reading
    (lambda path: path.mkdir(), 'is a folder, not a file'),
    (make_fifo, 'is a FIFO (named pipe), not a file'),  # open() would block
    (lambda path: os.symlink('/dev/zero', path), 'is a device, not a file'),  # endless bytes
    (lambda path: os.symlink(path.parent / 'gone', path), 'gone, which does not exist'),
], ids=['folder', 'fifo', 'dev-zero', 'dangling link'])
def test_something_other_than_a_file_under_a_data_files_name_is_named_not_read(tmp_path, make, message):
    folder = link_real_files(tmp_path / 'fashion')
    os.remove(folder / 'train-images-idx3-ubyte.gz')
    make(folder / 'train-images-idx3-ubyte.gz')
    with no_longer_than(10), pytest.raises(DataError, match='has train-images-idx3-ubyte.gz, but it ') as error:
        data.find_data_dir(str(folder), download=False)
    assert message in str(error.value) and 'lacks' not in str(error.value)
    with no_longer_than(10), pytest.raises(DataError, match=re.escape(message)):  # read_idx checks too
        data.read_idx(str(folder / 'train-images-idx3-ubyte.gz'), data.IMAGES_MAGIC, (60_000, 28, 28))


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0, reason="root reads files whatever their permissions say")
def test_an_unreadable_file_says_so(tmp_path):
    path = tmp_path / 'train-labels-idx1-ubyte'
    path.write_bytes(_idx(data.LABELS_MAGIC, [3], bytes(3)))
    path.chmod(0)
    with pytest.raises(DataError, match='cannot read .Permission denied'):
        _read_labels(path)


@pytest.mark.parametrize('data_dir, env, message', [
    ('', None, 'data folder given is empty .an unset shell variable'),
    (None, '', 'FASHION_MNIST_DIR is set but empty'),
], ids=['data dir', 'environment variable'])
def test_an_empty_folder_name_is_refused_not_ignored(monkeypatch, data_dir, env, message):
    if env is None:
        monkeypatch.delenv(data.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(data.ENV_VAR, env)
    with pytest.raises(DataError, match=message):
        data.find_data_dir(data_dir, download=False)
