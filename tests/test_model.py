"""model.py: O = XW + b with the book's shapes and initialisation, the checkpoint round trip, every kind of
checkpoint that is not one, and what `python model.py` prints for good and bad checkpoints."""
import io
import os
import warnings
import zipfile

import pytest
import torch

import data
from common import assert_one_line_error, no_longer_than
from support import cli
from helpers.records import MAX_CHECKPOINT_BYTES
from model import CheckpointError, SoftmaxRegression, load_checkpoint, main


def test_parameters_are_W_784_by_10_and_b_10():
    model = SoftmaxRegression()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {'W': (784, 10), 'b': (10,)}


def test_W_is_drawn_from_normal_0_001_and_b_is_zero():
    torch.manual_seed(0)
    model = SoftmaxRegression()
    W = model.W.detach()
    assert abs(float(W.mean())) < 1e-3
    assert float(W.std()) == pytest.approx(0.01, rel=0.05)
    assert torch.equal(model.b, torch.zeros(10))


def test_forward_is_XW_plus_b_for_flat_and_image_shaped_input():
    torch.manual_seed(0)
    model = SoftmaxRegression()
    with torch.no_grad():
        model.b.copy_(torch.arange(10.0))
    images = torch.rand(5, 1, 28, 28)
    expected = images.reshape(5, 784) @ model.W.detach() + model.b.detach()
    assert model(images).shape == (5, 10)
    torch.testing.assert_close(model(images), expected)
    torch.testing.assert_close(model(images.reshape(5, 784)), expected)


def test_gradients_reach_W_and_b_with_their_shapes():
    model = SoftmaxRegression()
    model(torch.rand(4, 784)).sum().backward()
    assert model.W.grad.shape == (784, 10) and model.b.grad.shape == (10,)
    torch.testing.assert_close(model.b.grad, torch.full((10,), 4.0))


def test_same_seed_same_initial_weights():
    torch.manual_seed(7)
    first = SoftmaxRegression()
    torch.manual_seed(7)
    assert torch.equal(first.W, SoftmaxRegression().W)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = SoftmaxRegression()
    path = tmp_path / 'model.pt'
    torch.save({'model': model.state_dict(), 'config': {'lr': 0.1}, 'epoch': 3}, path)
    loaded, checkpoint = load_checkpoint(str(path))
    assert torch.equal(loaded.W, model.W) and torch.equal(loaded.b, model.b)
    assert checkpoint['epoch'] == 3 and checkpoint['config'] == {'lr': 0.1}
    X = torch.rand(3, 784)
    torch.testing.assert_close(loaded(X), model(X))


@pytest.mark.parametrize('content, message', [
    (b'', 'not a readable PyTorch checkpoint'),
    (b'not a checkpoint at all', 'not a readable PyTorch checkpoint'),
])
def test_corrupt_checkpoints_raise_a_clear_error(tmp_path, content, message):
    path = tmp_path / 'model.pt'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(path))


