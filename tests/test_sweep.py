"""sweep.py on the real data with tiny grids: the same histories as train.py, sweep.csv and the figures,
Ctrl-C keeping finished runs, a re-run training only the missing ones, bad input refused."""
import csv
import json
import os
import re
import shutil
import signal
import time

import pytest

import data
import sweep
import train
from common import (PNG_SIGNATURE, released_locks, assert_one_line_error, finish, no_temporary_files, read_csv, start,
                     tiny_disk)
from support import cli, writing
from helpers import plots_sweep, records

SIX_DECIMALS = re.compile(r'^-?\d+\.\d{6}$')


def without_seconds(history):
    return [{key: value for key, value in row.items() if key != 'seconds'} for row in history]


@pytest.fixture(scope='module')
def run_sweep(fashion_mnist):
    """sweep.main in this process, on the session's copy of the data; returns (exit code, keys trained)."""
    def run(out, *flags):
        trained = []
        real_train_run = sweep.train_run

        def counting_train_run(config, datasets, device):
            trained.append((config.lr, config.batch_size, config.seed, config.epochs))
            return real_train_run(config, datasets, device)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sweep.data, 'load_fashion_mnist', lambda *args, **kwargs: fashion_mnist)
            patch.setattr(sweep, 'train_run', counting_train_run)
            with released_locks():  # a folder's lock lasts as long as the process; this one runs many sweeps
                code = sweep.main(['--out', str(out), '--device', 'cpu', *flags])
        return code, trained
    return run


# ------------------------------------------------------------------ a run of the sweep is a run of train.py

@pytest.mark.parametrize('recipe, loss', [('textbook', 'scratch'), ('tuned', 'torch'), ('tuned', 'naive')])
def test_a_runs_config_is_the_one_train_py_builds_from_the_same_flags(recipe, loss):
    sweep_config = sweep.parse_config(['--recipe', recipe, '--loss', loss, '--epochs', '7', '--device', 'cpu',
                                       '--data-dir', '/some/where', '--out', 'o'])
    for lr, batch_size, seed in [(0.3, 64, 0), (1e-7, 1, 5)]:
        from_train_py = train.parse_config(['--recipe', recipe, '--loss', loss, '--lr', repr(lr), '--batch-size',
                                            str(batch_size), '--epochs', '7', '--seed', str(seed), '--device',
                                            'cpu', '--data-dir', '/some/where', '--out', 'o'])
        assert sweep_config.run_config(lr, batch_size, seed) == from_train_py


def test_a_run_of_the_sweep_has_the_history_of_python_train_py(tmp_path, run_sweep):
    flags = ['--lr', '0.3', '--batch-size', '1024', '--epochs', '2']
    process = start('train.py', *flags, '--seed', '1', '--device', 'cpu', '--out', tmp_path / 'train')
    code, trained = run_sweep(tmp_path / 'sweep', *flags, '--seeds', '2')  # seeds 0 and 1
    assert code == 0 and len(trained) == 2
    assert finish(process)[0] == 0
    from_train_py = read_csv(tmp_path / 'train' / 'history.csv')
    from_sweep = read_csv(tmp_path / 'sweep' / 'history_lr0.3_batch1024_seed1_2epochs_textbook_scratch.csv')
    # every column to the six decimals history.csv holds, but the time it took; seed 0 trained first in the
    # same process, so nothing of one run leaks into the next
    assert len(from_sweep) == 2 and without_seconds(from_sweep) == without_seconds(from_train_py)
    row = [row for row in read_csv(tmp_path / 'sweep' / 'sweep.csv') if row['seed'] == '1'][0]
    assert (row['final_train_loss'], row['final_test_loss'], row['final_test_acc']) == \
        (from_train_py[-1]['train_loss'], from_train_py[-1]['test_loss'], from_train_py[-1]['test_acc'])
    # two seeds per cell: the heatmap says mean ± std
    assert (tmp_path / 'sweep' / 'sweep.png').read_bytes()[:8] == PNG_SIGNATURE


# ------------------------------------------------------------------ the files

GRID = ['--loss', 'naive', '--lr', '10', '0.1', '--batch-size', '1024', '512', '--epochs', '1']


@pytest.fixture(scope='module')
def grid_run(tmp_path_factory, run_sweep):
    """A 2 x 2 grid where lr 10 diverges (the naive loss overflows), and what it wrote."""
    out = tmp_path_factory.mktemp('sweep')
    code, trained = run_sweep(out, *GRID)
    return out, code, trained, {name: (out / name).read_bytes() for name in os.listdir(out)}


