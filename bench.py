"""Benchmark: an epoch of train.py against the book's own pipeline, on the real data, in one run.

    python bench.py                      # or: make bench
    python bench.py --book-epochs 2 --epochs 10 --device cpu

The book's pipeline (d2l 3.5-3.7): torchvision FashionMNIST with ToTensor, DataLoader(batch_size=256,
shuffle=True, num_workers=4), nn.Linear, nn.CrossEntropyLoss, SGD lr 0.1; an epoch is one pass over the
60,000 training images plus the accuracy on the 10,000 test images, as train.py's epoch is. Each pipeline
runs in its own process so that its peak memory (RSS, DataLoader workers included) is its own, and in
the environment it would have: the book's as you run it, train.py's with the GOMP_SPINCOUNT it sets. Also times
forward plus backward of losses.cross_entropy against F.cross_entropy. Writes outputs/bench.json.
"""
import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from train import write_text


def peak_rss_mb():
    """Peak resident memory of this process and of its finished children (DataLoader workers), in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024  # Linux reports KiB


def torchvision_root(data_dir):
    """torchvision's FashionMNIST wants root/FashionMNIST/raw/<uncompressed files>: make one in a temp folder."""
    root = tempfile.mkdtemp(prefix='bench-fashion-mnist-')
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    os.makedirs(raw)
    for name in os.listdir(data_dir):
        source = os.path.join(data_dir, name)
        if name.endswith('.gz'):
            with gzip.open(source) as f_in, open(os.path.join(raw, name[:-3]), 'wb') as f_out:
                shutil.copyfileobj(f_in, f_out)
        elif 'ubyte' in name:
            shutil.copy(source, raw)
    return root


def book_pipeline(epochs, data_dir, device):
    """The book's concise implementation (d2l 3.7), timed per epoch: train pass + test accuracy."""
    import torchvision
    from torch import nn
    from torch.utils import data as torch_data
    from torchvision import transforms
    root = torchvision_root(data_dir)
    try:
        train_set = torchvision.datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
        test_set = torchvision.datasets.FashionMNIST(root, train=False, transform=transforms.ToTensor())
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).to(device)
        nn.init.normal_(net[1].weight, std=0.01)
        loss = nn.CrossEntropyLoss()
        trainer = torch.optim.SGD(net.parameters(), lr=0.1)
        train_iter = torch_data.DataLoader(train_set, batch_size=256, shuffle=True, num_workers=4)
        test_iter = torch_data.DataLoader(test_set, batch_size=256, shuffle=False, num_workers=4)
        seconds, accuracy = [], None
        for _ in range(epochs):
            start = time.perf_counter()
            for X, y in train_iter:
                X, y = X.to(device), y.to(device)
                l = loss(net(X), y)
                trainer.zero_grad()
                l.backward()
                trainer.step()
            correct = 0
            with torch.no_grad():
                for X, y in test_iter:
                    correct += int((net(X.to(device)).argmax(1) == y.to(device)).sum())
            seconds.append(time.perf_counter() - start)
            accuracy = correct / len(test_set)
        return dict(seconds=seconds, test_acc=accuracy)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def our_pipeline(epochs, data_dir, device):
    """train.py's textbook run; seconds per epoch exactly as it records them in history.csv."""
    import data
    import train
    from model import SoftmaxRegression
    datasets = data.load_fashion_mnist(data_dir, device)
    config = train.Config(epochs=epochs, device=str(device), out='unused')
    torch.manual_seed(config.seed)
    model = SoftmaxRegression().to(device)
    history = train.train(config, model, datasets, torch.device(device), log=lambda line: None)
    return dict(seconds=[row['seconds'] for row in history], test_acc=history[-1]['test_acc'])


