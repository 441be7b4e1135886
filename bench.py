"""Benchmark: train.py against the book's pipeline and against the floor, on the real data, in one run.

    python bench.py                      # or: make bench
    python bench.py --book-epochs 2 --epochs 10 --whole-runs 1 --device cpu

What is timed, each in its own process, interleaved so that a drift in the speed of a shared machine
weighs on all alike (start: ours, then the book, middle: the floor, the losses and ours beside a busy
process, end: ours again; the whole-command runs spread over the three):
  book      d2l 3.5-3.7: torchvision FashionMNIST with ToTensor, DataLoader(batch_size=256, shuffle=True,
            num_workers=4), nn.Linear, nn.CrossEntropyLoss, SGD lr 0.1, in the environment you run it in
  ours      train.train's textbook epochs, half at the start and half at the end of the run
  floor     what no implementation of an epoch can skip: per step of 256 examples in a random order,
            one row gather of the (60000, 784) float32 features and the two GEMMs, (n,784)@(784,10)
            forward and (10,n)@(n,784) for the weight gradient; plus one (10000,784)@(784,10) test GEMM.
            Nothing else (no softmax, no update). Measured in the processes that run ours (start, end)
            and in one between them (middle), after `import train`, so in the same thread environment.
            train.py switches between 1 thread and all of them as the machine's load changes, so each
            floor epoch runs with both and counts the faster: the floor is never handicapped by a count.
  whole     `python train.py --out TMP` (10 textbook epochs, every output written) against a process that
            imports torch (by way of `import train`, for its thread environment; nothing of train.py
            runs), loads the data with data.py and runs 10 floor epochs: the wall time of each process
            from the outside, interpreter start included, less the slower run of each floor epoch; the
            two alternate, spread over the run
  losses    losses.cross_entropy against F.cross_entropy, forward + backward, interleaved, each at its
            faster thread count (1 or all), in the middle process
  contended ours again, at the end of the middle process, beside one busy single-threaded process that
            it starts and kills (`python -c "while True: pass"`): what a user's other work does to an
            epoch, as a ratio to the idle floor
An epoch is one pass over the 60,000 training images plus the accuracy on the 10,000 test images.
Writes --out/bench.json. Exit codes: 0 done, 1 something broke, 2 bad input, 130 interrupted.
"""
from support import cli, writing

if __name__ == '__main__':  # before anything slow: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time

from helpers.bench_children import ChildFailed, Children, busy_neighbour, peak_rss_mb, whole_pair
from helpers.book_reader import book_loader, quiet_worker, work_folder, worker_batches
from helpers.bench_report import ROUNDS, printout, summarize

if __name__ == '__mp_main__':  # the book's DataLoader worker, spawned (Windows, macOS): not a run of its own
    quiet_worker()

# Nothing here imports torch, nor support.threads, at module level (the first import of an entry point
# elsewhere): the parent only starts processes and reads their results, so a bad flag costs no torch
# import, and its children inherit the user's environment untouched. The processes that run train.py's
# pipeline or the floor import train first, and so support.threads and the environment it sets
# (MKL_CBWR, GOMP_SPINCOUNT) before torch loads; the book's process never does.

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_PY = os.path.join(HERE, 'train.py')
BATCH_SIZE, NUM_INPUTS, NUM_CLASSES = 256, 784, 10


# ============================================================================= in the child processes

def check_device(device):
    import torch
    if device == 'cuda' and not torch.cuda.is_available():
        raise cli.InputError("argument --device: cuda was asked for but this machine has no usable CUDA device")


def synchronizer(device):
    import torch
    return torch.cuda.synchronize if str(device).startswith('cuda') else (lambda: None)


