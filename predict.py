"""Show the trained model your own photos, each marked unsure when it should not be trusted (d2l 3.6).

    python predict.py IMAGE [IMAGE ...] [--model outputs/model.pt] [--top K] [--json] [--out DIR]
    python predict.py --labelled DIR [--model ...] [--json] [--out DIR]

The model learned from Fashion-MNIST's form of an image: a light item on a black background, trimmed,
centred, 28x28. A photo is an item on a floor, a bed or a door, large and off-centre, so a plain resize
gives nonsense. helpers/photo.py separates the item from its background (OpenCV's GrabCut), makes it a
light item on black whatever the two colours were, then applies the conversion the data set's paper used
(trim, resize the longest edge to 28, sharpen, centre). A 28x28 grayscale image with a dark border is
already in the data set's form and is used as it is: it gets exactly the probabilities model(pixels / 255).

A prediction is marked unsure when its confidence (the largest probability) is below the threshold at which
the model's test-set answers are 95% right (train.py keeps it in model.pt; metrics.calibration); every
prediction, when no confidence of the model reaches 95%; none, with a note, when model.pt records nothing.

--labelled DIR measures distribution shift (d2l 3.6 exercise 4, and 4.9): DIR holds one folder of photos per
class (its sub-folders too), named by a Fashion-MNIST class or a common name (LABEL_NAMES); it prints the
accuracy on them and writes their confusion matrix and reliability diagram. Exit codes: 0 every image was
predicted, 2 an image or the model could not be read, or an image not predicted (one line each on stderr),
130 interrupted.
"""
import sys

import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli, writing

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import json
import math
import os
import re
import warnings

import numpy as np
import torch

from helpers import plots, plots_predict
from support.metrics import calibration
from helpers.photo import ImageProblem, read_image
from data import IMAGE_SIZE, TEXT_LABELS
from model import CheckpointError, load_checkpoint

MAX_SHOWN = 12  # images drawn in predict.png; every one is printed
OUTPUTS = ('predict.png', 'labelled-confusion.png', 'labelled-confidence.png')

# --labelled: a folder's name, lower-cased and without spaces, '-' or '_', -> the Fashion-MNIST classes a photo
# in it may rightly get. Fashion-MNIST's own names, and the common names of clothing-dataset-small (the photos
# in ../shared/real-photos) and the like, each in the singular: classes_of takes a plural ('sneakers',
# 'dresses', 'jeans') to it. Any other folder (hat, shorts, skirt: no counterpart) is named and left out.
LABEL_NAMES = {
    **{re.sub(r'[^a-z0-9]', '', name): [name] for name in TEXT_LABELS},  # tshirt, trouser, ..., ankleboot
    'top': ['t-shirt'], 'tshirttop': ['t-shirt'], 'tee': ['t-shirt'],
    'pant': ['trouser'], 'jean': ['trouser'],
    'sweater': ['pullover'], 'jumper': ['pullover'], 'hoodie': ['pullover'],
    'outwear': ['coat'], 'outerwear': ['coat'], 'jacket': ['coat'],
    'boot': ['ankle boot'],
    'shoe': ['sneaker', 'sandal', 'ankle boot'],  # usually a pair, seen from above
    'longsleeve': ['pullover', 'shirt', 't-shirt'],  # a long-sleeved top: Fashion-MNIST's "T-shirt/top" too
}


def classes_of(folder):
    """The Fashion-MNIST classes a folder's name stands for (LABEL_NAMES), singular or plural, or None."""
    key = re.sub(r'[\s_\-]', '', folder.lower())
    for candidate in (key, key[:-1] if key.endswith('s') else None, key[:-2] if key.endswith('es') else None):
        if candidate in LABEL_NAMES:
            return LABEL_NAMES[candidate]
    return None


@torch.no_grad()
def probabilities(model, images):
    """images: (n, 28, 28) or (n, 784) uint8 -> (n, 10) softmax probabilities of model(pixels / 255)."""
    return torch.softmax(model(images.reshape(-1, IMAGE_SIZE * IMAGE_SIZE).float() / 255), dim=1)