def loss_timing(shape, repeats):
    """Median seconds of forward + backward, ours and torch's, for logits of `shape` (float32, CPU)."""
    import torch.nn.functional as F
    from losses import cross_entropy
    torch.manual_seed(0)
    logits = torch.randn(shape, requires_grad=True)
    target = torch.randint(shape[1], (shape[0],))
    results = {}
    for name, function in (('scratch', cross_entropy), ('torch', F.cross_entropy)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function(logits, target).backward()
            times.append(time.perf_counter() - start)
            logits.grad = None
        results[name] = statistics.median(times[repeats // 5:])  # the first fifth warms up
    return results


def run_child(pipeline, args):
    """Run one pipeline in a fresh process; it prints one JSON line."""
    command = [sys.executable, __file__, '--child', pipeline, '--epochs', str(max(args.epochs // 2, 1)),
               '--book-epochs', str(args.book_epochs), '--device', args.device]
    if args.data_dir:
        command += ['--data-dir', args.data_dir]
    env = dict(os.environ)
    if pipeline == 'ours' and 'OMP_WAIT_POLICY' not in env:  # what train.py sets before importing torch
        env.setdefault('GOMP_SPINCOUNT', '1000')
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"bench: the {pipeline} pipeline failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=10,
                        help="epochs of train.py's pipeline, half before and half after the book's (default 10)")
    parser.add_argument('--book-epochs', type=int, default=3, help="epochs of the book's pipeline (default 3)")
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--data-dir', help="as train.py's --data-dir")
    parser.add_argument('--out', default='outputs', help="where bench.json goes (default outputs)")
    parser.add_argument('--child', choices=['book', 'ours'], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        import data
        if args.child == 'book':
            result = book_pipeline(args.book_epochs, data.find_data_dir(args.data_dir, download=False), args.device)
        else:
            result = our_pipeline(args.epochs, args.data_dir, args.device)
        if args.device == 'cuda':
            result['peak_cuda_mb'] = torch.cuda.max_memory_allocated() / 2**20
        result['peak_rss_mb'] = peak_rss_mb()
        print(json.dumps(result))
        return

    # train.py's epochs run half before and half after the book's, so that a drift in the speed of this
    # shared machine during the run weighs on both pipelines alike.
    before, book, after = run_child('ours', args), run_child('book', args), run_child('ours', args)
    ours = dict(seconds=before['seconds'] + after['seconds'], test_acc=after['test_acc'],
                peak_rss_mb=max(before['peak_rss_mb'], after['peak_rss_mb']))
    results = {'book': book, 'ours': ours}
    for result in results.values():
        result['median_seconds'] = statistics.median(result['seconds'])
        result['samples_per_second'] = 60_000 / result['median_seconds']
    speedup = results['book']['median_seconds'] / results['ours']['median_seconds']
    losses = {f"{n}x{c}": loss_timing((n, c), repeats) for (n, c), repeats in (((256, 10), 2000),
                                                                                  ((8192, 1000), 60))}
    for timing in losses.values():
        timing['ratio'] = timing['scratch'] / timing['torch']

    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'pipeline':<34}{'epochs':>7}{'s/epoch (median)':>18}{'samples/s':>12}{'peak RSS MB':>13}"
          f"{'test acc':>10}  (after the last epoch of a run)")
    names = {'book': "book: DataLoader + ToTensor", 'ours': "train.py: resident tensors"}
    runs = {'book': f"{len(results['book']['seconds'])}", 'ours': f"2x{len(results['ours']['seconds']) // 2}"}
    for key, result in results.items():
        print(f"{names[key]:<34}{runs[key]:>7}{result['median_seconds']:>18.4f}"
              f"{result['samples_per_second']:>12,.0f}{result['peak_rss_mb']:>13.0f}{result['test_acc']:>10.4f}")
    print(f"speed-up of an epoch: {speedup:.1f}x (target 30x, stretch 50x)")
    for shape, timing in losses.items():
        print(f"cross_entropy fwd+bwd {shape}: scratch {timing['scratch'] * 1e6:.1f} us, "
              f"torch {timing['torch'] * 1e6:.1f} us, ratio {timing['ratio']:.2f} (target <= 1.5)")

    os.makedirs(args.out, exist_ok=True)
    report = dict(device=args.device, torch_version=str(torch.__version__), threads=torch.get_num_threads(),
                  pipelines=results, speedup=speedup, cross_entropy=losses,
                  command=' '.join(['python', 'bench.py'] + sys.argv[1:]))
    path = os.path.join(args.out, 'bench.json')
    write_text(path, json.dumps(report, indent=2) + '\n')
    print(f"wrote {path}")


if __name__ == '__main__':
    main()
