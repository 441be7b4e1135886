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
the model's test-set answers are 95% right (train.py keeps it in model.pt; metrics.calibration).

--labelled DIR measures distribution shift (d2l 3.6 exercise 4, 4.7): DIR holds one folder of photos per
class, named by a Fashion-MNIST class or a common name (LABEL_NAMES); it prints the accuracy on them and
writes their confusion matrix and reliability diagram. Exit codes: 0 every image was predicted, 2 an image
or the model could not be read (one line each on stderr), 130 interrupted.
"""
import sys

import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli

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
# in ../shared/real-photos) and the like. A plural ('sneakers', 'dresses') is its singular. Any other folder
# (hat, shorts, skirt: no counterpart) is named and left out.
LABEL_NAMES = {
    **{re.sub(r'[^a-z0-9]', '', name): [name] for name in TEXT_LABELS},  # tshirt, trouser, ..., ankleboot
    'top': ['t-shirt'], 'tshirttop': ['t-shirt'], 'tee': ['t-shirt'],
    'pants': ['trouser'], 'jeans': ['trouser'],
    'sweater': ['pullover'], 'jumper': ['pullover'], 'hoodie': ['pullover'],
    'outwear': ['coat'], 'outerwear': ['coat'], 'jacket': ['coat'],
    'boot': ['ankle boot'],
    'shoes': ['sneaker', 'sandal', 'ankle boot'],  # usually a pair, seen from above
    'longsleeve': ['pullover', 'shirt', 't-shirt'],  # a long-sleeved top: Fashion-MNIST's "T-shirt/top" too
}


def classes_of(folder):
    """The Fashion-MNIST classes a folder's name stands for (LABEL_NAMES), or None."""
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
    """The confidence below which a prediction is unsure: calibration's threshold for 95% accuracy on the
    test set, kept in model.pt by train.py. None when the checkpoint has none (older, or interrupted)."""
    recorded = checkpoint.get('calibration')
    threshold = recorded.get('threshold') if isinstance(recorded, dict) else None
    if isinstance(threshold, float) and math.isfinite(threshold) and 0 < threshold <= 1:
        return threshold
    return None


# ----------------------------------------------------------------------------- the command

def build_parser():
    parser = cli.ArgumentParser(
        description="Classify your own photos with a model trained by train.py. Each photo's item is "
                    "separated from its background and made a light item on black, then converted the way "
                    "Fashion-MNIST's images were made from product photos (trim, resize the longest edge to "
                    "28, sharpen, centre); one line per image, '(unsure)' where the confidence is below the "
                    "one that gives 95%% accuracy on the test set. DIR/predict.png shows what was kept of "
                    "each photo and what the model saw.",
        epilog="--labelled folder names: Fashion-MNIST's classes, or pants/jeans (trouser), shoes (sneaker, "
               "sandal or ankle boot), longsleeve (pullover, shirt or t-shirt), outwear/jacket (coat), "
               "sweater/hoodie (pullover), top (t-shirt); plurals too. Other folders are named and left "
               "out. Exit codes: 0 every image predicted, 2 an image or the model could not be read (one "
               "line each on stderr; the other images are still predicted), 130 interrupted.")
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
                             "\"predicted\": CLASS, \"unsure\": true|false|null, \"probabilities\": {CLASS: p}}; "
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


def labelled_photos(folder):
    """--labelled DIR -> (photos, left_out): photos, [(path, folder name, classes)] in name order; left_out,
    {folder name: photo count} for the folders that name no Fashion-MNIST class. Hidden files are skipped."""
    if not os.path.isdir(folder):
        raise cli.InputError(f"--labelled {shown(folder)}: {'not a folder' if os.path.exists(folder) else 'no such folder'}"
                             f"; give a folder that holds one folder of photos per class")
    photos, left_out = [], {}
    try:
        names = sorted(os.listdir(folder))
        listed = {name: sorted(os.listdir(os.path.join(folder, name))) for name in names
                  if not name.startswith('.') and os.path.isdir(os.path.join(folder, name))}
    except OSError as error:
        raise cli.InputError(f"--labelled {shown(folder)}: cannot list {shown(error.filename or folder)}: "
                             f"{error.strerror or error}") from None
    for name, files in listed.items():
        files = [os.path.join(folder, name, file) for file in files if not file.startswith('.')]
        classes = classes_of(name)
        if classes is None:
            left_out[name] = len(files)
        else:
            photos += [(file, name, classes) for file in files]
    if not photos:
        raise cli.InputError(f"--labelled {folder}: no photos in a folder named by a class (t-shirt, trouser, "
                             f"..., or a common name such as pants or shoes; see --help)"
                             + (f"; left out: {', '.join(left_out)}" if left_out else ''))
    return photos, left_out


