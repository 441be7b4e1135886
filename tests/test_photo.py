"""helpers/photo.py: photos made from real test items, on any backdrop, reach the model in the data set's
form and get nearly the predictions the items get as tensors.

The photos are Fashion-MNIST test items turned into what a phone or a shop gives: a dark item on white, a
dark or light item on gray, on noise, stripes or wood grain, touching the frame, cropped tight to the item
(a product shot: it touches all four edges), cut out on transparency;
enlarged with one of Pillow's filters, off-centre, in RGB, with noise. No real photo is needed: those are
measured with predict.py --labelled (README).
"""
import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import train
from helpers import photo
from support.metrics import calibration

PHOTOS = 30  # test items turned into photos on white
ITEMS = 20   # test items on each of the other backdrops
RESAMPLING = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
              Image.Resampling.LANCZOS]
_trained = {}


# ----------------------------------------------------------------------------- shared with test_predict.py

def trained_checkpoints(fashion_mnist, tmp_path_factory):
    """{'textbook': path, 'tuned': path}: quick model.pt files as train.py writes them (the tuned recipe's
    folded to take pixels / 255), with the test set's calibration as train.py's wrap-up adds it. Trained
    once per test session, whichever module asks first."""
    if not _trained:
        folder = tmp_path_factory.mktemp('models')
        # The tuned recipe's model weighs pixels that are nearly always 0 heavily (its inputs were divided by
        # their tiny std): the harder case for a photo's noisy background. A third of the training set will do.
        train_images, train_labels, test_images, test_labels = fashion_mnist
        for recipe, epochs, datasets in (('textbook', 2, fashion_mnist),
                                         ('tuned', 1, (train_images[:20_000], train_labels[:20_000], test_images,
                                                       test_labels))):
            config = train.Config(**{**train.RECIPES[recipe], 'recipe': recipe, 'epochs': epochs, 'device': 'cpu'})
            for history, model in train.train(config, train.new_model(config, torch.device('cpu')), datasets,
                                              torch.device('cpu')):
                pass  # it yields after each epoch: the last one's model is kept
            with torch.no_grad():
                probabilities = torch.softmax(model(test_images.float() / 255), dim=1)
            measured = calibration(probabilities, test_labels)
            measured.pop('coverage_curve')  # what train.py keeps in model.pt (until it does: added here)
            torch.save(dict(model=model.state_dict(), inputs='pixels / 255, flattened to (n, 784)',
                            config=dataclasses.asdict(config), epoch=epochs, calibration=measured,
                            test_acc=history[-1]['test_acc']), folder / f"{recipe}.pt")
            _trained[recipe] = str(folder / f"{recipe}.pt")
    return _trained


def make_photo(item, rng, scale=None, resample=None, noise=None):
    """(28, 28) uint8 test item -> a photo of it, as an RGB PIL image: dark on white, enlarged, off-centre."""
    scale = scale or rng.uniform(4, 7)
    size = round(28 * scale)
    resample = RESAMPLING[rng.integers(len(RESAMPLING))] if resample is None else resample
    big = Image.fromarray(255 - item).resize((size, size), resample)
    width, height = size + int(rng.integers(20, 120)), size + int(rng.integers(20, 120))
    canvas = Image.new('L', (width, height), 255)
    canvas.paste(big, (int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))))
    pixels = np.asarray(canvas.convert('RGB'), dtype=np.float32)
    noise = rng.uniform(0, 6) if noise is None else noise
    pixels += noise * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- other backdrops