def unsure_threshold(checkpoint):
    """The confidence below which a prediction is unsure: the lowest at which the model's answers on the test
    set are 95% right (metrics.calibration's threshold; train.py keeps it in model.pt, key 'calibration',
    when a run ends, however it ends). math.inf when the calibration is there but no confidence reaches 95%
    (a model that is never sure: every answer is unsure); None when it is not known (no calibration, or an
    unusable one)."""
    recorded = checkpoint.get('calibration')
    threshold = recorded.get('threshold') if isinstance(recorded, dict) else None
    if isinstance(threshold, float) and math.isfinite(threshold) and 0 < threshold <= 1:
        return threshold
    if isinstance(recorded, dict) and 'threshold' in recorded and threshold is None:
        return math.inf
    return None


def threshold_note(path, checkpoint, threshold):
    """The line on stderr when the threshold is not a number in (0, 1], or ''."""
    if threshold == math.inf:
        return (f"note: {shown(path)}: no confidence threshold gives this model 95% accuracy on the test set "
                f"(the calibration train.py kept in it): every prediction is marked unsure")
    if threshold is not None:
        return ''
    if 'calibration' in checkpoint:
        return (f"note: {shown(path)} records an unusable unsure threshold (not a number in (0, 1]): no "
                f"prediction is marked unsure")
    return (f"note: {shown(path)} records no unsure threshold (train.py adds it when a run ends, however it "
            f"ends: this model.pt was saved during a run, one killed outright or unable to write its final "
            f"files, or by an older train.py): no prediction is marked unsure")


def is_unsure(confidence, threshold):
    """True, False, or None (threshold not known). Written so that a nan confidence is unsure, never sure."""
    return None if threshold is None else not confidence >= threshold


# ----------------------------------------------------------------------------- the command

def build_parser():
    parser = cli.ArgumentParser(
        description="Classify your own photos with a model trained by train.py. Each photo's item is "
                    "separated from its background and made a light item on black, then converted the way "
                    "Fashion-MNIST's images were made from product photos (trim, resize the longest edge to "
                    "28, sharpen, centre); one line per image, '(unsure)' where the confidence is below the "
                    "one that gives 95% accuracy on the test set. DIR/predict.png shows what was kept of "
                    "each photo and what the model saw.",
        epilog="--labelled folder names: Fashion-MNIST's classes, or pants/jeans (trouser), shoes (sneaker, "
               "sandal or ankle boot), longsleeve (pullover, shirt or t-shirt), outwear/jacket (coat), "
               "sweater/hoodie (pullover), top (t-shirt); singular or plural. A class folder's photos are "
               "the files in it and in its sub-folders. Other folders are named and left out. Exit codes: 0 "
               "every image predicted, 2 an image or the model could not be read, or an image not predicted "
               "(one line each on stderr; the other images are still predicted), 130 interrupted.")
    parser.add_argument('images', nargs='*', type=cli.non_empty, metavar='IMAGE',
                        help="image files Pillow reads (PNG, JPEG, WebP, GIF, TIFF, ...), any size")
    parser.add_argument('--labelled', type=cli.non_empty, metavar='DIR',
                        help="instead of IMAGEs: a folder with one folder of photos per class; prints the "
                             "accuracy and writes labelled-confusion.png and labelled-confidence.png")
    parser.add_argument('--model', default='outputs/model.pt', type=cli.non_empty, metavar='PATH',
                        help="checkpoint written by train.py, either recipe (default: %(default)s)")
    parser.add_argument('--top', type=cli.whole_number(1, len(TEXT_LABELS) + 1), default=3, metavar='K',
                        help="classes printed per image, 1..10 (default: %(default)s)")
    parser.add_argument('--json', action='store_true',
                        help="print only JSON: a list, one object per image predicted: {\"image\": PATH, "
                             "\"predicted\": CLASS, \"unsure\": true|false|null (null: model.pt records no "
                             "threshold), \"probabilities\": {CLASS: p}}; "
                             "with --labelled one object: {\"accuracy\", \"n\", \"images\": [... each with its "
                             "\"label\"], ...}")
    parser.add_argument('--out', default='outputs', type=cli.non_empty, metavar='DIR',
                        help="where the figures go (default: %(default)s)")
    return parser


def shown(path):
    """The path as one printable line in the terminal's encoding (a file name may hold a newline or
    bytes that are not UTF-8)."""
    text = path.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')
    if not text.isprintable():
        text = text.encode('unicode_escape').decode('ascii')
    encoding = getattr(sys.stdout, 'encoding', None) or 'utf-8'
    return text.encode(encoding, 'backslashreplace').decode(encoding)


