"""A photo -> the 28x28 uint8 image in Fashion-MNIST's form (a light item on black) that predict.py shows the model.

The data set's paper (Xiao, Rasul, Vollgraf 2017, section 2) made its images from product photos, an item
on a plain white background, by: 1. trim, 2. resize the longest edge to 28, 3. sharpen, 4. extend to 28x28
with the item centred, 5. negate, 6. grayscale. A phone photo has a floor, a bed or a door around the item,
so three things come before those steps here:

    a. separate the item from its background: OpenCV's GrabCut (a graph cut between two colour models,
       Rother et al. 2004), started from a rectangle 4% inside the frame, on a copy at most 200 pixels
       long; the largest piece is kept and its holes filled. A product shot cropped tight has the item
       across that 4% strip: on a plain background, the strip is background only where it has the
       background's colour (frame_cut). A transparent background is the background as it is: no
       segmentation.
    b. polarity from the item against its background: the item is darker or lighter than the colour
       around it (a dark shirt on a bed, a white shoe on a dark floor, either on mid-gray);
    c. the item's distance from that colour, on its side, scaled to 0..255, and 0 off the item: a light
       item on black, whatever the two colours were. Then the paper's steps 1-4.

Why OpenCV: GrabCut is made for exactly this, and it measured best: on the 290 photos of
../shared/real-photos with a Fashion-MNIST counterpart, 0.38 accuracy (tuned model) against 0.33 for
scikit-image's best try (SLIC superpixels unlike the border's), in two thirds of the time.
"""
import errno
import math
import os
import re
import warnings

import numpy as np

from data import IMAGE_SIZE

TOLERANCE = 0.05 * 255  # the paper's trim tolerance: within 5% of the intensity range counts as the same colour
WORKING_SIZE = 1024     # larger photos are box-averaged down to this longest edge first: the result is 28x28
SEGMENT_SIZE = 200      # GrabCut runs on a copy this long: ~0.1 s a photo, and a finer cut changes nothing at 28x28
SEGMENT_MARGIN = 0.04   # GrabCut's starting rectangle: this share of each side inside the frame is background
GRABCUT_ITERATIONS = 3  # 5 measured the same on the real photos, in more time
MIN_ROOM = 32           # the least intensity range an item's side of its background is scaled by (a white
                        # item on a white sheet has almost none: its few levels are not stretched to 255)
THUMBNAIL_SIZE = 160    # pixels, the longest edge of the copy of a photo that predict.png draws
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what Pillow's convert('L') uses


class ImageProblem(Exception):
    """One image could not be read or has nothing to classify; the message is the reason."""


# ----------------------------------------------------------------------------- reading an image

def open_image(path):
    """The first frame of the image at `path`, decoded, turned upright by its EXIF orientation.

    Raises ImageProblem with a one-line reason for a missing file, a folder, a link loop, an empty or
    non-image file, a truncated or damaged one, and a decompression bomb (more pixels than Pillow allows).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageProblem("is a loop of symbolic links (each leads to the next, none to a file)") from None
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
        raise ImageProblem("no such file" + (" (a link to nothing)" if os.path.islink(path) else '')) from None
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
    """Box-average a big image down to WORKING_SIZE on its longest edge: a 28x28 result needs no more
    detail, and a 40-megapixel photo would otherwise cost gigabytes of floats."""
    factor = math.ceil(max(image.size) / WORKING_SIZE)
    return image.reduce(factor) if factor > 1 else image


def rgb_and_alpha(image):
    """A decoded PIL image of any mode -> (pixels, alpha, is_gray).

    pixels: (h, w, 3) float32 in 0..255; alpha: (h, w) float32 in 0..1 when some pixel is not fully
    opaque, else None; is_gray: no colour and no transparency. Palette images (with their transparent
    index), 1-bit, 8/16/32-bit and float grayscale, RGB(A), CMYK, YCbCr, ... are all handled.
    """
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
        return np.repeat(gray[:, :, None], 3, axis=2), None, True
    try:
        rgba = _shrink(image.convert('RGBA'))
    except (ValueError, OSError) as error:
        raise ImageProblem(f"colour mode {image.mode} cannot be converted to RGB ({_first_line(error)})") from None
    rgba = np.asarray(rgba, dtype=np.float32)
    pixels = np.ascontiguousarray(rgba[:, :, :3])
    alpha = rgba[:, :, 3] / 255 if rgba[:, :, 3].min(initial=255) < 255 else None
    is_gray = alpha is None and bool((pixels[:, :, 0] == pixels[:, :, 1]).all()
                                     and (pixels[:, :, 1] == pixels[:, :, 2]).all())
    return pixels, alpha, is_gray


def luminance(pixels):
    """(..., 3) RGB -> (...) gray, with the weights of Pillow's convert('L') (ITU-R 601-2)."""
    return pixels @ np.asarray(LUMA, dtype=np.float32)


