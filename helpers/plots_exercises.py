"""exercises.py's figures: LogSumExp's bounds, reading time against batch size, the cost of a large vocabulary."""
import math

from helpers.plots import new_figure


def plot_logsumexp(excess, sweep, pair):
    """logsumexp.png, two panels (exercise 3.4.3).

    excess: {'d': [a - b], 'excess': [RealSoftMax(a, b) - max(a, b)]}; sweep: logsumexp_sweep's dict for
    the numbers `pair`: lambda, the stable lambda^-1 RealSoftMax(lambda x), the naive float32 one (inf where
    exp overflowed), the soft-min and the bounds.
    """
    figure = new_figure(12, 4.8)
    left, right = figure.subplots(1, 2)
    left.plot(excess['d'], excess['excess'], color='tab:blue', label='RealSoftMax(a, b) - max(a, b)')
    left.axhline(math.log(2), color='black', linestyle=':', label='log 2, reached at a = b')
    left.set_xlabel('a - b')
    left.set_ylabel('excess over the max')
    left.set_title('(a) log(exp a + exp b) exceeds max(a, b) by at most log 2')
    left.legend(loc='center right', fontsize=9)
    left.grid(True, alpha=0.3)

    lam, n = sweep['lambda'], len(pair)
    low, high, mean = min(pair), max(pair), sum(pair) / n
    log_n = [math.log(n) / x for x in lam]
    # less lambda^-1 log n, both limits show on one bounded axis: mean <= it <= max, min <= soft-min + ... <= mean
    right.plot(lam, [v - c for v, c in zip(sweep['stable'], log_n)], color='tab:blue', linewidth=2,
               label=f'λ⁻¹ RealSoftMax(λa, λb) - λ⁻¹ log {n} (LogSumExp)')
    right.plot(lam, [v + c for v, c in zip(sweep['soft_min'], log_n)], color='tab:green', linewidth=2,
               label=f'soft-min -λ⁻¹ log Σ exp(-λ a_i), + λ⁻¹ log {n}')
    right.plot(lam, sweep['stable'], color='tab:blue', linewidth=1, linestyle=':',
               label=f'λ⁻¹ RealSoftMax(λa, λb) itself: max + at most λ⁻¹ log {n}')
    for value, name in ((high, 'max'), (mean, 'mean'), (low, 'min')):
        right.axhline(value, color='black', linewidth=0.8)
        right.text(lam[-1], value, f'{name} ', ha='right', va='bottom', fontsize=9)
    overflowed = [x for x, v in zip(lam, sweep['naive_float32']) if math.isinf(v)]
    if overflowed:
        right.plot(overflowed, [high + 0.35] * len(overflowed), 'x', color='tab:red', markersize=7,
                   label=f'naive log(exp λa + exp λb) in float32: inf from λ = {overflowed[0]:.3g}')
    right.set_xscale('log')
    right.set_ylim(low - 0.9, high + 0.6)
    right.set_xlabel('λ')
    right.set_title(f'(b) a, b = {pair[0]:g}, {pair[1]:g}: the max (min) as λ → ∞, mean + λ⁻¹ log {n} as λ → 0')
    right.legend(loc='lower left', fontsize=8)
    right.grid(True, alpha=0.3)
    return figure


def plot_reading(rows):
    """reading.png (exercise 3.5.1): seconds to read one epoch against the batch size, one line per reader.

    rows: [{'batch_size', 'book', 'resident'}], the seconds per epoch of each reader.
    """
    figure = new_figure(7.5, 5)
    axes = figure.subplots()
    sizes = [row['batch_size'] for row in rows]
    axes.plot(sizes, [row['book'] for row in rows], 'o-', color='tab:red',
              label='the book: FashionMNIST + ToTensor + DataLoader(num_workers=4)')
    axes.plot(sizes, [row['resident'] for row in rows], 's-', color='tab:blue',
              label="data.py: resident uint8 tensor, a row gather / 255")
    for row in rows:
        axes.annotate(f"{row['book']:.3g} s", (row['batch_size'], row['book']), textcoords='offset points',
                      xytext=(0, 7), ha='center', fontsize=8, color='tab:red')
        axes.annotate(f"{row['resident']:.2g} s", (row['batch_size'], row['resident']), textcoords='offset points',
                      xytext=(0, -14), ha='center', fontsize=8, color='tab:blue')
    axes.set_xscale('log')
    axes.set_yscale('log')
    axes.set_xlabel('batch size')
    axes.set_ylabel('seconds to read one epoch (60,000 images)')
    axes.set_title('Reading Fashion-MNIST: time per epoch against batch size')
    axes.legend(loc='upper right', fontsize=8)
    axes.grid(True, which='both', alpha=0.3)
    return figure


def plot_vocabulary(rows, sampled):
    """vocabulary.png (exercise 3.6.5): one training step's time and tensor memory against the number of
    classes q. rows: [{'q', 'seconds', 'megabytes'}]; sampled: {'q', 'k', 'seconds'} of the sampled softmax."""
    figure = new_figure(12, 4.6)
    time_axes, memory_axes = figure.subplots(1, 2)
    qs = [row['q'] for row in rows]
    time_axes.plot(qs, [row['seconds'] * 1e3 for row in rows], 'o-', color='tab:blue', label='full softmax')
    time_axes.plot([sampled['q']], [sampled['seconds'] * 1e3], 'D', color='tab:green', markersize=9,
                   label=f"sampled softmax, {sampled['k']:,} sampled classes")
    time_axes.set_ylabel('ms per step (forward, closed-form gradient, update)')
    memory_axes.plot(qs, [row['megabytes'] for row in rows], 'o-', color='tab:purple')
    memory_axes.set_ylabel('MB: W, its gradient, the (n, q) logits and theirs')
    memory_axes.axvline(65504, color='tab:red', linestyle=':')
    memory_axes.text(65504, 0.06, 'float16: Σ exp(o - max) ~ q\noverflows from q = 65,505 ', color='tab:red',
                     fontsize=8, ha='right', transform=memory_axes.get_xaxis_transform())
    for axes in (time_axes, memory_axes):
        axes.set_xscale('log')
        axes.set_yscale('log')
        axes.set_xlabel('number of classes q')
        axes.grid(True, which='both', alpha=0.3)
    time_axes.legend(loc='upper left', fontsize=9)
    time_axes.set_title('(a) time of one step')
    memory_axes.set_title('(b) memory of one step')
    return figure
