"""Every figure of the collection, drawn with matplotlib's object API (no pyplot state, no display).

Each function returns a matplotlib Figure; save_figure writes it atomically. The scripts import this
module; it imports nothing of theirs, only data.py's class names.
"""
import torch

from cli import write_atomically
from data import TEXT_LABELS

PNG_DPI = 110


def save_figure(figure, path):
    """Write figure to path as PNG, atomically (cli.write_atomically)."""
    write_atomically(path, lambda tmp: figure.savefig(tmp, format='png', dpi=PNG_DPI))


def _new_figure(width, height, layout='constrained'):
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed
    return Figure(figsize=(width, height), layout=layout)


def plot_curves(histories, title):
    """Loss and accuracy against epoch, train solid and test dashed; one colour per run in `histories`."""
    # Redrawn after every epoch: a fixed layout renders in half the time of a layout engine.
    figure = _new_figure(10, 4.2, layout=None)
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


def plot_predictions(images, labels, predicted, count=24, columns=8):
    """The book's predict_ch3: test images titled true / predicted; mistakes in red with a red frame."""
    figure = _new_figure(columns * 1.3, -(-count // columns) * 1.6)
    for index, axes in enumerate(figure.subplots(-(-count // columns), columns).flat):
        axes.set_xticks([])
        axes.set_yticks([])
        if index >= count:
            axes.set_axis_off()
            continue
        axes.imshow(images[index].reshape(28, 28).numpy(), cmap='gray_r')
        true, guess = TEXT_LABELS[labels[index]], TEXT_LABELS[predicted[index]]
        wrong = true != guess
        axes.set_title(f"{true}\n{'✗ ' if wrong else ''}{guess}", fontsize=8, color='red' if wrong else 'black')
        for spine in axes.spines.values():
            spine.set(color='red' if wrong else 'lightgray', linewidth=2 if wrong else 0.5)
    wrong_count = sum(int(a != b) for a, b in zip(labels[:count], predicted[:count]))
    figure.suptitle(f"first {count} test images: true label above predicted ({wrong_count} wrong, in red)")
    return figure


def plot_weights(W):
    """Each column of W, a (784,) template, as a 28x28 image: red pixels vote for the class, blue against."""
    figure = _new_figure(12, 5)
    limit = float(W.abs().max())
    for index, axes in enumerate(figure.subplots(2, 5).flat):
        image = axes.imshow(W[:, index].reshape(28, 28).numpy(), cmap='RdBu_r', vmin=-limit, vmax=limit)
        axes.set_title(TEXT_LABELS[index])
        axes.set_axis_off()
    figure.colorbar(image, ax=figure.axes, shrink=0.8, label='weight')
    figure.suptitle("columns of W as images (O = XW + b)")
    return figure


def plot_confusion(labels, predicted):
    """10x10 counts: row = true class, column = predicted class; the diagonal is what was right."""
    confusion = torch.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)
    figure = _new_figure(8, 7)
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
    """losses.py's demo: the mean loss of s * O for each logit scale s, one line per implementation.

    scales: the scales s; table: {implementation name: [loss at each scale]} (nan/inf where it broke).
    """
    import math
    fig = _new_figure(7.5, 4.8, layout='tight')
    ax = fig.subplots()
    names = list(table)
    # naive underneath as a wide translucent band, so the lines on top stay visible where they agree
    styles = {'naive': dict(color='tab:red', marker='o', linewidth=6, markersize=12, alpha=0.35),
              'scratch': dict(color='tab:blue', marker='s', linewidth=1.5, markersize=6),
              'torch': dict(color='black', marker='.', linestyle='--', linewidth=1, markersize=6)}
    labels = {'naive': 'naive (softmax_naive, then -log)',
              'scratch': 'scratch (cross_entropy, stable)',
              'torch': 'torch (nn.CrossEntropyLoss)'}
    finite_values = [v for name in names for v in table[name] if math.isfinite(v)]
    top = max(finite_values) * 5
    for name in names:
        ax.plot(scales, table[name], label=labels[name], **styles[name])
    broken = [s for s, v in zip(scales, table['naive']) if not math.isfinite(v)]
    if broken:
        ax.plot(broken, [top] * len(broken), 'x', color='tab:red', markersize=12, markeredgewidth=2.5,
                label='naive is nan or inf (drawn at the top)')
        ax.annotate("naive breaks from here on:\nexp(o) overflows float32 for o > 88.7,\n"
                    "so softmax_naive computes inf / inf = nan",
                    xy=(broken[0], top), xytext=(1.3, top / 6), color='tab:red', va='top',
                    arrowprops=dict(arrowstyle='->', color='tab:red'))
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_ylim(top=top * 2)
    ax.set_xlabel('logit scale s (loss of s * O)')
    ax.set_ylabel('mean cross-entropy loss')
    ax.set_title('Cross-entropy of scaled logits: the naive version overflows')
    ax.grid(True, which='major', alpha=0.3)
    ax.legend(loc='lower right')
    return fig
