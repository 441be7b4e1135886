"""sweep.py's figures: the grid's heatmap and its test curves (matplotlib's object API)."""
import math
import os

from helpers.plots import new_figure, save_figure

CURVES_BATCH_SIZE = 256  # sweep_curves.png shows this batch size (the book's), or the nearest one swept
MAX_CURVES = 10  # sweep_curves.png draws at most this many learning rates: more lines and no one reads it
MAX_LABELLED = 12  # the heatmap writes each cell's value while an axis has at most this many values


def choose_curves(runs):
    """What sweep_curves.png shows of `runs` (dicts with lr, batch_size, seed): (the batch size nearest the
    book's 256, the lowest seed's run of at most MAX_CURVES of its learning rates, evenly spaced with the
    smallest and the largest, and how many learning rates that batch size has)."""
    batch_size = min({run['batch_size'] for run in runs},
                     key=lambda size: (abs(math.log(size / CURVES_BATCH_SIZE)), size))
    lowest_seed = {}
    for run in sorted(runs, key=lambda run: (run['lr'], run['seed'])):
        if run['batch_size'] == batch_size:
            lowest_seed.setdefault(run['lr'], run)
    lrs = sorted(lowest_seed)
    if len(lrs) > MAX_CURVES:
        lrs = sorted({lrs[round(i * (len(lrs) - 1) / (MAX_CURVES - 1))] for i in range(MAX_CURVES)})
    return batch_size, [lowest_seed[lr] for lr in lrs], len(lowest_seed)


def save_sweep_figures(runs, what, folder, attempt, history_of):
    """sweep.png and sweep_curves.png of `runs` (one dict per run, sweep.csv's columns) in `folder`, each
    saved through attempt(save, name), which may report a failure and go on. history_of(run): the run's
    history rows, or None when they cannot be read (its line is left out). `what`: the runs' settings."""
    attempt(lambda: save_figure(plot_sweep_heatmap(runs, f"final test accuracy ({what})"),
                                os.path.join(folder, 'sweep.png')), 'sweep.png')
    batch_size, chosen, lrs = choose_curves(runs)
    curves = {}  # lr -> (history, status)
    for run in chosen:
        history = history_of(run)
        if history is not None:
            curves[run['lr']] = (history, run['status'])
    if not any(history for history, _ in curves.values()):
        return
    seeds = ', '.join(sorted({str(run['seed']) for run in chosen if run['lr'] in curves}, key=int))
    lines = f"{len(chosen)} of its {lrs} learning rates, evenly spaced" if len(chosen) < lrs else "learning rate"
    title = f"test loss and accuracy at batch size {batch_size}, one line per {lines} (seed {seeds}; {what})"
    attempt(lambda: save_figure(plot_sweep_curves(curves, title), os.path.join(folder, 'sweep_curves.png')),
            'sweep_curves.png')


def thinned_ticks(axis, labels):
    """At most MAX_LABELLED tick labels along `axis`, evenly spaced: the cells of a long axis stay readable."""
    positions = sorted({round(i * (len(labels) - 1) / max(1, MAX_LABELLED - 1)) for i in range(MAX_LABELLED)})
    axis.set_ticks(positions, [labels[i] for i in positions])