def test_a_grid_with_diverging_runs_exits_0_and_writes_every_file(grid_run):
    out, code, trained, _ = grid_run
    assert code == 0
    assert trained == [(0.1, 512, 0, 1), (10.0, 512, 0, 1), (0.1, 1024, 0, 1), (10.0, 1024, 0, 1)]
    for name in ('sweep.png', 'sweep_curves.png'):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    assert no_temporary_files(out)


def test_sweep_csv_has_one_row_per_run_with_six_decimals(grid_run):
    out = grid_run[0]
    with open(out / 'sweep.csv', newline='') as f:
        assert next(csv.reader(f)) == ['lr', 'batch_size', 'seed', 'epochs', 'recipe', 'loss', 'status',
                                       'final_train_loss', 'final_test_loss', 'final_test_acc', 'best_test_acc',
                                       'best_epoch', 'seconds']
    rows = {(row['lr'], row['batch_size']): row for row in read_csv(out / 'sweep.csv')}
    assert set(rows) == {('0.1', '512'), ('0.1', '1024'), ('10', '512'), ('10', '1024')}
    for (lr, _), row in rows.items():
        assert (row['seed'], row['epochs'], row['recipe'], row['loss']) == ('0', '1', 'textbook', 'naive')
        assert SIX_DECIMALS.match(row['seconds'])
        if lr == '10':  # overflowed in its first epoch: no finished epoch to report
            assert row['status'] == 'diverged' and row['final_test_acc'] == '' and row['best_epoch'] == ''
        else:
            assert row['status'] == 'finished' and row['best_epoch'] == '1'
            for column in ('final_train_loss', 'final_test_loss', 'final_test_acc', 'best_test_acc'):
                assert SIX_DECIMALS.match(row[column]), (column, row[column])
            assert 0.7 < float(row['final_test_acc']) == float(row['best_test_acc'])


def test_every_run_keeps_its_history_under_a_name_that_says_which_run(grid_run):
    out = grid_run[0]
    for lr in ('0.1', '10'):
        for batch_size in ('512', '1024'):
            history = read_csv(out / f"history_lr{lr}_batch{batch_size}_seed0_1epochs_textbook_naive.csv")
            assert len(history) == (1 if lr == '0.1' else 0)  # a diverged run keeps its finished epochs: none
    with open(out / 'history_lr10_batch512_seed0_1epochs_textbook_naive.csv') as f:
        assert f.read() == ','.join(records.HISTORY_COLUMNS) + '\n'


def test_sweep_json_holds_the_sweeps_configuration(grid_run):
    info = json.loads((grid_run[0] / 'sweep.json').read_text())
    assert info['status'] == 'finished' and info['runs_in_grid'] == 4 and info['runs_trained_now'] == 4
    assert info['config'] == dict(lr=[0.1, 10.0], batch_size=[512, 1024], epochs=1, seeds=1, recipe='textbook',
                                  loss='naive', device='cpu', data_dir=None, out=str(grid_run[0]), yes=False)
    assert info['recipe_settings'] == train.RECIPES['textbook']


def test_the_heatmap_labels_every_cell_marks_divergence_and_outlines_the_best():
    runs = [dict(lr=lr, batch_size=batch_size, seed=seed, status=status, final_test_acc=acc)
            for lr, batch_size, seed, status, acc in [
                (0.1, 256, 0, 'finished', 0.82), (0.1, 256, 1, 'finished', 0.84), (0.1, 1024, 0, 'finished', 0.78),
                (1.0, 256, 0, 'diverged', None), (1.0, 256, 1, 'finished', 0.7), (0.01, 1024, 0, 'finished', 0.6)]]
    figure = plots_sweep.plot_sweep_heatmap(runs, 'test')
    axes = figure.axes[0]
    texts = sorted(text.get_text() for text in axes.texts)
    assert texts == ['0.6000', '0.7800', '0.8300\n± 0.0141', 'diverged\n(1 of 2 seeds)']  # (0.01, 256): not run
    assert [tick.get_text() for tick in axes.get_yticklabels()] == ['0.01', '0.1', '1']
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ['256', '1024']
    outlines = [patch for patch in axes.patches if not patch.get_fill()]
    assert len(outlines) == 1 and outlines[0].get_xy() == (-0.5, 0.5)  # the (0.1, 256) cell
    assert 'best (outlined in red): lr 0.1, batch size 256: 0.8300' in axes.get_title()


# ------------------------------------------------------------------ re-runs

