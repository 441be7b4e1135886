"""Tests for exercises.py: each answer is a claim, checked here at small sizes (timings only as orderings
whose gap is far beyond noise)."""
import contextlib
import fractions
import heapq
import math
import multiprocessing
import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import data
import exercises
from common import assert_one_line_error, children, finish, odd_data_folder, running, start, tiny_disk
from model import SoftmaxRegression
from support import cli


def test_3_4_1_hessian_is_the_covariance_of_the_one_hot_outcome_whatever_the_label():
    o = torch.tensor([0.3, -1.2, 2.0, 0.0, 0.7], dtype=torch.float64)
    answer = exercises.hessian_answer(o, torch.tensor(2), samples=50_000)
    p = torch.softmax(o, 0)
    expected = torch.diag(p) - torch.outer(p, p)
    torch.testing.assert_close(answer['covariance'], expected, rtol=0, atol=1e-12)
    for way in ('hessian', 'double_backward'):  # through losses.cross_entropy, by torch.func and by autograd
        torch.testing.assert_close(answer[way], answer['covariance'], rtol=0, atol=1e-6)
    torch.testing.assert_close(answer['sampled'], expected, rtol=0, atol=0.02)  # 50,000 draws: a few 1e-3
    assert answer['y_spread'] < 1e-12
    assert answer['quadratic_form'] == pytest.approx(answer['variance_along_v'], rel=1e-10)


def huffman_average_length(weights):
    """Average code length of a Huffman code for these weights: the sum of the merged weights over the total."""
    heap = list(weights)
    heapq.heapify(heap)
    merged = 0
    while len(heap) > 1:
        pair = heapq.heappop(heap) + heapq.heappop(heap)
        merged += pair
        heapq.heappush(heap, pair)
    return merged / sum(weights)


def test_3_4_2_code_lengths():
    rows = exercises.code_lengths(20)
    assert [n for n, _, _ in rows] == list(range(1, 21))
    entropy = math.log2(3)
    for n, fixed, huffman in rows:
        assert fixed == fractions.Fraction(math.ceil(n * entropy), n)  # n log2 3 is never a whole number
        assert entropy <= huffman <= fixed < entropy + 1 / n
        if n <= 5:  # the formula against a Huffman code built for the 3^n outcomes
            assert float(huffman) == pytest.approx(huffman_average_length([1] * 3 ** n) / n, rel=1e-12)
    assert rows[0][2] == pytest.approx(5 / 3) and rows[0][1] == 2


@pytest.mark.parametrize('x', [[1.0, 2.0], [2.0, 2.0], [-1.0, 0.5, 1.0, 1.5, 2.0], [-30.0, 4.0, 4.0, 7.5]], ids=str)
def test_3_4_3_logsumexp_bounds_at_every_lambda(x):
    x = torch.tensor(x, dtype=torch.float64)
    n, top, bottom, mean = len(x), float(x.max()), float(x.min()), float(x.mean())
    lambdas = [10 ** (k / 4) for k in range(-12, 17)]
    sweep = exercises.logsumexp_sweep(x, lambdas)
    slack = 1e-12 * (1 + abs(top))  # the rounding of lambda^-1 (lambda x)
    for k, lam in enumerate(lambdas):
        value, soft_min, log_n = sweep['stable'][k], sweep['soft_min'][k], math.log(n) / lam
        assert top - slack <= value <= top + log_n + slack  # max <= lambda^-1 RealSoftMax <= max + log n / lambda
        # Jensen below, Hoeffding's lemma above: mean + log n / lambda, within lambda (max - min)^2 / 8
        assert sweep['mean_plus'][k] - slack * lam ** -1 <= value
        assert value <= mean + log_n + lam * (top - bottom) ** 2 / 8 + slack * (1 + lam ** -1)
        assert bottom - log_n - slack <= soft_min <= bottom + slack
        naive = sweep['naive_float32'][k]
        if lam * top > 89:  # exp overflows float32: the naive formula is inf, the stable one is not
            assert math.isinf(naive) and math.isfinite(value)
        elif lam * top < 88:
            assert naive == pytest.approx(value, rel=1e-4, abs=1e-4 * (1 + log_n))
    torch.testing.assert_close(exercises.real_softmax(x), torch.logsumexp(x, 0))
    assert sweep['stable'][-1] == pytest.approx(top, abs=1e-3) and sweep['soft_min'][-1] == pytest.approx(bottom, abs=1e-3)


