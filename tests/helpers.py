"""What the tests that run a script as a user would share: waiting for it, and reading its one line."""


def finish(process, timeout=300):
    """(exit code, stdout, stderr) of a started subprocess.Popen with text pipes."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def assert_one_line_error(err, *fragments):
    """stderr is exactly one non-blank line, no traceback, holding every fragment."""
    assert 'Traceback' not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