def test_truncated_checkpoint_raises_a_clear_error(tmp_path):
    path = tmp_path / 'model.pt'
    torch.save({'model': SoftmaxRegression().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
        load_checkpoint(str(path))


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    path = tmp_path / 'model.pt'
    torch.save({'model': {'W': torch.zeros(100, 10), 'b': torch.zeros(10)}}, path)
    with pytest.raises(CheckpointError, match=r"'W': \(100, 10\).*this model has"):
        load_checkpoint(str(path))


def test_a_bare_state_dict_is_not_a_train_py_checkpoint(tmp_path):
    path = tmp_path / 'model.pt'
    torch.save(SoftmaxRegression().state_dict(), path)
    with pytest.raises(CheckpointError, match="'model' state dict"):
        load_checkpoint(str(path))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match='no such file'):
        load_checkpoint(str(tmp_path / 'nope.pt'))


def test_main_raises_the_checkpoint_error_that_cli_run_prints_as_one_line(tmp_path):
    path = tmp_path / 'model.pt'
    path.write_text('<html>')
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint') as error:
        main([str(path)])
    assert '\n' not in str(error.value)


# ---------------------------------------------------------------- checkpoints that pass the shape check, and others

def _save(obj, path):
    with warnings.catch_warnings():  # torch's own warnings about making sparse or quantized tensors
        warnings.simplefilter('ignore')
        torch.save(obj, path)
    return path


def _state(W=None, b=None, **extra):
    return {'W': torch.zeros(784, 10) if W is None else W, 'b': torch.zeros(10) if b is None else b, **extra}


class NotATensor:
    """A class a checkpoint must not be able to bring along: unpickling it means running its module's code."""


class RunsCode:
    def __reduce__(self):
        return (os.system, ('echo this ran',))


def _zip_of(entries, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', compression=compression) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _quantized():
    with warnings.catch_warnings():  # "quantized tensor creation functions ... are deprecated"
        warnings.simplefilter('ignore')
        return torch.quantize_per_tensor(torch.zeros(784, 10), 0.1, 0, torch.qint8)


def _write(content):
    def write(path):
        path.write_bytes(content)
        return path
    return write


def _truncated(path):
    return _write(_save({'model': _state()}, path).read_bytes()[:-100])(path)


def _sparse_file(path):
    with open(path, 'wb') as f:
        f.truncate(MAX_CHECKPOINT_BYTES + 1)  # a hole: takes no disk space, and no time
    return path


BAD_CHECKPOINTS = {
    'extra non-tensor entry': (lambda p: _save({'model': _state(note='hello')}, p), "'note': 'str'"),
    'extra tensor entry': (lambda p: _save({'model': _state(step=torch.zeros(1))}, p), "'step': (1,)"),
    'meta tensor': (lambda p: _save({'model': _state(W=torch.empty(784, 10, device='meta'))}, p),
                    'W is a meta tensor (a shape with no values)'),
    'sparse tensor': (lambda p: _save({'model': _state(W=torch.zeros(784, 10).to_sparse())}, p),
                      'W is a sparse_coo tensor, not dense weights'),
    'quantized tensor': (lambda p: _save({'model': _state(W=_quantized())}, p),
                         'W holds qint8 values, not floating-point weights'),
    'integer tensor': (lambda p: _save({'model': _state(b=torch.zeros(10, dtype=torch.int64))}, p),
                       'b holds int64 values, not floating-point weights'),
    'complex tensor': (lambda p: _save({'model': _state(W=torch.zeros(784, 10, dtype=torch.complex64))}, p),
                       'W holds complex64 values'),
    'nan weights': (lambda p: _save({'model': _state(W=torch.full((784, 10), float('nan')))}, p),
                    'W holds 7840 non-finite values (nan or inf) out of 7840'),
    'one inf bias': (lambda p: _save({'model': _state(b=torch.tensor([0.0] * 9 + [float('inf')]))}, p),
                     'b holds 1 non-finite values'),
    'float64 beyond float32': (lambda p: _save({'model': _state(W=torch.full((784, 10), 1e300, dtype=torch.float64))},
                                               p), 'W holds 7840 non-finite values'),
    'a class of its own': (lambda p: _save({'model': _state(), 'extra': NotATensor()}, p),
                           'refused to load: it asks for the Python object test_model.NotATensor'),
    'code to run': (lambda p: _save({'model': RunsCode()}, p), 'refused to load: it asks for the Python object'),
    'a 5000-digit number': (lambda p: _save({'model': _state(), 'epoch': 10**5000}, p),
                            'refused to load: its pickled data holds more than tensors and plain values '
                            '(Unsupported operand 139)'),
    'state dict not a dict': (lambda p: _save({'model': [torch.zeros(784, 10)]}, p), "expected a dict with a 'model'"),
    'a list': (lambda p: _save([1, 2], p), "expected a dict with a 'model'"),
    'folder': (lambda p: p.mkdir() or p, 'is a folder, not a checkpoint file'),
    'dev-zero': (lambda p: os.symlink('/dev/zero', p) or p, 'is a device, not a checkpoint file'),
    'dangling link': (lambda p: os.symlink(p.parent / 'gone', p) or p, 'which does not exist'),
    'empty file': (_write(b''), 'not a readable PyTorch checkpoint (the file is empty)'),
    'text': (_write(b'not a checkpoint at all'), 'not a readable PyTorch checkpoint (neither a zip archive'),
    'zip of something else': (_write(_zip_of({'hello.txt': 'hi'})), 'not a readable PyTorch checkpoint'),
    'truncated zip': (_truncated, 'a truncated or damaged zip archive'),
    'zip bomb': (_write(_zip_of({'archive/data.pkl': bytes(64 * 2**20)}, zipfile.ZIP_DEFLATED)),
                 'its entries unpack to 67,108,864 bytes'),
    'huge file': (_sparse_file, f'{MAX_CHECKPOINT_BYTES + 1:,} bytes, far more than a checkpoint'),
}


@pytest.mark.parametrize('case', BAD_CHECKPOINTS)
def test_every_bad_checkpoint_is_one_clear_line_and_never_advises_the_unsafe_load(tmp_path, case):
    make, message = BAD_CHECKPOINTS[case]
    path = make(tmp_path / 'model.pt')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(str(path))
    text = str(error.value)
    assert message in text and text.startswith(f"{path}: ")
    assert '\n' not in text and len(text) < 400
    assert 'weights_only' not in text and 'safe_globals' not in text
    assert caught == []  # torch's warnings would be lines of their own on stderr


def test_float64_and_parameter_checkpoints_load_as_float32(tmp_path):
    W = torch.randn(784, 10, dtype=torch.float64)
    path = _save({'model': {'W': torch.nn.Parameter(W), 'b': torch.ones(10, dtype=torch.float64)}}, tmp_path / 'm.pt')
    model, _ = load_checkpoint(str(path))
    assert model.W.dtype == torch.float32 and torch.equal(model.W.detach(), W.float())
    assert torch.equal(model.b.detach(), torch.ones(10))


@pytest.mark.parametrize('config', [None, 'textbook', ['lr', 0.1], {'recipe': 7, 'loss': 'x' * 500}, {}])
def test_any_config_is_described_as_far_as_it_makes_sense(tmp_path, config, capsys):
    path = _save({'model': _state(), 'config': config, 'epoch': 10**30}, tmp_path / 'model.pt')
    _, checkpoint = load_checkpoint(str(path))
    assert checkpoint['config'] == config
    assert main([str(path), '--data-dir', data.find_data_dir(download=False)]) == 0
    assert f"{path}: epoch ?, ? recipe, ? loss; W (784, 10), b (10,); test accuracy 0.1000\n" == capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    ([''], 'argument checkpoint: is empty (an unset shell variable?)'),
    (['a.pt', '--data-dir', ''], 'argument --data-dir: is empty'),
    (['a.pt', 'b.pt'], 'unrecognized arguments: b.pt'),
    ([], 'the following arguments are required: checkpoint'),
])
def test_main_refuses_bad_command_lines_with_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('model.py: error: ') and message in err and err.count('\n') == 1


