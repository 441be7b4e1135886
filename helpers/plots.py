"""The training run's figures, drawn with matplotlib's object API (no pyplot state, no display).

Each function returns a matplotlib Figure; save_figure writes it atomically. The scripts import this
module; it imports nothing of theirs, only data.py's class names. It also draws `python losses.py`'s
stability.png; sweep.py's figures are in plots_sweep.py, predict.py's in plots_predict.py, exercises.py's
in plots_exercises.py.
"""
import torch

from support.writing import write_atomically
from data import TEXT_LABELS

PNG_DPI = 110


def save_figure(figure, path):
    """Write figure to path as PNG, atomically (writing.write_atomically)."""
    write_atomically(path, lambda tmp: figure.savefig(tmp, format='png', dpi=PNG_DPI))


def new_figure(width, height, layout='constrained'):
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed
    return Figure(figsize=(width, height), layout=layout)


def plot_curves(histories, title):
    """Loss and accuracy against epoch, train solid and test dashed; one colour per run in `histories`."""
    # Redrawn after every epoch: a fixed layout renders in half the time of a layout engine.
    figure = new_figure(10, 4.2, layout=None)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.84 - 0.05 * title.count('\n'),
                           wspace=0.22)
    loss_axes, acc_axes = figure.subplots(1, 2)
    for index, (name, history) in enumerate(histories.items()):
        epochs = [row['epoch'] for row in history]
        color = f"C{index}"
        prefix = f"{name}: " if len(histories) > 1 else ''
        for axes, key in ((loss_axes, 'loss'), (acc_axes, 'acc')):
            axes.plot(epochs, [row['train_' + key] for row in history], '-o', color=color, markersize=3,
                      label=prefix + 'train')
            axes.plot(epochs, [row['test_' + key] for row in history], '--s', color=color, markersize=3,
                      label=prefix + 'test')
    loss_axes.set(xlabel='epoch', ylabel='cross-entropy loss', title='loss')
    acc_axes.set(xlabel='epoch', ylabel='accuracy', title='accuracy')
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title)
    return figure