def book_pipeline(epochs, data_dir, work_dir, device, max_batches=None):
    """The book's concise implementation (d2l 3.7), timed per epoch: train pass + test accuracy.
    max_batches (tests only) stops each pass early."""
    import itertools

    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    import data
    root = data.torchvision_root(data_dir, work_dir)  # a folder the parent removes however the run ends
    train_set = torchvision.datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    test_set = torchvision.datasets.FashionMNIST(root, train=False, transform=transforms.ToTensor())
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).to(device)
    nn.init.normal_(net[1].weight, std=0.01)
    loss = nn.CrossEntropyLoss()
    trainer = torch.optim.SGD(net.parameters(), lr=0.1)
    # DataLoader(..., num_workers=4), whose workers also work spawned; worker_batches starts and stops them
    train_iter = book_loader(train_set, batch_size=256, shuffle=True)
    test_iter = book_loader(test_set, batch_size=256, shuffle=False)
    sync = synchronizer(device)
    seconds, accuracy = [], None
    for _ in range(epochs):
        start = time.perf_counter()
        with contextlib.closing(worker_batches(train_iter)) as batches:
            for X, y in itertools.islice(batches, max_batches):
                X, y = X.to(device), y.to(device)
                l = loss(net(X), y)
                trainer.zero_grad()
                l.backward()
                trainer.step()
        correct = seen = 0
        with torch.no_grad(), contextlib.closing(worker_batches(test_iter)) as batches:
            for X, y in itertools.islice(batches, max_batches):
                correct += int((net(X.to(device)).argmax(1) == y.to(device)).sum())
                seen += y.shape[0]
        sync()
        seconds.append(time.perf_counter() - start)
        accuracy = correct / seen
    return dict(seconds=seconds, test_acc=accuracy)


def our_pipeline(train, epochs, datasets, device):
    """train.py's textbook run; seconds per epoch exactly as train.train records them."""
    import torch
    config = train.Config(epochs=epochs, device=str(device), out='unused')
    model = train.new_model(config, torch.device(device))
    history = []
    for history, _ in train.train(config, model, datasets, torch.device(device)):
        pass
    return dict(seconds=[row['seconds'] for row in history], test_acc=history[-1]['test_acc'],
                threads_by_epoch=[row.get('threads') for row in history])


def floor_epochs(train_features, test_features, epochs, device, max_threads):
    """Floor epochs (see the module docstring), each run with every thread count train.py may pick: 1 and
    max_threads on a CPU (its ThreadChooser switches between them as the machine's load changes). An
    epoch's floor is the faster of its runs. A later run of an epoch stops as soon as it has taken longer
    than the epoch's best (beside a busy process, two threads can be 30x slower than one). Both runs take
    the same batches, drawn before the clock starts. Returns dict(seconds: the floor of each epoch,
    by_threads: {count: seconds of each epoch's run, None where it was stopped}, total: the seconds of
    every run, stopped ones included).

    A step is X = one row gather, O = X W with W stored (10, 784) as train.py's model stores it
    (F.linear: the fastest layout), and dW^T = O^T X, a (10, n) @ (n, 784) GEMM written in W's storage
    order; an epoch ends with the test set's (10000, 784) @ (784, 10)."""
    import torch
    import torch.nn.functional as F
    generator = torch.Generator().manual_seed(0)
    W_storage = (torch.randn(NUM_CLASSES, NUM_INPUTS, generator=generator) * 0.01).to(device)
    sync = synchronizer(device)
    previous = torch.get_num_threads()
    # one thread first: beside a busy process it is never far off, while an unbounded first run with all
    # threads can take seconds; from then on the count that won the last epoch goes first
    counts = sorted({1, max_threads}) if str(device) == 'cpu' else [previous]
    by_threads = {count: [] for count in counts}
    best, total = [], 0.0
    try:
        for _ in range(epochs):
            batches = torch.randperm(train_features.shape[0], generator=generator).to(device).split(BATCH_SIZE)
            epoch_best = None
            for count in counts:
                torch.set_num_threads(count)
                sync()
                start, stopped = time.perf_counter(), False
                for step, index in enumerate(batches):
                    X = train_features.index_select(0, index)
                    O = F.linear(X, W_storage)  # (n, 784) @ (784, 10)
                    torch.mm(O.T, X)  # (10, n) @ (n, 784): the weight gradient's GEMM, O standing in for dO
                    if epoch_best is not None and step % 8 == 7 and time.perf_counter() - start > epoch_best:
                        stopped = True  # already slower than the epoch's best: it cannot be the floor
                        break
                else:
                    F.linear(test_features, W_storage)  # (10000, 784) @ (784, 10)
                sync()
                seconds = time.perf_counter() - start
                total += seconds
                by_threads[count].append(None if stopped else seconds)
                if not stopped:
                    epoch_best = seconds if epoch_best is None else min(epoch_best, seconds)
            best.append(epoch_best)
            # the winner first next time
            counts.sort(key=lambda count: by_threads[count][-1] or float('inf'))
    finally:
        torch.set_num_threads(previous)
    return dict(seconds=best, by_threads={str(count): times for count, times in sorted(by_threads.items())},
                total=total)


