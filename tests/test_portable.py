"""Every script's main path on a platform without Linux-only parts (as on Windows): the project's own files
are denied fcntl, termios, resource, pwd and grp, the POSIX-only names of os and signal, and /proc, by the
emulation in tests/portable/ (see its sitecustomize.py). Each step must end as on Linux: the same exit
code and files, one line for an error, no traceback anywhere.

Three processes at once, so that torch is imported three times, not fifteen: one runs the scripts' mains
one after another (tests/portable/mains.py, as their command lines do, through cli.run); two real
`python train.py` race for one output folder, and the one that gets it is stopped with Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from common import ROOT, assert_one_line_error, read_csv, root_scripts
from data import TEXT_LABELS

PORTABLE = os.path.join(ROOT, 'tests', 'portable')
pytestmark = pytest.mark.skipif(sys.platform != 'linux', reason="the emulation is of Windows on Linux; "
                                "elsewhere the suite itself runs on the real platform")


def emulated(*command, **popen):
    """`python COMMAND` with the project's files denied what Windows lacks."""
    env = dict(os.environ, PYTHONPATH=PORTABLE, PORTABLE_ROOT=ROOT, PYTHONDONTWRITEBYTECODE='1')
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def photos(fashion_mnist, folder):
    """A photo of a test item, and a --labelled folder of three: two in the folder of their class, one in
    another's."""
    images, labels = fashion_mnist[2], fashion_mnist[3]

    def save(index, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(images[index].reshape(28, 28).numpy()).save(path)
        return path
    photo = save(0, os.path.join(folder, 'item.png'))
    first = [int((labels == label).nonzero()[0]) for label in range(10)]
    for number, index in enumerate([first[7], first[9], first[8]]):  # sneaker, ankle boot, bag
        save(index, os.path.join(folder, 'labelled', TEXT_LABELS[int(labels[index])], f'{number}.png'))
    return photo, os.path.join(folder, 'labelled')


def the_mains(folder, photo, labelled):
    """[name, script, arguments, exit code, files written in its --out] of each step of the mains' process."""
    out = lambda name: os.path.join(folder, name)  # noqa: E731
    model = os.path.join(out('train'), 'model.pt')
    with open(out('a-file'), 'w') as f:
        f.write('I am a file\n')
    return [
        ['data.py', 'data.py', [], 0, None],
        ['losses.py', 'losses.py', ['--out', out('losses')], 0, ['stability.png']],
        ['one exercise', 'exercises.py', ['3.4.2', '--out', out('exercise')], 0, []],
        ["bench.py's --help", 'bench.py', ['--help'], 0, None],
        ['train two epochs', 'train.py', ['--epochs', '2', '--out', out('train')], 0, None],  # as finished_run
        ['model.py on its checkpoint', 'model.py', [model], 0, None],
        ['predict a photo', 'predict.py', [photo, '--model', model, '--out', out('predict')], 0, ['predict.png']],
        ['predict --labelled', 'predict.py', ['--labelled', labelled, '--model', model, '--out', out('labelled')],
         0, ['labelled-confidence.png', 'labelled-confusion.png', 'predict.png']],
        ['sweep a tiny grid', 'sweep.py', ['--lr', '0.1', '--batch-size', '1024', '--epochs', '1',
                                           '--out', out('sweep')], 0,
         ['sweep.csv', 'sweep.json', 'sweep.png', 'sweep_curves.png']],
        ['an --out that is a file', 'train.py', ['--epochs', '1', '--out', out('a-file')], 2, None],
        ["the book's concise implementation", 'concise.py', ['--epochs', '1', '--batch-size', '1024',
                                                              '--out', out('concise')], 0,
         ['history.csv']],
    ]


def race_and_interrupt(folder):
    """Two `train.py` into one folder at once: the one that gets it trains, the other is refused; once the
    other has gone, the first gets Ctrl-C after its first epoch. [(exit code, stdout, stderr)] of the
    refused one, then the interrupted one."""
    args = ['train.py', '--epochs', '50', '--batch-size', '1024', '--out', folder]  # short epochs while waiting
    runs = [emulated(*args), emulated(*args)]
    deadline = time.monotonic() + 120
    while all(run.poll() is None for run in runs) and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = next((run for run in runs if run.poll() is not None), None)
    assert refused is not None, "neither run ended: the second was not refused"
    trainer = runs[1 - runs.index(refused)]
    printed = ''
    while 'epoch   1/50' not in printed and trainer.poll() is None:
        printed += trainer.stdout.readline()
    trainer.send_signal(signal.SIGINT)
    results = []
    for run in (refused, trainer):
        out, err = run.communicate(timeout=60)
        results.append((run.returncode, (printed if run is trainer else '') + out, err))
    return results


def test_every_script_at_the_root_has_a_step_here(tmp_path):
    assert sorted({step[1] for step in the_mains(str(tmp_path), 'PHOTO', 'FOLDER')}) == root_scripts(), \
        "add the script's main path to the_mains in this file"


def test_every_scripts_main_path_holds_without_linux_only_parts(fashion_mnist, finished_run, tmp_path):
    photo, labelled = photos(fashion_mnist, str(tmp_path / 'photos'))
    steps = the_mains(str(tmp_path), photo, labelled)
    (tmp_path / 'steps.json').write_text(json.dumps([step[:3] for step in steps]))
    mains = emulated(os.path.join(PORTABLE, 'mains.py'), str(tmp_path / 'steps.json'), str(tmp_path / 'results.json'))
    (refused, interrupted) = race_and_interrupt(str(tmp_path / 'race'))
    _, err = mains.communicate(timeout=300)
    assert mains.returncode == 0 and 'Traceback' not in err, err
    results = json.loads((tmp_path / 'results.json').read_text())
    assert [result['name'] for result in results] == [step[0] for step in steps]

    for (name, script, args, code, files), result in zip(steps, results):
        assert 'Traceback' not in result['err'] + result['out'], (name, result['err'])
        assert result['code'] == code, (name, result['code'], result['err'])
        if code == 2:
            assert_one_line_error(result['err'], 'error: ', args[-1])
        if files is not None:  # what the script's contract names, and nothing half-written
            written = os.listdir(args[args.index('--out') + 1])
            assert set(files) <= set(written) and not [f for f in written if f.endswith('.tmp')], (name, written)
    train_files = sorted(os.listdir(tmp_path / 'train'))
    assert train_files == sorted(os.listdir(finished_run))  # what a finished two-epoch run writes on Linux
    assert json.loads((tmp_path / 'train' / 'metrics.json').read_text())['status'] == 'finished'
    by_name = {result['name']: result for result in results}
    assert 'epoch   2/2' in by_name['train two epochs']['out']
    assert 'test accuracy' in by_name['model.py on its checkpoint']['out']

    code, out, err = refused
    assert code == 2 and out == ''
    assert_one_line_error(err, "error: another run (process ", f"is writing to {tmp_path / 'race'}{os.sep} right now")
    code, out, err = interrupted
    assert code == 130 and 'Traceback' not in err and 'interrupted: ' in err, err
    kept = len(read_csv(tmp_path / 'race' / 'history.csv'))
    metrics = json.loads((tmp_path / 'race' / 'metrics.json').read_text())
    assert kept >= 1 and metrics['status'] == 'interrupted' and metrics['epochs_completed'] == kept
    assert sorted(os.listdir(tmp_path / 'race')) == train_files  # every file, the finished epochs in them
