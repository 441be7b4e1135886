"""The machinery behind the chapter's scripts: a learner never needs to open this folder.

    threads.py   how many CPU threads the step loop uses, and the environment torch must load with
    cli.py       the process contract: one-line errors, exit codes, signals, closed streams, atomic files
    records.py   a run's files: history.csv, metrics.json, model.pt (saved and loaded), compare.json
    metrics.py   calibration: how far the softmax's confidence can be trusted
    plots.py     every figure
"""