# (logits shape, calls per timed block): blocks of ~5-20 ms on this project's 2 cores. 'flattened': the
# K-dimensional case before it, (N, C, d1, d2) -> (N*d1*d2, C), classes last, the same numbers.
LOSS_CASES = [
    ((256, 10), 50),
    ((8192, 1000), 1),
    ((32, 10, 64, 64), 4),  # K-dimensional: one distribution over the 10 classes per pixel
    ('flattened', 4),
]


def loss_timings(blocks, max_threads=None):
    """Seconds per forward + backward of losses.cross_entropy ('scratch') and F.cross_entropy ('torch'),
    timed in alternating blocks (ABBA...) so that a change in the machine's speed weighs on both, with
    1 thread and with max_threads, as the floor (a thread that waits for a busy core can make an op
    10x slower; a count 1.5x slower than the other for both functions over the first 4 blocks is
    dropped); each function's time is its median over blocks at its faster count. A shape
    losses.cross_entropy refuses is reported as unsupported, with its error; a result that differs from
    torch's is reported as a mismatch instead of being timed."""
    import torch
    import torch.nn.functional as F
    from losses import cross_entropy
    torch.manual_seed(0)
    results = {}
    for shape, calls in LOSS_CASES:
        if shape == 'flattened':  # the previous case's logits, classes last, one row per pixel
            logits = logits.detach().movedim(1, -1).reshape(-1, logits.shape[1]).contiguous()
            target = target.reshape(-1)
        else:
            logits = torch.randn(shape)
            target = torch.randint(shape[1], (shape[0],) + shape[2:])
        logits.requires_grad_(True)
        functions = {'scratch': cross_entropy, 'torch': F.cross_entropy}
        result = dict(shape=list(logits.shape), flattened=shape == 'flattened')
        outputs = {}
        for key, function in list(functions.items()):
            try:
                loss = function(logits, target)
                loss.backward()
                outputs[key] = (loss.detach(), logits.grad)
            except Exception as error:  # e.g. K-dimensional input before losses.py supports it
                if key == 'torch':
                    raise
                message = (str(error).strip().splitlines() or [''])[0][:200]
                result['unsupported'] = f"{type(error).__name__}: {message}"
                del functions[key]
            logits.grad = None
        if 'scratch' in outputs:
            (loss_s, grad_s), (loss_t, grad_t) = outputs['scratch'], outputs['torch']
            if not (torch.allclose(loss_s, loss_t, rtol=1e-4, atol=1e-6)
                    and torch.allclose(grad_s, grad_t, rtol=1e-3, atol=1e-4 * float(grad_t.abs().max()))):
                result['mismatch'] = (f"loss {float(loss_s):.6g} vs {float(loss_t):.6g}, "
                                      f"max |grad difference| {float((grad_s - grad_t).abs().max()):.3g}")
                del functions['scratch']
        previous = torch.get_num_threads()
        counts = sorted({1, max_threads or previous})
        times = {key: {count: [] for count in counts} for key in functions}
        order = [(count, key, function) for count in counts for key, function in functions.items()]
        try:
            for block in range(blocks):
                if block == 4 and len(counts) > 1:  # drop a count clearly slower for both functions
                    medians = {key: {count: statistics.median(times[key][count]) for count in counts}
                               for key in times}
                    kept = [count for count in counts
                            if any(m[count] <= 1.5 * min(m.values()) for m in medians.values())]
                    order = [entry for entry in order if entry[0] in kept]
                for count, key, function in (order if block % 2 == 0 else order[::-1]):
                    torch.set_num_threads(count)
                    start = time.perf_counter()
                    for _ in range(calls):
                        function(logits, target).backward()
                        logits.grad = None
                    times[key][count].append((time.perf_counter() - start) / calls)
        finally:
            torch.set_num_threads(previous)
        for key, by_count in times.items():
            medians = {count: statistics.median(values) for count, values in by_count.items()}
            result[key + '_threads'] = min(medians, key=medians.get)
            result[key] = medians[result[key + '_threads']]
            result[key + '_by_threads'] = {str(count): median for count, median in medians.items()}
        if 'scratch' in result:
            result['ratio'] = result['scratch'] / result['torch']
        results['x'.join(map(str, logits.shape))] = result
    return results