def top_line(path, probs, k, unsure=False):
    """'shirt.jpg: shirt 61.2%, t-shirt 20.4%, pullover 9.9% (unsure)' from (10,) probabilities."""
    values, classes = torch.topk(probs, k)
    return f"{shown(path)}: " + ', '.join(f"{TEXT_LABELS[c]} {100 * float(p):.1f}%" for p, c in zip(values, classes)) \
        + (' (unsure)' if unsure else '')


def describe(path, checkpoint):
    """'outputs/model.pt (textbook recipe, epoch 10, test accuracy 0.8248)', for the figure's title."""
    config = checkpoint.get('config') if isinstance(checkpoint.get('config'), dict) else {}
    parts = [f"{config['recipe']} recipe" if isinstance(config.get('recipe'), str) else None,
             f"epoch {checkpoint['epoch']}" if isinstance(checkpoint.get('epoch'), int) else None,
             f"test accuracy {checkpoint['test_acc']:.4f}" if isinstance(checkpoint.get('test_acc'), float) else None]
    parts = [part for part in parts if part]
    return shown(path) + (f" ({', '.join(parts)})" if parts else '')


def folder_identity(path):
    """What tells two paths to one folder apart from two folders: (device, inode), or where the system gives
    no inode number, the path with every link resolved."""
    status = os.stat(path)
    return (status.st_dev, status.st_ino) if status.st_ino else os.path.realpath(path)


def leads_into(path, root):
    """Whether `path` is a link (or a Windows junction) to the folder `root` (a real path) or one inside it."""
    if not (os.path.islink(path) or getattr(os.path, 'isjunction', lambda _: False)(path)):
        return False
    try:
        return os.path.commonpath([os.path.realpath(path), root]) == root
    except ValueError:  # another drive
        return False


def files_under(top, root, seen):
    """Every file under the folder `top`, in its sub-folders too, in name order; and the links to folders
    not followed. Hidden names are skipped. A link to DIR (`root`, its real path) or a folder inside it is
    not followed: what it leads to is read where it is, so the photos of a folder go to that folder's class
    whatever links to it, and a loop (sneaker/loop -> ..) ends at once. A link elsewhere is followed, once:
    `seen` holds the identities of the folders read, which this adds to. OSError when a folder cannot be
    listed."""
    files, skipped, folders = [], [], [top]
    while folders:  # a list, not recursion: no depth is too deep
        folder = folders.pop()
        for path in (os.path.join(folder, name) for name in os.listdir(folder) if not name.startswith('.')):
            if not os.path.isdir(path):  # a file, or a link to one, broken or looping: a photo, or its error line
                files.append(path)
            elif leads_into(path, root) or folder_identity(path) in seen:
                skipped.append(path)
            else:
                seen.add(folder_identity(path))
                folders.append(path)
    return sorted(files), sorted(skipped)


def labelled_photos(folder):
    """--labelled DIR -> (photos, found): photos, [(path, folder name, classes)] in name order; found, a dict
    of what else the folders held: 'left_out' {folder name: file count} for the folders that name no
    Fashion-MNIST class, 'empty' [class folders with no file], 'skipped' [links to folders not followed].

    A class folder's photos are the files in it and in its sub-folders, however deep: someone who sorted
    shoes/ into shoes/boots/ and shoes/sandals/ means them as shoes. Links to folders: files_under. Hidden
    files and folders are skipped."""
    if not os.path.isdir(folder):
        raise cli.InputError(f"--labelled {shown(folder)}: {'not a folder' if os.path.exists(folder) else 'no such folder'}"
                             f"; give a folder that holds one folder of photos per class")
    photos, found, listed = [], dict(left_out={}, empty=[], skipped=[]), {}
    try:
        root, seen = os.path.realpath(folder), {folder_identity(folder)}
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith('.') or not os.path.isdir(path):
                continue  # a file beside the class folders is not in a class
            if leads_into(path, root) or folder_identity(path) in seen:  # pants -> trouser: read once, as trouser
                found['skipped'].append(path)
                continue
            seen.add(folder_identity(path))
            listed[name], skipped = files_under(path, root, seen)
            found['skipped'] += skipped
    except OSError as error:
        raise cli.InputError(f"--labelled {shown(folder)}: cannot list {shown(error.filename or folder)}: "
                             f"{error.strerror or error}") from None
    for name, files in listed.items():
        classes = classes_of(name)
        if classes is None:
            found['left_out'][name] = len(files)
        elif not files:
            found['empty'].append(name)
        else:
            photos += [(file, name, classes) for file in files]
    if not photos:
        raise cli.InputError(f"--labelled {shown(folder)}: no photos in a folder named by a class (t-shirt, "
                             f"trouser, ..., or a common name such as pants or shoes; see --help)"
                             + ''.join(f"; {what}: {', '.join(shown(name) + '/' for name in found[key])}"
                                       for key, what in (('empty', 'empty'), ('left_out', 'left out'))
                                       if found[key]))
    return photos, found


