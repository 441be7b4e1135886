"""support/threads.py: the thread chooser's decisions under a fake clock and a fake load, and the
history that does not depend on them."""
import os
import sys

import pytest
import torch

from support import steps, threads


class FakeMachine:
    """Two cores, a clock and /proc/stat's counters: a step takes `seconds[thread count]`, this process
    spends `count` cores while it runs (spinning threads included) and a neighbour spends `others`."""

    def __init__(self, seconds, others=0.0):
        self.seconds, self.others = seconds, others
        self.now, self.busy, self.own = 0.0, 0.0, 0.0
        self.counts = []  # the thread count of every step run
        self.lucky = 0  # two-thread steps still to come that take IDLE's time whatever `seconds` says
        self.stalls = None  # (every, seconds): every so many two-thread steps, one stalls that long
        self.two_thread_steps = 0

    def perf_counter(self):
        return self.now

    def cpu_seconds(self):
        return self.busy, self.own

    def wait(self, seconds, count=1):
        self.now += seconds
        self.own += count * seconds
        self.busy += (count + self.others) * seconds

    def run_steps(self, chooser, count):
        for _ in range(count):
            chooser.tick()
            count = torch.get_num_threads()
            self.counts.append(count)
            lucky = count == 2 and self.lucky > 0
            self.lucky -= lucky
            seconds = IDLE[count] if lucky else self.seconds[count]
            self.two_thread_steps += count == 2
            if count == 2 and self.stalls and self.two_thread_steps % self.stalls[0] == 0:
                seconds = self.stalls[1]
            self.wait(seconds, count)

    def run_for(self, chooser, seconds):
        """Steps for `seconds` of fake time; the thread counts they ran with."""
        first, end = len(self.counts), self.now + seconds
        while self.now < end:
            self.run_steps(chooser, 1)
        return self.counts[first:]


IDLE = {2: 0.0005, 1: 0.0008}  # two threads clearly faster
BUSY = {2: 0.005, 1: 0.0009}  # a neighbour on a core: every two-thread GEMM waits for it


@pytest.fixture
def machine(monkeypatch):
    """A two-core machine where MKL's strict mode is on; torch's thread count put back afterwards."""
    fake = FakeMachine(dict(IDLE))
    monkeypatch.setattr(threads, '_DEFAULT_THREADS', [2])
    monkeypatch.setattr(threads, 'gemms_reproducible_across_thread_counts', lambda: True)
    monkeypatch.setattr(threads, 'usable_cores', lambda: 2)
    monkeypatch.setattr(threads.time, 'perf_counter', fake.perf_counter)
    monkeypatch.setattr(threads, 'cpu_seconds', fake.cpu_seconds)
    before = torch.get_num_threads()
    yield fake
    torch.set_num_threads(before)


def start(machine, setup_seconds=0.3):
    """A chooser as support/steps.py makes it before a process's first step; it starts on every thread."""
    chooser = threads.ThreadChooser(torch.device('cpu'))
    assert torch.get_num_threads() == 2
    machine.wait(setup_seconds, 2)
    chooser.start_epoch()
    return chooser


def reasons(chooser):
    return [why.split(':')[0] for count, why in chooser.switches if why != 'trial']


def test_idle_two_faster_threads_win_the_trial_and_stay(machine):
    chooser = start(machine)
    counts = machine.run_for(chooser, 5.0)
    assert counts[0] == 1 and counts[-1] == 2  # the trial starts on one thread
    assert reasons(chooser) == ['trial won']
    last_on_one = len(counts) - 1 - counts[::-1].index(1)
    assert last_on_one < 120  # the trial is short: six blocks of 18 steps, then two threads for good
    assert counts[-100:] == [2] * 100


def test_idle_two_threads_not_clearly_faster_stay_on_one_and_retry_less_and_less_often(machine):
    machine.seconds = {2: 0.00098, 1: 0.001}  # 2% faster is not clearly faster
    chooser = start(machine)
    counts = machine.run_for(chooser, 60.0)
    assert torch.get_num_threads() == 1
    lost = reasons(chooser)
    assert lost and set(lost) == {'trial lost'}
    assert len(lost) <= len(threads.RETRY_SECONDS) + 60 // threads.RETRY_SECONDS[-1]  # after 1, 2, 4, 8, 16, 16 s
    assert counts.count(2) < 0.02 * len(counts)


def test_a_neighbour_from_the_start_means_one_thread_without_any_trial(machine):
    machine.seconds, machine.others = dict(BUSY), 1.0
    chooser = start(machine)
    counts = machine.run_for(chooser, 10.0)
    assert set(counts) == {1}  # not a single step on two threads: no trial beside a neighbour
    assert reasons(chooser) == ['a neighbour uses a core']


def test_a_neighbour_that_arrives_leaves_and_returns_is_followed_within_a_window(machine):
    chooser = start(machine)
    machine.run_for(chooser, 2.0)
    assert torch.get_num_threads() == 2
    # it arrives: it gets 2/3 of a core beside our two threads (here the load alone tells; the steps
    # have not slowed yet)
    machine.others = 2 / 3
    counts = machine.run_for(chooser, 2 * threads.WINDOW_SECONDS)
    assert counts[-1] == 1
    machine.seconds, machine.others = dict(BUSY), 1.0  # on one thread it has its core
    counts = machine.run_for(chooser, 5.0)
    assert set(counts) == {1}
    # it leaves: the next window finds the machine quiet, and a trial gives two threads back at once
    machine.seconds, machine.others = dict(IDLE), 0.0
    counts = machine.run_for(chooser, 2 * threads.WINDOW_SECONDS + 0.2)
    assert counts[-1] == 2
    # it returns, and the steps slow down at once: whichever sees it first, the load or the steps
    machine.seconds, machine.others = dict(BUSY), 2 / 3
    counts = machine.run_for(chooser, 2 * threads.WINDOW_SECONDS)
    assert counts[-1] == 1
    assert reasons(chooser)[:3] == ['trial won', 'a neighbour uses a core', 'trial won']
    assert reasons(chooser)[3:] in (['a neighbour uses a core'], ['slower steps'])


