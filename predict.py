"""Show the trained model your own photos, and measure when its top label can be trusted (d2l 3.6).

    python predict.py IMAGE [IMAGE ...] [--model outputs/model.pt] [--top K] [--json] [--out DIR]

The model learned from Fashion-MNIST's form of an image: a light item on a black background, trimmed,
centred, 28x28. A photo is a dark item on a light background, large and off-centre, so a plain resize
gives nonsense. The data set's paper (Xiao, Rasul, Vollgraf 2017, "Fashion-MNIST", section 2) lists the
conversion that made its images from product photos, and this script applies it:

    1. trim the edges close to the colour of the corner pixels (within 5% of the intensity range)
    2. resize the longest edge to 28
    3. sharpen
    4. extend the shorter edge to 28, the item in the centre of the canvas
    5. negate the intensities
    6. convert to 8-bit grayscale

A 28x28 grayscale image with a dark border is already in the data set's form and is used as it is, so
it gets exactly the probabilities that model(pixels / 255) gives. Exit codes: 0 every image was
predicted, 2 an image or the model could not be read (one line each on stderr), 130 interrupted.

calibration(probabilities, labels) is the other half of d2l 3.6's exercise 4 ("is it always a good idea
to return the most likely label?"): how well the largest probability matches the accuracy, and how
accurate the model becomes when it may abstain below a confidence threshold. train.py records it.
"""
import sys

import machinery.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from machinery import cli

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import json
import math
import os
import re
import warnings

import numpy as np
import torch

from machinery import plots, plots_predict
from machinery.metrics import calibration  # noqa: F401 -- predict.calibration, as before
from data import IMAGE_SIZE, TEXT_LABELS
from model import CheckpointError, load_checkpoint

# The paper's trim tolerance: "within 5% of the maximum possible intensity", here the RMS difference over
# R, G, B from the background colour, on 0..255.
TRIM_TOLERANCE = 0.05 * 255
WORKING_SIZE = 1024     # larger photos are box-averaged down to this longest edge first: the result is 28x28
MAX_SHOWN = 12          # images drawn in predict.png; every one is printed
THUMBNAIL_SIZE = 160    # pixels, the longest edge of an original in predict.png
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what Pillow's convert('L') uses


class ImageProblem(Exception):
    """One image could not be read or has nothing to classify; the message is the reason."""


# ----------------------------------------------------------------------------- reading an image