def labelled_summary(folder, results, left_out, threshold):
    """--labelled's numbers: a dict for --json and the lines printed. results: per photo dicts with 'label',
    'right', 'unsure' (a failed photo: 'right' False, 'unsure' None)."""
    n, right = len(results), sum(result['right'] for result in results)
    folders = {}
    for result in results:
        entry = folders.setdefault(result['label'], dict(classes=result['classes'], n=0, right=0))
        entry['n'] += 1
        entry['right'] += result['right']
    for entry in folders.values():
        entry['accuracy'] = entry['right'] / entry['n']
    summary = dict(dir=folder, accuracy=right / n, n=n, right=right, folders=folders, left_out=left_out,
                   unsure_threshold=threshold)
    lines = [f"accuracy {right / n:.3f}: {right} of {n} photos in {shown(folder)} right (a photo that could not "
             f"be read counts as wrong)"]
    if threshold is not None:
        sure = [result for result in results if result['unsure'] is False]
        summary.update(unsure=sum(bool(result['unsure']) for result in results), sure=len(sure),
                       sure_accuracy=sum(result['right'] for result in sure) / len(sure) if sure else None)
        lines.append(f"unsure (confidence below {threshold:.3f}, where the test set is 95% right): "
                     f"{summary['unsure']} of {n}; the {len(sure)} sure ones: "
                     + (f"{summary['sure_accuracy']:.3f} right" if sure else "none"))
    lines.append("per folder: " + ', '.join(f"{shown(name)} {entry['accuracy']:.2f} ({entry['right']}/{entry['n']}, "
                                           f"as {' or '.join(entry['classes'])})" for name, entry in folders.items()))
    if left_out:
        lines.append("left out, no Fashion-MNIST counterpart: "
                     + ', '.join(f"{shown(name)}/ ({count} files)" for name, count in left_out.items()))
    return summary, lines


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.images) == bool(args.labelled):
        parser.error("give IMAGE files or --labelled DIR" + (", not both" if args.images else ''))
    photos, left_out = labelled_photos(args.labelled) if args.labelled else ([(p, None, None) for p in args.images], {})
    try:
        model, checkpoint = load_checkpoint(args.model)
    except CheckpointError as error:
        if not os.path.exists(args.model):
            raise CheckpointError(f"{error}; train a model first (python train.py) or pass --model PATH") from None
        raise
    threshold = unsure_threshold(checkpoint)
    if threshold is None:
        cli.say(f"note: {shown(args.model)} records no unsure threshold (a model from before it was kept, or a "
                f"run interrupted before its end): no prediction is marked unsure")
    outputs = OUTPUTS if args.labelled else OUTPUTS[:1]
    cli.prepare_out_dir(args.out, outputs)  # fail now, before any photo is read
    import matplotlib.figure  # noqa: F401 -- imported now, not half-way through an interrupted save

    # the figure shows MAX_SHOWN images: the first ones predicted, or for --labelled spread over the folders
    spread = set(np.linspace(0, len(photos) - 1, min(MAX_SHOWN, len(photos))).round().astype(int).tolist())
    results, seen, entries = [], [], []
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
        seen.append(torch.from_numpy(pixels))
        if index in spread if args.labelled else len(entries) < MAX_SHOWN:  # only those keep their thumbnails
            entries.append(dict(name=shown(os.path.join(label or '', os.path.basename(path) or path)),
                                original=original, kept=kept, seen=pixels, result=result))
    probs = probabilities(model, torch.stack(seen)) if seen else torch.empty(0, len(TEXT_LABELS))
    predicted = [result for result in results if 'error' not in result]
    for result, p in zip(predicted, probs):
        best = int(p.argmax())
        result.update(predicted=TEXT_LABELS[best], unsure=None if threshold is None else bool(p[best] < threshold),
                      probabilities={name: float(value) for name, value in zip(TEXT_LABELS, p)})
        if args.labelled:
            result['right'] = result['predicted'] in result['classes']

    if args.labelled:
        summary, lines = labelled_summary(args.labelled, results, left_out, threshold)
    if args.json:
        fields = ('image', 'label', 'classes', 'predicted', 'right', 'unsure', 'probabilities', 'error')
        listed = [{key: result[key] for key in fields if key in result}
                  for result in (results if args.labelled else predicted)]  # a failed file: its line on stderr
        print(json.dumps(dict(summary, images=listed) if args.labelled else listed, indent=2))
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