def test_3_4_3_excess_over_the_max_is_at_most_log_2_reached_at_equality():
    d = torch.linspace(-5, 5, 101, dtype=torch.float64)
    pairs = torch.stack([d, torch.zeros_like(d)], 1)
    excess = exercises.real_softmax(pairs) - pairs.amax(1)
    assert (excess > 0).all() and (excess <= math.log(2) + 1e-15).all()
    assert float(excess[50]) == pytest.approx(math.log(2), rel=1e-15)  # a = b


def test_3_5_1_the_books_reader_is_slower_than_resident_tensors(fashion_mnist):
    import data
    images, labels = fashion_mnist[:2]
    with tempfile.TemporaryDirectory() as work:
        root = data.torchvision_root(data.find_data_dir(download=False), work)
        rows = exercises.reading_times(images, labels, root, batch_sizes=(1, 256), book_batches={1: 40, 256: 3},
                                       num_workers=0)
    assert [row['batch_size'] for row in rows] == [1, 256]
    # per image the book's reader builds a PIL image and converts it (~100 us here); a row of a resident
    # tensor is a copy of 784 bytes: a gap of two orders of magnitude, not noise
    for row in rows:
        assert row['book'] > row['resident'] > 0


def test_3_5_1_reading_every_batch_takes_the_whole_time():
    batches = [(torch.zeros(2), torch.zeros(2)) for _ in range(5)]
    seconds = exercises.epoch_seconds(batches, 2, total=10)
    assert 0 < seconds < 1


def test_3_6_5_step_time_and_memory_grow_with_the_number_of_classes():
    rows = exercises.step_costs(class_counts=(10, 100_000), d=32, n=64, steps=2)
    small, large = rows
    assert large['seconds'] > small['seconds']  # 10,000x the arithmetic: ~0.05 ms against tens of ms
    for row in rows:
        q = row['q']
        assert row['parameters'] == 32 * q + q
        assert row['megabytes'] == pytest.approx((2 * (32 * q + q) + 2 * 64 * q) * 4 / 1e6)
    # float16: the initial, nearly uniform logits sum to ~q under exp, past float16's 65,504
    assert math.isfinite(small['loss16']) and math.isinf(large['loss16']) and large['min_p16'] == 0


def test_3_6_5_sampled_softmax_updates_only_the_sampled_columns():
    torch.manual_seed(0)
    model = SoftmaxRegression(16, 1000)
    before = model.W.detach().clone()
    generator = torch.Generator().manual_seed(0)
    X, y = torch.rand(8, 16), torch.tensor([3, 3, 10, 500, 999, 0, 42, 7])
    exercises.sampled_softmax_step(model, X, y, 20, 0.5, generator)
    changed = (model.W.detach() != before).any(0)
    assert changed[y].all() and 8 <= int(changed.sum()) <= 8 + 20