def open_image(path):
    """The first frame of the image at `path`, decoded, turned upright by its EXIF orientation.

    Raises ImageProblem with a one-line reason for a missing file, a folder, an empty or non-image file,
    a truncated or damaged one, and a decompression bomb (more pixels than Pillow's safety limit).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    if os.path.isdir(path):
        raise ImageProblem("is a folder, not an image")
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block, a device never end
        raise ImageProblem("is not a regular file (a pipe or a device?), not an image")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice its limit: such an image would still take
            # gigabytes to decode, so it is refused like the bigger ones.
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # the first frame of an animated GIF/WebP/PNG or a multi-page TIFF
                return ImageOps.exif_transpose(image)  # a phone photo is stored sideways plus a tag
    except FileNotFoundError:
        raise ImageProblem("no such file") from None
    except PermissionError:
        raise ImageProblem("permission denied") from None
    except UnidentifiedImageError:
        empty = os.path.isfile(path) and os.path.getsize(path) == 0
        raise ImageProblem("empty file (0 bytes)" if empty else "not an image file Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r'\((\d+) pixels\)', str(error))  # Pillow says "Image size (N pixels) exceeds ..."
        size = f"{int(found.group(1)):,} pixels, " if found else ''
        raise ImageProblem(f"too many pixels to decode safely ({size}Pillow's limit is {Image.MAX_IMAGE_PIXELS:,}); "
                           f"a decompression bomb?") from None
    except MemoryError:
        raise ImageProblem("too large to decode in the memory available") from None
    except OSError as error:  # "image file is truncated (5 bytes not processed)", broken data stream, ...
        raise ImageProblem(f"truncated or damaged ({_first_line(error)})") from None
    except Exception as error:  # Pillow's plugins raise SyntaxError, ValueError, struct.error, ... on bad data
        raise ImageProblem(f"damaged image data ({type(error).__name__}: {_first_line(error)})") from None


def _first_line(error):
    return ((str(error).strip().splitlines() or [type(error).__name__])[0])[:200]


def _shrink(image):
    """Box-average a big image down to WORKING_SIZE on its longest edge: the trim needs no more detail
    than that for a 28x28 result, and a 40-megapixel photo would otherwise cost gigabytes of floats."""
    factor = math.ceil(max(image.size) / WORKING_SIZE)
    return image.reduce(factor) if factor > 1 else image


def rgb_on_white(image):
    """A decoded PIL image of any mode -> (pixels, is_gray).

    pixels: (h, w, 3) float32 in 0..255, transparent pixels composited onto white (they are background);
    is_gray: the image has no colour and no transparency. Palette images (with their transparent
    index), 1-bit, 8/16/32-bit and float grayscale, RGB(A), CMYK, YCbCr, ... are all handled.
    """
    from PIL import Image
    if image.mode in ('I', 'F') or image.mode.startswith('I;16'):
        # 16-bit, 32-bit or float grayscale: convert('L') would clip at 255 instead of scaling
        values = np.asarray(_shrink(image.convert('F')), dtype=np.float64)
        top = values.max(initial=0)
        if image.mode.startswith('I;16'):
            scale = 255 / 65535
        elif image.mode == 'F' and top <= 1:
            scale = 255  # float images usually hold 0..1
        else:  # 32-bit integers or floats: 8-bit values, 16-bit values, or else whatever range they use
            scale = 1 if top <= 255 else (255 / 65535 if top <= 65535 else 255 / top)
        gray = np.clip(np.nan_to_num(values * scale), 0, 255).astype(np.float32)
        return np.repeat(gray[:, :, None], 3, axis=2), True
    try:
        rgba = image.convert('RGBA')
    except (ValueError, OSError) as error:
        raise ImageProblem(f"colour mode {image.mode} cannot be converted to RGB ({_first_line(error)})") from None
    rgba = _shrink(rgba)
    transparent = rgba.getextrema()[3][0] < 255
    if transparent:
        rgba = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
    pixels = np.asarray(rgba.convert('RGB'), dtype=np.float32)
    is_gray = not transparent and bool((pixels[:, :, 0] == pixels[:, :, 1]).all()
                                       and (pixels[:, :, 1] == pixels[:, :, 2]).all())
    return pixels, is_gray


def luminance(pixels):
    """(..., 3) RGB -> (...) gray, with the weights of Pillow's convert('L') (ITU-R 601-2)."""
    return pixels @ np.asarray(LUMA, dtype=np.float32)


def border(array):
    """The outermost ring of pixels of an (h, w, ...) array, as (k, ...)."""
    return np.concatenate([array[0], array[-1], array[1:-1, 0], array[1:-1, -1]])


# ----------------------------------------------------------------------------- the paper's conversion

def dataset_form(pixels, is_gray):
    """The (28, 28) uint8 image itself when it is already in the data set's form: 28x28, grayscale, and
    the background dark (the border's median below mid-gray). None otherwise."""
    if pixels.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE) or not is_gray:
        return None
    gray = pixels[:, :, 0]
    if np.median(border(gray)) >= 128:
        return None
    return np.rint(gray).astype(np.uint8)


