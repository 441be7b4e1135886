"""support/metrics.py: calibration() (ECE, the 95% threshold, the coverage curve) and confidence.png."""
import json

import pytest
import torch

import predict
from helpers import plots
from support.metrics import calibration
from test_photo import load, trained_checkpoints


@pytest.fixture(scope='module')
def checkpoints(fashion_mnist, tmp_path_factory):
    return trained_checkpoints(fashion_mnist, tmp_path_factory)


def direct_calibration(probabilities, labels, bins=15):
    """ECE and per-bin counts the slow, obvious way: every example into (b/bins, (b+1)/bins]."""
    confidence, predicted = probabilities.max(dim=1)
    members = [[] for _ in range(bins)]
    for c, p, y in zip(confidence.tolist(), predicted.tolist(), labels.tolist()):
        b = next(b for b in range(bins) if b / bins < c <= (b + 1) / bins)
        members[b].append((c, p == y))
    n = len(labels)
    ece = sum(len(m) / n * abs(sum(right for _, right in m) / len(m) - sum(c for c, _ in m) / len(m))
              for m in members if m)
    return ece, [len(m) for m in members]


def test_ece_matches_a_direct_computation_on_a_trained_model(checkpoints, fashion_mnist):
    model = load(checkpoints['textbook'])
    probabilities = predict.probabilities(model, fashion_mnist[2])
    result = calibration(probabilities, fashion_mnist[3])
    ece, counts = direct_calibration(probabilities.double(), fashion_mnist[3])
    assert result['ece'] == pytest.approx(ece, abs=1e-12)
    assert result['counts'] == counts and sum(counts) == 10_000 and result['bins'] == 15
    assert 0 < result['ece'] < 0.1  # measured 0.058 after these 2 epochs, 0.013 after the book's 10
    json.dumps(result, allow_nan=False)  # goes into metrics.json as it is


def test_ece_on_bin_edges_and_known_values():
    # a confidence of exactly b/15 belongs to bin b - 1: (b-1)/15 < c <= b/15
    edges = torch.tensor([2, 5, 7, 14, 15], dtype=torch.float64) / 15
    probabilities = torch.zeros(5, 10, dtype=torch.float64)
    probabilities[:, 0] = edges
    probabilities[:, 1:] = ((1 - edges) / 9)[:, None]
    labels = torch.tensor([0, 1, 0, 0, 1])
    result = calibration(probabilities, labels)
    ece, counts = direct_calibration(probabilities, labels)
    assert result['counts'] == counts == [0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert result['ece'] == pytest.approx(ece, abs=1e-12)
    # always sure, right half of the time: ECE = |0.5 - 1| = 0.5
    sure = torch.eye(10, dtype=torch.float64)[[0, 0, 0, 0]]
    assert calibration(sure, torch.tensor([0, 0, 1, 1]))['ece'] == pytest.approx(0.5)


def test_the_threshold_is_the_lowest_one_that_reaches_95_percent():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 10, generator=generator) * 3
    probabilities = torch.softmax(logits, dim=1)
    confidence, predicted = probabilities.max(dim=1)
    # right more often when more confident, like a real model
    labels = torch.where(torch.rand(3000, generator=generator) < confidence, predicted, (predicted + 1) % 10)
    result = calibration(probabilities, labels)
    right = (predicted == labels).double()
    best = None
    for threshold in sorted(set(confidence.tolist())):  # brute force over every possible threshold
        answered = confidence >= threshold
        if float(right[answered].mean()) >= 0.95:
            best = threshold
            break
    assert result['threshold'] == best
    answered = confidence >= best
    assert result['coverage'] == pytest.approx(float(answered.double().mean()))
    assert result['answered_accuracy'] == pytest.approx(float(right[answered].mean()))
    curve = result['coverage_curve']
    assert 90 <= len(curve['coverage']) <= 100 and curve['coverage'][-1] == 1
    assert curve['accuracy'][-1] == pytest.approx(result['accuracy'])
    for threshold, coverage, accuracy in zip(*curve.values()):
        assert coverage == pytest.approx(float((confidence >= threshold).double().mean()))
        assert accuracy == pytest.approx(float(right[confidence >= threshold].mean()))


def test_no_threshold_and_ties():
    wrong = calibration(torch.eye(10)[[0, 1, 2]], torch.tensor([1, 2, 3]))
    assert (wrong['threshold'], wrong['coverage'], wrong['answered_accuracy']) == (None, 0.0, None)
    tied = calibration(torch.full((4, 10), 0.1), torch.tensor([0, 0, 0, 1]))
    assert tied['coverage_curve']['coverage'] == [1.0]  # equal confidences are answered together
    assert tied['threshold'] is None  # 3 of 4 right, and no way to answer fewer


def test_confidence_figure(checkpoints, fashion_mnist, tmp_path):
    model = load(checkpoints['textbook'])
    result = calibration(predict.probabilities(model, fashion_mnist[2]), fashion_mnist[3])
    figure = plots.plot_confidence(result)
    assert f"ECE = {result['ece']:.4f}" in figure.axes[0].get_title()
    plots.save_figure(figure, str(tmp_path / 'confidence.png'))
    assert (tmp_path / 'confidence.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    nothing = calibration(torch.eye(10)[[0, 1]], torch.tensor([1, 2]))  # no threshold to mark
    plots.plot_confidence(nothing)