def border(array):
    """The outermost ring of pixels of an (h, w, ...) array, as (k, ...)."""
    return np.concatenate([array[0], array[-1], array[1:-1, 0], array[1:-1, -1]])


def _majority(mask):
    """A pixel stays when at least 5 of its 3x3 neighbourhood are set: sensor noise and JPEG's ringing
    put single pixels past any tolerance; an item and its edges keep their majority."""
    import cv2
    votes = cv2.boxFilter(mask.astype(np.float32), -1, (3, 3), normalize=False, borderType=cv2.BORDER_REPLICATE)
    return votes >= 5


def refuse_blank(pixels, alpha):
    """Raise ImageProblem when there is nothing to classify: every pixel within TOLERANCE of one colour
    (the image's median), after the 3x3 majority vote, or nothing visible at all. The same answer at 28x28
    as at 4000x3000, in the data set's form or not."""
    if alpha is not None:
        blank = not (alpha > 0.02).any()
    else:
        distance = np.sqrt(np.mean(np.square(pixels - np.median(pixels.reshape(-1, 3), axis=0)), axis=2))
        blank = not _majority(distance > TOLERANCE).any()
    if blank:
        raise ImageProblem("nothing to classify: every pixel is within 5% of one colour (a blank, uniform "
                           "or fully transparent image)")


# ----------------------------------------------------------------------------- separating the item

def _largest_filled_piece(mask):
    """The largest 8-connected piece of a uint8 (h, w) mask, its holes filled, as uint8."""
    import cv2
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    piece = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    outside = np.pad(piece, 1)  # a frame of 0 around it, so that one flood fill reaches all the outside
    cv2.floodFill(outside, None, (0, 0), 2)
    return (outside[1:-1, 1:-1] != 2).astype(np.uint8)


def _distance(pixels, colour):
    """(..., 3) pixels and an RGB colour -> (...) their root-mean-square distance over the channels."""
    difference = pixels - colour
    return np.sqrt(np.einsum('...k,...k->...', difference, difference) / 3)