def trim_box(pixels, background):
    """(top, bottom, left, right) of the item in (h, w, 3) pixels: the rows and columns holding a pixel
    further than the tolerance from the background colour. None when there is no such pixel.

    A photo's background is never one exact colour: sensor noise and JPEG's ringing put single pixels
    past a 5% tolerance, and one stray pixel in a corner would stop the trim there. So the tolerance is
    raised above the noise measured on the border when that noise is larger, and a pixel counts only
    when most of its 3x3 neighbourhood does too (a median filter of the mask: a stray pixel disappears,
    the item and its edges stay).
    """
    from PIL import Image, ImageFilter
    distance = np.sqrt(np.mean(np.square(pixels - background), axis=2))  # RMS over R, G, B
    ring = border(distance)
    spread = 1.4826 * np.median(np.abs(ring - np.median(ring)))  # the noise's standard deviation, robustly
    mask = distance > max(TRIM_TOLERANCE, np.median(ring) + 6 * spread)
    votes = Image.fromarray(mask.astype(np.uint8) * 255, 'L').filter(ImageFilter.BoxBlur(1))
    mask = np.asarray(votes) > 127  # at least 5 of the 9 pixels: 5 * 255 / 9 = 142, 4 * 255 / 9 = 113
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def to_dataset_form(pixels):
    """(h, w, 3) RGB in 0..255 -> (28, 28) uint8, a light item on a black background, by the paper's steps.

    Raises ImageProblem when nothing stands out from the background (a blank or uniform image).
    """
    from PIL import Image, ImageFilter
    # 1. trim. The paper trims by the corner pixels' colour; the median of the whole border is that
    # colour too, and stays so when noise hits a corner or the item touches one.
    background = np.median(border(pixels), axis=0)
    box = trim_box(pixels, background)
    if box is None:
        raise ImageProblem("nothing to classify: every pixel is within 5% of the background colour "
                           "(a blank, uniform or fully transparent image)")
    top, bottom, left, right = box
    # 6. grayscale, done first here: it is a weighted sum of R, G, B, so it commutes with the steps between
    gray = Image.fromarray(np.clip(np.rint(luminance(pixels[top:bottom, left:right])), 0, 255).astype(np.uint8))
    # 2. resize the longest edge to 28. Lanczos, not the paper's subsampling: it averages the pixels it
    # drops, so noise and JPEG blocks in a photo do not land in the 28x28 as they are.
    height, width = bottom - top, right - left
    size = (max(1, round(width * IMAGE_SIZE / max(height, width))),
            max(1, round(height * IMAGE_SIZE / max(height, width))))
    item = gray.resize(size, Image.Resampling.LANCZOS)
    # 3. sharpen: a Gaussian unsharp mask of radius 1, as the paper's. At half strength: on photos made
    # from the data set's own (already sharpened) items, full strength moved 2% more predictions away
    # from the ones the items get as tensors.
    item = item.filter(ImageFilter.UnsharpMask(radius=1, percent=50, threshold=0))
    # 4. extend to 28x28 with the background, the item centred; an odd margin puts the extra pixel on the
    # left and top, as in the data set's images
    background_gray = float(luminance(background))
    canvas = Image.new('L', (IMAGE_SIZE, IMAGE_SIZE), round(background_gray))
    canvas.paste(item, ((IMAGE_SIZE - size[0] + 1) // 2, (IMAGE_SIZE - size[1] + 1) // 2))
    result = np.asarray(canvas, dtype=np.float32)
    # 5. negate, so a light background becomes black. A dark background is already the data set's, and
    # negating it would turn the item dark.
    level = background_gray
    if background_gray >= 128:
        result, level = 255 - result, 255 - background_gray
    # The data set's background is exactly 0: an off-white (or dark-gray) background is brought down to it.
    if level < 255:
        result = (result - level) * (255 / (255 - level))
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


def read_image(path):
    """(model input, thumbnail) for the image at path: the (28, 28) uint8 the model is shown (it takes
    this / 255) and a small (h, w, 3) uint8 copy of the original for the figure. Raises ImageProblem."""
    from PIL import Image
    with warnings.catch_warnings():
        # Pillow warns about odd but readable files (corrupt EXIF, unusual palettes): the result says enough,
        # and stderr is kept for the one line per image that failed
        warnings.simplefilter('ignore')
        pixels, is_gray = rgb_on_white(open_image(path))
        seen = dataset_form(pixels, is_gray)
        if seen is None:
            seen = to_dataset_form(pixels)
        small = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), 'RGB')
        small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)  # drawing megapixels is slow
    return seen, np.asarray(small)


# ----------------------------------------------------------------------------- the model

@torch.no_grad()
def probabilities(model, images):
    """images: (n, 28, 28) or (n, 784) uint8 -> (n, 10) softmax probabilities of model(pixels / 255)."""
    return torch.softmax(model(images.reshape(-1, IMAGE_SIZE * IMAGE_SIZE).float() / 255), dim=1)


# ----------------------------------------------------------------------------- the command

