"""The project's files on a platform without Linux-only parts, as on Windows, emulated here on Linux.

    PYTHONPATH=tests/portable PORTABLE_ROOT=$PWD python train.py --epochs 1 --out "$(mktemp -d)"

Python imports this module at start-up (sitecustomize). For the project's own files only (those under
PORTABLE_ROOT outside .venv/ and tests/; libraries such as torch, matplotlib, OpenCV and filelock keep the
real modules, as they would use their own Windows code there): fcntl, termios, resource, pwd, grp and posix
cannot be imported; os and signal lack their POSIX-only names; nothing under /proc can be opened.
What it cannot show: Windows' file semantics (a file held open elsewhere cannot be replaced), paths with
drive letters, and worker processes that are spawned rather than forked."""
import builtins
import os
import signal
import sys
import types

ROOT = os.path.realpath(os.environ.get('PORTABLE_ROOT', os.getcwd()))
POSIX_ONLY = {'fcntl', 'termios', 'resource', 'pwd', 'grp', 'posix'}
HIDDEN = {
    'os': {'sched_getaffinity', 'sched_setaffinity', 'O_DIRECTORY', 'O_NONBLOCK', 'O_CLOEXEC', 'O_NOFOLLOW',
           'geteuid', 'getuid', 'getegid', 'getgid', 'getpgid', 'getpgrp', 'setsid', 'killpg', 'fork',
           'register_at_fork', 'major', 'minor', 'makedev', 'sysconf', 'statvfs', 'fstatvfs', 'mkfifo',
           'mknod', 'getloadavg', 'nice', 'uname', 'chown', 'lchown', 'fchown', 'pipe2', 'WNOHANG', 'wait',
           'wait3', 'wait4', 'waitid', 'WIFSIGNALED', 'WIFEXITED', 'WTERMSIG', 'WEXITSTATUS', 'sync',
           'getpriority', 'setpriority', 'sched_yield', 'posix_spawn', 'sendfile', 'pread', 'pwrite'},
    'signal': {'SIGHUP', 'SIGQUIT', 'SIGKILL', 'SIGALRM', 'SIGUSR1', 'SIGUSR2', 'SIGPIPE', 'SIGCHLD', 'SIGTSTP',
               'SIGCONT', 'SIGTTIN', 'SIGTTOU', 'SIGWINCH', 'pthread_sigmask', 'pthread_kill', 'sigwait',
               'setitimer', 'getitimer', 'ITIMER_REAL', 'alarm', 'pause', 'siginterrupt'},
}


def ours(filename):
    path = os.path.realpath(filename or '')
    inside = path.startswith(ROOT + os.sep)
    return inside and not any(f'{os.sep}{part}{os.sep}' in path[len(ROOT):] for part in ('.venv', 'tests'))


def on_proc(path):
    return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith('/proc')


def no_proc(real):
    def guarded(path, *args, **kwargs):
        if on_proc(path):
            raise FileNotFoundError(2, 'No such file or directory (emulated: no /proc)', os.fsdecode(path))
        return real(path, *args, **kwargs)
    return guarded


class Without(types.ModuleType):
    """The module `real` as the project's files see it: without the names in `hidden`, and (os) with no
    /proc to open, list or examine."""

    def __init__(self, real, hidden, overrides):
        super().__init__(real.__name__)
        vars(self).update(_real=real, _hidden=hidden, _overrides=overrides)

    def __getattr__(self, name):
        if name in self._hidden:
            raise AttributeError(f"module '{self._real.__name__}' has no attribute '{name}' "
                                 f"(emulated: not on every platform)")
        return self._overrides.get(name) or getattr(self._real, name)

    def __setattr__(self, name, value):
        setattr(self._real, name, value)

    def __dir__(self):
        return [name for name in dir(self._real) if name not in self._hidden]


PROXIES = {'os': Without(os, HIDDEN['os'], {name: no_proc(getattr(os, name)) for name in
                                             ('open', 'stat', 'lstat', 'listdir', 'scandir')}),
           'signal': Without(signal, HIDDEN['signal'], {})}
real_import, real_open = builtins.__import__, builtins.open


def emulated_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and ours((globals or {}).get('__file__')):
        if name.split('.')[0] in POSIX_ONLY:
            raise ModuleNotFoundError(f"No module named '{name}' (emulated: not on every platform)", name=name)
        if name in PROXIES:
            for attr in fromlist or ():
                getattr(PROXIES[name], attr)  # raises for a hidden name, as 'from os import x' would
            return PROXIES[name]
    return real_import(name, globals, locals, fromlist, level)


def emulated_open(file, *args, **kwargs):
    if on_proc(file) and ours(sys._getframe(1).f_code.co_filename):
        raise FileNotFoundError(2, 'No such file or directory (emulated: no /proc)', os.fsdecode(file))
    return real_open(file, *args, **kwargs)


builtins.__import__, builtins.open = emulated_import, emulated_open
