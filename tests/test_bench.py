"""bench.py: its flags, its errors and interruptions, and one tiny real run of every pipeline.

The benchmark itself takes minutes; here each part runs cut short (hidden flags: one loss-timing block,
three batches of the book's epoch, one epoch of ours at the start, one at the end and two beside a busy
process) and the whole command is left out of the real run (stand-ins check how its runs are paired and
counted). Every bench.py process starts at once and they run side by side (see `runs`); bad flags, which
start no process, are tried in this one.
"""
import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

import bench
import losses
from common import assert_one_line_error, finish, odd_data_folder, tiny_disk
from support import cli, threads
from helpers import bench_children, bench_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_PY = os.path.join(ROOT, 'bench.py')
QUICK = ['--epochs', '2', '--book-epochs', '1', '--book-batches', '3', '--floor-epochs', '1',
         '--loss-blocks', '1', '--whole-epochs', '1', '--contended-epochs', '2']


def environment(tmp):
    """The test's environment without OpenMP settings (so that what the book's process sees is what
    bench.py passed on), a private TMPDIR (to see bench's work folder come and go) and a marker that
    every descendant inherits (to find any left running)."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(('OMP_', 'GOMP_', 'KMP_', 'MKL_'))}
    os.makedirs(tmp, exist_ok=True)
    env.update(TMPDIR=str(tmp), BENCH_TEST_MARKER=uuid.uuid4().hex)
    return env


def start(*flags, env):
    return subprocess.Popen([sys.executable, BENCH_PY, *flags], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def processes_with(marker):
    """Pids of live processes whose environment holds BENCH_TEST_MARKER=marker."""
    found = []
    for path in glob.glob('/proc/[0-9]*/environ'):
        try:
            with open(path, 'rb') as f:
                if f'BENCH_TEST_MARKER={marker}'.encode() in f.read().split(b'\0'):
                    found.append(int(path.split('/')[2]))
        except OSError:  # gone, or not ours
            pass
    return found


def assert_nothing_left(env, timeout=10):
    """No work folder in TMPDIR, and no child process still running (killed ones may take a moment)."""
    assert glob.glob(os.path.join(env['TMPDIR'], 'bench-*')) == []
    deadline = time.monotonic() + timeout
    while processes_with(env['BENCH_TEST_MARKER']) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(env['BENCH_TEST_MARKER']) == []


BAD_FLAGS = {
    'zero book epochs': (['--book-epochs', '0'], '--book-epochs'),
    'one epoch of ours': (['--epochs', '1'], '--epochs'),
    'too many epochs': (['--epochs', '100000'], '--epochs'),
    'word epochs': (['--epochs', 'ten'], '--epochs'),
    'zero floor epochs': (['--floor-epochs', '0'], '--floor-epochs'),
    'negative whole runs': (['--whole-runs', '-1'], '--whole-runs'),
    'too many whole runs': (['--whole-runs', '10'], '--whole-runs'),
    'negative contended epochs': (['--contended-epochs', '-1'], '--contended-epochs'),
    'unknown device': (['--device', 'tpu'], '--device'),
    'empty data dir': (['--data-dir', ''], '--data-dir'),
    'zero loss blocks': (['--loss-blocks', '0'], '--loss-blocks'),
    'a child spec by hand': (['--child', 'ours'], '--child'),
    'empty out': (['--out', ''], '--out'),
}


def book_reading(env):
    """The book's process has made its torchvision copy of the data in bench's work folder and started its
    DataLoader's workers (three processes carry the marker: bench.py, the book's, a worker)."""
    return (glob.glob(os.path.join(env['TMPDIR'], 'bench-*', 'torchvision'))
            and len(processes_with(env['BENCH_TEST_MARKER'])) >= 3)


def child_started(env):
    """bench.py has started its first child (train.py's pipeline): two processes carry the marker."""
    return len(processes_with(env['BENCH_TEST_MARKER'])) >= 2


# Interruptions: (signal, the moment to send it)
INTERRUPTIONS = {
    'ctrl-c during the book': (signal.SIGINT, book_reading),
    'kill during the first child': (signal.SIGTERM, child_started),
}


def book_on_a_full_disk(work_dir):
    """The book's process, as bench.py runs it, with its work folder (in the temporary folder) on a disk
    too small for its copy of the data: what Children.run raises (None if nothing)."""
    spec = dict(kind='book', device='cpu', data_dir=None, epochs=1, work_dir=work_dir, max_batches=1)
    try:
        bench_children.Children(work_dir).run([sys.executable, BENCH_PY, '--child', json.dumps(spec)],
                                              "the book's pipeline")
    except Exception as error:
        return error
    return None


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Every command at once: the tiny real run (on a data folder holding a FIFO and, where a small disk
    can be mounted for its temporary folder, a link to /dev/zero), the interrupted runs, the missing data
    folder and (in a thread of this process) the book's process on a small disk that fills. An interrupted
    run gets its signal as soon as its moment has come."""
    base = tmp_path_factory.mktemp('bench')
    processes, envs = {}, {}

    def launch(name, *flags, tmp=None):
        envs[name] = environment(tmp or base / 'tmp' / name.replace(' ', '-'))
        processes[name] = start('--out', str(base / 'out' / name.replace(' ', '-')), *flags, env=envs[name])

    with contextlib.ExitStack() as stack:
        roomy, full = stack.enter_context(tiny_disk(80 * 1024)), stack.enter_context(tiny_disk(2048))
        # 80 MB: the book's copy of the data (55 MB) fits; copying /dev/zero would fill it, not this machine
        odd = odd_data_folder(base / 'odd data', zeros=roomy is not None)
        launch('tiny', *QUICK, '--whole-runs', '0', '--data-dir', odd, tmp=roomy)
        for name in INTERRUPTIONS:
            launch(name, *QUICK, '--whole-runs', '0')
        launch('no data', '--data-dir', str(base / 'nonexistent'))
        book = stack.enter_context(ThreadPoolExecutor(1)).submit(book_on_a_full_disk, full) if full else None
        try:
            waiting, deadline = dict(INTERRUPTIONS), time.monotonic() + 300
            while waiting and time.monotonic() < deadline:
                for name, (signum, moment) in list(waiting.items()):
                    if processes[name].poll() is not None:
                        del waiting[name]  # finished before its moment: the test says so
                    elif moment(envs[name]):
                        processes[name].send_signal(signum)
                        del waiting[name]
                time.sleep(0.05)
            # a run that hangs (a FIFO opened) fails here instead of blocking the suite
            results = {name: finish(process, timeout=240) for name, process in processes.items()}
            # what the book's process raised, its work folder, and what it left there
            results['full disk'] = (book.result(timeout=120), full, os.listdir(full)) if book else None
            yield results, envs, base
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()


@pytest.mark.parametrize('case', sorted(BAD_FLAGS))
def test_bad_flags_get_one_line_naming_the_flag_and_exit_2(case, tmp_path, capsys):
    out = tmp_path / 'out'
    # --out first, so that a bad --out among the flags is the one that counts
    assert cli.run(bench.main, ['--out', str(out), *BAD_FLAGS[case][0]]) == 2
    printed, err = capsys.readouterr()
    assert_one_line_error(err, BAD_FLAGS[case][1])
    assert printed == '' and (not out.exists() or case == 'empty out')


def test_a_missing_data_folder_is_one_line_and_exit_2(runs):
    results, envs, base = runs
    code, out, err = results['no data']
    assert code == 2, err
    assert_one_line_error(err, 'error: data folder', 'nonexistent', 'does not exist')
    assert_nothing_left(envs['no data'])
    assert not (base / 'out' / 'no-data' / 'bench.json').exists()


def test_a_tiny_run_times_every_pipeline_and_writes_bench_json(runs):
    results, envs, base = runs
    code, out, err = results['tiny']
    assert code == 0, err  # the FIFO and /dev/zero beside the data were left alone
    assert 'Traceback' not in err
    report = json.loads((base / 'out' / 'tiny' / 'bench.json').read_text())
    pipelines, ratios = report['pipelines'], report['ratios']
    assert len(pipelines['book']['seconds']) == 1
    assert [len(s) for s in pipelines['ours']['seconds_by_round'].values()] == [1, 1]
    assert [len(s) for s in pipelines['floor']['seconds_by_round'].values()] == [1, 1, 1]
    assert 0 < pipelines['ours']['test_acc'] <= 1 and 0 <= pipelines['book']['test_acc'] <= 1
    assert 'whole_command' not in report and 'whole_over_floor' not in ratios  # --whole-runs 0
    for key in ('book_over_ours', 'ours_over_floor', 'contended_over_floor', 'contended_worst_over_floor'):
        assert ratios[key] > 0
    contended = pipelines['contended']
    assert len(contended['seconds']) == 2 and set(contended['threads_by_epoch']) <= {1, torch.get_num_threads()}
    floor = pipelines['floor']['median_seconds']
    assert ratios['contended_worst_over_floor'] == pytest.approx(contended['seconds'][1] / floor)
    assert set(report['cross_entropy']) == {'256x10', '8192x1000', '32x10x64x64', '131072x10'}
    assert report['machine']['cpu'] and report['machine']['cores'] >= 1
    assert report['threads']['ours'] >= 1 and report['torch_version'] == str(torch.__version__)
    # bench.py's parent never imports support.threads: the book's process runs in the environment it
    # was given, train.py's in the one support.threads sets
    assert report['thread_environment']['book'] == {}
    assert report['thread_environment']['ours']['MKL_CBWR'] == 'AUTO,STRICT'
    strict = threads.gemms_reproducible_across_thread_counts()  # False only where torch has no MKL
    assert report['mkl_strict'] == {'ours': strict, 'book': False}
    lines = out.splitlines()
    assert lines[0].startswith('cpu ') and 'torch ' in lines[0] and 'threads' in lines[0]
    for fragment in ('book: DataLoader', 'train.py: resident tensors', 'floor: gather',
                     'train.py beside a busy process', 'book / ours', 'ours / floor',
                     'contended / floor', 'cross_entropy fwd+bwd 256x10',
                     'cross_entropy fwd+bwd 131072x10 (the same, flattened)'):
        assert any(fragment in line for line in lines), fragment
    assert lines[-1] == f"wrote {base / 'out' / 'tiny' / 'bench.json'}"
    assert_nothing_left(envs['tiny'])


def test_a_temporary_folder_that_fills_is_bad_input_in_the_books_own_words(runs):
    """The book's copy of the data fills bench.py's work folder: the child's own line, read from its pipe
    (its stderr is no file on the disk that filled), becomes bench.py's one line and exit 2, as the missing
    data folder's does."""
    results, _, _ = runs
    if results['full disk'] is None:
        pytest.skip("mounting a small disk needs root")
    error, work_dir, left = results['full disk']
    assert isinstance(error, cli.InputError), error
    assert str(error).startswith(f"cannot write {work_dir}{os.sep}torchvision{os.sep}")
    assert str(error).endswith(": No space left on device")
    assert left == ['torchvision']  # (bench.py removes its work folder, as the tiny run's test checks)


def test_whole_runs_alternate_and_the_floor_counts_the_faster_run_of_each_epoch(tmp_path):
    # stand-ins for `python train.py` and for the floor process (which prints its epochs' times)
    floor_result = json.dumps(dict(floor=dict(seconds=[0.1, 0.1], total=0.5)))
    train_command = [sys.executable, '-c', "import time; time.sleep(0.1)"]
    floor_command = [sys.executable, '-c', f"import time; time.sleep(0.3); print({floor_result!r})"]
    children = bench_children.Children(str(tmp_path))
    pairs = [bench_children.whole_pair(children, train_command, floor_command, index) for index in range(2)]
    assert [what for what, _ in children.log] == ['the whole command (train.py)', 'the whole command (floor)',
                                                  'the whole command (floor)', 'the whole command (train.py)']
    for pair in pairs:
        assert pair['train.py']['seconds'] >= 0.1 and pair['train.py']['peak_rss_mb'] > 0
        floor = pair['floor']
        assert floor['process_seconds'] >= 0.3
        assert floor['seconds'] == pytest.approx(floor['process_seconds'] - 0.3)  # less 0.5 s run, 0.2 s kept


@pytest.mark.parametrize('case', sorted(INTERRUPTIONS))
def test_ctrl_c_or_kill_exits_130_kills_the_children_and_removes_the_work_folder(runs, case):
    results, envs, base = runs
    code, out, err = results[case]
    assert code == 130, err
    assert_one_line_error(err, 'interrupted')
    assert_nothing_left(envs[case])  # the book's data copy and DataLoader workers included
    assert not (base / 'out' / case.replace(' ', '-') / 'bench.json').exists()


def test_a_child_that_fails_becomes_one_line(tmp_path):
    children = bench_children.Children(str(tmp_path))
    with pytest.raises(bench_children.ChildFailed, match=r"^the test child failed \(exit 3\): something broke$"):
        children.run([sys.executable, '-c', "import sys; print('error: something broke', file=sys.stderr); "
                      "sys.exit(3)"], 'the test child')
    with pytest.raises(bench_children.ChildFailed, match="killed by SIGKILL"):
        children.run([sys.executable, '-c', 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'],
                     'the test child')
    with pytest.raises(bench.cli.InputError, match=r"^bad flag$"):
        children.run([sys.executable, '-c', "import sys; print('error: bad flag', file=sys.stderr); sys.exit(2)"],
                     'the test child')
    assert children.running == []


WITHOUT_LINUX = '''if True:
    import json, os, signal, sys, threading
    from helpers import bench_children, bench_report
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where this test's SIGINT is ignored
    children = bench_children.Children('.')
    out, wall, rss = children.run([sys.executable, '-c', 'print(42)'], 'a child')
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        children.run([sys.executable, '-c', 'import time; time.sleep(60)'], 'a sleeper')
    except KeyboardInterrupt:
        sleeper = children.running[0]
        children.kill_all()
    with bench_children.busy_neighbour() as neighbour:
        pass
    print(json.dumps(dict(out=out, peak=bench_children.peak_rss_mb(), machine=bench_report.machine(),
                          sleeper=sleeper.returncode, neighbour=neighbour.returncode)))'''


def test_where_linux_only_parts_are_missing_children_still_run_and_stop_and_memory_is_unknown():
    """The project's files denied resource, prctl, killpg, SIGKILL, sched_getaffinity and /proc, as on
    Windows (tests/portable): a child's output still arrives, an interrupted child is still killed, the busy
    neighbour still goes, the CPU is still named, and peak memory is unknown, printed '-'."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, 'tests', 'portable'), PORTABLE_ROOT=ROOT)
    done = subprocess.run([sys.executable, '-c', WITHOUT_LINUX], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == '', done.stderr
    result = json.loads(done.stdout)
    assert result['out'] == '42\n' and result['peak'] is None
    assert result['sleeper'] == -signal.SIGKILL and result['neighbour'] is not None  # killed and reaped
    assert result['machine']['cpu'] and result['machine']['usable_cores'] == result['machine']['cores'] >= 1
    assert bench_report.megabytes(None) == '-' and bench_report.largest([None, 3.0, None]) == 3.0


def process_state(pid):
    """The state letter of /proc/PID/stat ('R' running, 'Z' exited, not yet reaped), None if gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except OSError:
        return None


def test_the_busy_neighbour_is_busy_and_dies_with_the_process_that_started_it():
    with bench_children.busy_neighbour() as neighbour:
        assert process_state(neighbour.pid) in ('R', 'S')
    assert neighbour.returncode is not None  # killed and reaped when the block ends
    # a process killed outright cannot clean up: its neighbour goes anyway (its stdin pipe closes)
    code = ("import time\nfrom helpers.bench_children import busy_neighbour\n"
            "with busy_neighbour() as neighbour:\n    print(neighbour.pid, flush=True)\n    time.sleep(60)")
    process = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(process.stdout.readline())
        assert process_state(pid) in ('R', 'S')
    finally:
        process.kill()
        finish(process)
    deadline = time.monotonic() + 10
    while process_state(pid) not in (None, 'Z') and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_state(pid) in (None, 'Z')


# ------------------------------------------------------------------ in this process: the measurements' code

@pytest.fixture
def small_loss_cases(monkeypatch):
    monkeypatch.setattr(bench, 'LOSS_CASES', [((8, 10), 2), ((2, 10, 4, 4), 2), ('flattened', 2)])


def test_loss_timings_report_a_shape_the_scratch_loss_refuses_as_unsupported(monkeypatch, small_loss_cases):
    real = losses.cross_entropy

    def two_dimensional_only(input, target, *args, **kwargs):
        if input.dim() > 2:
            raise ValueError("input must be a floating-point (N, C) tensor of logits")
        return real(input, target, *args, **kwargs)
    monkeypatch.setattr(losses, 'cross_entropy', two_dimensional_only)
    results = bench.loss_timings(blocks=2)
    assert set(results) == {'8x10', '2x10x4x4', '32x10'}
    kdim, flat = results['2x10x4x4'], results['32x10']
    assert kdim['unsupported'].startswith('ValueError: input must be') and kdim['torch'] > 0
    assert 'ratio' not in kdim and 'scratch' not in kdim
    assert flat['flattened'] and flat['ratio'] > 0 and results['8x10']['ratio'] > 0
    report = dict(cross_entropy=results)
    lines = [line for line in bench_report.printout_losses(report) if '2x10x4x4' in line]
    assert lines and 'scratch unsupported (ValueError' in lines[0]


def test_loss_timings_refuse_to_time_a_wrong_result(monkeypatch, small_loss_cases):
    monkeypatch.setattr(losses, 'cross_entropy', lambda input, target: 2 * F.cross_entropy(input, target))
    results = bench.loss_timings(blocks=1)
    assert all('mismatch' in result and 'ratio' not in result for result in results.values())


def test_each_floor_epoch_runs_with_one_thread_and_with_all_and_counts_the_faster():
    features, test_features = torch.rand(1000, 784), torch.rand(100, 784)
    threads = torch.get_num_threads()
    floor = bench.floor_epochs(features, test_features, 3, 'cpu', max_threads=2)
    assert set(floor['by_threads']) == {'1', '2'}
    for epoch, pair in enumerate(zip(floor['by_threads']['1'], floor['by_threads']['2'])):
        finished = [seconds for seconds in pair if seconds is not None]  # None: stopped, already slower
        assert finished and floor['seconds'][epoch] == min(finished)
    assert floor['total'] >= sum(floor['seconds'])
    assert torch.get_num_threads() == threads  # put back as it was