def child_main(spec):
    """One measurement, in this fresh process; prints its result as one JSON line."""
    kind = spec['kind']
    if kind == 'book':  # the user's environment: data.py, an entry point too, imports support.threads,
        user_environment = dict(os.environ)  # whose settings must not reach the book's torch and MKL
        import torch

        import data
        for name in set(os.environ) - set(user_environment):
            del os.environ[name]
    else:  # first, before torch loads: train.py's thread environment, for ours and for the floor
        import train  # noqa: F401
        import torch

        import data
    device = spec['device']
    check_device(device)
    threads = torch.get_num_threads()  # torch's choice for this machine, before train.py's ThreadChooser runs
    result = dict(torch_version=str(torch.__version__), threads=threads,
                  thread_environment={name: value for name, value in os.environ.items()
                                      if name.startswith(('OMP_', 'GOMP_', 'KMP_', 'MKL_'))})
    if device == 'cuda':
        result['device_name'] = torch.cuda.get_device_name()
    if kind == 'book':
        folder = data.find_data_dir(spec['data_dir'], download=False)
        result.update(book_pipeline(spec['epochs'], folder, spec['work_dir'], device, spec.get('max_batches')))
    else:
        datasets = data.load_fashion_mnist(spec['data_dir'], device, download=False)
        if kind == 'ours' and spec['epochs']:
            result.update(our_pipeline(sys.modules['train'], spec['epochs'], datasets, device))
        if spec['floor_epochs']:
            features = [images.float().div_(255) for images in datasets[0::2]]  # X/255 once, as train.py
            result['floor'] = floor_epochs(*features, spec['floor_epochs'], device, threads)
        if spec.get('loss_blocks'):
            result['cross_entropy'] = loss_timings(spec['loss_blocks'], threads)
        if spec.get('contended_epochs'):  # last: the neighbour is gone before anything else is timed
            with busy_neighbour():
                result['contended'] = our_pipeline(sys.modules['train'], spec['contended_epochs'], datasets,
                                                   device)
    if device == 'cuda':
        result['peak_cuda_mb'] = torch.cuda.max_memory_allocated() / 2**20
    result['peak_rss_mb'] = peak_rss_mb()
    from support.threads import gemms_reproducible_across_thread_counts  # loaded by data.py already
    result['mkl_strict'] = gemms_reproducible_across_thread_counts()  # what the GEMMs above ran under
    print(json.dumps(result))
    return 0


# ============================================================================= in the parent

def measure(args, children):
    """Run every measurement in its place in the schedule; return the raw results."""
    bench = [sys.executable, os.path.abspath(__file__), '--child']
    common = dict(device=args.device, data_dir=args.data_dir)

    def child(what, **spec):
        stdout, wall, rss = children.run(bench + [json.dumps(dict(common, **spec))], what)
        return json.loads(stdout.strip().splitlines()[-1])

    def whole_runs(round_):
        for index in range(ROUNDS.index(round_), args.whole_runs, len(ROUNDS)):
            out = os.path.join(children.work_dir, f"whole-{index}")
            train_command = [sys.executable, TRAIN_PY, '--out', out, '--epochs', str(args.whole_epochs),
                             '--device', args.device] + (['--data-dir', args.data_dir] if args.data_dir else [])
            floor_command = bench + [json.dumps(dict(common, kind='floor', floor_epochs=args.whole_epochs))]
            whole[round_].append(whole_pair(children, train_command, floor_command, index))
            shutil.rmtree(out, ignore_errors=True)

    whole = {round_: [] for round_ in ROUNDS}

    first_half = args.epochs // 2
    ours = {}
    ours['start'] = child("train.py's pipeline (start)", kind='ours', epochs=first_half,
                          floor_epochs=args.floor_epochs)
    whole_runs('start')
    book = child("the book's pipeline", kind='book', epochs=args.book_epochs, work_dir=children.work_dir,
                 max_batches=args.book_batches)
    ours['middle'] = child("the floor, the losses, beside a busy process (middle)", kind='ours', epochs=0,
                           floor_epochs=args.floor_epochs, loss_blocks=args.loss_blocks,
                           contended_epochs=args.contended_epochs)
    whole_runs('middle')
    ours['end'] = child("train.py's pipeline (end)", kind='ours', epochs=args.epochs - first_half,
                        floor_epochs=args.floor_epochs)
    whole_runs('end')
    return book, ours, whole