def test_one_lucky_block_cannot_win_a_trial(machine):
    # two threads are slow, but the first trial block of two threads fell in a lucky moment (the trial
    # starts on one thread: one block of one, then this one): every pair has to find them faster
    machine.seconds = {2: 0.002, 1: 0.0009}
    machine.lucky = threads.WARMUP_STEPS + threads.BLOCK_STEPS
    chooser = start(machine)
    counts = machine.run_for(chooser, 5.0)
    assert reasons(chooser) == ['trial lost'] * len(reasons(chooser)) and torch.get_num_threads() == 1
    assert counts.count(2) <= 4 * (threads.WARMUP_STEPS + threads.BLOCK_STEPS)  # three trials in 5 s at most


def test_two_threads_that_stall_without_a_visible_neighbour_are_dropped(machine):
    # e.g. a hypervisor or a CPU quota takes time that /proc/stat does not show as another task's: most
    # steps look fine (the median would not see it), one in four waits 5 ms
    chooser = start(machine)
    machine.run_for(chooser, 1.0)
    assert torch.get_num_threads() == 2
    machine.stalls = (4, 0.005)
    counts = machine.run_for(chooser, 0.2)
    assert counts[-1] == 1 and reasons(chooser)[-1] == 'slower steps'
    counts = machine.run_for(chooser, 30.0)  # the trials that follow are won, dropped, less and less often
    assert counts.count(2) < 0.02 * len(counts) and torch.get_num_threads() == 1


def test_a_stalled_step_now_and_then_does_not_drop_two_threads(machine):
    chooser = start(machine)
    machine.stalls = (200, 0.003)  # a slice lost to some kernel thread, every 0.1 s
    counts = machine.run_for(chooser, 10.0)
    assert reasons(chooser) == ['trial won'] and counts[-1] == 2


def test_without_proc_stat_the_interleaved_trials_decide(machine, monkeypatch):
    monkeypatch.setattr(threads, 'cpu_seconds', lambda: None)
    chooser = start(machine)
    machine.run_for(chooser, 1.0)
    assert torch.get_num_threads() == 2
    machine.seconds = dict(BUSY)
    machine.run_for(chooser, 5.0)
    assert torch.get_num_threads() == 1


def test_the_chooser_leaves_the_count_alone_on_cuda_or_without_strict_mode(machine, monkeypatch):
    torch.set_num_threads(2)
    chooser = threads.ThreadChooser(torch.device('cuda'))
    machine.run_for(chooser, 1.0)
    monkeypatch.setattr(threads, 'gemms_reproducible_across_thread_counts', lambda: False)
    chooser = threads.ThreadChooser(torch.device('cpu'))
    machine.run_for(chooser, 1.0)
    assert set(machine.counts) == {2} and chooser.switches == []


def test_the_thread_count_does_not_change_the_history(fashion_mnist, monkeypatch):
    """MKL's strict mode (MKL_CBWR=AUTO,STRICT, set by support/threads.py) makes each GEMM the same on 1
    or 2 threads, so whatever the ThreadChooser picks, the same seed gives the same numbers, to the last bit."""
    import train
    if not threads.gemms_reproducible_across_thread_counts():
        pytest.skip("this torch has no MKL in strict mode (e.g. an ARM build): the chooser stays off there")
    monkeypatch.setattr(threads, 'gemms_reproducible_across_thread_counts', lambda: False)  # hold the count
    monkeypatch.setattr(steps, '_choosers', {})  # a chooser of this process's made before would not hold it
    before = torch.get_num_threads()
    histories = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            config = train.Config(**dict(train.RECIPES['tuned'], epochs=2), device='cpu')
            for history, _ in train.train(config, train.new_model(config, torch.device('cpu')), fashion_mnist,
                                          torch.device('cpu')):
                pass
            assert {row['threads'] for row in history} == {count}
            histories.append([{k: v for k, v in row.items() if k not in ('seconds', 'threads')}
                              for row in history])
    finally:
        torch.set_num_threads(before)
    assert histories[0] == histories[1]


# ------------------------------------------------------------------ other platforms

def test_without_proc_stat_or_sysconf_there_is_no_load_reading(monkeypatch):
    """Windows and macOS have neither /proc/stat nor (Windows) os.sysconf: cpu_seconds says so, and the
    interleaved trials decide alone (test_without_proc_stat_the_interleaved_trials_decide)."""
    assert threads.cpu_seconds() is not None or not os.path.exists('/proc/stat')
    monkeypatch.delattr(os, 'sysconf')
    assert threads.cpu_seconds() is None


@pytest.mark.parametrize('platform, library', [('linux', 'libtorch_cpu.so'), ('win32', 'torch_cpu.dll'),
                                               ('darwin', 'libtorch_cpu.dylib')])
def test_mkls_strict_mode_is_asked_of_the_platforms_own_torch_library(platform, library, monkeypatch):
    import ctypes
    opened = []

    def cdll(path):
        opened.append(os.path.basename(path))
        raise OSError(f"{path}: cannot open shared object file")  # as a build without MKL
    monkeypatch.setattr(sys, 'platform', platform)
    monkeypatch.setattr(ctypes, 'CDLL', cdll)
    assert threads.gemms_reproducible_across_thread_counts() is False and opened == [library]
