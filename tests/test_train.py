"""train.py end to end on the real data, in this process: every output file, each loss, --compare,
determinism, the tuned recipe; then the step's maths against autograd and torch.optim.SGD."""
import json
import os

import pytest
import torch

import train
from common import PNG_SIGNATURE, read_csv, released_locks
from model import SoftmaxRegression, load_checkpoint

EVERY_OUTPUT = ['history.csv', 'curves.png', 'metrics.json', 'model.pt',
                'predictions.png', 'weights.png', 'confusion.png', 'confidence.png']


def test_a_two_epoch_run_writes_every_output_and_nothing_else(finished_run):
    # nothing else: no temporary file, and no lock file (the lock is kept outside the outputs)
    assert sorted(os.listdir(finished_run)) == sorted(EVERY_OUTPUT)
    for name in EVERY_OUTPUT:
        path = finished_run / name
        assert path.stat().st_size > 0, name
        if name.endswith('.png'):
            assert path.read_bytes()[:8] == PNG_SIGNATURE, name


def test_history_has_the_promised_columns_and_reaches_078(finished_run):
    history = read_csv(finished_run / 'history.csv')
    assert list(history[0]) == ['epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'seconds']
    assert [row['epoch'] for row in history] == ['1', '2']
    assert float(history[-1]['test_acc']) >= 0.78
    assert float(history[1]['train_loss']) < float(history[0]['train_loss'])


def test_metrics_json_holds_final_metrics_config_and_environment(finished_run):
    metrics = json.loads((finished_run / 'metrics.json').read_text())
    history = read_csv(finished_run / 'history.csv')
    assert metrics['status'] == 'finished' and metrics['epochs_completed'] == 2
    assert metrics['final']['test_acc'] == pytest.approx(float(history[-1]['test_acc']), abs=1e-6)
    assert metrics['config']['epochs'] == 2 and metrics['config']['lr'] == 0.1
    assert metrics['config']['batch_size'] == 256 and metrics['config']['loss'] == 'scratch'
    assert metrics['device'] == 'cpu' and metrics['torch_version'] == str(torch.__version__)
    assert len(metrics['seconds_per_epoch']) == 2 and metrics['wall_seconds'] > 0


def _accuracy(model, fashion_mnist):
    _, _, test_images, test_labels = fashion_mnist
    with torch.no_grad():
        return float((model(test_images.float() / 255).argmax(1) == test_labels).float().mean())


def test_checkpoint_rebuilds_the_model_with_its_reported_accuracy(finished_run, fashion_mnist):
    model, checkpoint = load_checkpoint(str(finished_run / 'model.pt'))
    assert checkpoint['config']['recipe'] == 'textbook' and checkpoint['epoch'] == 2
    history = read_csv(finished_run / 'history.csv')
    assert _accuracy(model, fashion_mnist) == pytest.approx(float(history[-1]['test_acc']), abs=1e-4)
    # and a plain torch.load is enough too
    state = torch.load(finished_run / 'model.pt', weights_only=True)['model']
    assert state['W'].shape == (784, 10) and state['b'].shape == (10,)


@pytest.mark.parametrize('loss', ['naive', 'torch'])  # scratch, the default: finished_run
def test_each_loss_trains_and_writes_every_output(train_main, tmp_path, loss):
    # Two epochs of each loss reach 0.78 in the --compare test below; one is enough to see the flag work.
    assert train_main('--epochs', '1', '--loss', loss, '--out', tmp_path)[0] == 0
    assert sorted(os.listdir(tmp_path)) == sorted(EVERY_OUTPUT)
    assert json.loads((tmp_path / 'metrics.json').read_text())['config']['loss'] == loss
    assert float(read_csv(tmp_path / 'history.csv')[-1]['test_acc']) >= 0.76


def _without_seconds(path):
    return [{key: value for key, value in row.items() if key != 'seconds'} for row in read_csv(path)]


def test_same_seed_gives_the_same_history_seconds_aside(train_main, tmp_path, finished_run):
    assert train_main('--epochs', '2', '--out', tmp_path)[0] == 0
    assert _without_seconds(tmp_path / 'history.csv') == _without_seconds(finished_run / 'history.csv')


def test_another_seed_gives_another_history(train_main, tmp_path, finished_run):
    assert train_main('--epochs', '1', '--seed', '1', '--out', tmp_path)[0] == 0
    first_rows = read_csv(tmp_path / 'history.csv')[0], read_csv(finished_run / 'history.csv')[0]
    assert first_rows[0]['train_loss'] != first_rows[1]['train_loss']


def test_compare_overlays_the_three_losses_from_the_same_start(train_main, tmp_path):
    assert train_main('--epochs', '2', '--compare', '--out', tmp_path)[0] == 0
    assert (tmp_path / 'compare.png').read_bytes()[:8] == PNG_SIGNATURE
    histories = {loss: read_csv(tmp_path / f'history_{loss}.csv') for loss in ('naive', 'scratch', 'torch')}
    # scratch and torch coincide; naive agrees while nothing overflows (it cannot at lr 0.1)
    for key in ('train_loss', 'train_acc', 'test_loss', 'test_acc'):
        for loss in ('naive', 'torch'):
            for mine, theirs in zip(histories['scratch'], histories[loss]):
                assert float(mine[key]) == pytest.approx(float(theirs[key]), abs=2e-4), (loss, key)
    for loss, history in histories.items():  # each loss trains: two epochs reach the book's 0.78
        assert len(history) == 2 and float(history[-1]['test_acc']) >= 0.78, loss


def test_flags_override_the_recipe():
    config = train.parse_config(['--recipe', 'tuned', '--epochs', '3', '--lr', '0.5'])
    assert config.epochs == 3 and config.lr == 0.5
    assert config.batch_size == train.RECIPES['tuned']['batch_size']
    assert config.standardize == train.RECIPES['tuned']['standardize']
    assert train.parse_config([]) == train.Config()


def test_tuned_recipe_saves_a_model_that_takes_plain_pixels(train_main, tmp_path, fashion_mnist):
    assert train_main('--recipe', 'tuned', '--epochs', '1', '--out', tmp_path)[0] == 0
    model, _ = load_checkpoint(str(tmp_path / 'model.pt'))
    reported = float(read_csv(tmp_path / 'history.csv')[-1]['test_acc'])
    assert _accuracy(model, fashion_mnist) == pytest.approx(reported, abs=2e-4)
    assert reported > 0.80


def test_the_device_agnostic_loop_runs_on_cuda_too(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine; the CPU runs above cover the same code path")
    with released_locks():  # the data read onto the GPU, as a run there reads it
        assert train.main(['--epochs', '2', '--device', 'cuda', '--out', str(tmp_path)]) == 0
    assert float(read_csv(tmp_path / 'history.csv')[-1]['test_acc']) >= 0.78


def _first_batch(fashion_mnist, size=256):
    train_images, train_labels, _, _ = fashion_mnist
    return train_images[:size].float() / 255, train_labels[:size]


def test_closed_form_gradients_are_autograds(fashion_mnist):
    """l_i = log sum exp(o_i) - o_iy, dO = (softmax(O) - Y)/n, dW = X^T dO, db = sum dO: what autograd finds
    through the stable loss and through nn.CrossEntropyLoss."""
    X, y = _first_batch(fashion_mnist)
    torch.manual_seed(0)
    model = SoftmaxRegression()
    with torch.no_grad():
        model.W.mul_(300)  # large logits, where a careless formula would lose precision
    with torch.no_grad():
        l, (dW, db) = train.closed_form_gradients(model, X, model(X), y)
    for loss in ('scratch', 'torch'):  # losses.stable_loss and nn.CrossEntropyLoss, through autograd
        l_ref, (dW_ref, db_ref) = train.autograd_gradients(model, model(X), y, loss)
        torch.testing.assert_close(l, l_ref, rtol=1e-5, atol=1e-5)
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
            _, grads = train.closed_form_gradients(mine, Xb, mine(Xb), yb)
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