def backdrop(kind, height, width, level, rng):
    """(height, width) float32 backdrop around gray `level`: plain, noise, stripes or wood (a gradient and
    wavy grain)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 'noise':
        return level + 20 * rng.standard_normal((height, width)).astype(np.float32)
    if kind == 'stripes':
        return level + 25 * np.sign(np.sin(2 * np.pi * (x + y) / 14))
    if kind == 'wood':
        return level + 30 * (x / width - 0.5) + 15 * np.sin(2 * np.pi * (y + 6 * np.sin(x / 23)) / 9)
    return np.full((height, width), level, np.float32)


def on_backdrop(item, rng, level, dark=True, kind='plain', touching=False, tight=False):
    """(28, 28) test item -> (h, w, 3) float32 photo: the item, enlarged 5-6x, opaque, its colour level * (1 - x)
    (dark) or level + (255 - level) * x (light) for x = item / 255, on the backdrop; off-centre, in the
    bottom-left corner touching two edges of the frame, or cropped tight (a product shot): the frame is the
    box where the item is at a tenth of its strength or more, so that it crosses all four edges."""
    size = round(28 * rng.uniform(5, 6))
    x = np.asarray(Image.fromarray(item).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    if tight:
        rows, cols = np.flatnonzero((x >= 0.1).any(axis=1)), np.flatnonzero((x >= 0.1).any(axis=0))
        x = x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        (height, width), top, left = x.shape, 0, 0
    else:
        height, width = size + int(rng.integers(15, 60)), size + int(rng.integers(15, 60))
        top, left = (height - size, 0) if touching else (int(rng.integers(0, height - size + 1)),
                                                          int(rng.integers(0, width - size + 1)))
    pixels = backdrop(kind, height, width, level, rng)
    colour = level * (1 - x) if dark else level + (255 - level) * x
    opaque = np.clip(x * 16, 0, 1)  # the item's edge blends into the backdrop over a pixel or two
    region = pixels[top:top + x.shape[0], left:left + x.shape[1]]
    pixels[top:top + x.shape[0], left:left + x.shape[1]] = opaque * colour + (1 - opaque) * region
    pixels = pixels[:, :, None] + 3 * rng.standard_normal((height, width, 3), dtype=np.float32)
    return np.clip(pixels, 0, 255), None


def cut_out(item, rng, style):
    """(28, 28) test item -> ((h, w, 3) pixels, (h, w) alpha): the item on transparency. 'light': its gray
    levels, opaque wherever it is not 0; 'white': white, the item as the alpha; 'dark': negated."""
    size = round(28 * rng.uniform(3, 4))
    x = np.clip(np.asarray(Image.fromarray(item).resize((size, size), Image.Resampling.BICUBIC), np.float32), 0, 255)
    pixels = np.full((size + 30, size + 40), 255 if style != 'light' else 0, np.float32)
    alpha = np.zeros_like(pixels)
    if style != 'white':
        pixels[15:15 + size, 20:20 + size] = x if style == 'light' else 255 - x
    alpha[15:15 + size, 20:20 + size] = x / 255 if style == 'white' else x > 0
    return np.repeat(pixels[:, :, None], 3, axis=2), alpha


BACKDROPS = {  # name -> (pixels, alpha) from (item, rng)
    'dark on gray 110': lambda item, rng: on_backdrop(item, rng, 110),
    'light on gray 150': lambda item, rng: on_backdrop(item, rng, 150, dark=False),
    'dark touching the frame': lambda item, rng: on_backdrop(item, rng, 200, touching=True),
    'dark on noise': lambda item, rng: on_backdrop(item, rng, 170, kind='noise'),
    'light on stripes': lambda item, rng: on_backdrop(item, rng, 90, dark=False, kind='stripes'),
    'dark on wood': lambda item, rng: on_backdrop(item, rng, 150, kind='wood'),
    'light on wood': lambda item, rng: on_backdrop(item, rng, 80, dark=False, kind='wood'),
    'light cut-out': lambda item, rng: cut_out(item, rng, 'light'),
    'white cut-out, the item as alpha': lambda item, rng: cut_out(item, rng, 'white'),
    'dark cut-out': lambda item, rng: cut_out(item, rng, 'dark'),
    # last in sorted order, so that the others keep their random numbers
    'white, cropped tight: the item touches all four edges': lambda item, rng: on_backdrop(item, rng, 235, tight=True),
}


@pytest.fixture(scope='module')
def checkpoints(fashion_mnist, tmp_path_factory):
    return trained_checkpoints(fashion_mnist, tmp_path_factory)


@pytest.fixture(scope='module')
def photos(fashion_mnist, tmp_path_factory):
    """PHOTOS photos of random test items on white on disk, JPEG (quality 75-95) and PNG in turn:
    (paths, item indices)."""
    folder = tmp_path_factory.mktemp('photos')
    rng = np.random.default_rng(0)
    indices = torch.from_numpy(rng.choice(10_000, PHOTOS, replace=False))
    paths = []
    for number, item in enumerate(fashion_mnist[2][indices].reshape(-1, 28, 28).numpy()):
        picture = make_photo(item, rng)
        path = folder / f"photo{number:03d}.{'jpg' if number % 2 else 'png'}"
        picture.save(path, **({'quality': int(rng.integers(75, 96))} if number % 2 else {'compress_level': 1}))
        paths.append(str(path))
    return paths, indices


@pytest.fixture(scope='module')
def converted(photos):
    """What predict.py shows the model for each photo: (PHOTOS, 28, 28) uint8."""
    return torch.stack([torch.from_numpy(photo.read_image(path)[0]) for path in photos[0]])


def load(path):
    return predict.load_checkpoint(path)[0]


# ----------------------------------------------------------------------------- accuracy as photos

@pytest.mark.parametrize('recipe', ['textbook', 'tuned'])
def test_photos_on_white_get_nearly_the_accuracy_of_the_items_as_tensors(recipe, checkpoints, photos, converted,
                                                                        fashion_mnist):
    model = load(checkpoints[recipe])
    labels = fashion_mnist[3][photos[1]]
    as_tensors = predict.probabilities(model, fashion_mnist[2][photos[1]]).argmax(1)
    as_photos = predict.probabilities(model, converted).argmax(1)
    difference = float((as_photos == labels).float().mean() - (as_tensors == labels).float().mean())
    assert abs(difference) <= 0.07, difference
    # stricter than the accuracy: the same prediction for nearly every item (measured 0.88-0.93: GrabCut's
    # cut loses a faint edge now and then, where the old trim kept the box whole: 0.93-0.96, and refused
    # real photos)
    assert float((as_photos == as_tensors).float().mean()) >= 0.85


@pytest.mark.parametrize('name', BACKDROPS)
def test_other_backdrops_get_nearly_the_accuracy_of_the_items_as_tensors(name, checkpoints, fashion_mnist):
    rng = np.random.default_rng(sorted(BACKDROPS).index(name))
    indices = torch.from_numpy(np.random.default_rng(5).choice(10_000, ITEMS, replace=False))
    items = fashion_mnist[2][indices].reshape(-1, 28, 28)
    seen = torch.stack([torch.from_numpy(photo.to_dataset_form(*BACKDROPS[name](item, rng))[0])
                        for item in items.numpy()])
    # the textbook model: the fixture's tuned one (1 epoch on a third) turns on a few faint pixels; the real
    # tuned model (train.py --recipe tuned) measured within 0.08 of its tensor accuracy on every backdrop here
    model, labels = load(checkpoints['textbook']), fashion_mnist[3][indices]
    as_tensors = predict.probabilities(model, items).argmax(1)
    as_photos = predict.probabilities(model, seen).argmax(1)
    # not far below the tensors' accuracy (above it is luck: 20 items, one is 0.05), and mostly the same
    # predictions: the stricter check on so few items (measured 0.75-1.0)
    difference = float((as_photos == labels).float().mean() - (as_tensors == labels).float().mean())
    assert difference >= -0.10, difference
    assert float((as_photos == as_tensors).float().mean()) >= 0.75
    # light on black, where the item is: a missed negation or a cut that kept the backdrop is 40-150 off
    assert float((seen.float() - items.float()).abs().mean()) < 35  # measured 11-30


def test_the_conversion_puts_the_item_back_where_the_data_set_has_it(photos, converted, fashion_mnist):
    items = fashion_mnist[2][photos[1]].reshape(-1, 28, 28).float()
    difference = (converted.float() - items).abs().mean(dim=(1, 2))
    # light on black, centred, the same size: a pixel is off by ~10 of 255 on average (blur, noise,
    # sharpening); a shift by one pixel or a missed negation would be 40-150
    assert float(difference.median()) < 20, difference.median()
    assert float(difference.max()) < 50, difference.max()


def test_the_steps_on_a_drawn_photo():
    """A dark 300x100 rectangle off-centre on an off-white 640x480 photo: cut out, 28x9 after the resize
    (100 * 28 / 300 = 9.3), centred, negated, and the off-white background brought to the data set's 0."""
    picture = np.full((480, 640, 3), 240, dtype=np.float32)
    picture[200:300, 100:400] = 40
    seen, kept = photo.to_dataset_form(picture)
    assert seen.dtype == np.uint8 and seen.shape == (28, 28)
    assert kept[250, 250] and not kept[100, 100] and not kept[250, 450]
    rows, cols = np.flatnonzero(seen.max(axis=1) > 128), np.flatnonzero(seen.max(axis=0) > 128)
    assert (cols[0], cols[-1]) == (0, 27)  # the longest edge fills the 28
    assert rows.tolist() == list(range(10, 19))  # 9 rows, (28 - 9 + 1) // 2 = 10 above, 9 below
    assert seen[:9].max() == 0 and seen[20:].max() == 0  # background: exactly 0
    # the item: 240 - 40 = 200 below its background, of the 240 there is room for
    assert seen[14, 14] == round(200 * 255 / 240)


