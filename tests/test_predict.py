"""predict.py, the command: one line (or JSON object) per image with unsure marks, every bad file one line, exit
codes. What a photo becomes is tests/test_photo.py's; --labelled DIR is tests/test_predict_labelled.py's.

Most checks run predict.main in this process through cli.run (each process would cost torch's import); one
run goes through a real process, end to end.
"""
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from support import cli
from support.metrics import calibration
from common import released_locks
from helpers import plots, plots_predict
import predict
from data import TEXT_LABELS
from test_photo import load, make_photo, trained_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope='module')
def checkpoints(fashion_mnist, tmp_path_factory):
    return trained_checkpoints(fashion_mnist, tmp_path_factory)


@pytest.fixture(scope='module')
def photos(fashion_mnist, tmp_path_factory):
    """6 photos of test items on white, PNG: (paths, item indices)."""
    folder = tmp_path_factory.mktemp('photos')
    rng = np.random.default_rng(0)
    indices = torch.from_numpy(rng.choice(10_000, 6, replace=False))
    paths = []
    for number, item in enumerate(fashion_mnist[2][indices].reshape(-1, 28, 28).numpy()):
        make_photo(item, rng).save(folder / f"photo{number}.png", compress_level=1)
        paths.append(str(folder / f"photo{number}.png"))
    return paths, indices


@pytest.fixture(scope='module')
def converted(photos):
    return torch.stack([torch.from_numpy(predict.read_image(path)[0]) for path in photos[0]])