def plot_sweep_heatmap(runs, title):
    """sweep.py's grid: final test accuracy, learning rate (rows, growing upwards) against batch size.

    runs: one dict per run with lr, batch_size, status ('finished' or 'diverged') and final_test_acc. A cell
    with several runs (seeds) shows mean ± std; a cell where a run diverged is hatched and says so; a
    (lr, batch size) pair that was not run is left blank; the best cell is outlined in red. A grid with
    more than MAX_LABELLED values along an axis is drawn as colours alone, in a figure of bounded size.
    """
    import statistics
    import matplotlib
    import numpy as np
    from matplotlib.patches import Rectangle
    lrs = sorted({run['lr'] for run in runs})
    sizes = sorted({run['batch_size'] for run in runs})
    cells = {}
    for run in runs:
        cells.setdefault((lrs.index(run['lr']), sizes.index(run['batch_size'])), []).append(run)
    means = np.full((len(lrs), len(sizes)), np.nan)  # nan: diverged or not run, drawn white
    for (i, j), cell in cells.items():
        if all(run['status'] == 'finished' for run in cell):
            means[i, j] = statistics.fmean(run['final_test_acc'] for run in cell)
    labelled = len(lrs) <= MAX_LABELLED and len(sizes) <= MAX_LABELLED
    figure = new_figure(max(min(1.5 * len(sizes), 18), 1.5 if labelled else 6) + 3.2, min(0.72 * len(lrs), 9) + 2.0)
    axes = figure.subplots()
    finite = means[np.isfinite(means)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-3:
        low, high = low - 0.005, high + 0.005
    cmap = matplotlib.colormaps['viridis'].with_extremes(bad='white')
    image = axes.imshow(means, cmap=cmap, vmin=low, vmax=high, origin='lower', aspect='auto')
    several = any(len(cell) > 1 for cell in cells.values())
    for (i, j), cell in cells.items() if labelled else ():
        diverged = sum(run['status'] == 'diverged' for run in cell)
        if diverged:
            axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor='0.85', edgecolor='0.6',
                                     hatch='///', linewidth=0))
            text = 'diverged' + (f"\n({diverged} of {len(cell)} seeds)" if len(cell) > 1 else '')
            axes.text(j, i, text, ha='center', va='center', fontsize=9, color='darkred', fontweight='bold',
                      bbox=dict(facecolor='0.85', edgecolor='none', pad=1))
            continue
        accs = [run['final_test_acc'] for run in cell]
        text = f"{means[i, j]:.4f}" + (f"\n± {statistics.stdev(accs):.4f}" if len(accs) > 1 else '')
        dark = (means[i, j] - low) / (high - low) < 0.55  # viridis is dark at the low end
        axes.text(j, i, text, ha='center', va='center', fontsize=10, color='white' if dark else 'black')
    if finite.size:
        i, j = np.unravel_index(np.nanargmax(means), means.shape)
        axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor='red', linewidth=3))
        title += f"\nbest (outlined in red): lr {lrs[i]:g}, batch size {sizes[j]}: {means[i, j]:.4f}"
    if not labelled:  # diverged cells in grey; ticks thinned out
        diverged = np.array([[any(run['status'] == 'diverged' for run in cells.get((i, j), ()))
                              for j in range(len(sizes))] for i in range(len(lrs))])
        axes.imshow(np.where(diverged, 1.0, np.nan), cmap=matplotlib.colormaps['Greys'], vmin=0, vmax=1.6,
                    origin='lower', aspect='auto')
        title += (f"\n{len(lrs)} learning rate{'s' * (len(lrs) > 1)} x {len(sizes)} batch size"
                  f"{'s' * (len(sizes) > 1)}: too many cells to write each value\n(each is in sweep.csv); grey: diverged")
    thinned_ticks(axes.xaxis, [str(size) for size in sizes])
    thinned_ticks(axes.yaxis, [f"{lr:g}" for lr in lrs])
    axes.set(xlabel='batch size', ylabel='learning rate')
    figure.colorbar(image, ax=axes, label='final test accuracy' + (' (mean over seeds)' if several else ''))
    axes.set_title(title + ('\n(mean ± std over seeds)' if several else ''), fontsize=10)
    return figure


def plot_sweep_curves(histories, title):
    """sweep.py's learning curves: test loss and test accuracy against epoch, one line per learning rate.

    histories: {lr: (history rows as train.py writes them, status)}. Colours run from dark (small lr) to
    bright (large lr); a run that diverged ends in a cross and its legend entry says in which epoch.
    """
    import matplotlib
    import matplotlib.ticker
    lrs = sorted(histories)
    labels = {lr: f"lr {lr:g}" + (f", diverged in epoch {len(histories[lr][0]) + 1}"
                                  if histories[lr][1] == 'diverged' else '') for lr in lrs}
    # A fixed layout, with a right margin as wide as the legend's longest label in 9-point text: it
    # renders in about half the time of the layout engine.
    width, legend_inches = 12, 0.75 + 0.068 * max(map(len, labels.values()), default=0)
    figure = new_figure(width, 4.6, layout=None)
    figure.subplots_adjust(left=0.06, right=1 - (legend_inches + 0.1) / width, bottom=0.12, top=0.86,
                           wspace=0.22)
    loss_axes, acc_axes = figure.subplots(1, 2)
    for index, lr in enumerate(lrs):
        history, status = histories[lr]
        color = matplotlib.colormaps['plasma'](0.85 * index / max(1, len(lrs) - 1))
        marker = 'os^Dv<>p'[index % 8]  # neighbouring colours of the map are close: the markers tell them apart
        epochs = [row['epoch'] for row in history]
        for axes, key in ((loss_axes, 'test_loss'), (acc_axes, 'test_acc')):
            values = [row[key] for row in history]
            axes.plot(epochs, values, '-', marker=marker, color=color, markersize=4, label=labels[lr],
                      markevery=max(1, len(epochs) // 12))
            if status == 'diverged':
                axes.plot(epochs[-1:], values[-1:], 'x', color=color, markersize=10, markeredgewidth=2.5)
    # log scale: a too-large learning rate's test loss is several times the others', which flattens them
    loss_axes.set(xlabel='epoch', ylabel='test cross-entropy loss (log scale)', title='test loss', yscale='log')
    acc_axes.set(xlabel='epoch', ylabel='test accuracy', title='test accuracy')
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3, which='both')
        axes.xaxis.get_major_locator().set_params(integer=True)
        if max(len(history) for history, _ in histories.values()) == 1:
            axes.set_xticks([1])  # one epoch: no fractional ticks around it
    # Plain numbers on the log axis (0.5, not 5 x 10^-1). Minor ticks are labelled while they fit: all of
    # them over a factor of 3, those starting with 2, 3 or 5 over two decades, none beyond.
    bottom, top = loss_axes.get_ylim()
    minor_digits = '123456789' if top / bottom < 3 else '235' if top / bottom < 100 else ''
    loss_axes.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    loss_axes.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda value, _: f"{value:g}" if f"{value:e}"[0] in minor_digits else ''))
    figure.legend(*loss_axes.get_legend_handles_labels(), loc='center right', bbox_to_anchor=(0.995, 0.5),
                  fontsize=9)  # beside the curves, never on them
    figure.suptitle(title, fontsize=11)
    return figure