@pytest.mark.parametrize('background, item, expected', [(0, 220, 220), (255, 40, 215), (128, 28, 199),
                                                        (128, 228, 201), (60, 160, 131)],
                         ids=['light on black', 'dark on white', 'dark on gray', 'light on gray', 'light on dark'])
def test_polarity_comes_from_the_item_against_its_background(background, item, expected):
    picture = np.full((200, 300, 3), background, dtype=np.float32)
    picture[75:125, 100:200] = item
    seen = photo.to_dataset_form(picture)[0]
    room = background if item < background else 255 - background
    assert expected == round(abs(item - background) * 255 / room)
    assert seen[14, 14] == expected and seen[0, 0] == 0  # a light item on black, whichever side it was on


def test_a_big_photo_of_a_textured_floor_is_cut_to_the_item():
    """A dark square on a wood-grain floor, the item a quarter of a 1200x900 photo: the cut is the square."""
    rng = np.random.default_rng(0)
    floor = backdrop('wood', 900, 1200, 170, rng)
    floor[300:600, 450:750] = 30
    seen, kept = photo.to_dataset_form(np.repeat(floor[:, :, None], 3, axis=2))
    share = kept[300:600, 450:750].mean(), kept.mean()
    assert share[0] > 0.97 and abs(share[1] - 300 * 300 / (900 * 1200)) < 0.01, share
    assert seen[2:26, 2:26].min() > 200  # a filled square, not the floor's grain


