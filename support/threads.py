"""How many CPU threads the step loop uses, and the environment torch's libraries must load with.

Every entry point imports this module first, by name (`import support.threads`), because two settings
only take effect if they are in the environment when torch loads its libraries:
- MKL_CBWR=AUTO,STRICT: MKL's strict reproducibility mode: a GEMM gives the same bits on 1 thread or 2,
  so the thread count can follow the machine's load without changing a run's history.
- GOMP_SPINCOUNT: how long an idle OpenMP thread spins before it sleeps. Between two steps there is
  ~0.1 ms of Python; a thread that sleeps through it costs a wake-up per GEMM. Spinning only ever happens
  on all threads, which the ThreadChooser keeps only on a quiet machine.
Set either yourself to override.

The policy (ThreadChooser): one thread, unless more are clearly and repeatedly faster.
- Load: every 0.2 s the CPU time that anything but this process spent on the cores it may use
  (/proc/stat over os.sched_getaffinity, less time.process_time()), per second of wall time. A neighbour
  using more than a quarter of a core means a second thread would wait for that core at every GEMM
  (5-13x slower steps), so: one thread, and no trial. An average over 0.2 s spans dozens of scheduler
  slices: no single slice decides it.
- Trial, only on a quiet machine: steps alternate between one thread and all the free cores', in
  blocks of 16 timed steps, A B A B A B; the larger count is kept only if every pair found its median
  step 5% faster (two threads measured 9-11% faster per step on an idle 2-core AMD EPYC). A lost trial
  is retried after 1 s, then 2, 4, up to 16 s; a neighbour that leaves makes the next trial due at once.
- Watch, on more than one thread: a window with a neighbour, or 16 steps that took twice the trial's
  median on average (a stalled step counts in full), drops to one thread at once, and that counts as
  a lost trial unless the count held for 1 s. The two mistakes are not alike: one thread on an idle
  machine costs ~1.4x, two beside a busy process 5-13x; so going down is quick, going up slow.
"""
import os
import statistics
import sys
import time

# torch is imported inside the functions below: importing this module must not load it (a script calls
# cli.start() between the two).
os.environ.setdefault('MKL_CBWR', 'AUTO,STRICT')
if 'OMP_WAIT_POLICY' not in os.environ:
    os.environ.setdefault('GOMP_SPINCOUNT', '100000')

_DEFAULT_THREADS = []  # torch's own thread count, read before the first chooser changes it

WINDOW_SECONDS = 0.2  # one reading of the machine's load
QUIET_CORES = 0.25  # others' CPU time, in cores, below which a core counts as free
BLOCK_STEPS, WARMUP_STEPS = 16, 2  # a trial block: steps timed after a switch, and steps ignored first
PAIRS = 3  # trial blocks per count, interleaved
FASTER = 0.95  # all threads win a pair when their median step takes at most this fraction of one's
SLOWER = 2.0  # on all threads, steps taking this many times the trial's median, on average, drop to one
RETRY_SECONDS = (1, 2, 4, 8, 16)  # after each lost trial in a row


def gemms_reproducible_across_thread_counts():
    """True when MKL's strict reproducibility mode is on (MKL_CBWR=AUTO,STRICT, set at the top of this file,
    takes effect if no GEMM ran before), so that every GEMM gives the same bits on 1 thread or 2."""
    import ctypes

    import torch
    library = {'win32': 'torch_cpu.dll', 'darwin': 'libtorch_cpu.dylib'}.get(sys.platform, 'libtorch_cpu.so')
    try:
        mkl = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), 'lib', library))
        return bool(mkl.mkl_serv_cbwr_get(ctypes.c_int(-1)) & 0x10000)  # MKL_CBWR_STRICT
    except (OSError, AttributeError):  # a build without MKL (e.g. ARM): keep torch's thread count
        return False


def usable_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def cpu_seconds():
    """(CPU seconds every task spent on this process's usable cores since boot, this process's own CPU
    seconds), or None where /proc/stat is not there (not Linux): then only the trials decide."""
    cores = os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else None
    busy = 0
    try:
        with open('/proc/stat') as f:
            for line in f:
                name, *ticks = line.split()
                if not name.startswith('cpu'):
                    break
                if name[3:].isdigit() and (cores is None or int(name[3:]) in cores):
                    ticks = [int(t) for t in ticks[:8]]  # user nice system idle iowait irq softirq steal
                    busy += sum(ticks) - ticks[3] - ticks[4]  # steal too: a hypervisor's neighbour
        ticks_per_second = os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, AttributeError):  # AttributeError: no os.sysconf (Windows)
        return None
    return busy / ticks_per_second, time.process_time()


