"""model.py: O = XW + b with the book's shapes and initialisation, its backward by hand, and what `python model.py`
prints for good and bad checkpoints (the checkpoints themselves are test_checkpoint.py's)."""
import os
import warnings

import pytest
import torch

import data
from common import assert_one_line_error, no_longer_than
from test_checkpoint import NotATensor, _save, _state
from support import cli
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


def test_main_raises_the_checkpoint_error_that_cli_run_prints_as_one_line(tmp_path):
    path = tmp_path / 'model.pt'
    path.write_text('<html>')
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint') as error:
        main([str(path)])
    assert '\n' not in str(error.value)


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
        'overflowing weights': dict(good, model=_state(W=torch.full((784, 10), 1e37))),
        'a class of its own': dict(good, extra=NotATensor()),
    }.items()}
    if hasattr(os, 'mkfifo'):  # Windows has none
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
    ('overflowing weights', ['W and b are finite but so large that an image', 'not a trained model']),
    ('a class of its own', ['refused to load: it asks for the Python object', 'NotATensor']),
    ('fifo', ['fifo.pt: is a FIFO (named pipe), not a checkpoint file']),
])
def test_model_py_refuses_bad_input_with_one_line_and_exit_2(model_py, checkpoints, case, fragments):
    if case not in checkpoints[0]:
        pytest.skip("this system has no FIFOs (named pipes)")
    code, out, err, folder = model_py(checkpoints[0][case], '--data-dir', data.find_data_dir(download=False))
    assert (code, out) == (2, '')
    assert_one_line_error(err, 'error: ', *fragments)
    assert 'weights_only' not in err and os.listdir(folder) == []
