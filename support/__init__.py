"""What the chapter's files stand on; a learner of the chapter never needs to open this folder.

Nothing here imports the chapter's files (data, model, losses, train) or helpers/: the imports run one way.

    cli.py                  the process contract: one-line errors, exit codes, signals, closed streams
    writing.py              files written whole, the output folder checked and locked before a run writes
    reading.py              input files opened safely: regular files only, nothing that can block
    datafiles.py            the four Fashion-MNIST IDX files: found, and read no further than their headers promise
    checkpoints.py          model.pt read safely: its size, tensors and plain values only, one-line refusals
    threads.py              how many CPU threads the step loop uses, and the environment torch loads with
    steps.py                the step loop's one hook: Ctrl-C, the thread choice, the progress bar
    metrics.py              calibration: how far the softmax's confidence can be trusted
    cross_entropy_plumbing.py  losses.cross_entropy's argument checks by torch's rules, and its float16 path
"""
