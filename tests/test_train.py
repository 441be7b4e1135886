"""train.py end to end on the real data: short runs, every output file, each loss, --compare, determinism."""
import csv
import json
import os

import pytest
import torch

import train
from model import SoftmaxRegression, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVERY_OUTPUT = ['history.csv', 'curves.png', 'metrics.json', 'model.pt',
                'predictions.png', 'weights.png', 'confusion.png']
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def read_history(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def run_train(out, *flags):
    return train.main(['--out', str(out), '--device', 'cpu', *flags])


@pytest.fixture(scope='module')
def two_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('run')
    assert run_train(out, '--epochs', '2') == 0
    return out


def test_a_two_epoch_run_writes_every_output(two_epoch_run):
    for name in EVERY_OUTPUT:
        path = two_epoch_run / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith('.png'):
            assert path.read_bytes()[:8] == PNG_SIGNATURE, name
    leftovers = [name for name in os.listdir(two_epoch_run) if name.endswith('.tmp')]
    assert leftovers == []


def test_history_has_the_promised_columns_and_reaches_078(two_epoch_run):
    history = read_history(two_epoch_run / 'history.csv')
    assert list(history[0]) == ['epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'seconds']
    assert [row['epoch'] for row in history] == ['1', '2']
    assert float(history[-1]['test_acc']) >= 0.78
    assert float(history[1]['train_loss']) < float(history[0]['train_loss'])


def test_metrics_json_holds_final_metrics_config_and_environment(two_epoch_run):
    metrics = json.loads((two_epoch_run / 'metrics.json').read_text())
    history = read_history(two_epoch_run / 'history.csv')
    assert metrics['status'] == 'finished' and metrics['epochs_completed'] == 2
    assert metrics['final']['test_acc'] == pytest.approx(float(history[-1]['test_acc']), abs=1e-6)
    assert metrics['config']['epochs'] == 2 and metrics['config']['lr'] == 0.1
    assert metrics['config']['batch_size'] == 256 and metrics['config']['loss'] == 'scratch'
    assert metrics['device'] == 'cpu' and metrics['torch_version'] == str(torch.__version__)
    assert len(metrics['seconds_per_epoch']) == 2 and metrics['wall_seconds'] > 0


def test_checkpoint_rebuilds_the_model_with_its_reported_accuracy(two_epoch_run, fashion_mnist):
    model, checkpoint = load_checkpoint(str(two_epoch_run / 'model.pt'))
    assert checkpoint['config']['recipe'] == 'textbook' and checkpoint['epoch'] == 2
    _, _, test_images, test_labels = fashion_mnist
    with torch.no_grad():
        accuracy = float((model(test_images.float() / 255).argmax(1) == test_labels).float().mean())
    history = read_history(two_epoch_run / 'history.csv')
    assert accuracy == pytest.approx(float(history[-1]['test_acc']), abs=1e-4)
    # and a plain torch.load is enough too
    state = torch.load(two_epoch_run / 'model.pt', weights_only=True)['model']
    assert state['W'].shape == (784, 10) and state['b'].shape == (10,)


@pytest.mark.parametrize('loss', ['naive', 'scratch', 'torch'])
def test_each_loss_trains_two_epochs(tmp_path, loss):
    assert run_train(tmp_path, '--epochs', '2', '--loss', loss) == 0
    for name in EVERY_OUTPUT:
        assert (tmp_path / name).is_file(), name
    assert float(read_history(tmp_path / 'history.csv')[-1]['test_acc']) >= 0.78


def test_same_seed_gives_the_same_history_seconds_aside(tmp_path, two_epoch_run):
    assert run_train(tmp_path, '--epochs', '2') == 0
    def without_seconds(path):
        return [{k: v for k, v in row.items() if k != 'seconds'} for row in read_history(path)]
    assert without_seconds(tmp_path / 'history.csv') == without_seconds(two_epoch_run / 'history.csv')


def test_another_seed_gives_another_history(tmp_path, two_epoch_run):
    assert run_train(tmp_path, '--epochs', '2', '--seed', '1') == 0
    assert read_history(tmp_path / 'history.csv')[0]['train_loss'] != \
        read_history(two_epoch_run / 'history.csv')[0]['train_loss']


def test_compare_overlays_the_three_losses_from_the_same_start(tmp_path):
    assert run_train(tmp_path, '--epochs', '2', '--compare') == 0
    assert (tmp_path / 'compare.png').read_bytes()[:8] == PNG_SIGNATURE
    histories = {loss: read_history(tmp_path / f'history_{loss}.csv') for loss in ('naive', 'scratch', 'torch')}
    # scratch and torch coincide; naive agrees while nothing overflows (it cannot at lr 0.1)
    for key in ('train_loss', 'train_acc', 'test_loss', 'test_acc'):
        for loss in ('naive', 'torch'):
            for mine, theirs in zip(histories['scratch'], histories[loss]):
                assert float(mine[key]) == pytest.approx(float(theirs[key]), abs=2e-4), (loss, key)


def test_flags_override_the_recipe():
    config = train.parse_config(['--recipe', 'tuned', '--epochs', '3', '--lr', '0.5'])
    assert config.epochs == 3 and config.lr == 0.5
    assert config.batch_size == train.RECIPES['tuned']['batch_size']
    assert config.standardize == train.RECIPES['tuned']['standardize']
    assert train.parse_config([]) == train.Config()


def test_tuned_recipe_saves_a_model_that_takes_plain_pixels(tmp_path, fashion_mnist):
    assert run_train(tmp_path, '--recipe', 'tuned', '--epochs', '1') == 0
    model, _ = load_checkpoint(str(tmp_path / 'model.pt'))
    _, _, test_images, test_labels = fashion_mnist
    with torch.no_grad():
        accuracy = float((model(test_images.float() / 255).argmax(1) == test_labels).float().mean())
    reported = float(read_history(tmp_path / 'history.csv')[-1]['test_acc'])
    assert accuracy == pytest.approx(reported, abs=2e-4)
    assert reported > 0.80


def test_the_device_agnostic_loop_runs_on_cuda_too(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine; the CPU runs above cover the same code path")
    assert run_train(tmp_path, '--epochs', '2', '--device', 'cuda') == 0
    assert float(read_history(tmp_path / 'history.csv')[-1]['test_acc']) >= 0.78


def _first_batch(fashion_mnist, size=256):
    train_images, train_labels, _, _ = fashion_mnist
    return train_images[:size].float() / 255, train_labels[:size]


def test_closed_form_gradients_are_autograds(fashion_mnist):
    """dO = (softmax(O) - Y)/n, dW = X^T dO, db = sum dO: what autograd finds through either loss."""
    X, y = _first_batch(fashion_mnist)
    torch.manual_seed(0)
    model = SoftmaxRegression()
    with torch.no_grad():
        model.W.mul_(300)  # large logits, where a careless formula would lose precision
    with torch.no_grad():
        dW, db = train.closed_form_gradients(model, X, model(X), y)
    for loss in ('scratch', 'torch'):  # losses.cross_entropy and nn.CrossEntropyLoss, through autograd
        dW_ref, db_ref = train.autograd_gradients(model, X, model(X), y, loss)
        torch.testing.assert_close(dW, dW_ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(db, db_ref, rtol=1e-5, atol=1e-7)
    assert dW.shape == (784, 10) and db.shape == (10,)


@pytest.mark.parametrize('momentum, weight_decay', [(0.0, 0.0), (0.9, 1e-3)])
def test_sgd_update_is_torch_optim_sgd(fashion_mnist, momentum, weight_decay):
    X, y = _first_batch(fashion_mnist, 512)
    torch.manual_seed(0)
    mine, reference = SoftmaxRegression(), SoftmaxRegression()
    reference.load_state_dict(mine.state_dict())
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    velocities = [torch.zeros_like(p) for p in mine.parameters()]
    for start in range(0, 512, 128):  # four steps, so that momentum matters
        Xb, yb = X[start:start + 128], y[start:start + 128]
        with torch.no_grad():
            grads = train.closed_form_gradients(mine, Xb, mine(Xb), yb)
        train.sgd_update(list(mine.parameters()), grads, velocities, 0.1, momentum, weight_decay)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reference(Xb), yb).backward()
        optimizer.step()
    torch.testing.assert_close(mine.W, reference.W, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mine.b, reference.b, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_starts_at_lr_and_decays_to_zero():
    config = train.Config(lr=0.05, schedule='cosine')
    assert train.learning_rate(config, 0, 100) == pytest.approx(0.05)
    assert train.learning_rate(config, 50, 100) == pytest.approx(0.025)
    assert train.learning_rate(config, 99, 100) < 1e-4
    assert train.learning_rate(train.Config(lr=0.1), 99, 100) == 0.1