def test_a_flat_item_that_is_most_of_the_border_is_cut_to_the_frame():
    """A dark octagon on off-white cropped tight (a black bag's product shot): it crosses all four edges of
    the frame, is half of the strip GrabCut starts from as background, and its colour is that strip's
    commonest; only the corners are background. The cut is the octagon, to the frame, light on black."""
    y, x = np.mgrid[0:240, 0:200]
    item = (x + y >= 60) & (199 - x + y >= 60) & (x + 239 - y >= 60) & (199 - x + 239 - y >= 60)
    picture = np.repeat(np.where(item, 40, 235).astype(np.float32)[:, :, None], 3, axis=2)
    seen, kept = photo.to_dataset_form(picture)
    assert (kept == item).mean() > 0.98  # measured 0.995; 0.12 when the strip is all taken for background
    # the middle of each edge of the 23x28 octagon (centred from column 3) is the item, the corners are not
    assert seen[0, 14] == seen[27, 14] == seen[14, 3] == seen[14, 25] == round(195 * 255 / 235)
    assert seen[0, :9].max() == 0 and seen[27, 20:].max() == 0


# ----------------------------------------------------------------------------- the data set's own form, blanks

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
            make(item).save(tmp_path / f"{number}{suffix}")
            seen.append(torch.from_numpy(photo.read_image(str(tmp_path / f"{number}{suffix}"))[0]))
        seen = torch.stack(seen)
        assert torch.equal(seen, items), suffix
        assert torch.equal(predict.probabilities(model, seen), expected), suffix


