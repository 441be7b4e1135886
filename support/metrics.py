"""Calibration: how far the softmax's confidence (its largest probability) can be trusted (d2l 3.6, ex. 4)."""
import torch


def calibration(probabilities, labels, bins=15, target_accuracy=0.95):
    """How far the largest softmax probability (the confidence) can be trusted, on labelled examples.

    probabilities: (n, 10) softmax outputs, n >= 1; labels: (n,) int64 true classes. Returns a
    JSON-serialisable dict:
      ece              expected calibration error (Guo et al. 2017): sum_b (n_b / n) |acc_b - conf_b| over
                       `bins` equal-width bins of confidence, bin b = (b/bins, (b+1)/bins]
      bins, edges      the number of bins and their bins + 1 edges
      counts, bin_accuracy, bin_confidence
                       per bin: how many examples, their accuracy, their mean confidence (None when empty)
      n, accuracy, mean_confidence
                       over all examples
      coverage_curve   {'threshold': [...], 'coverage': [...], 'accuracy': [...]}: answering only when the
                       confidence is >= threshold, the share of examples answered and the accuracy on
                       them; about 100 points, coverage 0.01 to 1
      target_accuracy, threshold, coverage, answered_accuracy
                       the lowest threshold at which the answered examples are at least target_accuracy
                       right, the share it still answers and their accuracy (None, 0.0, None if none is)
    """
    probabilities = probabilities.detach().double().cpu()
    labels = labels.detach().cpu()
    n = labels.shape[0]
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()

    # Bin b holds the confidences in (b/bins, (b+1)/bins]: one less than the index of the first edge >= c
    # (compared with the edges themselves, as a direct computation would: c * bins can round past b + 1).
    edges = [b / bins for b in range(bins + 1)]
    index = (torch.searchsorted(torch.tensor(edges, dtype=torch.float64), confidence) - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    filled = counts > 0
    bin_accuracy = torch.bincount(index, weights=correct, minlength=bins) / counts.clamp(min=1)
    bin_confidence = torch.bincount(index, weights=confidence, minlength=bins) / counts.clamp(min=1)
    ece = float((counts / n * (bin_accuracy - bin_confidence).abs()).sum())  # empty bins add 0

    # Abstaining below a threshold answers the most confident examples: after sorting by confidence,
    # a prefix. A prefix can only end where the confidence changes: equal confidences go together.
    order = torch.argsort(confidence, descending=True, stable=True)
    sorted_confidence = confidence[order]
    answered_right = torch.cumsum(correct[order], 0) / torch.arange(1, n + 1, dtype=torch.float64)
    ends = torch.cat([sorted_confidence[:-1] != sorted_confidence[1:], torch.tensor([True])]).nonzero()[:, 0]
    reaching = ends[answered_right[ends] >= target_accuracy]
    last = int(reaching[-1]) if reaching.numel() else None  # the largest share that is accurate enough
    wanted = torch.ceil(torch.arange(1, 101, dtype=torch.float64) * n / 100).long() - 1
    picks = torch.unique(ends[torch.searchsorted(ends, wanted)]).tolist()

    def per_bin(values):
        return [float(value) if full else None for value, full in zip(values, filled)]
    return dict(
        ece=ece, bins=bins, edges=edges,
        counts=[int(count) for count in counts], bin_accuracy=per_bin(bin_accuracy),
        bin_confidence=per_bin(bin_confidence),
        n=n, accuracy=float(correct.mean()), mean_confidence=float(confidence.mean()),
        coverage_curve=dict(threshold=[float(sorted_confidence[i]) for i in picks],
                            coverage=[(i + 1) / n for i in picks],
                            accuracy=[float(answered_right[i]) for i in picks]),
        target_accuracy=target_accuracy,
        threshold=None if last is None else float(sorted_confidence[last]),
        coverage=0.0 if last is None else (last + 1) / n,
        answered_accuracy=None if last is None else float(answered_right[last]))
