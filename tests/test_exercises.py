"""Tests for exercises.py: each answer is a claim, checked here at small sizes (timings only as orderings
whose gap is far beyond noise)."""
import fractions
import heapq
import math
import tempfile

import pytest
import torch

import exercises
from support import cli
from model import SoftmaxRegression


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
