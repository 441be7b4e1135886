"""concise.py, the book's 3.7 with PyTorch's own blocks: the same history as `train.py --loss torch`."""
import pytest
import torch

import concise
import train
from common import read_csv
from helpers import records
from support import cli

COLUMNS = ['epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc']


def concise_in_process(datasets, *argv):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(concise.data, 'load_fashion_mnist', lambda *args, **kwargs: datasets)
        return cli.run(concise.main, list(map(str, argv)))


def test_its_history_is_train_py_loss_torchs_to_1e_5(fashion_mnist, tmp_path, capsys):
    flags = ['--epochs', '2', '--seed', '3', '--batch-size', '200']
    assert concise_in_process(fashion_mnist, *flags, '--out', tmp_path) == 0
    out = capsys.readouterr().out
    assert out.count('\n') == 3 and 'epoch   2/2  train loss' in out  # the device, then a line per epoch
    config = train.parse_config([*flags, '--loss', 'torch', '--device', 'cpu'])
    for theirs, _ in train.train(config, train.new_model(config, torch.device('cpu')), fashion_mnist,
                                 torch.device('cpu')):
        pass
    ours = read_csv(tmp_path / 'history.csv')
    assert list(ours[0]) == records.HISTORY_COLUMNS and len(ours) == len(theirs) == 2
    for mine, reference in zip(ours, theirs):
        for column in COLUMNS:
            assert float(mine[column]) == pytest.approx(reference[column], abs=1e-5), column
    assert 0.75 < float(ours[-1]['test_acc']) < 0.85


def test_a_diverging_run_is_one_line_and_exit_1_keeping_the_finished_epochs(fashion_mnist, tmp_path, capsys,
                                                                            monkeypatch):
    nan_from = []

    def loss_that_turns_nan(y_hat, y):  # nan from the second epoch's steps on, as a diverging run gives
        losses = concise.nn.functional.cross_entropy(y_hat, y, reduction='none')
        nan_from.append(1)
        return losses * float("nan") if len(nan_from) > 235 else losses  # epoch 1 has 235 steps
    monkeypatch.setattr(concise.nn, 'CrossEntropyLoss', lambda reduction: loss_that_turns_nan)
    assert concise_in_process(fashion_mnist, '--epochs', '3', '--out', tmp_path) == cli.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: training diverged at epoch 2, step 1: loss is nan')
    assert [row['epoch'] for row in read_csv(tmp_path / 'history.csv')] == ['1']
