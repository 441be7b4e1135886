"""How many CPU threads the step loop uses, and the environment torch's libraries must load with.

Every entry point imports this module first, by name (`import machinery.threads`), because two settings
only take effect if they are in the environment when torch loads its libraries:
- MKL_CBWR=AUTO,STRICT: MKL's strict reproducibility mode: a GEMM gives the same bits on 1 thread or 2,
  so the thread count can follow the machine's load without changing a run's history.
- GOMP_SPINCOUNT: how long an idle OpenMP thread spins before it sleeps. Between two steps there is
  ~0.1 ms of Python; a thread that sleeps through it costs a wake-up per GEMM. Under contention the
  ThreadChooser drops to one thread, where spinning costs nothing.
Set either yourself to override.
"""
import math
import os
import statistics
import time

# torch is imported inside the functions below: importing this module must not load it (a script calls
# cli.start() between the two).
os.environ.setdefault('MKL_CBWR', 'AUTO,STRICT')
if 'OMP_WAIT_POLICY' not in os.environ:
    os.environ.setdefault('GOMP_SPINCOUNT', '100000')

_DEFAULT_THREADS = []  # torch's own thread count, read before the first chooser changes it


def gemms_reproducible_across_thread_counts():
    """True when MKL's strict reproducibility mode is on (MKL_CBWR=AUTO,STRICT, set at the top of this file,
    takes effect if no GEMM ran before), so that every GEMM gives the same bits on 1 thread or 2."""
    import ctypes

    import torch
    try:
        mkl = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libtorch_cpu.so'))
        return bool(mkl.mkl_serv_cbwr_get(ctypes.c_int(-1)) & 0x10000)  # MKL_CBWR_STRICT
    except (OSError, AttributeError):  # a build without MKL (e.g. ARM): keep torch's thread count
        return False


class ThreadChooser:
    """How many CPU threads the step loop uses, chosen by timing real training steps with each count.

    On an idle machine two threads run the step's GEMMs faster; beside another busy process one thread
    is faster (the second one waits for a core, and every step waits for it). Which holds differs between
    CPUs and changes during a run, so it is measured, not set: a trial runs `warmup` steps and then
    `timed` steps with each count (a count clearly slower than the best is cut short), and keeps the
    fastest. The trial is repeated when steps become 1.5x slower than it promised, and every
    `recheck_seconds` anyway. The trial's steps are ordinary training steps; the history does not depend
    on the choice, since MKL's strict mode makes each GEMM's result the same on any number of threads.
    """

    def __init__(self, device, warmup=3, timed=12, recheck_seconds=2.0):
        import torch
        if not _DEFAULT_THREADS:
            _DEFAULT_THREADS.append(torch.get_num_threads())
        default = _DEFAULT_THREADS[0]
        self.counts = []
        if device.type == 'cpu' and default > 1 and gemms_reproducible_across_thread_counts():
            torch.set_num_threads(default)
            self.counts = [default, 1]
        self.warmup, self.timed, self.recheck_seconds = warmup, timed, recheck_seconds
        self.last = None
        self._start_trial()

    def start_epoch(self):
        self.last = None  # the time between epochs (evaluation, files) is not a step's

    def tick(self):
        """Called before every step: times the previous one, and switches the thread count when due."""
        if not self.counts:
            return
        now = time.perf_counter()
        last, self.last = self.last, now
        if last is None:
            return
        if self.trial_queue:
            self._trial_step(now - last, now)
        else:
            self._watch(now - last, now)

    def _use(self, count):
        import torch
        torch.set_num_threads(count)
        self.active, self.seen = count, 0

    def _start_trial(self):
        self.trial_queue = list(self.counts)
        self.trial_times = {}
        if self.counts:
            self._use(self.trial_queue[0])

    def _trial_step(self, seconds, now):
        self.seen += 1
        if self.seen <= self.warmup:  # waking threads and caches: the first steps after a switch lie
            return
        times = self.trial_times.setdefault(self.active, [])
        times.append(seconds)
        best = min((sum(other[:len(times)]) for count, other in self.trial_times.items()
                    if count != self.active and len(other) >= len(times)), default=math.inf)
        if len(times) < self.timed and sum(times) <= 1.5 * best:
            return
        self.trial_queue.pop(0)
        if self.trial_queue:
            self._use(self.trial_queue[0])
            return
        medians = {count: statistics.median(times) for count, times in self.trial_times.items()}
        self.reference = min(medians.values())
        self._use(min(medians, key=medians.get))
        self.window, self.next_check = [], now + self.recheck_seconds

    def _watch(self, seconds, now):
        self.window.append(seconds)
        if len(self.window) < self.timed:
            return
        slower = statistics.median(self.window) > 1.5 * self.reference
        self.window = []
        if slower or now >= self.next_check:
            self.counts.sort(key=lambda count: count != self.active)  # the current count first: it is warm
            self._start_trial()