def _mosaic(tiles, columns, band, gap, fill):
    """Lay (count, 28, 28) tiles out in one (rows * (band + 28 + gap), columns * (28 + gap)) image, each
    tile below an empty band of `band` pixels for its label; returns (image, [(x, y) of each tile's corner])."""
    size = tiles.shape[-1]
    rows = -(-len(tiles) // columns)
    cell_height, cell_width = band + size + gap, size + gap
    image = torch.full((rows * cell_height, columns * cell_width), fill)
    corners = []
    for index, tile in enumerate(tiles):
        y, x = (index // columns) * cell_height + band, (index % columns) * cell_width + gap // 2
        image[y:y + size, x:x + size] = tile
        corners.append((x, y))
    return image, corners


def plot_predictions(images, labels, predicted, count=24, columns=8):
    """The book's predict_ch3: test images titled true / predicted; mistakes in red with a red frame.

    One image with labels, not one Axes per picture: it draws in a fraction of the time.
    """
    from matplotlib.patches import Rectangle
    count = min(count, len(images))
    rows = -(-count // columns)
    figure = new_figure(columns * 1.3, rows * 1.6 + 0.4, layout=None)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9)
    axes = figure.subplots()
    image, corners = _mosaic(images[:count].reshape(-1, 28, 28), columns, band=18, gap=6, fill=0.0)
    axes.imshow(image.numpy(), cmap='gray_r', vmin=0, vmax=1, interpolation='nearest')
    wrong_count = 0
    for (x, y), true, guess in zip(corners, labels, predicted):
        wrong = true != guess
        wrong_count += wrong
        axes.text(x + 13.5, y - 1.5, f"{TEXT_LABELS[true]}\n{'✗ ' if wrong else ''}{TEXT_LABELS[guess]}",
                  ha='center', va='bottom', fontsize=8, color='red' if wrong else 'black')
        axes.add_patch(Rectangle((x - 0.5, y - 0.5), 28, 28, fill=False, linewidth=2 if wrong else 0.5,
                                 edgecolor='red' if wrong else 'lightgray'))
    axes.set_axis_off()
    figure.suptitle(f"first {count} test images: true label above predicted ({wrong_count} wrong, in red)")
    return figure


def plot_weights(W):
    """Each column of W, a (784,) template, as a 28x28 image: red pixels vote for the class, blue against."""
    figure = new_figure(12, 5.4, layout=None)
    figure.subplots_adjust(left=0.01, right=0.97, bottom=0.02, top=0.9)
    axes = figure.subplots()
    limit = float(W.abs().max())
    # gaps are nan, drawn in white: a weight of 0 is white too, so the gaps read as "no vote"
    image, corners = _mosaic(W.T.reshape(-1, 28, 28), 5, band=5, gap=4, fill=float('nan'))
    shown = axes.imshow(image.numpy(), cmap='RdBu_r', vmin=-limit, vmax=limit, interpolation='nearest')
    for (x, y), name in zip(corners, TEXT_LABELS):
        axes.text(x + 13.5, y - 1, name, ha='center', va='bottom', fontsize=12)
    axes.set_axis_off()
    figure.colorbar(shown, ax=axes, shrink=0.8, label='weight')
    figure.suptitle("columns of W as images (O = XW + b)")
    return figure


def plot_confusion(labels, predicted):
    """10x10 counts: row = true class, column = predicted class; the diagonal is what was right."""
    confusion = torch.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)
    figure = new_figure(8, 7, layout=None)
    figure.subplots_adjust(left=0.17, right=0.98, bottom=0.16, top=0.95)
    axes = figure.subplots()
    axes.imshow(confusion.numpy(), cmap='Blues')
    for i in range(10):
        for j in range(10):
            count = int(confusion[i, j])
            axes.text(j, i, count, ha='center', va='center', fontsize=8,
                      color='white' if count > confusion.max() / 2 else 'black')
    axes.set_xticks(range(10), TEXT_LABELS, rotation=45, ha='right')
    axes.set_yticks(range(10), TEXT_LABELS)
    axes.set(xlabel='predicted', ylabel='true')
    accuracy = float(confusion.diag().sum()) / float(confusion.sum())
    axes.set_title(f"test confusion matrix (accuracy {accuracy:.4f})")
    return figure


def plot_stability(scales, table):
    """losses.py's demo: the mean loss of s * O for each logit scale s, one line per stage of the notes.

    scales: the scales s; table: {stage: [mean loss at each scale]} (nan or inf where it broke), the
    stages of helpers/loss_demo.py's stages() in the notes' order: 'naive' (overflows: nan), 'max-subtracted'
    (underflows: inf), '+ eps' (finite, capped at -log 1e-8), 'LogSumExp' (losses.stable_loss) and 'torch'.
    A nan or inf cannot be drawn on a log axis, so it is marked in a band at the top.
    """
    import math
    fig = new_figure(9, 6, layout='tight')
    ax = fig.subplots()
    # the broken stages underneath as wide translucent bands, so the lines on top stay visible where
    # every stage agrees (s = 1)
    styles = {'naive': dict(color='tab:red', marker='o', linewidth=7, markersize=13, alpha=0.3),
              'max-subtracted': dict(color='tab:orange', marker='D', linewidth=4, markersize=9, alpha=0.5),
              '+ eps': dict(color='tab:green', marker='v', linewidth=1.5, markersize=7),
              'LogSumExp': dict(color='tab:blue', marker='s', linewidth=1.5, markersize=6),
              'torch': dict(color='black', marker='.', linestyle='--', linewidth=1, markersize=6)}
    labels = {'naive': 'naive: softmax_naive, then -log',
              'max-subtracted': 'max-subtracted: softmax, then -log',
              '+ eps': '+ eps: softmax, then -log(p + 1e-8)',
              'LogSumExp': 'LogSumExp: losses.stable_loss',
              'torch': 'nn.CrossEntropyLoss'}
    # what breaks, and why: drawn in the band at the top, at the first scale where it happens
    breaks = {'naive': (math.isnan, 'nan', 'x', "naive: nan. exp(o) overflows float32\nfor o > 88.7: inf / inf"),
              'max-subtracted': (math.isinf, 'inf', '^',
                                 "max-subtracted: inf. softmax of a true class\nrounds to 0 (underflow): -log 0")}
    finite = [v for values in table.values() for v in values if math.isfinite(v)]
    high = max(finite)
    for name, values in table.items():
        ax.plot(scales, values, label=labels.get(name, name), **styles.get(name, {}))
    for row, (name, (is_broken, what, marker, why)) in enumerate(breaks.items()):
        broken = [s for s, v in zip(scales, table.get(name, [])) if is_broken(v)]
        if not broken:
            continue
        y = high * 30 * 6 ** -row  # one row per stage, above every finite value
        color = styles[name]['color']
        ax.plot(broken, [y] * len(broken), marker, color=color, markersize=11, markeredgewidth=2.5,
                linestyle='none', label=f"{name} is {what} (marked at the top)")
        ax.annotate(why, xy=(broken[0], y), xytext=(scales[0], y), color=color, va='center', fontsize=9,
                    arrowprops=dict(arrowstyle='->', color=color))
    if '+ eps' in table:
        cap = -math.log(1e-8)
        ax.axhline(cap, color='tab:green', linestyle=':', linewidth=1)
        ax.annotate(f"+ eps: each loss capped at -log 1e-8 = {cap:.2f},\nso finite but wrong once the true loss "
                    f"is larger", xy=(scales[-1], cap), xytext=(0, -22), textcoords='offset points',
                    ha='right', va='top', color='tab:green', fontsize=9)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_ylim(top=high * 100)
    ax.set_xlabel('logit scale s (loss of s * O, O fixed (8, 10) float32 logits)')
    ax.set_ylabel('mean cross-entropy loss')
    ax.set_title('Cross-entropy of scaled logits, stage by stage:\n'
                 'overflow (naive), underflow (max-subtracted), the + eps patch, LogSumExp')
    ax.grid(True, which='major', alpha=0.3)
    ax.legend(loc='upper left', bbox_to_anchor=(0, 0.75), fontsize=9)  # the empty middle left
    return fig


def plot_confidence(calibration):
    """confidence.png, from support.metrics.calibration(probabilities, labels)'s dict, two panels:

    (a) reliability diagram: accuracy against mean confidence in each confidence bin, the diagonal, the
        number of examples per bin underneath, and the expected calibration error;
    (b) accuracy against coverage when the model abstains below a confidence threshold, with the
        threshold that reaches the target accuracy (95%) marked.
    """
    # a fixed layout: a layout engine would draw the figure twice, and this one is drawn after every run
    figure = new_figure(12, 5.4, layout=None)
    grid = figure.add_gridspec(2, 2, height_ratios=[3, 1.1], left=0.06, right=0.985, bottom=0.1, top=0.88,
                               wspace=0.17, hspace=0.08)
    reliability = figure.add_subplot(grid[0, 0])
    counts_axes = figure.add_subplot(grid[1, 0], sharex=reliability)
    coverage_axes = figure.add_subplot(grid[:, 1])

    edges, counts = calibration['edges'], calibration['counts']
    width = edges[1] - edges[0]
    centres = [(low + high) / 2 for low, high in zip(edges[:-1], edges[1:])]
    filled = [b for b, count in enumerate(counts) if count]
    accuracy = [calibration['bin_accuracy'][b] for b in filled]
    confidence = [calibration['bin_confidence'][b] for b in filled]
    impossible = 1 / len(TEXT_LABELS)  # the largest of 10 probabilities is at least 0.1
    reliability.axvspan(0, impossible, color='0.93', label=f"confidence < {impossible:g}: impossible")
    reliability.bar([centres[b] for b in filled], accuracy, width=width, color='tab:blue', edgecolor='black',
                    linewidth=0.5, label='accuracy in the bin')
    reliability.bar([centres[b] for b in filled], [c - a for a, c in zip(accuracy, confidence)], bottom=accuracy,
                    width=width, color='tab:red', alpha=0.3, edgecolor='tab:red', linewidth=0.5,
                    label="gap to the bin's mean confidence")
    reliability.plot([0, 1], [0, 1], 'k--', linewidth=1, label='perfectly calibrated')
    reliability.set(xlim=(0, 1), ylim=(0, 1), ylabel='accuracy',
                    title=f"(a) reliability: ECE = {calibration['ece']:.4f} ({calibration['bins']} bins)")
    reliability.legend(loc='upper left', fontsize=8)
    reliability.grid(alpha=0.3)
    reliability.tick_params(labelbottom=False)

    counts_axes.bar(centres, counts, width=width, color='gray', edgecolor='black', linewidth=0.5)
    for b in filled:
        counts_axes.text(centres[b], counts[b], f"{counts[b]:,}", ha='center', va='bottom', fontsize=7)
    counts_axes.set_yscale('log')
    counts_axes.set_ylim(0.8, max(counts) * 12)
    counts_axes.set(xlabel='confidence: the largest softmax probability', ylabel='examples')

    curve = calibration['coverage_curve']
    coverage_axes.plot(curve['coverage'], curve['accuracy'], color='tab:blue',
                       label='accuracy on the answered examples')
    target = calibration['target_accuracy']
    coverage_axes.axhline(target, color='tab:green', linestyle=':', label=f"{target:.0%} accuracy")
    everything = calibration['accuracy']
    coverage_axes.plot([1], [everything], 'o', color='black')
    low = min(curve['accuracy'] + [everything, target])
    room_below = everything - max(0, low - 0.05) > 0.15 * (1.005 - max(0, low - 0.05))  # else it is cut off
    coverage_axes.annotate(f"answer everything:\n{everything:.1%} right", (1, everything),
                           xytext=(-10, -30 if room_below else 12), textcoords='offset points', ha='right',
                           fontsize=9)
    if calibration['threshold'] is not None:
        coverage, answered = calibration['coverage'], calibration['answered_accuracy']
        coverage_axes.plot([coverage], [answered], 'o', color='tab:green', markersize=8)
        coverage_axes.axvline(coverage, color='tab:green', linestyle=':', linewidth=1)
        side = 'left' if coverage < 0.3 else 'right' if coverage > 0.7 else 'center'  # the text stays inside
        coverage_axes.annotate(f"answer only when confidence ≥ {calibration['threshold']:.3f}:\n"
                               f"{coverage:.1%} of the examples answered, {answered:.1%} right",
                               (coverage, answered), xytext=({'left': 12, 'right': -12, 'center': 0}[side], -40),
                               textcoords='offset points', ha=side, fontsize=9,
                               arrowprops=dict(arrowstyle='->', color='tab:green'))
    else:
        coverage_axes.text(0.5, target, f"no threshold reaches {target:.0%}", ha='center', va='bottom')
    coverage_axes.set(xlim=(0, 1.02), ylim=(max(0, low - 0.05), 1.005),
                      xlabel='coverage: share of the examples answered (the most confident first)',
                      ylabel='accuracy', title='(b) abstaining below a confidence threshold')
    coverage_axes.legend(loc='lower left', fontsize=8)
    coverage_axes.grid(alpha=0.3)
    figure.suptitle(f"When to trust the top label: {calibration['n']:,} examples, "
                    f"accuracy {everything:.4f}, mean confidence {calibration['mean_confidence']:.4f}")
    return figure