def build_parser():
    parser = cli.ArgumentParser(
        description="Classify your own images with a model trained by train.py. Each image is converted "
                    "the way Fashion-MNIST's were made from product photos (trim, resize the longest edge "
                    "to 28, sharpen, centre, negate, grayscale) and the top classes are printed, one line "
                    "per image; DIR/predict.png shows what the model saw.",
        epilog="Exit codes: 0 every image predicted, 2 an image or the model could not be read (one line "
               "each on stderr; the other images are still predicted), 130 interrupted.")
    parser.add_argument('images', nargs='+', type=cli.non_empty, metavar='IMAGE',
                        help="image files Pillow reads (PNG, JPEG, WebP, GIF, TIFF, ...), any size")
    parser.add_argument('--model', default='outputs/model.pt', type=cli.non_empty, metavar='PATH',
                        help="checkpoint written by train.py, either recipe (default: %(default)s)")
    parser.add_argument('--top', type=cli.whole_number(1, len(TEXT_LABELS) + 1), default=3, metavar='K',
                        help="classes printed per image, 1..10 (default: %(default)s)")
    parser.add_argument('--json', action='store_true',
                        help="print only a JSON list, one object per image predicted: "
                             '{"image": PATH, "predicted": CLASS, "probabilities": {CLASS: p, ...}}')
    parser.add_argument('--out', default='outputs', type=cli.non_empty, metavar='DIR',
                        help="where predict.png goes (default: %(default)s)")
    return parser


def shown(path):
    """The path as one printable line in the terminal's encoding (a file name may hold a newline or
    bytes that are not UTF-8)."""
    text = path.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')
    if not text.isprintable():
        text = text.encode('unicode_escape').decode('ascii')
    encoding = getattr(sys.stdout, 'encoding', None) or 'utf-8'
    return text.encode(encoding, 'backslashreplace').decode(encoding)


def top_line(path, probs, k):
    """'shirt.jpg: shirt 61.2%, t-shirt 20.4%, pullover 9.9%' from (10,) probabilities."""
    values, classes = torch.topk(probs, k)
    return f"{shown(path)}: " + ', '.join(f"{TEXT_LABELS[c]} {100 * float(p):.1f}%" for p, c in zip(values, classes))


def describe(path, checkpoint):
    """'outputs/model.pt (textbook recipe, epoch 10, test accuracy 0.8248)', for the figure's title."""
    config = checkpoint.get('config') if isinstance(checkpoint.get('config'), dict) else {}
    parts = [f"{config['recipe']} recipe" if isinstance(config.get('recipe'), str) else None,
             f"epoch {checkpoint['epoch']}" if isinstance(checkpoint.get('epoch'), int) else None,
             f"test accuracy {checkpoint['test_acc']:.4f}" if isinstance(checkpoint.get('test_acc'), float) else None]
    parts = [part for part in parts if part]
    return shown(path) + (f" ({', '.join(parts)})" if parts else '')


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        model, checkpoint = load_checkpoint(args.model)
    except CheckpointError as error:
        if not os.path.exists(args.model):
            raise CheckpointError(f"{error}; train a model first (python train.py) or pass --model PATH") from None
        raise
    cli.prepare_out_dir(args.out)
    figure_path = os.path.join(args.out, 'predict.png')
    if os.path.exists(figure_path) and not os.path.isfile(figure_path):
        raise cli.OutputError(f"cannot write {figure_path}: something other than a file is in the way")
    import matplotlib.figure  # noqa: F401 -- imported now, not half-way through an interrupted save

    paths, seen, originals, failed = [], [], [], 0
    for path in args.images:  # a bad image is one line on stderr; the others go on
        cli.stop_if_requested()
        try:
            pixels, original = read_image(path)
        except ImageProblem as problem:
            cli.say(f"error: {shown(path)}: {problem}")
            failed += 1
            continue
        paths.append(path)
        seen.append(torch.from_numpy(pixels))
        if len(originals) < MAX_SHOWN:  # only the figure's images keep their thumbnails
            originals.append(original)

    probs = probabilities(model, torch.stack(seen)) if seen else torch.empty(0, len(TEXT_LABELS))
    if args.json:
        print(json.dumps([dict(image=path, predicted=TEXT_LABELS[int(p.argmax())],
                               probabilities={name: float(value) for name, value in zip(TEXT_LABELS, p)})
                          for path, p in zip(paths, probs)], indent=2))
    else:
        for path, p in zip(paths, probs):
            print(top_line(path, p, args.top))
    sys.stdout.flush()
    if paths:
        entries = [dict(name=shown(os.path.basename(path) or path), original=original, seen=pixels.numpy(),
                        probabilities=p.tolist()) for path, original, pixels, p in zip(paths, originals, seen, probs)]
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # e.g. a file name in a script the font lacks: a box, not a warning
            figure = plots_predict.plot_predict(entries, total=len(paths), model=describe(args.model, checkpoint))
            plots.save_figure(figure, figure_path)
    return cli.EXIT_BAD_INPUT if failed else cli.EXIT_DONE


if __name__ == '__main__':
    sys.exit(cli.run(main))
