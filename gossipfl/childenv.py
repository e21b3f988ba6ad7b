"""The environment child processes start with.

Simulations and sweeps run one single-threaded Python program per process; BLAS and
OpenMP thread pools in each would only fight over the same cores. Child processes inherit
the environment of the moment they (or their fork server) start, so it is set around that
moment and restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator, Mapping

SINGLE_THREADED = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@contextlib.contextmanager
def environment(values: Mapping[str, str] = SINGLE_THREADED) -> Iterator[None]:
    """``values`` set in ``os.environ`` for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGTERM this process when its parent ``parent`` exits
    (raised at once if it already has). Elsewhere a no-op.

    For processes started directly by a long-lived thread of the program (experiment
    workers): the kernel signals when the parent *thread* ends. A fork server's children
    use :func:`exit_with` instead (see there).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before we asked
        signal.raise_signal(signal.SIGTERM)


def exit_with(pid: int) -> None:
    """SIGTERM this process when process ``pid`` (the program that asked for it) exits.

    For the processes of a multiprocessing fork server (peer and shard processes): if
    the program that started them is SIGKILLed, nothing else stops them, and they would
    train on (and hold their ports) for nobody. The kernel's parent-death signal does not
    help there: their parent is the fork server, which waits for them (they hold its
    liveness pipe) before it exits. So a daemon thread waits on a pidfd of ``pid``
    (Linux 5.3+) and raises SIGTERM here when it becomes readable, which a ``gossipfl
    start`` peer answers with its clean stop. Where pidfds do not exist, a no-op.
    """
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return
    try:
        fd = opener(pid)
    except ProcessLookupError:  # already gone
        signal.raise_signal(signal.SIGTERM)
        return
    except OSError:  # no pidfds in this kernel
        return

    def watch() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gossipfl-exit-with", daemon=True).start()
