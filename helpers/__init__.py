"""What the scripts use beside the chapter: nothing in support/, data, model or losses imports it at load.

    records.py              a run's files: history.csv, metrics.json, model.pt, the final figures, compare
    plots*.py               every figure
    loss_demo.py            `python losses.py`: the notes' stages of care, side by side
    photo.py                `predict.py`: a photo turned into a 28x28 Fashion-MNIST image
    book_reader.py          the book's own DataLoader (bench.py, exercises.py), its workers stopped cleanly
    bench_children.py       `bench.py`: its measuring processes and the busy neighbour
    bench_report.py         `bench.py`: its ratios and printout
"""
