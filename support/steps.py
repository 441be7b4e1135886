"""The step loop's one hook: between two training steps Ctrl-C, the thread choice and the progress bar; after
the last, the check that no loss became nan or inf."""
import time

from support import cli
from support.threads import ThreadChooser

POSTFIX_EVERY_SECONDS = 0.5  # the bar's running loss: a reader cannot follow it any faster
_choosers = {}  # device type -> the process's ThreadChooser: what it learnt of the machine outlives an epoch


class Diverged(Exception):
    """The loss became nan or inf: at `step` (a number, or a phrase such as 'evaluation on the test set')
    of `epoch`, with the value `loss`."""

    def __init__(self, epoch, step, loss):
        where = f"step {step}" if isinstance(step, int) else step
        super().__init__(f"epoch {epoch}, {where}: loss is {loss}")
        self.epoch, self.step, self.loss = epoch, step, loss


def thread_chooser(device):
    """The ThreadChooser of `device`'s type (it does nothing on CUDA), made on first use."""
    if device.type not in _choosers:
        _choosers[device.type] = ThreadChooser(device)
    return _choosers[device.type]


def steps(epoch, epochs, losses, batch_size):
    """range(number of minibatches) for epoch `epoch` of `epochs`, whose steps write each example's loss into
    `losses` (n,), batch_size at a time in the order they run. Around the steps, the machinery's work:

    - before each step, stop at once if Ctrl-C or kill arrived (cli.stop_if_requested: its KeyboardInterrupt
      may have been swallowed somewhere); the ThreadChooser times the previous step and may change the
      thread count (support/threads.py);
    - a tqdm progress bar on stderr (only on a terminal) with the running mean loss twice a second, on the
      CPU only: reading a value back would stall a GPU;
    - after the last step, Diverged naming the first step whose loss is nan or inf, if any.
    """
    from tqdm import tqdm
    count = -(-len(losses) // batch_size)
    threads = thread_chooser(losses.device)
    bar = tqdm(total=count, leave=False, desc=f"epoch {epoch}/{epochs}", unit='batch', disable=None,
               dynamic_ncols=True)
    show_loss = not bar.disable and losses.device.type == 'cpu'
    next_postfix = time.monotonic() + POSTFIX_EVERY_SECONDS
    threads.start_epoch()
    try:
        for index in range(count):
            cli.stop_if_requested()
            threads.tick()
            yield index
            bar.update()
            if show_loss and time.monotonic() >= next_postfix:
                next_postfix = time.monotonic() + POSTFIX_EVERY_SECONDS
                bar.set_postfix_str(f"loss {float(losses[:(index + 1) * batch_size].double().mean()):.4f}",
                                    refresh=False)
    finally:
        bar.close()
    bad = ~losses.isfinite()
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise Diverged(epoch, first // batch_size + 1, float(losses[first]))
