"""The step loop's one hook: between two training steps, Ctrl-C, the thread choice and the progress bar."""
import time

from support import cli

POSTFIX_EVERY_SECONDS = 0.5  # the bar's running loss: a reader cannot follow it any faster


def steps(count, desc, threads, running_loss=None):
    """range(count) for a training loop, doing the machinery's work before each step:

    - stop at once if Ctrl-C or kill arrived (cli.stop_if_requested: its KeyboardInterrupt may have been
      swallowed somewhere);
    - threads.tick(): the ThreadChooser times the previous step and may change the thread count;
    - a tqdm progress bar on stderr (only on a terminal), showing running_loss(steps done) twice a
      second when given (None on CUDA: reading a value back would stall the GPU).
    """
    from tqdm import tqdm
    bar = tqdm(total=count, leave=False, desc=desc, unit='batch', disable=None, dynamic_ncols=True)
    next_postfix = time.monotonic() + POSTFIX_EVERY_SECONDS
    threads.start_epoch()
    try:
        for index in range(count):
            cli.stop_if_requested()
            threads.tick()
            yield index
            bar.update()
            if running_loss is not None and not bar.disable and time.monotonic() >= next_postfix:
                next_postfix = time.monotonic() + POSTFIX_EVERY_SECONDS
                bar.set_postfix_str(f"loss {running_loss(index + 1):.4f}", refresh=False)
    finally:
        bar.close()
