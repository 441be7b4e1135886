"""The chapter's remaining exercises (d2l 0.17, sections 3.4-3.6) answered by code that runs, measured here.

    python exercises.py                 every answer, figures in --out (default outputs/exercises)
    python exercises.py 3.4.3 3.5.1     only these

  3.4.1  the cross-entropy's second derivative in the logits: diag(p) - p p^T, the covariance of softmax(o)
  3.4.2  three equally likely classes in a binary code: log2 3 bits, and codes of n observations at once
  3.4.3  RealSoftMax(a, b) = log(exp a + exp b): its bounds, lambda -> infinity and -> 0, the soft-min
  3.5.1  does a smaller batch slow reading? the book's reader against data.py's resident tensors
  3.5.2  where the book's reader spends its time, and what this project did about it
  3.6.5  softmax regression with q = 10 ... 100,000 classes (next-word prediction): time, memory, float16
Exit codes: 0 done, 2 bad input (an unknown exercise, a folder that cannot be written), 130 interrupted.
"""
import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli, writing

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

from helpers.book_reader import book_loader, quiet_worker, work_folder, worker_batches  # no torch

if __name__ == '__mp_main__':  # a DataLoader worker of 3.5.1, spawned (Windows, macOS): not a run of its own
    quiet_worker()

import contextlib
import fractions
import functools
import itertools
import math
import os
import shutil
import sys
import time
import warnings

import torch

import data
import losses
import train
from model import SoftmaxRegression

# torch's own notices, not the answers': torch.func's import warns about torch.jit, and the book's 4 workers
# are more than this machine's cores (that is the book's setting, measured as it is)
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
warnings.filterwarnings('ignore', message='This DataLoader will create')

# ----------------------------------------------------------------------------- 3.4.1


def hessian_answer(o, y, samples=200_000):
    """The second derivative of l(o) = cross_entropy(o, y) for one example's logits o: (q,) float64.

    Returns {H by torch.func.hessian and by double backward, both through losses.cross_entropy; the
    covariance of the one-hot e_J, J ~ p = softmax(o), exactly and from `samples` draws; how far H moves
    with y; and v^T H v against the variance of v_J along a random direction v}.
    """
    q = len(o)
    by_func = torch.func.hessian(lambda o: losses.cross_entropy(o, y))(o)
    x = o.clone().requires_grad_()
    grad, = torch.autograd.grad(losses.cross_entropy(x, y), x, create_graph=True)
    by_double_backward = torch.stack([torch.autograd.grad(grad[j], x, retain_graph=True)[0] for j in range(q)])
    p = losses.softmax(o, 0)
    one_hots = torch.eye(q, dtype=o.dtype)  # e_j, the outcome J = j as a one-hot vector
    mean = p @ one_hots  # E[e_J] = p
    covariance = torch.einsum('j,jk,jl->kl', p, one_hots, one_hots) - torch.outer(mean, mean)  # E[e e^T] - E[e]E[e]^T
    draws = torch.multinomial(p, samples, replacement=True, generator=torch.Generator().manual_seed(0))
    sampled = torch.cov(one_hots[draws].T)
    v = torch.randn(q, dtype=o.dtype, generator=torch.Generator().manual_seed(1))
    other_labels = [torch.func.hessian(lambda o: losses.cross_entropy(o, torch.tensor(k)))(o) for k in range(q)]
    return dict(p=p, hessian=by_func, double_backward=by_double_backward, covariance=covariance, sampled=sampled,
                samples=samples, y_spread=max(float((h - by_func).abs().max()) for h in other_labels),
                quadratic_form=float(v @ by_func @ v), variance_along_v=float(p @ v**2 - (p @ v) ** 2))