def _longest_run(flags):
    """The length of the longest run of True in a 1-d bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return int((edges[1::2] - edges[::2]).max(initial=0))


def frame_cut(small, dx, dy):
    """The background's RGB colour when the frame cuts the item (a product shot cropped tight), else None.

    GrabCut's starting rectangle leaves a strip dx, dy wide around it as background. The item of a tight
    crop crosses that strip and is a third of it, more for a bag or a pullover, whose colour is then the
    strip's median. The background is instead the colour most of the strip is within TOLERANCE of (the
    mode; where that leaves the middle of the photo all background, it was a flat item's colour, and the
    commonest colour unlike it is taken), trusted only where it is plain: a fifth of the strip at least,
    and almost nothing else in the strip but the item and its edges (a floor, a bed, grain or noise have
    colours between). The frame cuts the item when the item (more than twice TOLERANCE from that colour,
    in one piece with the middle of the photo) runs along a tenth of one of the frame's sides at least,
    through the strip.
    """
    import cv2
    height, width = small.shape[:2]
    colours = small.astype(np.float32)
    ring = np.ones((height, width), bool)
    ring[dy:height - dy, dx:width - dx] = False
    strip = colours[ring]
    # how many of 2048 of the strip's colours are within TOLERANCE of each of 64 of them (einsum: a matrix
    # product starts BLAS's threads, which cost more than they save on so few numbers)
    candidates, others = strip[::max(1, len(strip) // 64)], strip[::max(1, len(strip) // 2048)]
    squared = (np.square(candidates).sum(1)[:, None] + np.square(others).sum(1)[None]
               - 2 * np.einsum('ik,jk->ij', candidates, others))
    counts = (squared <= 3 * TOLERANCE ** 2).sum(axis=1)
    first = candidates[np.argmax(counts)]
    unlike = _distance(candidates, first) > 2 * TOLERANCE
    for mode in [first] + ([candidates[unlike][np.argmax(counts[unlike])]] if unlike.any() else []):
        background = np.median(strip[_distance(strip, mode) <= TOLERANCE], axis=0)
        distance = _distance(colours, background)
        item = _majority(distance > 2 * TOLERANCE).astype(np.uint8)
        near = (distance[ring] <= TOLERANCE).mean()
        elsewhere = (distance > TOLERANCE) & ~cv2.dilate(item, np.ones((5, 5), np.uint8)).astype(bool)
        if near < 0.2 or elsewhere[ring].mean() > 0.03 * near:
            return None
        _, pieces = cv2.connectedComponents(item, connectivity=8)
        middle = np.unique(pieces[height // 4:height - height // 4, width // 4:width - width // 4])
        if not middle.any():
            continue
        item = np.isin(pieces, middle[middle > 0])
        sides = (item[:dy].mean(axis=0), item[height - dy:].mean(axis=0), item[:, :dx].mean(axis=1),
                 item[:, width - dx:].mean(axis=1))
        return background if any(_longest_run(side > 0.5) >= 0.1 * len(side) for side in sides) else None
    return None


def segment(pixels):
    """(h, w, 3) RGB photo -> (mask, background): (h, w) bool, the item, and the background's RGB colour
    where the frame cuts the item (frame_cut), else None. GrabCut on a copy SEGMENT_SIZE long, from a
    rectangle SEGMENT_MARGIN inside the frame (where the frame cuts the item, the strip outside it is
    background only where it is like the background), the largest piece kept with its holes filled.
    Deterministic (OpenCV's random generator is reset for each photo); what is plainly unlike the
    background is added."""
    import cv2
    height, width = pixels.shape[:2]
    factor = min(1.0, SEGMENT_SIZE / max(height, width))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    if factor < 1:
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
    dx, dy = max(1, round(SEGMENT_MARGIN * size[0])), max(1, round(SEGMENT_MARGIN * size[1]))
    found = np.zeros(small.shape[:2], np.uint8)
    cut = None
    if size[0] - 2 * dx >= 2 and size[1] - 2 * dy >= 2:
        labels = np.full(small.shape[:2], cv2.GC_BGD, np.uint8)
        labels[dy:size[1] - dy, dx:size[0] - dx] = cv2.GC_PR_FGD
        cut = frame_cut(small, dx, dy)
        if cut is not None:  # a border that is partly the item is not all background: GrabCut decides there
            labels[(labels == cv2.GC_BGD) & (_distance(small, cut) > TOLERANCE)] = cv2.GC_PR_FGD
        cv2.setRNGSeed(0)  # GrabCut's k-means draws from it: the same photo, the same cut, in any order
        try:
            cv2.grabCut(np.ascontiguousarray(small[:, :, ::-1]), labels, None, np.zeros((1, 65)), np.zeros((1, 65)),
                        GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
            found = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
        except cv2.error:  # too few colours for its two models (a few-pixel image): the fallback below
            pass
    # On a plain background, what is unlike it joins the cut: GrabCut's smoothness drops thin faint parts
    # (a bag's strap). Plain: its pixels within 10% of its median colour, 6 robust standard deviations out.
    # On a floor or a bed it would add their grain: 0.02-0.03 less accuracy on the real photos.
    around = small[found == 0].astype(np.float32) if (found == 0).sum() >= 64 else border(small.astype(np.float32))
    distance = np.sqrt(np.mean(np.square(small - np.median(around, axis=0)), axis=2))
    usual = np.sqrt(np.mean(np.square(around - np.median(around, axis=0)), axis=1))
    spread = 1.4826 * np.median(np.abs(usual - np.median(usual)))
    if np.median(usual) + 6 * spread < 2 * TOLERANCE:
        found |= _majority(distance > TOLERANCE).astype(np.uint8)
    if not found.any():
        return np.ones((height, width), bool), cut
    found = _largest_filled_piece(found)
    if factor < 1:
        found = cv2.resize(found * 255, (width, height), interpolation=cv2.INTER_LINEAR) > 127
    return found.astype(bool), cut


def item_intensity(pixels, alpha):
    """(h, w, 3) RGB and alpha (or None) -> (intensity, mask): (h, w) float32, the item light on 0, and
    (h, w) bool, the part of the photo kept as the item.

    Opaque: the item is segment()'s mask, its background the median colour around it (where the frame cuts
    the item, the colour frame_cut found: a bag filling the frame leaves little around it). The item is dark
    when its pixels fall below that colour's gray level g more than they rise above it; its intensity is
    then (g - gray) * 255 / g, else (gray - g) * 255 / (255 - g): the distance on its side, scaled by the
    room there is on that side, and 0 off the item. So a dark item on white (the paper's negation), a
    light item on black (as it is) and either on mid-gray all become a light item on black.
    Transparent: what is transparent is background. A light item (mean gray >= 128) is put on black,
    gray * alpha; a dark one on white and negated, (255 - gray) * alpha.
    """
    gray = luminance(pixels)
    if alpha is not None:
        visible = alpha > 0.02
        light = _is_light(gray, visible, alpha)
        return (gray if light else 255 - gray) * alpha, visible
    mask, background = segment(pixels)
    if background is None:
        around = pixels[~mask]
        background = np.median(around if len(around) >= 64 else border(pixels), axis=0)
    level = float(luminance(background))
    difference = gray - level
    dark = difference[mask].sum() < 0
    room = max(level if dark else 255 - level, MIN_ROOM)
    intensity = np.clip((-difference if dark else difference) * (255 / room), 0, 255)
    return np.where(mask, intensity, 0).astype(np.float32), mask


def _is_light(gray, visible, alpha):
    """Whether a cut-out item is light, to be put on black (else it is dark, to be put on white and negated).

    An item's edge fades towards the background it was cut from (the data set's items fade to black at
    their edges): a rim darker than the inside by more than TOLERANCE is a light item, lighter a dark one.
    An item with a hard edge says nothing there, and is light when its mean gray is at least mid-gray.
    """
    import cv2
    inside = cv2.erode(visible.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0).astype(bool)
    rim = visible & ~inside
    if rim.any() and inside.any():
        fade = float(gray[rim].mean() - gray[inside].mean())
        if abs(fade) > TOLERANCE:
            return fade < 0
    return np.average(gray[visible], weights=alpha[visible]) >= 128


# ----------------------------------------------------------------------------- the data set's form

def dataset_form(pixels, alpha, is_gray):
    """The (28, 28) uint8 image itself when it is already in the data set's form: 28x28, grayscale, opaque,
    and the background dark (the border's median below mid-gray). None otherwise."""
    if pixels.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE) or not is_gray or alpha is not None:
        return None
    gray = pixels[:, :, 0]
    if np.median(border(gray)) >= 128:
        return None
    return np.rint(gray).astype(np.uint8)


