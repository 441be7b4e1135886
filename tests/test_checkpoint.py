"""model.load_checkpoint on model.pt files: the round trip of what train.py saves, and every kind of file that is
not one of its checkpoints, each refused in one line (support/checkpoints.py reads the file, model.py checks it)."""
import io
import os
import warnings
import zipfile

import pytest
import torch

from model import CheckpointError, SoftmaxRegression, load_checkpoint
from support.checkpoints import MAX_CHECKPOINT_BYTES


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
                           'refused to load: it asks for the Python object test_checkpoint.NotATensor'),
    'code to run': (lambda p: _save({'model': RunsCode()}, p), 'refused to load: it asks for the Python object'),
    'a 5000-digit number': (lambda p: _save({'model': _state(), 'epoch': 10**5000}, p),
                            'refused to load: its pickled data holds more than tensors and plain values '
                            '(Unsupported operand 139)'),
    'another shape': (lambda p: _save({'model': _state(W=torch.zeros(100, 10))}, p),
                      "holds {'W': (100, 10), 'b': (10,)}, but this model has"),
    'a bare state dict': (lambda p: _save(_state(), p), "expected a dict with a 'model' state dict"),
    'finite but overflowing weights': (lambda p: _save({'model': _state(W=torch.full((784, 10), 1e37))}, p),
                                       "W and b are finite but so large that an image's logits reach 7.84e+39"),
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
    'missing': (lambda p: p, 'no such file'),
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