# ---------------------------------------------------------------- python model.py, through cli.run
# What the script does as a process (exit codes, signals, closed streams) is tests/test_contract.py's.

def _nearest_mean_model(fashion_mnist):
    """A model worth evaluating, in a fraction of a second: the nearest class mean as O = XW + b,
    argmin_k |x - m_k|^2 = argmax_k (x . m_k - |m_k|^2 / 2), so W = [m_0 ... m_9], b_k = -|m_k|^2 / 2."""
    train_images, train_labels = fashion_mnist[0].float() / 255, fashion_mnist[1]
    means = torch.stack([train_images[train_labels == k].mean(0) for k in range(10)])  # (10, 784)
    model = SoftmaxRegression()
    with torch.no_grad():
        model.W.copy_(means.T)
        model.b.copy_(-0.5 * (means ** 2).sum(1))
    return model


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory, fashion_mnist):
    """{name: path} of the checkpoints `python model.py` is given below, and the good one's accuracy."""
    base = tmp_path_factory.mktemp('checkpoints')
    model = _nearest_mean_model(fashion_mnist)
    with torch.no_grad():
        accuracy = float((model(fashion_mnist[2].float() / 255).argmax(1) == fashion_mnist[3]).float().mean())
    good = {'model': model.state_dict(), 'config': {'recipe': 'textbook', 'loss': 'scratch'}, 'epoch': 3}
    paths = {name: str(_save(checkpoint, base / f"{name.replace(' ', '-')}.pt")) for name, checkpoint in {
        'good': good,
        'nan weights': dict(good, model=_state(W=torch.full((784, 10), float('nan')))),
        'a class of its own': dict(good, extra=NotATensor()),
    }.items()}
    os.mkfifo(base / 'fifo.pt')  # opening it would wait for a writer forever
    paths['fifo'] = str(base / 'fifo.pt')
    return paths, accuracy


@pytest.fixture
def model_py(tmp_path, monkeypatch, capsys):
    """cli.run(model.main, argv), as `python model.py ARGV` runs it, in an empty folder:
    (exit code, stdout, stderr, the folder); a warning torch would print fails the test."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.delenv('TRACEBACK', raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*argv):
        with no_longer_than(60), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            code = cli.run(main, list(argv))
        assert caught == []  # each would be a line of its own on stderr
        return (code, *capsys.readouterr(), tmp_path)
    return run


def test_model_py_prints_what_the_checkpoint_holds_and_its_test_accuracy(model_py, checkpoints):
    paths, accuracy = checkpoints
    code, out, err, folder = model_py(paths['good'], '--data-dir', data.find_data_dir(download=False))
    assert code == 0 and err == ''
    assert out == f"{paths['good']}: epoch 3, textbook recipe, scratch loss; W (784, 10), b (10,); " \
                  f"test accuracy {accuracy:.4f}\n"
    assert 0.6 < accuracy < 0.8  # the nearest class mean: a real result, not chance's 0.1
    assert os.listdir(folder) == []


@pytest.mark.parametrize('case, fragments', [
    ('nan weights', ['W holds 7840 non-finite values (nan or inf)']),
    ('a class of its own', ['refused to load: it asks for the Python object', 'NotATensor']),
    ('fifo', ['fifo.pt: is a FIFO (named pipe), not a checkpoint file']),
])
def test_model_py_refuses_bad_input_with_one_line_and_exit_2(model_py, checkpoints, case, fragments):
    code, out, err, folder = model_py(checkpoints[0][case], '--data-dir', data.find_data_dir(download=False))
    assert (code, out) == (2, '')
    assert_one_line_error(err, 'error: ', *fragments)
    assert 'weights_only' not in err and os.listdir(folder) == []
