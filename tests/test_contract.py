"""Bad input and interruptions: one clear line and the right exit code, never a traceback, nothing lost.

What is the process's behaviour (exit code, stderr) is checked by running train.py as a subprocess.
"""
import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import data
import losses
import train
from helpers import assert_one_line_error, finish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, 'train.py')


def start(*flags, cwd=ROOT, env=None):
    return subprocess.Popen([sys.executable, TRAIN_PY, *flags], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_history(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def no_temporary_files(folder):
    return [name for name in os.listdir(folder) if name.endswith('.tmp')] == []


# ------------------------------------------------------------------ command line: argparse errors, exit 2

BAD_FLAGS = {
    'zero epochs': (['--epochs', '0'], '--epochs'),
    'negative epochs': (['--epochs', '-3'], '--epochs'),
    'zero lr': (['--lr', '0'], '--lr'),
    'negative lr': (['--lr', '-0.1'], '--lr'),
    'nan lr': (['--lr', 'nan'], '--lr'),
    'inf lr': (['--lr', 'inf'], '--lr'),
    'word lr': (['--lr', 'fast'], '--lr'),
    'zero batch': (['--batch-size', '0'], '--batch-size'),
    'fractional batch': (['--batch-size', '2.5'], '--batch-size'),
    'word batch': (['--batch-size', 'big'], '--batch-size'),
    'unknown loss': (['--loss', 'hinge'], '--loss'),
    'unknown device': (['--device', 'tpu'], '--device'),
    'unknown recipe': (['--recipe', 'fast'], '--recipe'),
    'huge seed': (['--seed', '99999999999999999999999'], '--seed'),
    'batch over the training set': (['--batch-size', '60001'], '--batch-size'),
    'epochs by the billion': (['--epochs', '99999999999999999999999'], '--epochs'),
    'negative seed': (['--seed', '-1'], '--seed'),
}


@pytest.fixture(scope='module')
def bad_flag_runs(tmp_path_factory):
    """All the bad command lines at once, in parallel: each one costs a Python start-up."""
    out = tmp_path_factory.mktemp('never-written')
    processes = {name: start(*flags, '--out', str(out / name)) for name, (flags, _) in BAD_FLAGS.items()}
    return {name: finish(process) for name, process in processes.items()}, out


@pytest.mark.parametrize('case', BAD_FLAGS)
def test_bad_flags_get_an_argparse_error_and_exit_2(bad_flag_runs, case):
    runs, out = bad_flag_runs
    code, stdout, err = runs[case]
    assert code == 2
    assert_one_line_error(err, f"train.py: error: argument {BAD_FLAGS[case][1]}", "--help")
    assert not (out / case).exists()  # nothing was started


def test_cuda_asked_for_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is valid here")
    code, _, err = finish(start('--device', 'cuda', '--epochs', '1'))
    assert code == 2 and 'Traceback' not in err
    assert 'error: argument --device: cuda was asked for but this machine has no usable CUDA device' in err


def test_auto_device_says_when_it_falls_back_to_cpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so auto does not fall back")
    assert train.resolve_device('auto') == torch.device('cpu')
    assert 'device: cpu (no CUDA device found)' in capsys.readouterr().out


@pytest.mark.parametrize('make_out', [
    lambda tmp: tmp / 'a-file' / 'outputs',           # below a regular file
    lambda tmp: tmp / 'a-file',                       # a regular file itself
    lambda tmp: '/proc/outputs-cannot-live-here',     # a file system that refuses new folders
    lambda tmp: '',                                   # nothing at all
])
def test_an_unwritable_out_fails_before_training_starts(tmp_path, make_out):
    (tmp_path / 'a-file').write_text('I am a file')
    started = time.monotonic()
    code, stdout, err = finish(start('--out', str(make_out(tmp_path)), '--epochs', '1'))
    assert code == 2
    assert_one_line_error(err, 'error: ')
    assert 'output folder' in err or '--out' in err
    assert 'epoch' not in stdout


def test_a_folder_in_place_of_an_output_file_is_refused_before_training(tmp_path):
    (tmp_path / 'history.csv').mkdir()
    code, stdout, err = finish(start('--out', str(tmp_path), '--epochs', '1'))
    assert code == 2
    assert_one_line_error(err, 'history.csv', 'something other than a file is in the way')
    assert 'epoch' not in stdout


# ------------------------------------------------------------------ data: one line naming the file, exit 2

def _real(name):
    return os.path.join(data.find_data_dir(download=False), name + '.gz')


def _folder_with_real_files(tmp_path, replace=None):
    """A data folder linking to the real files, with some replaced by the given bytes."""
    folder = tmp_path / 'fashion'
    folder.mkdir()
    replace = replace or {}
    for images, labels, _ in data.SPLITS.values():
        for name in (images, labels):
            if name in replace:
                (folder / (name + '.gz')).write_bytes(replace[name])
            else:
                os.symlink(_real(name), folder / (name + '.gz'))
    return folder


def _idx(magic, dims, payload=b''):
    return magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in dims) + payload


def _truncated_train_images():
    with open(_real('train-images-idx3-ubyte'), 'rb') as f:
        return f.read()[:1_000_000]


def _labels_with_a_12():
    labels = bytearray(10_000)
    labels[77] = 12
    return gzip.compress(_idx(data.LABELS_MAGIC, [10_000], bytes(labels)))


BAD_DATA = {
    'truncated gz': ({'train-images-idx3-ubyte': _truncated_train_images},
                     'train-images-idx3-ubyte.gz: not a complete gzip file'),
    'html page saved as gz': ({'t10k-labels-idx1-ubyte': lambda: b'<html><body>502 Bad Gateway</body></html>'},
                              't10k-labels-idx1-ubyte.gz: not a complete gzip file'),
    'swapped files': ({'train-labels-idx1-ubyte': lambda: open(_real('t10k-images-idx3-ubyte'), 'rb').read()},
                      'train-labels-idx1-ubyte.gz: wrong magic number 2051'),
    'wrong count': ({'t10k-labels-idx1-ubyte': lambda: gzip.compress(_idx(data.LABELS_MAGIC, [9_999], bytes(9_999)))},
                    't10k-labels-idx1-ubyte.gz: holds 9999 examples, expected 10000'),
    'wrong image size': ({'t10k-images-idx3-ubyte': lambda: gzip.compress(_idx(data.IMAGES_MAGIC, [10_000, 32, 32]))},
                         't10k-images-idx3-ubyte.gz: images are 32x32, expected 28x28'),
    'label outside 0..9': ({'t10k-labels-idx1-ubyte': _labels_with_a_12},
                           't10k-labels-idx1-ubyte.gz: label 12 at index 77 is outside 0..9'),
}


@pytest.mark.parametrize('case', BAD_DATA)
def test_bad_data_files_give_one_line_naming_the_file_and_exit_2(tmp_path, case):
    replace, message = BAD_DATA[case]
    folder = _folder_with_real_files(tmp_path, {name: make() for name, make in replace.items()})
    code, _, err = finish(start('--data-dir', str(folder), '--out', str(tmp_path / 'out'), '--epochs', '1'))
    assert code == 2
    assert_one_line_error(err, 'error: ', message)
    assert not (tmp_path / 'out' / 'history.csv').exists()


@pytest.mark.parametrize('make_folder, message', [
    (lambda tmp: tmp / 'does-not-exist', 'does not exist'),
    (lambda tmp: tmp, 'lacks train-images-idx3-ubyte'),
    (lambda tmp: (tmp / 'a-file').write_text('x') and tmp / 'a-file', 'is a file, not a folder'),
])
def test_a_missing_or_empty_data_folder_says_how_to_provide_the_data(tmp_path, make_folder, message):
    code, _, err = finish(start('--data-dir', str(make_folder(tmp_path)), '--out', str(tmp_path / 'out')))
    assert code == 2
    assert_one_line_error(err, message, '--data-dir', 'apt-get install dataset-fashion-mnist', 'download')


def test_the_environment_variable_is_honoured_and_checked(tmp_path):
    env = dict(os.environ, FASHION_MNIST_DIR=str(tmp_path / 'nowhere'))
    code, _, err = finish(start('--out', str(tmp_path / 'out'), env=env))
    assert code == 2
    assert_one_line_error(err, str(tmp_path / 'nowhere'), 'does not exist')


# ------------------------------------------------------------------ during a run: divergence and Ctrl-C

def test_divergence_stops_with_epoch_step_loss_and_a_hint_exit_1(tmp_path):
    # the notes' naive softmax: at lr 10 exp(o) overflows within the first steps
    code, stdout, err = finish(start('--loss', 'naive', '--lr', '10', '--out', str(tmp_path)))
    assert code == 1
    assert_one_line_error(err, 'diverged at epoch 1, step', 'loss is', '--loss scratch', 'smaller --lr')
    assert no_temporary_files(tmp_path)


def test_divergence_after_finished_epochs_keeps_them(tmp_path, monkeypatch, capsys):
    # Inject a nan into the 300th call of the loss in a real run: 235 steps come first, so that is
    # epoch 2, step 65. Its nan gradient makes the weights nan, so step 66's logits are the first nan.
    calls = []

    def nan_at_step_300(O, y):
        calls.append(1)
        loss = F.cross_entropy(O, y)
        return loss * float('nan') if len(calls) == 300 else loss
    monkeypatch.setitem(losses.LOSSES, 'torch', nan_at_step_300)  # train.LOSSES is this same dict
    code = train.main(['--epochs', '3', '--loss', 'torch', '--out', str(tmp_path), '--device', 'cpu'])
    assert code == train.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert 'diverged at epoch 2, step 66: loss is nan' in err
    history = read_history(tmp_path / 'history.csv')
    assert [row['epoch'] for row in history] == ['1']
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert metrics['status'] == 'diverged' and metrics['epochs_completed'] == 1
    for name in ('curves.png', 'model.pt', 'predictions.png', 'weights.png', 'confusion.png'):
        assert (tmp_path / name).stat().st_size > 0, name
    state = torch.load(tmp_path / 'model.pt', weights_only=True)['model']
    assert torch.isfinite(state['W']).all()  # the kept model is epoch 1's, not the nan one
    assert no_temporary_files(tmp_path)


def _wait_for_rows(path, rows, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if path.exists() and len(read_history(path)) >= rows:
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_keeps_finished_epochs_and_exits_130(tmp_path):
    process = start('--epochs', '1000', '--out', str(tmp_path))
    assert _wait_for_rows(tmp_path / 'history.csv', 2, process), finish(process)
    process.send_signal(signal.SIGINT)
    code, stdout, err = finish(process)
    assert code == 130
    assert 'Traceback' not in err and 'interrupted' in err
    history = read_history(tmp_path / 'history.csv')
    assert len(history) >= 2
    assert all(set(row) == {'epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'seconds'}
               for row in history)
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert metrics['status'] == 'interrupted' and metrics['epochs_completed'] == len(history)
    for name in ('curves.png', 'model.pt', 'predictions.png', 'weights.png', 'confusion.png'):
        assert (tmp_path / name).stat().st_size > 0, name
    assert no_temporary_files(tmp_path)


def test_ctrl_c_while_the_first_epoch_is_being_saved_keeps_it_whole(tmp_path):
    process = start('--epochs', '1000', '--out', str(tmp_path))
    assert _wait_for_rows(tmp_path / 'history.csv', 1, process), finish(process)
    process.send_signal(signal.SIGINT)  # at once: curves.png and model.pt may be mid-way
    code, _, err = finish(process)
    assert code == 130 and 'Traceback' not in err
    rows = len(read_history(tmp_path / 'history.csv'))
    assert rows >= 1
    checkpoint = torch.load(tmp_path / 'model.pt', weights_only=True)
    assert checkpoint['epoch'] == rows  # history and checkpoint tell of the same epoch
    for name in ('curves.png', 'predictions.png', 'weights.png', 'confusion.png'):
        assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG', name
    assert no_temporary_files(tmp_path)


@pytest.mark.parametrize('signals', [[signal.SIGINT, signal.SIGINT, signal.SIGINT], [signal.SIGTERM]])
def test_repeated_ctrl_c_or_kill_still_stop_cleanly(tmp_path, signals):
    process = start('--epochs', '1000', '--out', str(tmp_path))
    assert _wait_for_rows(tmp_path / 'history.csv', 2, process), finish(process)
    for sig in signals:
        process.send_signal(sig)
        time.sleep(0.05)
    code, _, err = finish(process)
    assert code == 130 and 'Traceback' not in err
    assert json.loads((tmp_path / 'metrics.json').read_text())['status'] == 'interrupted'
    for name in ('predictions.png', 'weights.png', 'confusion.png'):
        assert (tmp_path / name).is_file(), name
    assert no_temporary_files(tmp_path)


def test_ctrl_c_before_the_first_epoch_exits_130_quietly(tmp_path):
    process = start('--out', str(tmp_path))
    time.sleep(0.5)  # still importing torch or loading the data
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 130
    assert 'Traceback' not in err


def test_an_earlier_runs_folder_is_never_left_half_overwritten(tmp_path):
    assert finish(start('--epochs', '1', '--out', str(tmp_path)))[0] == 0
    def files():  # .lock holds the pid of the run that holds it
        return {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path) if name != '.lock'}
    before = files()
    # a second run that fails in its first epoch: every file is still the first run's, whole
    assert finish(start('--loss', 'naive', '--lr', '10', '--out', str(tmp_path)))[0] == 1
    assert files() == before


def test_write_atomically_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / 'history.csv'
    path.write_text('old and whole\n')

    def half_then_fail(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train.write_atomically(str(path), half_then_fail)
    assert path.read_text() == 'old and whole\n'
    assert os.listdir(tmp_path) == ['history.csv']


# ------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize('content', [b'', b'<html>not found</html>', b'PK\x03\x04 broken zip'])
def test_a_corrupt_model_pt_gives_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / 'model.pt'
    path.write_bytes(content)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'model.py'), str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, 'error: ', str(path), 'not a readable PyTorch checkpoint')


def test_a_mismatched_model_pt_says_what_it_holds(tmp_path):
    path = tmp_path / 'model.pt'
    torch.save({'model': {'W': torch.zeros(784, 5), 'b': torch.zeros(5)}}, path)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'model.py'), str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "'W': (784, 5)", 'this model has')