def to_dataset_form(pixels, alpha=None):
    """(h, w, 3) RGB in 0..255 (and its alpha in 0..1, or None) -> (seen, kept): (28, 28) uint8, a light
    item on black, and (h, w) bool, the part of the photo kept as the item.

    Raises ImageProblem for a blank image (refuse_blank): nothing in it to classify.
    """
    from PIL import Image, ImageFilter
    refuse_blank(pixels, alpha)
    intensity, kept = item_intensity(pixels, alpha)
    # 1. trim: the rows and columns of the item where it is more than 5% from its background, or where it
    # is kept at all when it is nowhere that far (a faint item: its outline is all there is)
    trimmed = _majority(intensity > TOLERANCE)
    trimmed = trimmed if trimmed.any() else kept
    rows, cols = np.flatnonzero(trimmed.any(axis=1)), np.flatnonzero(trimmed.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # 2. resize the longest edge to 28. Lanczos, not the paper's subsampling: it averages the pixels it
    # drops, so noise and JPEG blocks in a photo do not land in the 28x28 as they are.
    height, width = bottom - top, right - left
    size = (max(1, round(width * IMAGE_SIZE / max(height, width))),
            max(1, round(height * IMAGE_SIZE / max(height, width))))
    item = Image.fromarray(np.ascontiguousarray(intensity[top:bottom, left:right]), 'F')
    item = np.asarray(item.resize(size, Image.Resampling.LANCZOS))
    item = Image.fromarray(np.clip(np.rint(item), 0, 255).astype(np.uint8))
    # 3. sharpen: a Gaussian unsharp mask of radius 1, as the paper's. At half strength: on photos made
    # from the data set's own (already sharpened) items, full strength moved 2% more predictions away
    # from the ones the items get as tensors.
    item = item.filter(ImageFilter.UnsharpMask(radius=1, percent=50, threshold=0))
    # 4. extend to 28x28 with the background (0: steps 5 and 6 were done by item_intensity), the item
    # centred; an odd margin puts the extra pixel on the left and top, as in the data set's images
    canvas = Image.new('L', (IMAGE_SIZE, IMAGE_SIZE), 0)
    canvas.paste(item, ((IMAGE_SIZE - size[0] + 1) // 2, (IMAGE_SIZE - size[1] + 1) // 2))
    return np.asarray(canvas).copy(), kept


def read_image(path):
    """(seen, thumbnail, kept) for the image at path: the (28, 28) uint8 the model is shown (it takes
    this / 255), a small (h, w, 3) uint8 copy of the original for the figure, and (h, w) bool, the part
    of that copy kept as the item. Raises ImageProblem."""
    from PIL import Image
    with warnings.catch_warnings():
        # Pillow warns about odd but readable files (corrupt EXIF, unusual palettes): the result says enough,
        # and stderr is kept for the one line per image that failed
        warnings.simplefilter('ignore')
        pixels, alpha, is_gray = rgb_and_alpha(open_image(path))
        refuse_blank(pixels, alpha)
        seen = dataset_form(pixels, alpha, is_gray)
        if seen is None:
            seen, kept = to_dataset_form(pixels, alpha)
        else:
            kept = np.ones(seen.shape, bool)
        shown = pixels if alpha is None else pixels * alpha[:, :, None] + 255 * (1 - alpha[:, :, None])
        small = Image.fromarray(np.clip(np.rint(shown), 0, 255).astype(np.uint8), 'RGB')
        small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)  # drawing megapixels is slow
        kept = Image.fromarray(kept.astype(np.uint8) * 255).resize(small.size, Image.Resampling.BILINEAR)
    return seen, np.asarray(small), np.asarray(kept) > 127