def test_a_grid_grows_by_running_it_again_with_more_values(grid_run, run_sweep, tmp_path):
    out = tmp_path / 'again'
    shutil.copytree(grid_run[0], out)
    before = {(row['lr'], row['batch_size']): row for row in read_csv(out / 'sweep.csv')}
    assert run_sweep(out, *GRID) == (0, [])  # the same command again: nothing to train
    code, trained = run_sweep(out, '--loss', 'naive', '--lr', '0.1', '0.3', '--batch-size', '1024', '--epochs', '1')
    assert code == 0 and trained == [(0.3, 1024, 0, 1)]
    after = {(row['lr'], row['batch_size']): row for row in read_csv(out / 'sweep.csv')}
    assert set(after) == set(before) | {('0.3', '1024')}
    assert all(after[key] == row for key, row in before.items())  # kept as they were, seconds included
    # the heatmap is drawn from every run of these epochs/recipe/loss in sweep.csv, not only this command's
    assert (out / 'sweep.png').read_bytes() != grid_run[3]['sweep.png']


def test_runs_with_other_epochs_recipe_or_loss_are_other_runs(grid_run, run_sweep, tmp_path):
    out = tmp_path / 'again'
    shutil.copytree(grid_run[0], out)
    code, trained = run_sweep(out, '--loss', 'naive', '--lr', '0.1', '--batch-size', '1024', '--epochs', '2')
    assert code == 0 and trained == [(0.1, 1024, 0, 2)]
    rows = read_csv(out / 'sweep.csv')
    assert len(rows) == 5 and sorted(row['epochs'] for row in rows) == ['1', '1', '1', '1', '2']
    assert (out / 'history_lr0.1_batch1024_seed0_2epochs_textbook_naive.csv').is_file()
    assert (out / 'history_lr0.1_batch1024_seed0_1epochs_textbook_naive.csv').is_file()


# ------------------------------------------------------------------ Ctrl-C

def _signal_after_the_first_finished_run(processes, folders, timeout=240):
    """Send each process its signal as soon as its sweep.csv holds a row."""
    waiting, deadline = dict(processes), time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for sig, process in list(waiting.items()):
            csv_path = folders[sig] / 'sweep.csv'
            if process.poll() is not None or (csv_path.exists() and len(read_csv(csv_path)) >= 1):
                process.send_signal(sig)
                del waiting[sig]
        time.sleep(0.02)


