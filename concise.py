"""The book's concise implementation of softmax regression (d2l 3.7): PyTorch's own blocks, on the same data.

python concise.py [--epochs N] [--lr LR] [--batch-size N] [--seed N] [--out DIR]: nn.Flatten + nn.Linear,
nn.CrossEntropyLoss and torch.optim.SGD over train.py's resident tensors and minibatches; with the same seed
(initial weights, batch order) its history is `python train.py --loss torch`'s, in DIR/history.csv.
"""
import support.threads  # noqa: F401 -- first, before torch loads: the environment its libraries read
from support import cli, writing

if __name__ == '__main__':  # before torch's slow import: Ctrl-C or kill from here on is a clean exit 130
    cli.start()

import math
import os
import sys
import time

import torch
from torch import nn

import data
import train
from helpers.records import history_csv
from losses import correct_count
from support.steps import Diverged, steps


def train_epoch(net, loss, optimizer, X_train, y_train, order, epoch, args):
    """One epoch of minibatch SGD (d2l 3.7.4) -> (mean train loss, train accuracy)."""
    losses, logits = X_train.new_empty(len(y_train)), X_train.new_empty(len(y_train), 10)
    for i in steps(epoch, args.epochs, losses, args.batch_size):  # the one hook: Ctrl-C, threads, progress, nan
        rows = slice(i * args.batch_size, (i + 1) * args.batch_size)
        X, y = data.minibatch(X_train, y_train, order[rows])
        y_hat = net(X)
        l = loss(y_hat, y)  # one loss per example: reduction='none', as in the book
        optimizer.zero_grad()
        l.mean().backward()
        optimizer.step()
        losses[rows], logits[rows] = l.detach(), y_hat.detach()
    return train.mean_loss(losses), int(correct_count(logits, y_train[order])) / len(y_train)


def main(argv=None):
    parser = cli.ArgumentParser(prog='concise.py', description=__doc__.strip().split('\n')[0], epilog="Exit codes: "
                                "0 done, 1 the loss diverged, 2 bad input, 130 interrupted.")
    parser.add_argument('--epochs', type=cli.whole_number(1, 100001), default=10, metavar='N', help="(%(default)s)")
    parser.add_argument('--lr', type=cli.positive_float32, default=0.1, help="learning rate (%(default)s)")
    parser.add_argument('--batch-size', type=cli.whole_number(1, 60001), default=256, metavar='N', help="(%(default)s)")
    parser.add_argument('--seed', type=cli.whole_number(0, 2**63), default=0, metavar='N', help="(%(default)s)")
    parser.add_argument('--out', type=cli.non_empty, default='outputs/concise', metavar='DIR', help="(%(default)s)")
    args = parser.parse_args(argv)
    writing.prepare_out_dir(args.out, ['history.csv'])
    device = train.resolve_device('auto')
    train_images, y_train, test_images, y_test = data.load_fashion_mnist(device=device)
    X_train, X_test = data.to_features(train_images), data.to_features(test_images)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).to(device)
    torch.manual_seed(args.seed)  # the book's init_weights, drawn as train.py draws W: N(0, 0.01^2), b = 0
    nn.init.normal_(net[1].weight, std=0.01)
    nn.init.zeros_(net[1].bias)
    loss, optimizer = nn.CrossEntropyLoss(reduction='none'), torch.optim.SGD(net.parameters(), lr=args.lr)
    generator, history = torch.Generator().manual_seed(args.seed), []
    try:
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            order = torch.randperm(len(y_train), generator=generator).to(device)  # shuffle=True
            train_loss, train_acc = train_epoch(net, loss, optimizer, X_train, y_train, order, epoch, args)
            test_loss, test_acc = train.evaluate(net, 'torch', X_test, y_test)  # the book reuses evaluate_accuracy
            if not math.isfinite(test_loss):
                raise Diverged(epoch, 'evaluation on the test set', test_loss)
            history.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                                test_acc=test_acc, seconds=time.perf_counter() - start))
            writing.write_text(os.path.join(args.out, 'history.csv'), history_csv(history))
            print(train.epoch_line(history[-1], args.epochs))
    except Diverged as error:
        cli.say(f"error: training diverged at {error}; use a smaller --lr")
        return cli.EXIT_DIVERGED
    return 0

if __name__ == '__main__':
    sys.exit(cli.run(main))
