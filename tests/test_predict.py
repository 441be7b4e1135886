"""predict.py: photos made from real test items reach the model in the data set's form; every bad file is
one line; calibration() and confidence.png.

The photos are Fashion-MNIST test items turned into what a phone or a shop gives: negated to a dark item on
white, enlarged 5-10x with one of Pillow's filters, pasted off-centre on a larger white canvas, in RGB,
with noise, saved as JPEG or PNG. Most checks run predict.main in this process through cli.run (each
process would cost torch's import); one run goes through a real process, end to end.
"""
import dataclasses
import io
import json
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

from machinery import cli
from machinery import plots, plots_predict
import predict
import train
from data import TEXT_LABELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = 150  # test items turned into photos
RESAMPLING = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
              Image.Resampling.LANCZOS]


# ----------------------------------------------------------------------------- fixtures

def train_checkpoint(fashion_mnist, path, recipe, epochs):
    """A quick model.pt as train.py writes it (the tuned recipe's folded to take pixels / 255)."""
    config = train.Config(**{**train.RECIPES[recipe], 'recipe': recipe, 'epochs': epochs, 'device': 'cpu'})
    saved = {}
    train.train(config, train.new_model(config, torch.device('cpu')), fashion_mnist, torch.device('cpu'),
                on_epoch=lambda history, model: saved.update(model=model, history=history), log=lambda *_: None)
    torch.save(dict(model=saved['model'].state_dict(), inputs='pixels / 255, flattened to (n, 784)',
                    config=dataclasses.asdict(config), epoch=epochs, test_acc=saved['history'][-1]['test_acc']),
               path)
    return str(path)


@pytest.fixture(scope='module')
def checkpoints(fashion_mnist, tmp_path_factory):
    folder = tmp_path_factory.mktemp('models')
    # The tuned recipe's model weighs pixels that are nearly always 0 heavily (its inputs were divided by
    # their tiny std): the harder case for a photo's noisy background. A third of the training set will do.
    train_images, train_labels, test_images, test_labels = fashion_mnist
    subset = (train_images[:20_000], train_labels[:20_000], test_images, test_labels)
    return {'textbook': train_checkpoint(fashion_mnist, folder / 'textbook.pt', 'textbook', 2),
            'tuned': train_checkpoint(subset, folder / 'tuned.pt', 'tuned', 1)}


def make_photo(item, rng, scale=None, resample=None, noise=None):
    """(28, 28) uint8 test item -> a photo of it, as an RGB PIL image: dark on white, enlarged, off-centre."""
    scale = scale or rng.uniform(5, 10)
    size = round(28 * scale)
    resample = RESAMPLING[rng.integers(len(RESAMPLING))] if resample is None else resample
    big = Image.fromarray(255 - item).resize((size, size), resample)
    width, height = size + int(rng.integers(20, 160)), size + int(rng.integers(20, 160))
    canvas = Image.new('L', (width, height), 255)
    canvas.paste(big, (int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))))
    pixels = np.asarray(canvas.convert('RGB'), dtype=np.float32)
    noise = rng.uniform(0, 6) if noise is None else noise
    pixels += noise * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope='module')
def photos(fashion_mnist, tmp_path_factory):
    """PHOTOS photos of random test items on disk, JPEG (quality 75-95) and PNG in turn:
    (paths, item indices)."""
    folder = tmp_path_factory.mktemp('photos')
    rng = np.random.default_rng(0)
    indices = torch.from_numpy(rng.choice(10_000, PHOTOS, replace=False))
    images = fashion_mnist[2][indices].reshape(-1, 28, 28).numpy()
    paths = []
    for number, item in enumerate(images):
        photo = make_photo(item, rng)
        if number % 2:
            path = folder / f"photo{number:03d}.jpg"
            photo.save(path, quality=int(rng.integers(75, 96)))
        else:
            path = folder / f"photo{number:03d}.png"
            photo.save(path, compress_level=1)  # noise compresses badly: the default level is 5x slower
        paths.append(str(path))
    return paths, indices