def test_ctrl_c_or_kill_keeps_finished_runs_redraws_the_figures_and_a_rerun_trains_the_rest(tmp_path, run_sweep):
    lrs = ['0.1', '0.2', '0.3', '0.4']
    grid = ['--lr', *lrs, '--batch-size', '1024', '--epochs', '1']
    folders = {sig: tmp_path / sig.name for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = {sig: start('sweep.py', *grid, '--device', 'cpu', '--out', folder)
                 for sig, folder in folders.items()}  # side by side: each costs torch's import
    _signal_after_the_first_finished_run(processes, folders)
    for sig, process in processes.items():
        code, _, err = finish(process)
        assert code == 130, (sig, err)
        assert_one_line_error(err, 'interrupted', 'sweep.png and sweep_curves.png redrawn')
        kept = read_csv(folders[sig] / 'sweep.csv')
        assert 1 <= len(kept) < len(lrs), sig
        for name in ('sweep.png', 'sweep_curves.png'):
            assert (folders[sig] / name).read_bytes()[:8] == PNG_SIGNATURE, (sig, name)
        assert json.loads((folders[sig] / 'sweep.json').read_text())['status'] == 'interrupted'
        assert no_temporary_files(folders[sig])
    # the same command again trains what the interruption left out, and only that
    kept = read_csv(folders[signal.SIGINT] / 'sweep.csv')
    code, trained = run_sweep(folders[signal.SIGINT], *grid)
    assert code == 0 and len(trained) == len(lrs) - len(kept)
    after = read_csv(folders[signal.SIGINT] / 'sweep.csv')
    assert sorted(row['lr'] for row in after) == lrs and all(row in after for row in kept)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize('flags, flag', [
    (['--lr', '0'], '--lr'), (['--lr', '0.1', 'fast'], '--lr'), (['--lr', 'nan'], '--lr'), (['--lr'], '--lr'),
    (['--batch-size', '0'], '--batch-size'), (['--batch-size', '2.5'], '--batch-size'),
    (['--seeds', '0'], '--seeds'), (['--seeds', 'two'], '--seeds'), (['--epochs', '0'], '--epochs'),
    (['--recipe', 'fast'], '--recipe'), (['--loss', 'hinge'], '--loss'), (['--device', 'tpu'], '--device'),
    (['--out', ''], '--out'), (['--data-dir', ''], '--data-dir'),
])
def test_a_bad_flag_is_one_line_naming_it_and_exit_2(flags, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        sweep.main([*flags, '--out', str(tmp_path / 'never')] if flag != '--out' else flags)
    assert exit_.value.code == 2
    assert_one_line_error(capsys.readouterr().err, f"error: argument {flag}:")
    assert not (tmp_path / 'never').exists()


def test_the_default_grid_and_values_given_twice_or_in_two_flags():
    config = sweep.parse_config([])
    assert config.lr == [0.01, 0.03, 0.1, 0.3, 1] and config.batch_size == [32, 64, 256, 1024]
    assert (config.epochs, config.seeds) == (10, 1)
    assert (config.recipe, config.loss, config.out) == ('textbook', 'scratch', 'outputs/sweep')
    config = sweep.parse_config(['--lr', '0.3', '0.1', '0.30', '--batch-size', '64', '64', '--lr', '1'])
    assert config.lr == [0.1, 0.3, 1] and config.batch_size == [64]  # run once each, in order


def test_learning_rates_are_keyed_exactly():
    for lr in (0.1, 1.0, 1e-7, 2e-7, 0.1 + 0.2, 3e38):
        assert float(sweep.format_number(lr)) == lr
    assert sweep.format_number(1.0) == '1' and sweep.format_number(0.01) == '0.01'


HEADER = ','.join(sweep.SWEEP_COLUMNS)
GOOD_ROW = '0.1,256,0,1,textbook,scratch,finished,0.5,0.5,0.8,0.8,1,1.0'


@pytest.mark.parametrize('content, why', [
    (b'epoch,train_loss,train_acc,test_loss,test_acc,seconds\n1,0.5,0.8,0.5,0.8,0.2\n', 'its header is'),
    (b'', 'it is empty'),
    (b'\x89PNG\r\n\x1a\n\x00\xff\xfe binary', 'it is not text'),
    (f"{HEADER}\n{GOOD_ROW}\n0.1,256,0\n".encode(), 'line 3 has 3 fields'),
    (f"{HEADER}\n{GOOD_ROW.replace('0.1,', 'fast,', 1)}\n".encode(), "line 2: lr is 'fast'"),
    (f"{HEADER}\n{GOOD_ROW.replace('finished', 'done')}\n".encode(), "line 2: status is 'done'"),
    (f"{HEADER}\n{GOOD_ROW.replace('textbook', 'book')}\n".encode(), "line 2: recipe is 'book'"),
    (f"{HEADER}\n0.1,256,0,1,textbook,scratch,finished,,,,,,1\n".encode(), "a finished run without its results"),
    (f"{HEADER}\n{GOOD_ROW.replace(',0.8,0.8,', ',5e300,0.8,')}\n".encode(), "not an accuracy between 0 and 1"),
])
def test_a_sweep_csv_that_is_not_one_is_refused_and_nothing_is_lost(tmp_path, run_sweep, content, why):
    (tmp_path / 'sweep.csv').write_bytes(content)
    (tmp_path / 'sweep.png').write_bytes(b'an earlier figure')
    with pytest.raises(cli.InputError, match='is not a sweep.csv written by sweep.py') as error:
        run_sweep(tmp_path, '--lr', '0.1', '--batch-size', '1024', '--epochs', '1')
    assert why in str(error.value) and 'move it away or choose another --out' in str(error.value)
    assert (tmp_path / 'sweep.csv').read_bytes() == content
    assert (tmp_path / 'sweep.png').read_bytes() == b'an earlier figure'
    assert sorted(os.listdir(tmp_path)) == ['sweep.csv', 'sweep.png']


def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path, run_sweep):
    with released_locks():
        writing.prepare_out_dir(str(tmp_path))  # as another sweep writing there does: checked and locked
        with pytest.raises(cli.OutputError, match='another run .* is writing to'):
            run_sweep(tmp_path, '--lr', '0.1', '--batch-size', '1024', '--epochs', '1')
    assert os.listdir(tmp_path) == []  # no lock file among the outputs


def test_an_unwritable_out_or_missing_data_is_refused_before_training(tmp_path):
    (tmp_path / 'a-file').write_text('I am a file')
    with pytest.raises(cli.OutputError, match='cannot write to output folder .*a-file: it is a file'):
        sweep.main(['--out', str(tmp_path / 'a-file'), '--epochs', '1'])
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'sweep.csv').write_text(HEADER + '\n' + GOOD_ROW + '\n')
    with released_locks(), pytest.raises(data.DataError, match='does not exist'):
        sweep.main(['--data-dir', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out'), '--device', 'cpu',
                    '--lr', '0.3', '--batch-size', '1024', '--epochs', '1'])
    assert (tmp_path / 'out' / 'sweep.csv').read_text() == HEADER + '\n' + GOOD_ROW + '\n'
    assert sorted(os.listdir(tmp_path / 'out')) == ['sweep.csv']