class ThreadChooser:
    """How many CPU threads the step loop uses: one, or as many as there are free cores (at most torch's
    own count) when interleaved trials of real training steps find them clearly faster (see the module's
    docstring). Trial steps are ordinary training steps: MKL's strict mode makes the history the same on
    any count. On CUDA, without MKL's strict mode, or with a single thread it does nothing.
    """

    def __init__(self, device):
        import torch
        if not _DEFAULT_THREADS:
            _DEFAULT_THREADS.append(torch.get_num_threads())
        self.all = self.active = _DEFAULT_THREADS[0]
        self.on = device.type == 'cpu' and self.all > 1 and gemms_reproducible_across_thread_counts()
        if self.on:
            torch.set_num_threads(self.all)  # the set-up before the first step runs with every thread
        self.switches = []  # (thread count, why), in order: what a test, or a curious reader, checks
        self.last = None  # when the previous step started
        self.seen = 0  # steps since the count last changed
        self.decided = False  # a first load reading was taken
        self.free = self.all  # cores free of others, as the last window measured
        self.window_start, self.window_cpu = time.perf_counter(), cpu_seconds()
        self.quiet, self.lost, self.retry_at, self.won_at = False, 0, 0.0, 0.0
        self.trial = []  # the counts of the trial's blocks still to run, the current one first
        self.block, self.one, self.wide = [], None, []  # trial step times: this block, one's median, more's
        self.watched, self.promise = [], None  # after a won trial: step times, the trial's median

    def start_epoch(self):
        self.last = None  # the time between epochs (evaluation, files) is not a step's

    def tick(self):
        """Called before every step: times the previous one, reads the load every WINDOW_SECONDS, and
        switches the thread count when the policy says so."""
        if not self.on:
            return
        now = time.perf_counter()
        last, self.last = self.last, now
        if now - self.window_start >= WINDOW_SECONDS:
            self._read_load(now)
        elif not self.decided:
            self._use(1, 'before the first load reading')  # the safe count while nothing is known
        if last is not None and self.decided:
            self._step(now - last, now)

    def _use(self, count, why):
        if count != self.active:
            import torch
            torch.set_num_threads(count)
            self.active = count
            self.switches.append((count, why))
        self.seen, self.block, self.watched = 0, [], []

    def _read_load(self, now):
        reading = cpu_seconds()
        if reading is not None and self.window_cpu is not None:
            busy, own = reading[0] - self.window_cpu[0], reading[1] - self.window_cpu[1]
            others = (busy - own) / (now - self.window_start)  # in cores
            self.free = min(self.all, int(usable_cores() - others + QUIET_CORES))
        self.window_start, self.window_cpu, self.decided = now, reading, True
        if self.free < max(2, self.active):
            self.quiet, self.trial, self.promise = False, [], None
            self._use(1, 'a neighbour uses a core')
            return
        if not self.quiet:  # quiet again, or for the first time: a trial is due at once
            self.quiet, self.lost, self.retry_at = True, 0, now
        if self.promise is not None and now - self.won_at >= RETRY_SECONDS[0]:
            self.lost = 0  # all threads held: a later drop is news, retried soon
        if self.promise is None and not self.trial and now >= self.retry_at:
            self.trial, self.wide = [1, self.free] * PAIRS, []
            self._use(1, 'trial')

    def _step(self, seconds, now):
        self.seen += 1
        if self.trial:
            self._trial_step(seconds, now)
        elif self.promise is not None:
            self.watched.append(seconds)
            if len(self.watched) == BLOCK_STEPS:  # the mean, not the median: a stalled step counts in full
                mean = sum(self.watched) / BLOCK_STEPS
                self.watched = []
                if mean > SLOWER * self.promise:
                    self._lose(now, f"slower steps: {mean / self.promise:.1f}x the trial's")

    def _trial_step(self, seconds, now):
        if self.seen <= WARMUP_STEPS:  # waking threads and caches: the first steps after a switch lie
            return
        self.block.append(seconds)
        if len(self.block) < BLOCK_STEPS:
            return
        count, median = self.trial.pop(0), statistics.median(self.block)
        if count == 1:
            self.one = median
        elif median > FASTER * self.one:
            return self._lose(now, f"trial lost: {count} threads' step {median / self.one:.2f}x one's")
        else:
            self.wide.append(median)
        if self.trial:
            self._use(self.trial[0], 'trial')
        else:
            self.promise, self.won_at = statistics.median(self.wide), now
            self._use(count, 'trial')  # already on it: the last block was its
            self.switches.append((count, f"trial won: {count} threads' step {self.promise / self.one:.2f}x one's"))

    def _lose(self, now, why):
        self.trial, self.promise = [], None
        self._use(1, why)
        self.retry_at = now + RETRY_SECONDS[min(self.lost, len(RETRY_SECONDS) - 1)]
        self.lost += 1