def exercise_3_4_1(out):
    o = torch.tensor([2.0, 1.0, 0.1, -1.0], dtype=torch.float64)
    answer = hessian_answer(o, torch.tensor(0))
    H = answer['hessian']
    print(f"  o = {o.tolist()}, p = softmax(o) = [{', '.join(f'{v:.4f}' for v in answer['p'])}], y = 0")
    print("  d2l/do do^T by torch.func.hessian through losses.cross_entropy:")
    for row in H:
        print("    [" + "  ".join(f"{v:+.6f}" for v in row) + "]")
    print("  = diag(p) - p p^T: the covariance of the one-hot e_J with J ~ softmax(o); max |difference|:")
    print(f"    torch.func.hessian {float((H - answer['covariance']).abs().max()):.1e}, double backward "
          f"{float((answer['double_backward'] - answer['covariance']).abs().max()):.1e}, "
          f"{answer['samples']:,} sampled J {float((answer['sampled'] - answer['covariance']).abs().max()):.1e} "
          f"(sampling error)")
    print(f"  independent of y: over y = 0..{len(o) - 1} H moves by at most {answer['y_spread']:.1e}")
    print(f"  the variance of o_J along any direction v: v^T H v = {answer['quadratic_form']:.6f}, "
          f"Var(v_J) = {answer['variance_along_v']:.6f}")
    print("  so the 'variance of softmax(o)' is that of the outcome it draws, not sum_j p_j^2 - 1/q; H is "
          "positive semi-definite (l is convex) and H 1 = 0 (a shift of every logit changes nothing)")


# ----------------------------------------------------------------------------- 3.4.2


def code_lengths(n_max=20):
    """Bits per observation for n = 1..n_max observations of 3 equally likely classes coded together.

    [(n, fixed-length bits ceil(n log2 3) / n, Huffman's average bits / n)], as exact fractions: the 3^n
    outcomes are equally likely, and Huffman's code for M equal weights gives 2^(L+1) - M of them L bits
    and the rest L + 1, L = floor(log2 M): an average of L + 2 - 2^(L+1) / M.
    """
    rows = []
    for n in range(1, n_max + 1):
        M = 3 ** n
        fixed = (M - 1).bit_length()  # the smallest L with 2^L >= M, in integers: no rounding of n log2 3
        L = M.bit_length() - 1
        huffman = L + 2 - fractions.Fraction(2 ** (L + 1), M)
        rows.append((n, fractions.Fraction(fixed, n), huffman / n))
    return rows


def exercise_3_4_2(out):
    entropy = math.log2(3)
    print(f"  entropy of 3 equally likely classes: log2 3 = {entropy:.4f} bits; no code does better on average")
    print("  one observation: the best code is 0, 10, 11 (Huffman): (1 + 2 + 2) / 3 = 1.6667 bits")
    print("  n observations coded together (3^n equally likely outcomes), bits per observation:")
    print(f"  {'n':>4}{'fixed ceil(n log2 3)/n':>24}{'Huffman':>10}{'over log2 3':>13}")
    for n, fixed, huffman in code_lengths():
        if n <= 5 or n % 5 == 0:
            print(f"  {n:>4}{float(fixed):>24.4f}{float(huffman):>10.4f}{float(huffman) - entropy:>13.4f}")
    print("  both come within 1/n of the entropy (log2 3 <= bits < log2 3 + 1/n): it is reached only in the "
          "limit, by coding long blocks")


# ----------------------------------------------------------------------------- 3.4.3


def real_softmax(x, dim=-1):
    """RealSoftMax(x) = log sum_i exp(x_i) by the notes' LogSumExp: log_softmax(x)_j = x_j - log sum_i exp(x_i)
    for every j, and at the largest x_j, where log_softmax's shift is exact, that is max + log sum exp(x - max)."""
    return x.amax(dim) - losses.log_softmax(x, dim).amax(dim)


def logsumexp_sweep(x, lambdas):
    """For numbers x: (n,) float64 and each lambda: the stable lambda^-1 RealSoftMax(lambda x), the naive
    lambda^-1 log sum exp(lambda x) in float32 (inf where exp overflows), the soft-min
    -lambda^-1 RealSoftMax(-lambda x), and the bounds max + lambda^-1 log n, mean + lambda^-1 log n."""
    n, lam = len(x), torch.tensor(lambdas, dtype=torch.float64)
    scaled = lam[:, None] * x  # (lambdas, n)
    return {'lambda': list(lambdas), 'stable':(real_softmax(scaled) / lam).tolist(),
            'naive_float32': (scaled.float().exp().sum(1).log() / lam.float()).tolist(),
            'soft_min': (-real_softmax(-scaled) / lam).tolist(),
            'upper': (x.max() + math.log(n) / lam).tolist(),
            'mean_plus': (x.mean() + math.log(n) / lam).tolist()}


