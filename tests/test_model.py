"""model.py: O = XW + b with the book's shapes and initialisation, and the checkpoint round trip."""
import pytest
import torch

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


def test_command_line_prints_one_error_line_and_exits_2(tmp_path, capsys):
    path = tmp_path / 'model.pt'
    path.write_text('<html>')
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1