@pytest.fixture(scope='module')
def converted(photos):
    """What predict.py shows the model for each photo: (PHOTOS, 28, 28) uint8."""
    return torch.stack([torch.from_numpy(predict.read_image(path)[0]) for path in photos[0]])


def load(path):
    return predict.load_checkpoint(path)[0]


def run(argv, capsys):
    """predict.py's main through cli.run, as the command line runs it: (exit code, stdout, stderr)."""
    code = cli.run(predict.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def no_temporary_files(folder):
    return [name for name in os.listdir(folder) if name.endswith('.tmp')] == []


@pytest.fixture
def drawn(monkeypatch):
    """predict.png as a blank 1x1-inch figure: what predict.py asks to draw is kept here; drawing the real
    one takes a second (the process run and test_the_figure_* draw it)."""
    calls = []

    def plot_predict(entries, **kwargs):
        calls.append((entries, kwargs))
        return plots.new_figure(1, 1)
    monkeypatch.setattr(plots_predict, 'plot_predict', plot_predict)
    return calls


# ----------------------------------------------------------------------------- the conversion

@pytest.mark.parametrize('recipe', ['textbook', 'tuned'])
def test_photos_of_test_items_get_nearly_the_accuracy_of_the_items_as_tensors(recipe, checkpoints, photos,
                                                                               converted, fashion_mnist):
    model = load(checkpoints[recipe])
    _, indices = photos
    labels = fashion_mnist[3][indices]
    as_tensors = predict.probabilities(model, fashion_mnist[2][indices]).argmax(1)
    as_photos = predict.probabilities(model, converted).argmax(1)
    tensor_accuracy = float((as_tensors == labels).float().mean())
    photo_accuracy = float((as_photos == labels).float().mean())
    assert abs(photo_accuracy - tensor_accuracy) <= 0.06, (photo_accuracy, tensor_accuracy)
    # stricter than the accuracy: the same prediction for nearly every item (measured 0.93-0.96)
    assert float((as_photos == as_tensors).float().mean()) >= 0.88


def test_the_conversion_puts_the_item_back_where_the_data_set_has_it(photos, converted, fashion_mnist):
    items = fashion_mnist[2][photos[1]].reshape(-1, 28, 28).float()
    difference = (converted.float() - items).abs().mean(dim=(1, 2))
    # light on black, centred, the same size: a pixel is off by ~10 of 255 on average (blur, noise,
    # sharpening); a shift by one pixel or a missed negation would be 40-150
    assert float(difference.median()) < 20, difference.median()
    assert float(difference.max()) < 50, difference.max()


@pytest.mark.parametrize('resample', RESAMPLING, ids=lambda r: r.name)
def test_a_clean_enlargement_comes_back_close_to_the_item(resample, fashion_mnist):
    rng = np.random.default_rng(1)
    items = fashion_mnist[2][:20].reshape(-1, 28, 28).numpy()
    back = np.stack([predict.to_dataset_form(np.asarray(make_photo(item, rng, scale=7, resample=resample, noise=0),
                                                        dtype=np.float32)) for item in items])
    difference = np.abs(back.astype(float) - items).mean()
    assert difference < (8 if resample == Image.Resampling.NEAREST else 18), difference


def test_the_paper_steps_on_a_drawn_photo():
    """A dark 300x100 rectangle off-centre on an off-white 640x480 photo: trimmed, 28x9 after the resize
    (100 * 28 / 300 = 9.3), centred, negated, and the off-white background brought to the data set's 0."""
    photo = np.full((480, 640, 3), 240, dtype=np.float32)
    photo[200:300, 100:400] = 40
    seen = predict.to_dataset_form(photo)
    assert seen.dtype == np.uint8 and seen.shape == (28, 28)
    rows = np.flatnonzero(seen.max(axis=1) > 128)
    cols = np.flatnonzero(seen.max(axis=0) > 128)
    assert (cols[0], cols[-1]) == (0, 27)  # the longest edge fills the 28
    assert rows.tolist() == list(range(10, 19))  # 9 rows, (28 - 9 + 1) // 2 = 10 above, 9 below
    assert seen[:9].max() == 0 and seen[20:].max() == 0  # background: exactly 0
    # the item: 255 - 40 = 215 after the negation; the background's 255 - 240 = 15 taken off, stretched
    assert seen[14, 14] == round((215 - 15) * 255 / 240)


def test_a_dark_background_is_not_negated():
    photo = np.zeros((200, 300, 3), dtype=np.float32)
    photo[75:125, 100:200] = 220  # a light 100x50 rectangle on black: already the data set's polarity
    seen = predict.to_dataset_form(photo)
    assert seen[14, 14] == 220 and seen[0, 0] == 0  # the item kept as it is, light on black


# ----------------------------------------------------------------------------- the data set's own form

def test_data_set_images_are_used_as_they_are(checkpoints, fashion_mnist, tmp_path):
    items = fashion_mnist[2][:30].reshape(-1, 28, 28)
    model = load(checkpoints['textbook'])
    expected = predict.probabilities(model, items)
    variants = {'L.png': lambda a: Image.fromarray(a), 'rgb.png': lambda a: Image.fromarray(a).convert('RGB'),
                'gray16.png': lambda a: Image.fromarray(a.astype(np.uint16) * 257),
                'opaque.png': lambda a: Image.fromarray(a).convert('RGBA'),
                'L.bmp': lambda a: Image.fromarray(a), 'L.tiff': lambda a: Image.fromarray(a)}
    for suffix, make in variants.items():
        seen = []
        for number, item in enumerate(items.numpy()):
            path = tmp_path / f"{number}{suffix}"
            make(item).save(path)
            seen.append(torch.from_numpy(predict.read_image(str(path))[0]))
        seen = torch.stack(seen)
        assert torch.equal(seen, items), suffix
        assert torch.allclose(predict.probabilities(model, seen), expected, atol=1e-7, rtol=0), suffix


def test_a_28x28_photo_form_image_is_converted_not_taken_as_it_is(fashion_mnist, tmp_path):
    item = fashion_mnist[2][0].reshape(28, 28).numpy()
    Image.fromarray(255 - item).save(tmp_path / 'negated.png')  # dark on white: not the data set's form
    seen = predict.read_image(str(tmp_path / 'negated.png'))[0]
    assert np.abs(seen.astype(float) - item).mean() < 20


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
    results = json.loads(out)  # only the JSON on stdout, valid with a failed image
    assert [result['image'] for result in results] == paths[:-1]
    for result in results:
        assert list(result) == ['image', 'predicted', 'probabilities']
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
            entries = line[len(path) + 2:].split(', ')
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
    os.mkfifo(folder / 'pipe.png')  # opening it would wait for a writer forever
    return {str(folder / 'pipe.png'): 'not a regular file',str(folder / 'missing.png'): 'no such file', str(folder / 'a-folder'): 'is a folder',
            str(folder / 'empty.png'): 'empty file', str(folder / 'notes.jpg'): 'not an image',
            str(folder / 'cut.jpg'): 'truncated', str(folder / 'cut.png'): 'truncated',
            str(folder / 'bomb.png'): 'decompression bomb', str(folder / 'big.png'): 'decompression bomb',
            str(folder / 'uniform.png'): 'nothing to classify', str(folder / 'transparent.png'): 'nothing to classify'}


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
        assert [result['image'] for result in json.loads(out)] == [good, good]
    else:
        assert [line.split(': ')[0] for line in out.splitlines()] == [good, good]
    assert (tmp_path / 'out' / 'predict.png').exists()
    (entries, kwargs), = drawn
    assert [entry['name'] for entry in entries] == ['good.png', 'good.png'] and kwargs['total'] == 2


def test_nothing_readable_is_exit_2_and_no_figure(checkpoints, tmp_path, capsys, drawn):
    code, out, err = run([str(tmp_path / 'missing.png'), '--json', '--model', checkpoints['textbook'],
                          '--out', str(tmp_path / 'out')], capsys)
    assert (code, json.loads(out)) == (2, [])
    assert err == f"error: {tmp_path / 'missing.png'}: no such file\n"
    assert not (tmp_path / 'out' / 'predict.png').exists()


def hostile_but_valid(folder, boot):
    """Images that are unusual but fine -> path. Each shows the same boot as boot.png."""
    photo, encoded = boot
    (folder / 'boot.png').write_bytes(encoded['PNG'])
    (folder / 'boot.jpg').write_bytes(encoded['JPEG'])
    photo.save(folder / 'animated.gif', save_all=True, append_images=[Image.new('RGB', photo.size, 'black')],
               duration=100, loop=0)
    photo.save(folder / 'pages.tiff', save_all=True, append_images=[Image.new('RGB', photo.size, 'black')])
    Image.fromarray(np.asarray(photo.convert('L')).astype(np.uint16) * 257).save(folder / 'gray16.png')
    palette = photo.convert('P', palette=Image.Palette.ADAPTIVE)  # the web palette would dither
    palette.save(folder / 'palette.png', transparency=int(np.asarray(palette)[0, 0]))  # background transparent
    rgba = np.asarray(photo.convert('RGBA')).copy()
    rgba[..., 3] = np.where(np.asarray(photo.convert('L')) >= 250, 0, 255)
    rgba[..., :3] = np.where(rgba[..., 3:] == 0, 0, rgba[..., :3])  # transparent pixels black underneath
    Image.fromarray(rgba).save(folder / 'cutout.png')
    photo.convert('CMYK').save(folder / 'cmyk.jpg')
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": stored sideways, as phones do
    photo.transpose(Image.Transpose.ROTATE_90).save(folder / 'sideways.jpg', exif=exif.tobytes())
    photo.convert('LA').save(folder / 'la.png')
    photo.save(folder / 'boot.webp', lossless=True)
    photo.resize((photo.width * 8, photo.height * 8)).save(folder / 'large.png', compress_level=1)
    return {name: str(folder / name) for name in os.listdir(folder)}


def test_unusual_images_give_the_same_model_input(boot, tmp_path):
    images = hostile_but_valid(tmp_path, boot)
    reference = predict.read_image(images.pop('boot.png'))[0].astype(float)
    for name, path in images.items():
        seen = predict.read_image(path)[0].astype(float)
        lossy = name.endswith('.jpg') or name == 'large.png'  # JPEG; enlarged 8x and averaged down again
        assert np.abs(seen - reference).mean() < (8 if lossy else 3), name


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
    entries = [dict(name=f"photo{k}.jpg", original=photo, seen=np.zeros((28, 28), np.uint8),
                    probabilities=[0.1] * 10) for k in range(predict.MAX_SHOWN)]
    figure = plots_predict.plot_predict(entries, total=40, model='model.pt')
    assert len(figure.axes) == 3 * predict.MAX_SHOWN
    assert 'the first 12 of 40 images' in figure._suptitle.get_text()
    single = plots_predict.plot_predict(entries[:1], model='model.pt')
    assert len(single.axes) == 3 and '1 image,' in single._suptitle.get_text()


# ----------------------------------------------------------------------------- calibration

def direct_calibration(probabilities, labels, bins=15):
    """ECE and per-bin counts the slow, obvious way: every example into (b/bins, (b+1)/bins]."""
    confidence, predicted = probabilities.max(dim=1)
    members = [[] for _ in range(bins)]
    for c, p, y in zip(confidence.tolist(), predicted.tolist(), labels.tolist()):
        b = next(b for b in range(bins) if b / bins < c <= (b + 1) / bins)
        members[b].append((c, p == y))
    n = len(labels)
    ece = sum(len(m) / n * abs(sum(right for _, right in m) / len(m) - sum(c for c, _ in m) / len(m))
              for m in members if m)
    return ece, [len(m) for m in members]


def test_ece_matches_a_direct_computation_on_a_trained_model(checkpoints, fashion_mnist):
    model = load(checkpoints['textbook'])
    probabilities = predict.probabilities(model, fashion_mnist[2])
    result = predict.calibration(probabilities, fashion_mnist[3])
    ece, counts = direct_calibration(probabilities.double(), fashion_mnist[3])
    assert result['ece'] == pytest.approx(ece, abs=1e-12)
    assert result['counts'] == counts and sum(counts) == 10_000 and result['bins'] == 15
    assert 0 < result['ece'] < 0.1  # measured 0.058 after these 2 epochs, 0.013 after the book's 10
    json.dumps(result, allow_nan=False)  # goes into metrics.json as it is


def test_ece_on_bin_edges_and_known_values():
    # a confidence of exactly b/15 belongs to bin b - 1: (b-1)/15 < c <= b/15
    edges = torch.tensor([2, 5, 7, 14, 15], dtype=torch.float64) / 15
    probabilities = torch.zeros(5, 10, dtype=torch.float64)
    probabilities[:, 0] = edges
    probabilities[:, 1:] = ((1 - edges) / 9)[:, None]
    labels = torch.tensor([0, 1, 0, 0, 1])
    result = predict.calibration(probabilities, labels)
    ece, counts = direct_calibration(probabilities, labels)
    assert result['counts'] == counts == [0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert result['ece'] == pytest.approx(ece, abs=1e-12)
    # always sure, right half of the time: ECE = |0.5 - 1| = 0.5
    sure = torch.eye(10, dtype=torch.float64)[[0, 0, 0, 0]]
    assert predict.calibration(sure, torch.tensor([0, 0, 1, 1]))['ece'] == pytest.approx(0.5)


def test_the_threshold_is_the_lowest_one_that_reaches_95_percent():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 10, generator=generator) * 3
    probabilities = torch.softmax(logits, dim=1)
    confidence, predicted = probabilities.max(dim=1)
    # right more often when more confident, like a real model
    labels = torch.where(torch.rand(3000, generator=generator) < confidence, predicted, (predicted + 1) % 10)
    result = predict.calibration(probabilities, labels)
    right = (predicted == labels).double()
    best = None
    for threshold in sorted(set(confidence.tolist())):  # brute force over every possible threshold
        answered = confidence >= threshold
        if float(right[answered].mean()) >= 0.95:
            best = threshold
            break
    assert result['threshold'] == best
    answered = confidence >= best
    assert result['coverage'] == pytest.approx(float(answered.double().mean()))
    assert result['answered_accuracy'] == pytest.approx(float(right[answered].mean()))
    curve = result['coverage_curve']
    assert 90 <= len(curve['coverage']) <= 100 and curve['coverage'][-1] == 1
    assert curve['accuracy'][-1] == pytest.approx(result['accuracy'])
    for threshold, coverage, accuracy in zip(*curve.values()):
        assert coverage == pytest.approx(float((confidence >= threshold).double().mean()))
        assert accuracy == pytest.approx(float(right[confidence >= threshold].mean()))


def test_no_threshold_and_ties():
    wrong = predict.calibration(torch.eye(10)[[0, 1, 2]], torch.tensor([1, 2, 3]))
    assert (wrong['threshold'], wrong['coverage'], wrong['answered_accuracy']) == (None, 0.0, None)
    tied = predict.calibration(torch.full((4, 10), 0.1), torch.tensor([0, 0, 0, 1]))
    assert tied['coverage_curve']['coverage'] == [1.0]  # equal confidences are answered together
    assert tied['threshold'] is None  # 3 of 4 right, and no way to answer fewer


def test_confidence_figure(checkpoints, fashion_mnist, tmp_path):
    model = load(checkpoints['textbook'])
    result = predict.calibration(predict.probabilities(model, fashion_mnist[2]), fashion_mnist[3])
    figure = plots.plot_confidence(result)
    assert f"ECE = {result['ece']:.4f}" in figure.axes[0].get_title()
    plots.save_figure(figure, str(tmp_path / 'confidence.png'))
    assert (tmp_path / 'confidence.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    nothing = predict.calibration(torch.eye(10)[[0, 1]], torch.tensor([1, 2]))  # no threshold to mark
    plots.plot_confidence(nothing)
