"""predict.py's figure: each photo, the 28x28 the model saw, and its ten probabilities."""
from data import TEXT_LABELS
from machinery.plots import new_figure


def _short(name, limit=24):
    """A file name cut in the middle to fit above a small image."""
    return name if len(name) <= limit else name[:limit // 2 - 1] + '…' + name[-(limit // 2):]


def plot_predict(entries, total=None, model=''):
    """predict.py's figure: per image the original, the 28x28 the model saw, its ten probabilities.

    entries: dicts with 'name' (str), 'original' ((h, w, 3) uint8, a thumbnail), 'seen' ((28, 28) uint8,
    the model's input: light item on black) and 'probabilities' (10 floats); total: how many images
    were predicted, when only the first len(entries) are drawn; model: what predicted, for the title.
    """
    count = len(entries)
    total = total or count
    columns = 1 if count <= 4 else 2
    rows = -(-count // columns)
    figure = new_figure(7.4 * columns, 1.95 * rows + 0.8)
    # per image: original | model input | probabilities, and a spacer between the two columns of images
    grid = figure.add_gridspec(rows, 4 * columns - 1, width_ratios=([1, 1, 2.3, 0.25] * columns)[:-1])
    for index, entry in enumerate(entries):
        row, column = divmod(index, columns)
        original, seen, bars = (figure.add_subplot(grid[row, 4 * column + k]) for k in range(3))
        original.imshow(entry['original'])
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
        bars.barh(range(len(TEXT_LABELS)), probabilities, height=0.7,
                  color=['tab:orange' if k == best else 'silver' for k in range(len(TEXT_LABELS))])
        bars.text(min(probabilities[best], 0.75) + 0.02, best, f"{probabilities[best]:.1%}", va='center', fontsize=7)
        bars.set_yticks(range(len(TEXT_LABELS)), TEXT_LABELS, fontsize=7)
        bars.invert_yaxis()  # t-shirt on top, label order
        bars.set_xlim(0, 1)
        bars.set_xticks([0, 0.5, 1], ['0', '50%', '100%'], fontsize=7)
        bars.set_title(f"predicted: {TEXT_LABELS[best]}", fontsize=9)
        bars.grid(axis='x', alpha=0.3)
    title = f"predict.py: {count} image{'s' if count > 1 else ''}, model {model}" if model else \
        f"predict.py: {count} image{'s' if count > 1 else ''}"
    if total > count:
        title = f"predict.py: the first {count} of {total} images (all {total} are in the printed output)" + \
            (f"\nmodel {model}" if model else '')
    figure.suptitle(title, fontsize=10)
    return figure
