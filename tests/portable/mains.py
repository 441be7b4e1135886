"""Several scripts' main() run one after another in this one process, each as its command line would run it
(cli.run), so that torch is imported once: tests/test_portable.py starts this under the emulation beside it.

    python tests/portable/mains.py STEPS.json RESULTS.json

STEPS.json: [[name, script, [argument, ...]], ...]. RESULTS.json gets, for each step in order, its name,
exit code, what it printed on stdout and stderr (the process's own descriptors included: a C library's
warning, a worker's traceback) and the seconds it took.
"""
import io
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def run_step(script, argv):
    """(exit code, stdout, stderr) of SCRIPT's main(argv) through cli.run, in this process."""
    import importlib

    from support import cli
    main = importlib.import_module(script[:-3]).main
    sys.argv = [os.path.join(ROOT, script), *argv]  # argparse's program name
    with tempfile.TemporaryFile() as fd_err:
        saved = os.dup(2)
        os.dup2(fd_err.fileno(), 2)
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        try:
            code = cli.run(main, argv)
        finally:
            out, err = sys.stdout.getvalue(), sys.stderr.getvalue()
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            os.dup2(saved, 2)
            os.close(saved)
        fd_err.seek(0)
        return code, out, err + fd_err.read().decode(errors='replace')


def main():
    steps_path, results_path = sys.argv[1:3]
    with open(steps_path) as f:
        steps = json.load(f)
    results = []
    for name, script, argv in steps:
        started = time.perf_counter()
        code, out, err = run_step(script, argv)
        results.append(dict(name=name, code=code, out=out, err=err, seconds=time.perf_counter() - started))
    with open(results_path, 'w') as f:
        json.dump(results, f)


if __name__ == '__main__':
    main()