def spec_argument(text):
    try:
        spec = json.loads(text)
    except ValueError:
        spec = None
    if not isinstance(spec, dict) or spec.get('kind') not in ('book', 'ours', 'floor'):
        raise argparse.ArgumentTypeError("is for bench.py's own child processes")
    return spec


def build_parser():
    parser = cli.ArgumentParser(
        prog='bench.py',
        description="Time train.py against the book's pipeline and the floor (gather + GEMMs), idle and "
                    "beside a busy process, in one run.",
        epilog="Exit codes: 0 done, 1 something broke, 2 bad input, 130 interrupted.")
    parser.add_argument('--epochs', type=cli.whole_number(2, 201), default=10, metavar='N',
                        help="epochs of train.py's pipeline, half at the start of the run and half at the "
                             "end, 2-200 (default %(default)s)")
    parser.add_argument('--book-epochs', type=cli.whole_number(1, 51), default=3, metavar='N',
                        help="epochs of the book's pipeline, ~8 s each on 2 cores, 1-50 (default %(default)s)")
    parser.add_argument('--floor-epochs', type=cli.whole_number(1, 201), default=5, metavar='N',
                        help="floor epochs at each of the start, middle and end, 1-200 (default %(default)s)")
    parser.add_argument('--whole-runs', type=cli.whole_number(0, 10), default=3, metavar='N',
                        help="runs of the whole `python train.py` command and of its floor, spread over the "
                             "run, 0-9; 0 skips them (default %(default)s)")
    parser.add_argument('--contended-epochs', type=cli.whole_number(0, 201), default=6, metavar='N',
                        help="epochs of train.py's pipeline beside a busy process that bench.py starts and "
                             "stops, 0-200; 0 skips them (default %(default)s)")
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'],
                        help="where both pipelines run (default %(default)s)")
    parser.add_argument('--data-dir', type=cli.non_empty, metavar='DIR', help="as train.py's --data-dir")
    parser.add_argument('--out', default='outputs', metavar='DIR',
                        help="where bench.json goes (default %(default)s)")
    # For the tests: fewer timing blocks for the losses, a book epoch cut short, a shorter whole command.
    parser.add_argument('--loss-blocks', type=cli.whole_number(1, 1001), default=20, help=argparse.SUPPRESS)
    parser.add_argument('--book-batches', type=cli.whole_number(1, 1000), help=argparse.SUPPRESS)
    parser.add_argument('--whole-epochs', type=cli.whole_number(1, 201), default=10, help=argparse.SUPPRESS)
    parser.add_argument('--child', type=spec_argument, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    writing.prepare_out_dir(args.out)
    children = work_dir = None
    try:
        with cli.signals_deferred():  # the folder is known to the cleanup below before a Ctrl-C acts
            work_dir = work_folder('bench-')
            children = Children(work_dir)
        report = summarize(*measure(args, children), args.device, args.whole_epochs,
                           ' '.join(['python', 'bench.py'] + sys.argv[1:]))
        report['processes'] = [dict(what=what, seconds=seconds) for what, seconds in children.log]
    except ChildFailed as failure:
        cli.say(f"error: {failure}")
        return cli.EXIT_DIVERGED
    finally:
        with cli.signals_ignored():  # a second Ctrl-C must not cut the cleanup short
            if children is not None:
                children.kill_all()
            if work_dir is not None:
                shutil.rmtree(work_dir, ignore_errors=True)
    for line in printout(report):
        print(line)
    path = os.path.join(args.out, 'bench.json')
    writing.write_text(path, json.dumps(report, indent=2) + '\n')
    print(f"wrote {path}")
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
