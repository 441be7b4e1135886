"""predict.py's figures: each photo with the part kept as the item, the 28x28 the model saw, its ten
probabilities; and for --labelled photos the confusion matrix and reliability diagram (plots.py's)."""
import numpy as np

from data import TEXT_LABELS
from helpers.plots import new_figure, plot_confidence, plot_confusion


def _short(name, limit=24):
    """A file name cut in the middle to fit above a small image."""
    return name if len(name) <= limit else name[:limit // 2 - 1] + '…' + name[-(limit // 2):]


def _kept_view(original, kept):
    """The photo with what was not kept as the item faded towards white: (h, w, 3) uint8."""
    faded = original.astype(np.float32) * 0.3 + 255 * 0.7
    return np.where(kept[:, :, None], original, faded.astype(np.uint8))


def plot_predict(entries, total=None, model='', spread=False):
    """predict.py's figure: per image the photo with its kept part outlined (the rest faded), the 28x28 the
    model saw, its ten probabilities.

    entries: dicts with 'name' (str), 'original' ((h, w, 3) uint8, a thumbnail), 'kept' ((h, w) bool, the
    part of it taken as the item), 'seen' ((28, 28) uint8, the model's input: light item on black),
    'probabilities' (10 floats) and 'unsure' (True, False or None: not known); total: how many images were
    predicted, when only len(entries) are drawn; spread: those are spread over all, not the first ones;
    model: what predicted, for the title.
    """
    count = len(entries)
    total = total or count
    columns = 1 if count <= 4 else 2
    rows = -(-count // columns)
    figure = new_figure(7.4 * columns, 1.95 * rows + 0.8)
    # per image: photo | model input | probabilities, and a spacer between the two columns of images
    grid = figure.add_gridspec(rows, 4 * columns - 1, width_ratios=([1, 1, 2.3, 0.25] * columns)[:-1])
    for index, entry in enumerate(entries):
        row, column = divmod(index, columns)
        original, seen, bars = (figure.add_subplot(grid[row, 4 * column + k]) for k in range(3))
        kept = entry.get('kept')
        if kept is None or kept.all():
            original.imshow(entry['original'])
        else:
            original.imshow(_kept_view(entry['original'], kept))
            original.contour(kept, levels=[0.5], colors='tab:green', linewidths=1)
        original.set_title(_short(entry['name']), fontsize=7)
        seen.imshow(entry['seen'], cmap='gray', vmin=0, vmax=255)
        seen.set_title('model input 28×28', fontsize=7)
        for axes in (original, seen):  # a frame, so that a photo's white background shows where it ends
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set(color='lightgray', linewidth=0.8)
        probabilities = entry['probabilities']
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        unsure = entry.get('unsure')
        bars.barh(range(len(TEXT_LABELS)), probabilities, height=0.7,
                  color=['tab:gray' if k == best and unsure else 'tab:orange' if k == best else 'silver'
                         for k in range(len(TEXT_LABELS))])
        bars.text(min(probabilities[best], 0.75) + 0.02, best, f"{probabilities[best]:.1%}", va='center', fontsize=7)
        bars.set_yticks(range(len(TEXT_LABELS)), TEXT_LABELS, fontsize=7)
        bars.invert_yaxis()  # t-shirt on top, label order
        bars.set_xlim(0, 1)
        bars.set_xticks([0, 0.5, 1], ['0', '50%', '100%'], fontsize=7)
        bars.set_title(f"predicted: {TEXT_LABELS[best]}" + (' (unsure)' if unsure else ''), fontsize=9)
        bars.grid(axis='x', alpha=0.3)
    plural = 's' if count > 1 else ''
    title = f"predict.py: {count} image{plural}" + (f", model {model}" if model else '')
    if total > count:
        which = f"{count} of {total} images, spread over them" if spread else f"the first {count} of {total} images"
        title = f"predict.py: {which} (all {total} are in the printed output)" + (f"\nmodel {model}" if model else '')
    figure.suptitle(title + "\nleft: the part of each photo kept as the item (outlined; the rest faded)", fontsize=10)
    return figure


def plot_labelled_confusion(labels, predicted, title):
    """plots.plot_confusion of labelled photos (labels, predicted: (n,) int64), titled by what they are."""
    figure = plot_confusion(labels, predicted)
    accuracy = float((labels == predicted).double().mean())
    figure.axes[0].set_title(f"confusion matrix: {title} (accuracy {accuracy:.3f})", fontsize=10)
    return figure


def plot_labelled_confidence(calibration, title):
    """plots.plot_confidence of labelled photos (support.metrics.calibration's dict), titled by what they are."""
    figure = plot_confidence(calibration)
    figure.suptitle(f"When to trust the top label: {title}, accuracy {calibration['accuracy']:.3f}, "
                    f"mean confidence {calibration['mean_confidence']:.3f}")
    return figure