def test_a_28x28_photo_form_image_is_converted_not_taken_as_it_is(fashion_mnist, tmp_path):
    item = fashion_mnist[2][0].reshape(28, 28).numpy()
    Image.fromarray(255 - item).save(tmp_path / 'negated.png')  # dark on white: not the data set's form
    seen = photo.read_image(str(tmp_path / 'negated.png'))[0]
    # the item touches the frame, whose outer pixel GrabCut takes as background: a row or column less
    assert np.abs(seen.astype(float) - item).mean() < 30


def test_blank_images_get_one_answer_whatever_their_size(tmp_path):
    rng = np.random.default_rng(0)
    blanks = {'black28.png': Image.new('L', (28, 28), 0), 'black100.png': Image.new('L', (100, 100), 0),
              'red.jpg': Image.new('RGB', (3000, 2000), (200, 30, 30)),
              'noisy-gray.png': Image.fromarray((128 + 3 * rng.standard_normal((400, 300))).astype(np.uint8)),
              'transparent.png': Image.new('RGBA', (300, 200), (255, 255, 255, 0))}
    for name, image in blanks.items():
        image.save(tmp_path / name)
        with pytest.raises(photo.ImageProblem, match='nothing to classify'):
            photo.read_image(str(tmp_path / name))


def test_the_same_photo_is_cut_the_same_way_in_any_order(photos, converted):
    # `converted` read them first to last
    again = [photo.read_image(path)[0] for path in reversed(photos[0][:3])][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(converted[:3].numpy(), again))


def test_a_link_loop_is_named_as_one(tmp_path):
    os.symlink(tmp_path / 'b.png', tmp_path / 'a.png')
    os.symlink(tmp_path / 'a.png', tmp_path / 'b.png')
    with pytest.raises(photo.ImageProblem, match='loop of symbolic links'):
        photo.read_image(str(tmp_path / 'a.png'))


@pytest.fixture(scope='module')
def boot(fashion_mnist):
    """A photo of the first test item (an ankle boot) as RGB."""
    return make_photo(fashion_mnist[2][0].reshape(28, 28).numpy(), np.random.default_rng(2), noise=0,
                      resample=Image.Resampling.BICUBIC)


def test_unusual_images_give_the_same_model_input(boot, tmp_path):
    boot.save(tmp_path / 'boot.png')
    boot.save(tmp_path / 'boot.jpg')
    boot.save(tmp_path / 'animated.gif', save_all=True, append_images=[Image.new('RGB', boot.size, 'black')],
              duration=100, loop=0)
    boot.save(tmp_path / 'pages.tiff', save_all=True, append_images=[Image.new('RGB', boot.size, 'black')])
    Image.fromarray(np.asarray(boot.convert('L')).astype(np.uint16) * 257).save(tmp_path / 'gray16.png')
    palette = boot.convert('P', palette=Image.Palette.ADAPTIVE)  # the web palette would dither
    palette.save(tmp_path / 'palette.png', transparency=int(np.asarray(palette)[0, 0]))  # background transparent
    rgba = np.asarray(boot.convert('RGBA')).copy()
    rgba[..., 3] = np.where(np.asarray(boot.convert('L')) >= 250, 0, 255)
    rgba[..., :3] = np.where(rgba[..., 3:] == 0, 0, rgba[..., :3])  # transparent pixels black underneath
    Image.fromarray(rgba).save(tmp_path / 'cutout.png')
    boot.convert('CMYK').save(tmp_path / 'cmyk.jpg')
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": stored sideways, as phones do
    boot.transpose(Image.Transpose.ROTATE_90).save(tmp_path / 'sideways.jpg', exif=exif.tobytes())
    boot.convert('LA').save(tmp_path / 'la.png')
    boot.save(tmp_path / 'boot.webp', lossless=True)
    boot.resize((boot.width * 8, boot.height * 8)).save(tmp_path / 'large.png', compress_level=1)
    reference = photo.read_image(str(tmp_path / 'boot.png'))[0].astype(float)
    for name in sorted(os.listdir(tmp_path)):
        seen = photo.read_image(str(tmp_path / name))[0].astype(float)
        # JPEG; enlarged 8x and averaged down again; transparent where the boot's faint edge was
        lossy = name.endswith('.jpg') or name in ('large.png', 'palette.png', 'cutout.png')
        assert np.abs(seen - reference).mean() < (8 if lossy else 3), name