# ------------------------------------------------------------------ faults at the edges

def test_a_disk_that_fills_ends_the_sweep_with_a_status_that_says_so(run_sweep, capsys):
    with tiny_disk(60) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs is not permitted here (needs root)")
        code, trained = run_sweep(disk, '--lr', '0.1', '--batch-size', '1024', '--epochs', '1')
        info = json.loads(open(os.path.join(disk, 'sweep.json')).read())
        rows, names = read_csv(os.path.join(disk, 'sweep.csv')), os.listdir(disk)
    err = capsys.readouterr().err
    assert code == 2 and trained == [(0.1, 1024, 0, 1)]
    assert_one_line_error(err, f"error: cannot write {disk}/", ": No space left on device", '1 run finished this time')
    assert info['status'] == 'failed: ' + err.strip()[len('error: '):].split('; ')[0]
    assert len(rows) == 1 and 'history_lr0.1_batch1024_seed0_1epochs_textbook_scratch.csv' in names
    assert not [name for name in names if name.endswith('.tmp')]


GIANT = ['--lr', *[f"0.{k:02d}" for k in range(1, 100)], '1', '--batch-size', *map(str, range(1, 101)),
         '--seeds', '1000']


def test_a_grid_that_cannot_be_meant_is_refused_with_its_size_and_time(tmp_path):
    with pytest.raises(cli.InputError) as error:
        sweep.main([*GIANT, '--out', str(tmp_path / 'never')])
    message = str(error.value)
    for fragment in ('10,000,000 runs to train (100 learning rates x 100 batch sizes x 1000 seeds, 10 epochs)',
                     'years of training', 'add --yes'):
        assert fragment in message, message
    assert not (tmp_path / 'never').exists()


def test_yes_insists_and_the_grid_is_never_listed_whole():
    import tracemalloc
    config = sweep.parse_config([*GIANT, '--yes'])
    tracemalloc.start()
    assert sweep.check_grid_size(config, {}) == 10_000_000
    first = next(config.grid())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert first == (0.01, 1, 0, 10, 'textbook', 'scratch') and peak < 10 * 2**20


def test_runs_already_in_sweep_csv_are_not_counted_to_train():
    config = sweep.parse_config(['--lr', '0.1', '0.3', '--batch-size', '1024', '--epochs', '1'])
    done = {(0.1, 1024, 0, 1, 'textbook', 'scratch'): {}, (0.1, 1024, 0, 2, 'textbook', 'scratch'): {}}
    assert sweep.check_grid_size(config, done) == 1
    assert sweep.shape(config).endswith(', 1 epoch')


def test_the_heatmap_of_a_large_grid_stays_readable_and_says_what_it_leaves_out():
    runs = [dict(lr=lr, batch_size=size, seed=0, status='diverged' if lr == 1 and size < 59700 else 'finished',
                 final_test_acc=None if lr == 1 and size < 59700 else 0.7 + size / 1e7)
            for lr in (0.1, 1.0) for size in range(59601, 60001)]
    figure = plots_sweep.plot_sweep_heatmap(runs, 'test')
    axes = figure.axes[0]
    width, height = figure.get_size_inches()
    assert width <= 22 and height <= 12 and len(axes.texts) == 0
    assert len(axes.get_xticklabels()) <= plots_sweep.MAX_LABELLED
    assert [tick.get_text() for tick in axes.get_xticklabels()][::len(axes.get_xticklabels()) - 1] == ['59601', '60000']
    assert 'too many cells to write each value' in axes.get_title() and 'grey: diverged' in axes.get_title()


def test_the_curves_of_many_learning_rates_show_ten_evenly_spaced():
    runs = [dict(lr=k / 100, batch_size=size, seed=seed, status='finished')
            for k in range(1, 101) for size in (200, 1024) for seed in (1, 0)]
    batch_size, chosen, lrs = plots_sweep.choose_curves(runs)
    assert (batch_size, lrs, len(chosen)) == (200, 100, plots_sweep.MAX_CURVES)
    assert chosen[0]['lr'] == 0.01 and chosen[-1]['lr'] == 1.0 and {run['seed'] for run in chosen} == {0}