def exercise_3_4_3(out):
    from helpers import plots, plots_exercises
    a, b = 1.0, 2.0
    d = torch.linspace(-8, 8, 401, dtype=torch.float64)
    pairs = torch.stack([d, torch.zeros_like(d)], 1)  # (a - b, 0): the excess depends on a - b only
    excess = real_softmax(pairs) - pairs.amax(1)
    print(f"  RealSoftMax(a, b) - max(a, b) = log(1 + exp(-|a - b|)) in (0, log 2]: over a - b in [-8, 8] "
          f"the largest is {float(excess.max()):.6f} at a = b (log 2 = {math.log(2):.6f})")
    x5 = torch.tensor([-1.0, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    print(f"  for n numbers log n: x = {x5.tolist()}: RealSoftMax(x) - max = "
          f"{float(real_softmax(x5) - x5.max()):.4f} <= log 5 = {math.log(5):.4f}")
    lambdas = [10 ** (k / 4) for k in range(-12, 17)]
    sweep = logsumexp_sweep(torch.tensor([a, b], dtype=torch.float64), lambdas)
    print(f"  a, b = {a:g}, {b:g}: lambda^-1 RealSoftMax(lambda a, lambda b), stable (LogSumExp) and naive "
          f"(float32), with the soft-min")
    print(f"  {'lambda':>9}{'stable':>12}{'naive f32':>12}{'mean+log2/λ':>13}{'max+log2/λ':>13}{'soft-min':>13}")
    for k in range(0, len(lambdas), 4):
        print(f"  {lambdas[k]:>9.3g}{sweep['stable'][k]:>12.6f}{sweep['naive_float32'][k]:>12.6g}"
              f"{sweep['mean_plus'][k]:>13.4f}{sweep['upper'][k]:>13.6f}{sweep['soft_min'][k]:>13.6f}")
    first_inf = next(l for l, v in zip(lambdas, sweep['naive_float32']) if math.isinf(v))
    print(f"  lambda -> infinity: max ({b:g}) and min ({a:g}); lambda -> 0: mean + log 2 / lambda. The naive sum "
          f"overflows float32 from lambda = {first_inf:.3g} (lambda b > 88.7), the seed's overflow once more;"
          f" LogSumExp stays finite")
    path = os.path.join(out, 'logsumexp.png')
    plots.save_figure(plots_exercises.plot_logsumexp(dict(d=d.tolist(), excess=excess.tolist()), sweep, (a, b)),
                      path)
    print(f"  saved {path}")


# ----------------------------------------------------------------------------- 3.5.1 and 3.5.2

@functools.lru_cache(maxsize=1)
def fashion_mnist():
    """data.load_fashion_mnist(), loaded once for 3.5.1 and 3.5.2."""
    return data.load_fashion_mnist()


BATCH_SIZES = (1, 16, 64, 256, 1024, data.SPLITS['train'][2])
BOOK_BATCHES = {1: 200, 16: 100, 64: 48, 256: 24, 1024: 8}  # the book's reader reads this many, then scales
SUBSET = 6000  # the book's full-batch epoch is timed as one batch of this many images, then scaled


def epoch_seconds(batches, batch_size, max_batches=None, burst=1, total=data.SPLITS['train'][2], startup=0.0):
    """Seconds to read one epoch of `total` examples from the iterable `batches`, reading at most max_batches:
    the time until the first `burst` batches arrive (start-up, and one batch from each of `burst` DataLoader
    workers, which work at once), plus the steady rate of the rest, scaled to the epoch's other batches. One
    batch of a subset: the time less `startup` (measured apart) scales to the epoch instead."""
    start, seen, arrivals = time.perf_counter(), 0, []
    for _, y in itertools.islice(batches, max_batches):
        arrivals.append(time.perf_counter() - start)
        seen += len(y)
    epoch_batches = math.ceil(total / batch_size)
    if seen >= total:
        return arrivals[-1]
    if len(arrivals) == 1:  # spawned workers start slowly and unevenly: `startup` may exceed this start-up
        return startup + max(arrivals[0] - startup, 0.0) * total / seen
    burst = min(burst, len(arrivals) - 1)
    return arrivals[burst - 1] + (arrivals[-1] - arrivals[burst - 1]) * (epoch_batches - burst) / (len(arrivals) - burst)


@contextlib.contextmanager
def torchvision_copy():
    """The root of data.torchvision_root's copy of the data for the book's reader (3.5.1, 3.5.2), in a temporary
    folder removed however the exercise ends; one that cannot be made or filled is cli.OutputError."""
    work = None
    try:
        with cli.signals_deferred():  # the folder is known to the clean-up below before a Ctrl-C acts
            work = work_folder('exercises-')
        yield data.torchvision_root(data.find_data_dir(), work)
    finally:
        if work is not None:
            with cli.signals_deferred():
                shutil.rmtree(work, ignore_errors=True)


def reading_times(images, labels, root, batch_sizes=BATCH_SIZES, book_batches=BOOK_BATCHES, num_workers=4,
                  subset=SUBSET):
    """[{'batch_size', 'book', 'resident'}]: seconds per epoch of the book's reader (torchvision FashionMNIST
    in `root` + ToTensor + DataLoader(shuffle=True, num_workers)) and of data.batches on the resident
    tensors, as epoch_seconds measures them; the full-batch size (len(images)) reads a subset for the book.
    This process uses one thread, as each DataLoader worker does."""
    import torchvision
    from torch.utils import data as torch_data
    dataset = torchvision.datasets.FashionMNIST(root, train=True, transform=torchvision.transforms.ToTensor())
    generator = torch.Generator().manual_seed(0)
    rows, startup, threads = [], None, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for size in batch_sizes:
            if size >= len(images):  # one batch of a subset, scaled
                subset_set = torch_data.Subset(dataset, torch.randperm(len(dataset), generator=generator)[:subset])
                loader = book_loader(subset_set, subset, True, num_workers)
                with contextlib.closing(worker_batches(loader)) as batches:
                    book = epoch_seconds(batches, size, total=len(images), startup=startup or 0.0)
            else:
                loader = book_loader(dataset, size, True, num_workers)
                if startup is None:  # start-up and one batch of the smallest size, for the subset below
                    start = time.perf_counter()
                    with contextlib.closing(worker_batches(loader)) as batches:
                        next(batches)
                        startup = time.perf_counter() - start
                with contextlib.closing(worker_batches(loader)) as batches:
                    book = epoch_seconds(batches, size, book_batches.get(size, 1), max(num_workers, 1), len(images))
            resident = epoch_seconds(data.batches(images, labels, size, generator), size,
                                     6000 if size == 1 else None, total=len(images))
            rows.append(dict(batch_size=size, book=book, resident=resident))
    finally:
        torch.set_num_threads(threads)
    return rows


def exercise_3_5_1(out, loaded=None):
    from helpers import plots, plots_exercises
    images, labels = (loaded or fashion_mnist())[:2]
    with torchvision_copy() as root:
        rows = reading_times(images, labels, root)
    print("  seconds to read the 60,000 training images once (batch sizes 1-1024 of the book's reader: a fixed "
          "number of batches, scaled; 60000: one batch of 6,000, x10; data.py's batch 1: 6,000 batches, x10)")
    print(f"  {'batch size':>10}{'book':>10}{'data.py':>10}{'book / data.py':>16}")
    for row in rows:
        print(f"  {row['batch_size']:>10}{row['book']:>10.3g}{row['resident']:>10.3g}"
              f"{row['book'] / row['resident']:>15.0f}x")
    by_size = {row['batch_size']: row for row in rows}
    full = by_size[BATCH_SIZES[-1]]['book']
    print(f"  yes: at batch 1 the book's reader takes {by_size[1]['book'] / by_size[256]['book']:.0f}x its time at "
          f"256 (a worker round trip and a collate per image), data.py {by_size[1]['resident'] / by_size[256]['resident']:.0f}x"
          f" (a Python step per image). From 256 up the book's per-image work (PIL, ToTensor) stays: "
          f"{by_size[1024]['book']:.3g} s at 1024, {full:.3g} s in one batch (one worker does it all)")
    path = os.path.join(out, 'reading.png')
    plots.save_figure(plots_exercises.plot_reading(rows), path)
    print(f"  saved {path}")
    return rows


def reader_costs(images, root, count=2000, batch_size=256):
    """Microseconds per image of each stage of the book's reader, in this process, over `count` images:
    PIL image (what FashionMNIST.__getitem__ builds), ToTensor, the whole dataset[i], default_collate of a
    batch; and of data.py's batch (a row gather and / 255)."""
    import torchvision
    from PIL import Image
    from torch.utils.data import default_collate
    dataset = torchvision.datasets.FashionMNIST(root, train=True, transform=torchvision.transforms.ToTensor())
    to_tensor = torchvision.transforms.ToTensor()

    def per_image(work, n):
        start = time.perf_counter()
        result = work()
        return result, (time.perf_counter() - start) / n * 1e6
    pil, pil_us = per_image(lambda: [Image.fromarray(dataset.data[i].numpy(), mode='L') for i in range(count)], count)
    _, tensor_us = per_image(lambda: [to_tensor(image) for image in pil], count)
    items, item_us = per_image(lambda: [dataset[i] for i in range(count)], count)
    _, collate_us = per_image(lambda: [default_collate(items[k:k + batch_size])
                                       for k in range(0, count, batch_size)], count)
    index = torch.randperm(len(images))[:batch_size]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker; a second thread may wait for a busy core here
    try:
        _, gather_us = per_image(lambda: [data.to_features(images.index_select(0, index)) for _ in range(50)],
                                 50 * batch_size)
    finally:
        torch.set_num_threads(threads)
    return dict(pil=pil_us, to_tensor=tensor_us, item=item_us, collate=collate_us, resident=gather_us)


def exercise_3_5_2(out, loaded=None):
    images = (loaded or fashion_mnist())[0]
    with torchvision_copy() as root:
        costs = reader_costs(images, root)
    epoch = data.SPLITS['train'][2] / 1e6  # microseconds per image -> seconds per epoch
    print("  where the book's reader spends its time, per image (one process; an epoch is 60,000 images):")
    for name, key in (("PIL image from the uint8 array (FashionMNIST.__getitem__)", 'pil'),
                      ("ToTensor: PIL -> float tensor / 255", 'to_tensor'),
                      ("dataset[i], the two together", 'item'), ("default_collate into batches of 256", 'collate'),
                      ("data.py: a 256-row gather of the resident uint8 tensor, / 255", 'resident')):
        print(f"    {name:<62}{costs[key]:>8.2f} us  {costs[key] * epoch:>7.3f} s/epoch")
    print(f"  not fast enough: per image the book's reader costs {costs['item'] + costs['collate']:.0f} us against "
          f"{costs['resident']:.2f} us ({(costs['item'] + costs['collate']) / costs['resident']:.0f}x), 4 workers "
          f"share {os.cpu_count()} cores here. Faster: decode once, keep each split as one uint8 tensor and make a "
          f"batch by a row gather (data.py); python bench.py times whole epochs of both")


# ----------------------------------------------------------------------------- 3.6.5

CLASS_COUNTS = (10, 100, 1_000, 10_000, 100_000)


def step_costs(class_counts=CLASS_COUNTS, d=128, n=256, steps=4, lr=0.1):
    """One training step (forward O = XW + b, closed-form gradient, SGD update: train.py's) for q classes
    at feature size d and batch n: [{'q', 'seconds' (the fastest of `steps`, after one more to warm up, on 1
    thread and on all by turns: on a busy machine a second thread can wait for a core),
    'parameters' d q + q,
    'megabytes' of W, its gradient, the (n, q) logits and their gradient, 'float16'}], where float16 says
    what the same initial logits give in half precision: the loss, and the softmax's smallest probability."""
    generator = torch.Generator().manual_seed(0)
    X = torch.rand(n, d, generator=generator)
    rows = []
    for q in class_counts:
        torch.manual_seed(0)
        model = SoftmaxRegression(d, q)
        y = torch.randint(0, q, (n,), generator=generator)
        params = list(model.parameters())
        velocities = [torch.zeros_like(p) for p in params]
        times, threads = [], torch.get_num_threads()
        for step in range(steps + 1 if q < 50_000 else 3):  # the largest q: a second each here
            torch.set_num_threads(1 if step % 2 else threads)
            start = time.perf_counter()
            with torch.no_grad():
                O = model(X)
                _, grads = train.closed_form_gradients(model, X, O, y)
            train.sgd_update(params, grads, velocities, lr)
            times.append(time.perf_counter() - start)
        torch.set_num_threads(threads)
        nbytes = sum(t.numel() * t.element_size() for t in (*params, *grads)) + 2 * O.numel() * O.element_size()
        with torch.no_grad():
            half = model(X).half()
        loss16, _ = losses.cross_entropy_with_grad(half, y)
        rows.append(dict(q=q, seconds=min(times[1:]), parameters=d * q + q, megabytes=nbytes / 1e6,
                         loss16=float(loss16.float().mean()), min_p16=float(losses.softmax(half).min())))
    return rows


def sampled_softmax_step(model, X, y, k, lr, generator):
    """One step of sampled softmax: the loss and its closed-form gradient over the batch's own classes and k
    classes drawn uniformly, instead of all q; only those columns of W and b are read and updated. (The
    uniform draw is not corrected for: a cheaper estimate of the full loss, not the same loss.)"""
    q = model.b.shape[0]
    candidates = torch.unique(torch.cat([y, torch.randint(0, q, (k,), generator=generator)]))  # sorted
    with torch.no_grad():
        O = torch.addmm(model.b[candidates], X, model.W[:, candidates])  # (n, |candidates|) logits
        _, dO = losses.cross_entropy_with_grad(O, torch.searchsorted(candidates, y))
        dW, db = model.gradients(X, dO.div_(len(y)))
        model.W.index_add_(1, candidates, dW, alpha=-lr)
        model.b.index_add_(0, candidates, db, alpha=-lr)


def exercise_3_6_5(out, d=128, n=256):
    from helpers import plots, plots_exercises
    rows = step_costs(d=d, n=n)
    print(f"  one step (forward, closed-form gradient, update) at feature size d = {d}, n = {n} examples:")
    print(f"  {'q':>8}{'ms/step':>10}{'params d*q+q':>14}{'MB':>9}{'float16 loss':>14}{'min p float16':>15}")
    for row in rows:
        print(f"  {row['q']:>8,}{row['seconds'] * 1e3:>10.2f}{row['parameters']:>14,}{row['megabytes']:>9.1f}"
              f"{row['loss16']:>14.4g}{row['min_p16']:>15.3g}")
    generator = torch.Generator().manual_seed(0)
    q, k = rows[-1]['q'], 1000
    torch.manual_seed(0)
    model, X = SoftmaxRegression(d, q), torch.rand(n, d, generator=generator)
    y = torch.randint(0, q, (n,), generator=generator)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        sampled_softmax_step(model, X, y, k, 0.1, generator)
        times.append(time.perf_counter() - start)
    sampled = dict(q=q, k=k, seconds=min(times[1:]))
    print("  time and memory grow as d q: the (n, q) logits, W and the softmax over q. In float16 the initial, "
          "nearly uniform logits give sum_k exp(o_k - max) ~ q, which overflows float16 (max 65,504) for q > "
          "65,504: the loss is inf and every probability 0; from q = 16,385, 1/q is below float16's smallest "
          "normal number (6.1e-5)")
    print(f"  what large vocabularies do instead: sampled softmax, the batch's classes and {k:,} drawn ones: "
          f"{sampled['seconds'] * 1e3:.1f} ms per step at q = {q:,} against {rows[-1]['seconds'] * 1e3:.1f} ms "
          f"for the full softmax; hierarchical softmax (a tree of classes) makes a step O(d log q)")
    path = os.path.join(out, 'vocabulary.png')
    plots.save_figure(plots_exercises.plot_vocabulary(rows, sampled), path)
    print(f"  saved {path}")
    return rows, sampled


# ----------------------------------------------------------------------------- the command line

EXERCISES = {
    '3.4.1': ("second derivative of the cross-entropy; the variance of softmax(o)", exercise_3_4_1),
    '3.4.2': ("three equally likely classes and a binary code", exercise_3_4_2),
    '3.4.3': ("RealSoftMax(a, b) = log(exp a + exp b)", exercise_3_4_3),
    '3.5.1': ("does a smaller batch slow reading?", exercise_3_5_1),
    '3.5.2': ("is the iterator fast enough; what would make it faster?", exercise_3_5_2),
    '3.6.5': ("softmax regression with a large vocabulary (next-word prediction)", exercise_3_6_5),
}


def main(argv=None):
    """python exercises.py [ID ...] [--out DIR]: the answers asked for (all by default). Returns the exit code."""
    parser = cli.ArgumentParser(prog='exercises.py', description=__doc__.strip().split('\n')[0])
    parser.add_argument('ids', nargs='*', metavar='ID', help=f"exercises to answer: {', '.join(EXERCISES)} "
                                                              f"(default: all)")
    parser.add_argument('--out', default=os.path.join('outputs', 'exercises'), type=cli.non_empty,
                        help="folder for the figures (default: %(default)s)")
    args = parser.parse_args([] if argv is None else argv)
    unknown = [id_ for id_ in args.ids if id_ not in EXERCISES]
    if unknown:
        parser.error(f"unknown exercise {unknown[0]!r}; choose from {', '.join(EXERCISES)}")
    writing.prepare_out_dir(args.out)
    for id_ in args.ids or EXERCISES:
        what, answer = EXERCISES[id_]
        print(f"\n{id_}  {what}")
        answer(args.out)
    return cli.EXIT_DONE


if __name__ == '__main__':
    sys.exit(cli.run(main, sys.argv[1:]))