def test_one_exercise_runs_and_an_unknown_one_is_one_line_and_exit_2(tmp_path, capsys):
    assert exercises.main(['3.4.2', '--out', str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert '3.4.2' in printed and '1.5850' in printed and '1.6667' in printed and '3.4.1' not in printed
    assert cli.run(exercises.main, ['3.4.9', '--out', str(tmp_path)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown exercise '3.4.9'" in err and '3.6.5' in err


# ------------------------------------------------------------------ the book's reader as a process: stops and faults

def reading(pid, seen):
    """The book's reader of 3.5.1 has its 4 worker processes: record each set of workers seen."""
    workers = children(pid)
    if workers and workers not in seen:
        seen.append(workers)
    return len(workers) == 4


def first_batch_spawned(folder):
    """The first batch of the book's reader (the test set, in order) with its one worker spawned, as Windows
    and macOS start DataLoader workers: a fresh interpreter that gets the dataset and the worker's set-up by
    pickling. (X, y, the worker processes while reading, those after closing.)"""
    import torchvision
    from helpers.book_reader import book_loader, worker_batches
    root = data.torchvision_root(data.find_data_dir(download=False), folder)
    dataset = torchvision.datasets.FashionMNIST(root, train=False, transform=torchvision.transforms.ToTensor())
    loader = book_loader(dataset, 256, shuffle=False, num_workers=1, context='spawn')
    with contextlib.closing(worker_batches(loader)) as batches:
        X, y = next(batches)
        during = multiprocessing.active_children()
    return X, y, during, multiprocessing.active_children()


@pytest.fixture(scope='module')
def book_reader(tmp_path_factory):
    """Two things at once, as each mostly waits for an interpreter to import torch: (1) `exercises.py 3.5.1`
    in a session of its own, on a data folder holding a FIFO and (where a small disk can be mounted for its
    temporary folder) a link to /dev/zero, sent Ctrl-C to its whole process group, workers included, once
    the book's reader has its 4 workers: dict(code, err, workers: the pids seen, tmp: its temporary folder,
    out: its output folder), None where /proc cannot show the workers; (2) in this process,
    first_batch_spawned. (A plain kill of the script alone, at several moments: test_contract.py.)"""
    base = tmp_path_factory.mktemp('exercises')
    with ThreadPoolExecutor(1) as pool:
        spawned = pool.submit(first_batch_spawned, str(base))
        if not os.path.exists(f'/proc/{os.getpid()}/task/{os.getpid()}/children'):
            yield None, spawned.result(timeout=120)
            return
        # 80 MB: the copy of the data (55 MB) fits; a copy of /dev/zero would fill it, not this machine's disk
        with tiny_disk(80 * 1024) as disk:
            run = dict(tmp=disk or str(base / 'tmp'), out=base / 'out', seen=[])
            os.makedirs(run['tmp'], exist_ok=True)
            odd = odd_data_folder(base / 'odd data', zeros=disk is not None)
            process = start('exercises.py', '3.5.1', '--out', run['out'], start_new_session=True,
                            env=dict(os.environ, TMPDIR=run['tmp'], FASHION_MNIST_DIR=odd))
            try:
                deadline = time.monotonic() + 120  # a run that never gets there (a FIFO opened) fails
                while process.poll() is None and time.monotonic() < deadline:
                    if reading(process.pid, run['seen']):
                        os.killpg(process.pid, signal.SIGINT)
                        break
                    time.sleep(0.005)
                run['code'], _, run['err'] = finish(process, timeout=120)
                run['workers'] = set().union(*run['seen'])
                run['left in tmp'] = os.listdir(run['tmp'])
                yield run, spawned.result(timeout=120)
            finally:
                if process.poll() is None:
                    process.kill()


def test_ctrl_c_while_the_books_reader_has_workers_is_exit_130_one_line_and_nothing_left(book_reader):
    run, _ = book_reader
    if run is None:
        pytest.skip("watching the workers needs /proc (Linux)")
    assert run['workers'], "the book's reader never had its workers"  # the FIFO and /dev/zero were left alone
    assert run['code'] == 130, run['err']
    assert_one_line_error(run['err'], 'interrupted')  # nothing from the workers nor from their shutdown
    assert os.listdir(run['out']) == []
    assert [name for name in run['left in tmp'] if name.startswith('exercises-')] == []  # its copy of the data
    deadline = time.monotonic() + 5
    while any(map(running, run['workers'])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in run['workers'] if running(pid)] == []


def test_the_books_reader_works_with_spawned_workers(book_reader, fashion_mnist):
    _, (X, y, during, after) = book_reader
    assert len(during) == 1 and after == []  # its worker shut down when closed
    images, labels = fashion_mnist[2:]
    assert torch.equal((X * 255).round().to(torch.uint8).reshape(256, -1), images[:256])
    assert torch.equal(y, labels[:256])


def test_a_temporary_folder_that_fills_is_one_line_naming_the_file_and_exit_2(fashion_mnist, tmp_path, monkeypatch,
                                                                               capsys):
    """3.5.1 copies the data for the book's reader into the temporary folder: on a 2 MB disk that fills."""
    with tiny_disk(2048) as disk:
        if disk is None:
            pytest.skip("mounting a small disk needs root")
        monkeypatch.setattr(tempfile, 'tempdir', disk)  # as TMPDIR=disk does
        monkeypatch.setattr(exercises, 'fashion_mnist', lambda: fashion_mnist)  # not read again
        assert cli.run(exercises.main, ['3.5.1', '--out', str(tmp_path)]) == cli.EXIT_BAD_INPUT
        assert_one_line_error(capsys.readouterr().err, f"error: cannot write {disk}{os.sep}", 'No space left on device')
        assert os.listdir(disk) == [] and os.listdir(tmp_path) == []
