"""The machinery behind the chapter's scripts: a learner never needs to open this folder.

    threads.py          how many CPU threads the step loop uses, and the environment torch must load with
    cli.py              the process contract: one-line errors, exit codes, signals, closed streams, atomic
                        files, the output folder's check and lock
    reading.py          input files opened safely: regular files only, nothing that can block
    steps.py            the step loop's one hook: Ctrl-C, the thread choice, the progress bar
    records.py          a run's files: history.csv, metrics.json, model.pt (saved and loaded), compare
    metrics.py          calibration: how far the softmax's confidence can be trusted
    cross_entropy.py    every option of F.cross_entropy, from scratch (losses.cross_entropy)
    loss_demo.py        `python losses.py`: the notes' stages of care, side by side
    photo.py            `predict.py`: a photo turned into a 28x28 Fashion-MNIST image
    bench_children.py   `bench.py`: its measuring processes and the busy neighbour
    bench_report.py     `bench.py`: its ratios and printout
    plots*.py           every figure
"""
