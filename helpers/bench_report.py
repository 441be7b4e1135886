"""bench.py's report: bench.json's content from the raw timings, and the lines it prints."""
import contextlib
import os
import platform
import statistics
import subprocess
import sys

ROUNDS = ('start', 'middle', 'end')
TRAIN_SIZE = 60_000


def cpu_model():
    """The CPU's name: /proc/cpuinfo's model name on Linux (e.g. 'AMD EPYC'), sysctl's on macOS (e.g. 'Apple
    M2'), else what Python's platform module knows (on Windows e.g. 'Intel64 Family 6 Model 154 ...')."""
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    if sys.platform == 'darwin':
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            name = subprocess.run(['sysctl', '-n', 'machdep.cpu.brand_string'], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
            if name:
                return name
    return platform.processor() or platform.machine() or 'unknown'


def machine():
    """The CPU, its cores, and how many of them this process may use (Linux's affinity; elsewhere all)."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else cores
    return dict(cpu=cpu_model(), cores=cores, usable_cores=usable)


def largest(values):
    """The largest of some peak memories in MB, None (unknown: no peak memory on this platform) among them
    ignored; None if all are."""
    known = [value for value in values if value is not None]
    return max(known) if known else None


def megabytes(value):
    """A peak memory for the printout: '-' where the platform does not report it."""
    return '-' if value is None else f"{value:.0f}"


def summarize(book, ours, whole, device, whole_epochs, command):
    """bench.json's content from the raw results: book's and whole's from their processes, ours[round]
    from train.py's (start, end: epochs and floor; middle: floor, losses and the epochs beside a busy
    process)."""
    median = statistics.median
    pipelines = {
        'book': dict(seconds=book['seconds'], test_acc=book['test_acc'], peak_rss_mb=book['peak_rss_mb']),
        'ours': dict(seconds=ours['start']['seconds'] + ours['end']['seconds'],
                     seconds_by_round={r: ours[r]['seconds'] for r in ('start', 'end')},
                     threads_by_round={r: ours[r]['threads_by_epoch'] for r in ('start', 'end')},
                     test_acc=ours['end']['test_acc'],
                     peak_rss_mb=largest([ours['start']['peak_rss_mb'], ours['end']['peak_rss_mb']])),
        'floor': dict(seconds=[s for r in ROUNDS for s in ours[r]['floor']['seconds']],
                      seconds_by_round={r: ours[r]['floor']['seconds'] for r in ROUNDS},
                      seconds_by_round_and_threads={r: ours[r]['floor']['by_threads'] for r in ROUNDS}),
    }
    if 'contended' in ours['middle']:
        pipelines['contended'] = dict(seconds=ours['middle']['contended']['seconds'],
                                      threads_by_epoch=ours['middle']['contended']['threads_by_epoch'])
    for result in pipelines.values():
        result['median_seconds'] = median(result['seconds'])
        result['samples_per_second'] = TRAIN_SIZE / result['median_seconds']
    book_s, ours_s, floor_s = (pipelines[k]['median_seconds'] for k in ('book', 'ours', 'floor'))
    ratios = dict(book_over_ours=book_s / ours_s, ours_over_floor=ours_s / floor_s,
                  ours_over_floor_by_round={r: median(ours[r]['seconds']) / median(ours[r]['floor']['seconds'])
                                            for r in ('start', 'end')})
    if 'contended' in pipelines:  # the same epoch beside a busy process, against the idle floor
        seconds = pipelines['contended']['seconds']
        ratios['contended_over_floor'] = pipelines['contended']['median_seconds'] / floor_s
        ratios['contended_worst_over_floor'] = max(seconds[1:] or seconds) / floor_s
    report = dict(machine=machine(), device=device, torch_version=ours['start']['torch_version'],
                  threads={'ours': ours['start']['threads'], 'book': book['threads']},
                  thread_environment={'ours': ours['start']['thread_environment'],
                                      'book': book['thread_environment']},
                  mkl_strict={'ours': ours['start']['mkl_strict'], 'book': book['mkl_strict']})
    if 'device_name' in book:
        report['device_name'] = book['device_name']
    pairs = [pair for r in ROUNDS for pair in whole[r]]
    if pairs:
        command = dict(train_py={k: [p['train.py'][k] for p in pairs] for k in ('seconds', 'peak_rss_mb')},
                       floor={k: [p['floor'][k] for p in pairs]
                              for k in ('seconds', 'process_seconds', 'peak_rss_mb')},
                       runs_by_round={r: len(whole[r]) for r in ROUNDS}, epochs=whole_epochs)
        for key in ('train_py', 'floor'):
            command[key]['median_seconds'] = median(command[key]['seconds'])
        ratios['whole_over_floor'] = command['train_py']['median_seconds'] / command['floor']['median_seconds']
        ratios['whole_over_floor_by_pair'] = [p['train.py']['seconds'] / p['floor']['seconds'] for p in pairs]
        report['whole_command'] = command
    report.update(pipelines=pipelines, ratios=ratios, cross_entropy=ours['middle']['cross_entropy'],
                  command=command)
    return report


def printout(report):
    """The report as a few readable lines: the machine, the pipelines' table, the ratios, the losses."""
    lines = []
    m, threads = report['machine'], report['threads']
    cores = f"{m['cores']} cores" + (f" ({m['usable_cores']} usable)" if m['usable_cores'] != m['cores'] else "")
    thread_text = (f"{threads['ours']} threads" if threads['ours'] == threads['book']
                   else f"{threads['ours']} threads (book's process: {threads['book']})")
    device = report['device'] + (f" ({report['device_name']})" if 'device_name' in report else "")
    lines.append(f"cpu {m['cpu']}, {cores}; device {device}; torch {report['torch_version']}, {thread_text}")
    p = report['pipelines']
    lines.append(f"{'pipeline':<36}{'epochs':>7}{'s/epoch (median)':>18}{'samples/s':>12}{'peak RSS MB':>13}"
                 f"{'test acc':>10}")
    rows = [('book', "book: DataLoader + ToTensor", str(len(p['book']['seconds']))),
            ('ours', "train.py: resident tensors",
             '+'.join(str(len(s)) for s in p['ours']['seconds_by_round'].values())),
            ('floor', "floor: gather + 2 GEMMs per step",
             '+'.join(str(len(s)) for s in p['floor']['seconds_by_round'].values()))]
    if 'contended' in p:
        rows.append(('contended', "train.py beside a busy process", str(len(p['contended']['seconds']))))
    for key, name, epochs in rows:
        r = p[key]
        rss = megabytes(r.get('peak_rss_mb'))
        acc = f"{r['test_acc']:.4f}" if 'test_acc' in r else '-'
        lines.append(f"{name:<36}{epochs:>7}{r['median_seconds']:>18.4f}{r['samples_per_second']:>12,.0f}"
                     f"{rss:>13}{acc:>10}")
    ratios = report['ratios']
    by_round = ', '.join(f"{r} {x:.2f}x" for r, x in ratios['ours_over_floor_by_round'].items())
    if 'whole_command' in report:
        w = report['whole_command']
        lines.append(f"{'whole command':<43}{'runs':>6}{'wall s (median)':>18}{'peak RSS MB':>13}")
        epochs = f"{w['epochs']} epoch" + ('s' if w['epochs'] != 1 else '')
        for key, name in (('train_py', f"python train.py --out TMP ({epochs})"),
                          ('floor', f"import torch + data + {epochs} of floor")):
            lines.append(f"{name:<43}{len(w[key]['seconds']):>6}{w[key]['median_seconds']:>18.3f}"
                         f"{megabytes(largest(w[key]['peak_rss_mb'])):>13}")
    lines.append(f"book / ours, an epoch:   {ratios['book_over_ours']:6.1f}x  (target 30x, stretch 50x)")
    lines.append(f"ours / floor, an epoch:  {ratios['ours_over_floor']:6.2f}x  (same process: {by_round})")
    if 'whole_command' in report:
        pairs = ', '.join(f"{x:.2f}" for x in ratios['whole_over_floor_by_pair'])
        lines.append(f"whole command / floor:   {ratios['whole_over_floor']:6.2f}x  (run by run: {pairs})")
    if 'contended_over_floor' in ratios:
        worst = ratios['contended_worst_over_floor']
        lines.append(f"contended / floor:       {ratios['contended_over_floor']:6.2f}x  (beside a busy process, "
                     f"target 2.5x; slowest epoch after the first {worst:.2f}x, target 4x)")
    return lines + printout_losses(report)


def printout_losses(report):
    """cross_entropy's timings: scratch against torch, or why scratch was not timed."""
    lines = []
    for name, t in report['cross_entropy'].items():
        head = f"cross_entropy fwd+bwd {name}" + (" (the same, flattened)" if t['flattened'] else "")
        torch_us = f"torch {t['torch'] * 1e6:.1f} us"
        if 'unsupported' in t:
            lines.append(f"{head}: scratch unsupported ({t['unsupported'][:80]}), {torch_us}")
        elif 'mismatch' in t:
            lines.append(f"{head}: scratch differs from torch ({t['mismatch']}), {torch_us}")
        else:
            lines.append(f"{head}: scratch {t['scratch'] * 1e6:.1f} us, {torch_us}, ratio {t['ratio']:.2f}"
                         f" (target <= 1.5)")
    return lines
