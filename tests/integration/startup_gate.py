"""A ``--handler`` factory that holds a server process in its start-up until the test opens a gate.

``--handler gate=tests.integration.startup_gate:gated`` with
``GSITRANSFER_TEST_GATE=<directory>``: the factory runs while the servers are
built (``makeService`` in the twistd process; ``worker_main`` in each worker,
before it serves). It writes ``<role>-<pid>.arrived`` in the directory
(``role``: ``main`` for the twistd process, ``worker`` for a worker), then
waits, at most ``GATE_TIMEOUT`` seconds, for ``<role>.open``. Meanwhile the
test can signal a process that is provably still starting.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from gsitransfer.store import DirectoryStore

#: seconds a process waits at the gate before giving up (its start-up then fails)
GATE_TIMEOUT = 30.0


def role() -> str:
    """``worker`` in a ``--workers`` worker, ``main`` in the twistd process."""
    return "worker" if os.environ.get("GSITRANSFER_WORKER_INDEX") else "main"


def gated() -> DirectoryStore:
    """Announce this process at the gate, wait for the gate to open, then make a directory store."""
    gate = Path(os.environ["GSITRANSFER_TEST_GATE"])
    here = role()
    (gate / f"{here}-{os.getpid()}.arrived").touch()
    deadline = time.monotonic() + GATE_TIMEOUT
    while not (gate / f"{here}.open").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {here} gate in {gate} never opened")
        time.sleep(0.02)
    return DirectoryStore(str(gate / "store"), recover=False)


def arrived(gate: Path, who: str) -> list[int]:
    """Pids of the ``who`` processes (``main``, ``worker``) waiting at, or past, the gate."""
    return sorted(int(path.name.split("-")[1].split(".")[0]) for path in gate.glob(f"{who}-*.arrived"))