def labelled_summary(folder, results, found, threshold):
    """--labelled's numbers: a dict for --json and the lines printed. results: per photo dicts with 'label',
    'right', 'unsure' (a photo that could not be predicted: 'error', 'right' False, 'unsure' None)."""
    n, right = len(results), sum(result['right'] for result in results)
    failed = sum('error' in result for result in results)
    folders = {}
    for result in results:
        entry = folders.setdefault(result['label'], dict(classes=result['classes'], n=0, right=0))
        entry['n'] += 1
        entry['right'] += result['right']
    for entry in folders.values():
        entry['accuracy'] = entry['right'] / entry['n']
    summary = dict(dir=folder, accuracy=right / n, n=n, right=right, failed=failed, folders=folders,
                   empty=found['empty'], left_out=found['left_out'],
                   skipped=sorted(os.path.relpath(path, folder) for path in found['skipped']),
                   unsure_threshold=threshold if threshold != math.inf else None,
                   unsure=None, sure=None, sure_accuracy=None)  # unsure, sure: counts, when a threshold is known
    not_predicted = f"; {failed} could not be predicted" if failed else ''
    lines = [f"accuracy {right / n:.3f}: {right} of {n} photos in {shown(folder)} right (a photo that could not "
             f"be predicted counts as wrong)"]
    if threshold is None:
        lines.append(f"unsure: not known, the model records no usable threshold ({n - failed} predicted"
                     f"{not_predicted})")
    else:
        sure = [result for result in results if result['unsure'] is False]
        summary.update(unsure=sum(result['unsure'] is True for result in results), sure=len(sure),
                       sure_accuracy=sum(result['right'] for result in sure) / len(sure) if sure else None)
        rule = (f"confidence below {threshold:.3f}, where the test set is 95% right" if threshold != math.inf
                else "no confidence of this model reaches 95% accuracy on the test set")
        lines.append(f"unsure ({rule}): {summary['unsure']} of {n}; "
                     + (f"the {len(sure)} sure ones: {summary['sure_accuracy']:.3f} right" if sure else "none sure")
                     + not_predicted)
    lines.append("per folder: " + ', '.join(f"{shown(name)} {entry['accuracy']:.2f} ({entry['right']}/{entry['n']}, "
                                           f"as {' or '.join(entry['classes'])})" for name, entry in folders.items()))
    if found['empty']:
        lines.append("empty class folders, no photo in them: "
                     + ', '.join(shown(name) + '/' for name in found['empty']))
    if found['left_out']:
        lines.append("left out, no Fashion-MNIST counterpart: "
                     + ', '.join(f"{shown(name)}/ ({count} file{'s' * (count != 1)})"
                                 for name, count in found['left_out'].items()))
    if found['skipped']:
        lines.append("links not followed (what they lead to is read where it is): "
                     + ', '.join(shown(path) + '/' for path in summary['skipped']))
    return summary, lines


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.images) == bool(args.labelled):
        parser.error("give IMAGE files or --labelled DIR" + (", not both" if args.images else ''))
    photos, found = labelled_photos(args.labelled) if args.labelled else ([(p, None, None) for p in args.images], {})
    try:
        model, checkpoint = load_checkpoint(args.model)
    except CheckpointError as error:
        if not os.path.exists(args.model):
            raise CheckpointError(f"{error}; train a model first (python train.py) or pass --model PATH") from None
        raise
    threshold = unsure_threshold(checkpoint)
    note = threshold_note(args.model, checkpoint, threshold)
    if note:
        cli.say(note)
    outputs = OUTPUTS if args.labelled else OUTPUTS[:1]
    writing.prepare_out_dir(args.out, outputs)  # fail now, before any photo is read
    import matplotlib.figure  # noqa: F401 -- imported now, not half-way through an interrupted save

    # the figure shows MAX_SHOWN images: the first ones predicted, or for --labelled spread over the folders
    spread = set(np.linspace(0, len(photos) - 1, min(MAX_SHOWN, len(photos))).round().astype(int).tolist())
    results, read, seen, entries = [], [], [], []
    for index, (path, label, classes) in enumerate(photos):  # a bad image is one line on stderr; the others go on
        cli.stop_if_requested()
        result = dict(image=path) if label is None else dict(image=path, label=label, classes=classes)
        try:
            pixels, original, kept = read_image(path)
        except ImageProblem as problem:
            cli.say(f"error: {shown(path)}: {problem}")
            results.append(dict(result, error=str(problem), predicted=None, right=False, unsure=None))
            continue
        results.append(result)
        read.append(result)
        seen.append(torch.from_numpy(pixels))
        if index in spread if args.labelled else len(entries) < MAX_SHOWN:  # only those keep their thumbnails
            entries.append(dict(name=shown(os.path.join(label or '', os.path.basename(path) or path)),
                                original=original, kept=kept, seen=pixels, result=result))
    probs = probabilities(model, torch.stack(seen)) if seen else torch.empty(0, len(TEXT_LABELS))
    finite = torch.isfinite(probs).all(dim=1)
    for result, p, ok in zip(read, probs, finite.tolist()):
        if not ok:  # logits that overflow: softmax gives nan, not a prediction (and nan is not JSON)
            problem = "the model's output for it is not finite (nan or inf): its weights overflow on this image"
            cli.say(f"error: {shown(result['image'])}: {problem}")
            result.update(error=problem, predicted=None, right=False, unsure=None)
            continue
        best = int(p.argmax())
        result.update(predicted=TEXT_LABELS[best], unsure=is_unsure(float(p[best]), threshold),
                      probabilities={name: float(value) for name, value in zip(TEXT_LABELS, p)})
        if args.labelled:
            result['right'] = result['predicted'] in result['classes']
    probs = probs[finite]
    predicted = [result for result in results if 'error' not in result]
    entries = [entry for entry in entries if 'error' not in entry['result']]

    if args.labelled:
        summary, lines = labelled_summary(args.labelled, results, found, threshold)
    if args.json:
        fields = ('image', 'label', 'classes', 'predicted', 'right', 'unsure', 'probabilities', 'error')
        listed = [{key: result[key] for key in fields if key in result}
                  for result in (results if args.labelled else predicted)]  # a failed file: its line on stderr
        print(json.dumps(dict(summary, images=listed) if args.labelled else listed, indent=2, allow_nan=False))
    else:
        for result, p in zip(predicted, probs):
            note = f" - labelled {shown(result['label'])}: {'right' if result['right'] else 'wrong'}" \
                if args.labelled else ''
            print(top_line(result['image'], p, args.top, result['unsure']) + note)
        if args.labelled:
            print('\n'.join(lines))
    sys.stdout.flush()

    if predicted:
        for entry in entries:
            entry.update(probabilities=list(entry['result']['probabilities'].values()), unsure=entry.pop('result')['unsure'])
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # e.g. a file name in a script the font lacks: a box, not a warning
            figure = plots_predict.plot_predict(entries, total=len(predicted), model=describe(args.model, checkpoint),
                                                spread=bool(args.labelled))
            plots.save_figure(figure, os.path.join(args.out, 'predict.png'))
        if args.labelled:
            right_class = torch.tensor([TEXT_LABELS.index(r['predicted'] if r['right'] else r['classes'][0])
                                        for r in predicted])
            title = f"{len(predicted)} labelled photos in {shown(args.labelled)}"
            plots.save_figure(plots_predict.plot_labelled_confusion(right_class, probs.argmax(1), title),
                              os.path.join(args.out, 'labelled-confusion.png'))
            plots.save_figure(plots_predict.plot_labelled_confidence(calibration(probs, right_class), title),
                              os.path.join(args.out, 'labelled-confidence.png'))
    return cli.EXIT_BAD_INPUT if len(predicted) < len(results) else cli.EXIT_DONE


if __name__ == '__main__':
    sys.exit(cli.run(main))