# ------------------------------------------------------------------ closed streams, odd folders, early signals

def test_a_closed_stdout_loses_nothing(tmp_path):
    """`python train.py | head -1`: the reader goes away, the run goes on without printing."""
    process = subprocess.Popen([sys.executable, TRAIN_PY, '--epochs', '3', '--out', str(tmp_path)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.readline()
    process.stdout.close()  # as head does after its line
    err = process.stderr.read()
    assert process.wait(timeout=300) == 0
    assert 'Traceback' not in err and 'standard output could not be written' in err
    assert len(read_history(tmp_path / 'history.csv')) == 3
    assert json.loads((tmp_path / 'metrics.json').read_text())['status'] == 'finished'
    for name in ('curves.png', 'predictions.png', 'weights.png', 'confusion.png'):
        assert (tmp_path / name).is_file(), name


@pytest.mark.parametrize('stream', ['stdout to /dev/full', 'stderr closed'])
def test_a_full_or_closed_stream_loses_nothing(tmp_path, stream):
    if stream == 'stdout to /dev/full':
        if not os.path.exists('/dev/full'):
            pytest.skip("no /dev/full on this system")
        command = f"'{sys.executable}' '{TRAIN_PY}' --epochs 2 --out '{tmp_path}' > /dev/full"
    else:
        command = f"'{sys.executable}' '{TRAIN_PY}' --epochs 2 --out '{tmp_path}' 2>&-"
    result = subprocess.run(['bash', '-c', command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr
    assert len(read_history(tmp_path / 'history.csv')) == 2
    assert json.loads((tmp_path / 'metrics.json').read_text())['status'] == 'finished'
    assert (tmp_path / 'confusion.png').is_file()


def test_compare_where_every_loss_diverges_says_so_and_exits_1(tmp_path):
    code, stdout, err = finish(start('--compare', '--lr', '3e38', '--out', str(tmp_path)))
    assert code == 1
    assert 'done' not in stdout and 'Traceback' not in err
    assert 'every loss diverged' in err and 'no compare.png' in err
    assert not (tmp_path / 'compare.png').exists()


def test_a_run_that_keeps_nothing_says_the_folder_holds_an_earlier_run(tmp_path):
    assert finish(start('--epochs', '1', '--out', str(tmp_path)))[0] == 0
    code, _, err = finish(start('--loss', 'naive', '--lr', '10', '--out', str(tmp_path)))
    assert code == 1
    assert_one_line_error(err, 'nothing was kept', "earlier run's")


@pytest.mark.parametrize('lr', ['1e39', '1e-46', '3.5e38'])
def test_a_learning_rate_outside_float32_is_refused(tmp_path, lr):
    code, _, err = finish(start('--lr', lr, '--out', str(tmp_path / 'never')))
    assert code == 2
    assert_one_line_error(err, 'argument --lr', 'float32')


def test_an_empty_data_dir_is_refused(tmp_path):
    code, _, err = finish(start('--data-dir', '', '--out', str(tmp_path)))
    assert code == 2
    assert_one_line_error(err, 'argument --data-dir', 'empty')


def test_a_dangling_link_as_out_says_where_it_points(tmp_path):
    (tmp_path / 'out').symlink_to(tmp_path / 'gone')
    code, _, err = finish(start('--out', str(tmp_path / 'out')))
    assert code == 2
    assert_one_line_error(err, str(tmp_path / 'out'), 'does not exist')


def test_a_second_run_into_the_same_folder_at_once_is_refused(tmp_path):
    first = start('--epochs', '1000', '--out', str(tmp_path))
    assert _wait_for_rows(tmp_path / 'history.csv', 1, first), finish(first)
    code, _, err = finish(start('--epochs', '1', '--out', str(tmp_path)))
    first.send_signal(signal.SIGINT)
    assert finish(first)[0] == 130
    assert code == 2
    assert_one_line_error(err, 'another run', 'is writing to', str(tmp_path))


def test_kill_while_torch_imports_exits_130_with_one_line(tmp_path):
    process = start('--out', str(tmp_path))
    time.sleep(0.3)  # python is up, torch is not yet
    process.send_signal(signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 130
    assert_one_line_error(err, 'interrupted')


def test_compare_interrupted_after_an_epoch_keeps_each_file_in_step(tmp_path):
    process = start('--compare', '--epochs', '1000', '--out', str(tmp_path))
    assert _wait_for_rows(tmp_path / 'history_naive.csv', 2, process), finish(process)
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 130 and 'Traceback' not in err
    report = json.loads((tmp_path / 'compare.json').read_text())
    assert len(read_history(tmp_path / 'history_naive.csv')) == report['final']['naive']['epoch']
    assert (tmp_path / 'compare.png').is_file()
    assert no_temporary_files(tmp_path)


def test_the_terminal_closing_is_an_interruption_too(tmp_path):
    process = start('--epochs', '1000', '--out', str(tmp_path))
    assert _wait_for_rows(tmp_path / 'history.csv', 1, process), finish(process)
    process.send_signal(signal.SIGHUP)
    code, _, err = finish(process)
    assert code == 130 and 'Traceback' not in err
    assert json.loads((tmp_path / 'metrics.json').read_text())['status'] == 'interrupted'
    assert (tmp_path / 'confusion.png').is_file() and no_temporary_files(tmp_path)


def test_ctrl_c_just_after_the_last_epoch_still_wraps_up(tmp_path):
    process = start('--epochs', '2', '--out', str(tmp_path))
    for line in process.stdout:  # the last epoch's line comes right before the wrap-up
        if line.startswith('epoch   2/2'):
            process.send_signal(signal.SIGINT)
            break
    code, _, err = finish(process)
    assert code in (0, 130) and 'Traceback' not in err
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert metrics['status'] == ('finished' if code == 0 else 'interrupted')
    assert metrics['epochs_completed'] == 2 and 'calibration' in metrics
    for name in ('curves.png', 'predictions.png', 'weights.png', 'confusion.png', 'confidence.png'):
        assert (tmp_path / name).is_file(), name
    assert no_temporary_files(tmp_path)