def run(argv, capsys):
    """predict.py's main through cli.run, as the command line runs it, its --out lock released at the end as
    a process's is: (exit code, stdout, stderr)."""
    with released_locks():
        code = cli.run(predict.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def no_temporary_files(folder):
    return [name for name in os.listdir(folder) if name.endswith('.tmp')] == []


@pytest.fixture
def drawn(monkeypatch):
    """predict.png (and --labelled's two figures) as blank 1x1-inch figures: what predict.py asks to draw in
    predict.png is kept here; drawing the real ones takes seconds (the process run, test_the_figure_* and
    test_labelled_prints_* draw them)."""
    calls = []

    def plot_predict(entries, **kwargs):
        calls.append((entries, kwargs))
        return plots.new_figure(1, 1)
    monkeypatch.setattr(plots_predict, 'plot_predict', plot_predict)
    for name in ('plot_labelled_confusion', 'plot_labelled_confidence'):
        monkeypatch.setattr(plots_predict, name, lambda *args: plots.new_figure(1, 1))
    return calls


def strict_json(text):
    """json.loads that refuses NaN and Infinity (Python's accepts them; they are not JSON)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def save_item(fashion_mnist, index, path, pixels=None):
    """Test item `index` as a 28x28 grayscale PNG, the data set's own form (used as it is: quick to read)."""
    item = fashion_mnist[2][index].reshape(28, 28).numpy().copy()
    for (row, column), value in (pixels or {}).items():
        item[row, column] = value
    Image.fromarray(item).save(path)
    return str(path)


# ----------------------------------------------------------------------------- the command, end to end

@pytest.fixture(scope='module')
def processes(checkpoints, photos, boot, fashion_mnist, tmp_path_factory):
    """Two real runs of predict.py side by side (each costs torch's import): --json on photos, an image in
    the data set's form and a broken file; and a run whose reader closes stdout before the first line."""
    folder = tmp_path_factory.mktemp('processes')
    Image.fromarray(fashion_mnist[2][0].reshape(28, 28).numpy()).save(folder / 'item.png')
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really')
    (folder / 'boot.png').write_bytes(boot[1]['PNG'])
    paths = photos[0][:4] + [str(folder / 'item.png'), str(folder / 'broken.jpg')]
    command = [sys.executable, os.path.join(ROOT, 'predict.py')]
    as_json = subprocess.Popen([*command, *paths, '--json', '--model', checkpoints['tuned'],
                                '--out', str(folder / 'json')],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    closed = subprocess.Popen([*command, str(folder / 'boot.png'), '--model', checkpoints['textbook'],
                               '--out', str(folder / 'closed')],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    closed.stdout.close()  # like `| head -0`: the reader is gone before the first line
    out, err = as_json.communicate(timeout=300)
    closed_err = closed.stderr.read()
    return dict(json=(as_json.wait(), out, err, paths, folder / 'json'),
                closed=(closed.wait(timeout=300), closed_err, folder / 'closed'))


def test_the_command_as_a_process_prints_json_and_draws_the_figure(processes, checkpoints, converted,
                                                                   fashion_mnist):
    code, out, err, paths, folder = processes['json']
    assert code == 2  # one image failed
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {paths[-1]}: "), err
    results = strict_json(out)  # only the JSON on stdout, valid with a failed image
    assert [result['image'] for result in results] == paths[:-1]
    for result in results:
        assert list(result) == ['image', 'predicted', 'unsure', 'probabilities']
        assert isinstance(result['unsure'], bool)
        assert list(result['probabilities']) == TEXT_LABELS
        assert result['predicted'] == max(result['probabilities'], key=result['probabilities'].get)
        assert sum(result['probabilities'].values()) == pytest.approx(1, abs=1e-5)
    got = torch.tensor([list(result['probabilities'].values()) for result in results], dtype=torch.float64)
    # the photos: as converted in this process; the data set's own image: the tensor path's probabilities
    model = load(checkpoints['tuned'])
    expected = predict.probabilities(model, torch.cat([converted[:4], fashion_mnist[2][:1].reshape(1, 28, 28)]))
    assert torch.allclose(got, expected.double(), atol=1e-6, rtol=0)
    assert (folder / 'predict.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert no_temporary_files(folder)


def test_a_closed_stdout_is_no_traceback(processes):
    code, err, folder = processes['closed']
    assert code == 0
    assert 'Traceback' not in err and len(err.splitlines()) <= 1  # at most cli's note that stdout was lost
    assert (folder / 'predict.png').exists()


def test_one_line_per_image_with_the_top_classes(checkpoints, photos, tmp_path, capsys, drawn):
    paths = photos[0][:3]
    for top in (1, 3, 10):
        code, out, err = run([*paths, '--model', checkpoints['textbook'], '--top', str(top), '--out', str(tmp_path)],
                             capsys)
        assert (code, err) == (0, '')
        lines = out.splitlines()
        assert len(lines) == len(paths)
        for path, line in zip(paths, lines):
            assert line.startswith(f"{path}: ")
            entries = line[len(path) + 2:].removesuffix(' (unsure)').split(', ')
            assert len(entries) == top
            percents = []
            for entry in entries:
                name, percent = re.fullmatch(r'(.+) (\d+\.\d)%', entry).groups()
                assert name in TEXT_LABELS
                percents.append(float(percent))
            assert percents == sorted(percents, reverse=True)
    assert (tmp_path / 'predict.png').exists()


def test_the_same_path_twice_is_predicted_twice(checkpoints, photos, tmp_path, capsys, drawn):
    code, out, err = run([photos[0][0], photos[0][0], '--model', checkpoints['textbook'], '--out', str(tmp_path)],
                         capsys)
    assert code == 0 and err == ''
    first, second = out.splitlines()
    assert first == second


# ----------------------------------------------------------------------------- images Pillow reads

def png_with_header(width, height):
    """A PNG whose header claims width x height pixels: a decompression bomb, a few hundred bytes long."""
    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(b'\0' * 100)) + chunk(b'IEND', b''))


@pytest.fixture(scope='module')
def boot(fashion_mnist):
    """A photo of the first test item (an ankle boot) as RGB, and its bytes as PNG and JPEG."""
    photo = make_photo(fashion_mnist[2][0].reshape(28, 28).numpy(), np.random.default_rng(2), noise=0,
                       resample=Image.Resampling.BICUBIC)
    encoded = {}
    for kind in ('PNG', 'JPEG'):
        buffer = io.BytesIO()
        photo.save(buffer, kind)
        encoded[kind] = buffer.getvalue()
    return photo, encoded


def bad_files(folder, boot):
    """Every kind of file that cannot be predicted -> (path, what its error line must say)."""
    _, encoded = boot
    (folder / 'a-folder').mkdir()
    (folder / 'empty.png').write_bytes(b'')
    (folder / 'notes.jpg').write_text('not an image\n')
    (folder / 'cut.jpg').write_bytes(encoded['JPEG'][:len(encoded['JPEG']) // 2])
    (folder / 'cut.png').write_bytes(encoded['PNG'][:len(encoded['PNG']) // 2])
    (folder / 'bomb.png').write_bytes(png_with_header(100_000, 100_000))
    (folder / 'big.png').write_bytes(png_with_header(12_000, 12_000))  # over Pillow's limit, under twice it
    Image.new('RGB', (300, 200), (200, 30, 30)).save(folder / 'uniform.png')
    Image.new('RGBA', (300, 200), (0, 0, 0, 0)).save(folder / 'transparent.png')
    if hasattr(os, 'mkfifo'):  # Windows has none
        os.mkfifo(folder / 'pipe.png')  # opening it would wait for a writer forever
    os.symlink(folder / 'loop2.png', folder / 'loop.png')
    os.symlink(folder / 'loop.png', folder / 'loop2.png')
    return {str(folder / 'pipe.png'): 'not a regular file',str(folder / 'missing.png'): 'no such file', str(folder / 'a-folder'): 'is a folder',
            str(folder / 'empty.png'): 'empty file', str(folder / 'notes.jpg'): 'not an image',
            str(folder / 'cut.jpg'): 'truncated', str(folder / 'cut.png'): 'truncated',
            str(folder / 'bomb.png'): 'decompression bomb', str(folder / 'big.png'): 'decompression bomb',
            str(folder / 'uniform.png'): 'nothing to classify', str(folder / 'transparent.png'): 'nothing to classify',
            str(folder / 'loop.png'): 'loop of symbolic links'}


@pytest.mark.parametrize('as_json', [False, True], ids=['text', 'json'])
def test_each_bad_file_is_one_line_and_the_others_are_still_predicted(as_json, checkpoints, boot, tmp_path,
                                                                      capsys, drawn):
    bad = bad_files(tmp_path, boot)
    boot[0].save(tmp_path / 'good.png')
    good = str(tmp_path / 'good.png')
    paths = [*list(bad)[:5], good, *list(bad)[5:], good]
    code, out, err = run([*paths, '--model', checkpoints['textbook'], '--out', str(tmp_path / 'out')]
                         + ['--json'] * as_json, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == len(bad) and 'Traceback' not in err
    for line, (path, reason) in zip(lines, bad.items()):
        assert line.startswith(f"error: {path}: ") and reason in line, line
    if as_json:
        assert [result['image'] for result in strict_json(out)] == [good, good]
    else:
        assert [line.split(': ')[0] for line in out.splitlines()] == [good, good]
    assert (tmp_path / 'out' / 'predict.png').exists()
    (entries, kwargs), = drawn
    assert [entry['name'] for entry in entries] == ['good.png', 'good.png'] and kwargs['total'] == 2


def test_nothing_readable_is_exit_2_and_no_figure(checkpoints, tmp_path, capsys, drawn):
    code, out, err = run([str(tmp_path / 'missing.png'), '--json', '--model', checkpoints['textbook'],
                          '--out', str(tmp_path / 'out')], capsys)
    assert (code, strict_json(out)) == (2, [])
    assert err == f"error: {tmp_path / 'missing.png'}: no such file\n"
    assert not (tmp_path / 'out' / 'predict.png').exists()


def test_odd_file_names_stay_one_line(checkpoints, boot, tmp_path, capsys, drawn):
    boot[0].save(tmp_path / 'two\nlines.png')
    code, out, err = run([str(tmp_path / 'two\nlines.png'), str(tmp_path / 'no\nsuch.png'),
                          '--model', checkpoints['textbook'], '--out', str(tmp_path)], capsys)
    assert code == 2
    assert len(out.splitlines()) == 1 and '\\n' in out
    assert len(err.splitlines()) == 1 and '\\n' in err


# ----------------------------------------------------------------------------- bad model, flags, interruptions

def test_a_missing_corrupt_or_foreign_model_is_one_line_and_exit_2(boot, tmp_path, capsys):
    boot[0].save(tmp_path / 'boot.png')
    (tmp_path / 'corrupt.pt').write_bytes(b'PK\x03\x04 not a zip')
    torch.save({'model': {'weight': torch.zeros(3, 3)}}, tmp_path / 'foreign.pt')
    for model, reason in ((tmp_path / 'missing.pt', 'train a model first'),
                          (tmp_path / 'corrupt.pt', 'not a readable PyTorch checkpoint'),
                          (tmp_path / 'foreign.pt', 'but this model has')):
        code, out, err = run([str(tmp_path / 'boot.png'), '--model', str(model), '--out', str(tmp_path / 'out')],
                             capsys)
        assert (code, out) == (2, '')
        assert err.count('\n') == 1 and err.startswith(f"error: {model}") and reason in err, err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('flags, fragment', [
    (['--top', '0'], '--top'), (['--top', '11'], '--top'), (['--top', 'three'], '--top'),
    (['--model', ''], '--model'), (['--out', ''], '--out'), ([''], 'IMAGE'), ([], 'IMAGE')],
    ids=['top 0', 'top 11', 'top word', 'empty model', 'empty out', 'empty image', 'no image'])
def test_bad_flags_are_one_line_and_exit_2(flags, fragment, tmp_path, capsys):
    argv = flags if flags in ([], ['']) else ['image.png', *flags]
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, '')
    assert err.count('\n') == 1 and fragment in err, err


def test_an_output_folder_that_is_a_file_is_one_line(checkpoints, boot, tmp_path, capsys):
    boot[0].save(tmp_path / 'boot.png')
    (tmp_path / 'out').write_text('a file')
    code, out, err = run([str(tmp_path / 'boot.png'), '--model', checkpoints['textbook'], '--out',
                          str(tmp_path / 'out')], capsys)
    assert (code, out) == (2, '') and err.count('\n') == 1 and 'it is a file' in err


@pytest.mark.parametrize('where', ['reading', 'drawing'])
def test_interrupted_is_exit_130_one_line_and_no_partial_file(where, checkpoints, boot, tmp_path, monkeypatch,
                                                             capsys):
    boot[0].save(tmp_path / 'boot.png')

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C or kill at that moment
    monkeypatch.setattr(*((predict, 'read_image') if where == 'reading' else (plots_predict, 'plot_predict')), interrupted)
    code, out, err = run([str(tmp_path / 'boot.png'), '--model', checkpoints['textbook'], '--out',
                          str(tmp_path / 'out')], capsys)
    assert code == 130 and err.strip() == 'interrupted'
    assert os.listdir(tmp_path / 'out') == []


# ----------------------------------------------------------------------------- predict.png

def test_the_figure_draws_at_most_twelve_images_and_says_so(boot):
    photo = np.asarray(boot[0].resize((80, 60)))
    kept = np.zeros((60, 80), bool)
    kept[10:50, 20:60] = True
    entries = [dict(name=f"photo{k}.jpg", original=photo, kept=kept, seen=np.zeros((28, 28), np.uint8),
                    probabilities=[0.1] * 10, unsure=k % 2 == 0) for k in range(predict.MAX_SHOWN)]
    figure = plots_predict.plot_predict(entries, total=40, model='model.pt')
    assert len(figure.axes) == 3 * predict.MAX_SHOWN
    assert 'the first 12 of 40 images' in figure._suptitle.get_text()
    single = plots_predict.plot_predict(entries[:1], model='model.pt')
    assert len(single.axes) == 3 and '1 image,' in single._suptitle.get_text()
    assert single.axes[2].get_title() == 'predicted: t-shirt (unsure)'
    assert single.axes[0].collections  # the kept part's outline
    spread = plots_predict.plot_predict(entries, total=40, spread=True)
    assert '12 of 40 images, spread over them' in spread._suptitle.get_text()


# ----------------------------------------------------------------------------- unsure marks

def test_unsure_marks_follow_the_checkpoints_threshold(checkpoints, photos, converted, tmp_path, capsys, drawn):
    threshold = torch.load(checkpoints['tuned'], weights_only=True)['calibration']['threshold']
    code, out, err = run([*photos[0], '--json', '--model', checkpoints['tuned'], '--out', str(tmp_path)], capsys)
    assert (code, err) == (0, '')
    confidence = predict.probabilities(load(checkpoints['tuned']), converted).max(dim=1).values
    assert [result['unsure'] for result in strict_json(out)] == (confidence < threshold).tolist()
    code, out, err = run([*photos[0], '--model', checkpoints['tuned'], '--out', str(tmp_path)], capsys)
    assert [line.endswith(' (unsure)') for line in out.splitlines()] == (confidence < threshold).tolist()


@pytest.fixture(scope='module')
def never_sure(checkpoints, fashion_mnist, tmp_path_factory):
    """A model.pt as train.py writes it at the end of a run, whose calibration holds threshold null: the
    textbook model with its logits multiplied by 100, so sure of every answer that no confidence brings its
    test-set answers to 95% (as `train.py --lr 10 --epochs 1` does)."""
    checkpoint = torch.load(checkpoints['textbook'], weights_only=True)
    checkpoint['model'] = {name: tensor * 100 for name, tensor in checkpoint['model'].items()}
    model = load(checkpoints['textbook'])
    with torch.no_grad():
        model.W.mul_(100)
        model.b.mul_(100)
    measured = calibration(predict.probabilities(model, fashion_mnist[2]), fashion_mnist[3])
    measured.pop('coverage_curve')  # as train.py's wrap-up keeps it
    assert measured['threshold'] is None and measured['accuracy'] > 0.7  # a fair model, overconfident
    checkpoint['calibration'] = measured
    path = tmp_path_factory.mktemp('never-sure') / 'model.pt'
    torch.save(checkpoint, path)
    return str(path)


def test_a_model_never_sure_marks_every_answer_unsure_and_says_why(never_sure, fashion_mnist, tmp_path, capsys,
                                                                  drawn):
    paths = [save_item(fashion_mnist, index, tmp_path / f"item{index}.png") for index in range(4)]
    code, out, err = run([*paths, '--model', never_sure, '--out', str(tmp_path)], capsys)
    assert code == 0 and len(out.splitlines()) == 4
    assert all(line.endswith(' (unsure)') for line in out.splitlines()), out
    assert err.count('\n') == 1 and 'no confidence threshold gives this model 95% accuracy' in err
    assert 'every prediction is marked unsure' in err and 'interrupted' not in err, err
    code, out, err = run([*paths, '--json', '--model', never_sure, '--out', str(tmp_path)], capsys)
    assert [result['unsure'] for result in strict_json(out)] == [True] * 4
    assert all(entry['unsure'] is True for entry in drawn[-1][0])  # the figure greys every bar


@pytest.mark.parametrize('calibration_kept', ['none', 'nan', 'text'])
def test_a_checkpoint_without_a_usable_threshold_marks_nothing_and_says_so_once(calibration_kept, checkpoints,
                                                                               fashion_mnist, tmp_path, capsys,
                                                                               drawn):
    checkpoint = torch.load(checkpoints['textbook'], weights_only=True)
    if calibration_kept == 'none':
        del checkpoint['calibration']  # a model.pt saved during a run, as train.py saves each epoch's
    else:
        checkpoint['calibration']['threshold'] = float('nan') if calibration_kept == 'nan' else '0.7'
    torch.save(checkpoint, tmp_path / 'old.pt')
    items = [save_item(fashion_mnist, index, tmp_path / f"item{index}.png") for index in range(3)]
    code, out, err = run([*items, '--json', '--model', str(tmp_path / 'old.pt'), '--out', str(tmp_path)],
                         capsys)
    assert code == 0 and [result['unsure'] for result in strict_json(out)] == [None] * 3
    assert err.count('\n') == 1 and 'no prediction is marked unsure' in err, err
    assert ('saved during a run' in err) == (calibration_kept == 'none') and 'interrupted' not in err


def test_outputs_that_are_not_finite_are_no_prediction_and_never_nan(checkpoints, fashion_mnist, tmp_path,
                                                                     monkeypatch, capsys, drawn):
    """Weights finite but so large that an image's logits overflow (model.pt's loader refuses them; were one
    to pass): that image is one error line, never a NaN in the JSON nor a sure answer."""
    loader = predict.load_checkpoint

    def overflowing(path):
        model, checkpoint = loader(path)
        with torch.no_grad():  # two centre pixels weigh 3e38 for two classes: both logits +inf when they are lit
            model.W[[14 * 28 + 13, 14 * 28 + 14], :2] = 3e38
        return model, checkpoint
    monkeypatch.setattr(predict, 'load_checkpoint', overflowing)
    (tmp_path / 'labelled' / 'sneaker').mkdir(parents=True)
    lit = save_item(fashion_mnist, 9, tmp_path / 'labelled' / 'sneaker' / 'lit.png', {(14, 13): 255, (14, 14): 255})
    dark = save_item(fashion_mnist, 9, tmp_path / 'labelled' / 'sneaker' / 'dark.png', {(14, 13): 0, (14, 14): 0})
    code, out, err = run([lit, dark, '--json', '--model', checkpoints['tuned'], '--out', str(tmp_path)], capsys)
    assert code == 2 and err == f"error: {lit}: the model's output for it is not finite (nan or inf): its weights " \
                                f"overflow on this image\n"
    assert [result['image'] for result in strict_json(out)] == [dark]
    code, out, err = run(['--labelled', str(tmp_path / 'labelled'), '--json', '--model', checkpoints['tuned'],
                          '--out', str(tmp_path)], capsys)
    report = strict_json(out)
    assert code == 2 and err.count('\n') == 1
    assert (report['n'], report['failed'], report['unsure'] + report['sure']) == (2, 1, 1)
    failed, = [image for image in report['images'] if image['image'] == lit]
    assert failed['unsure'] is None and failed['right'] is False and 'probabilities' not in failed
    assert [predict.is_unsure(float('nan'), threshold) for threshold in (0.7, math.inf, None)] == [True, True, None]
