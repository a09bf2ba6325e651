"""CPU time and memory of a server's process tree, read from /proc.

A server is measured as its main process and every descendant (nginx's
master and workers; twistd and any worker processes it forks). CPU is
``utime + stime`` of each process (all its threads) from ``/proc/<pid>/stat``;
memory is ``VmRSS`` from ``/proc/<pid>/status``, summed over the tree.
:class:`PeakSampler` polls the tree's RSS in a thread to find the peak during
a workload.
"""

from __future__ import annotations

import os
import threading
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            data = stream.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    return data[data.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process on the machine."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    tree = children_map()
    pids: list[int] = []
    todo = [root]
    while todo and len(pids) < 10_000:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, ()))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes, in seconds (all threads)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """Sum of VmRSS of the processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as stream:
                for line in stream:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class TreeMeter:
    """CPU and RSS of one server's process tree (re-listed at each reading)."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid

    def pids(self) -> list[int]:
        return process_tree(self.root_pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def rss(self) -> int:
        return rss_bytes(self.pids())


class PeakSampler:
    """Polls a tree's RSS every ``interval`` seconds between start() and stop()."""

    def __init__(self, meter: TreeMeter, interval: float = 0.05) -> None:
        self.meter = meter
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakSampler":
        self.peak = self.meter.rss()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, self.meter.rss())

    def _run(self) -> None:
        pids = self.meter.pids()
        relist = time.monotonic() + 1.0
        while not self._stop.wait(self.interval):
            if time.monotonic() > relist:
                pids, relist = self.meter.pids(), time.monotonic() + 1.0
            self.peak = max(self.peak, rss_bytes(pids))


def machine_busy() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat.

    busy = user + nice + system + irq + softirq (all CPUs); steal is time the
    hypervisor gave to other guests.
    """
    with open("/proc/stat", "rb") as stream:
        fields = [int(x) for x in stream.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


class OtherLoad:
    """CPU the rest of the machine used meanwhile: busy - server - client, per second of wall time."""

    def __enter__(self) -> "OtherLoad":
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = machine_busy()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.monotonic() - self._t0
        busy, steal = machine_busy()
        self.busy = busy - self._busy0
        self.steal = steal - self._steal0

    def share(self, accounted: float) -> float:
        """Cores used by everything else on average (busy minus ``accounted`` CPU-seconds)."""
        return max(0.0, self.busy - accounted) / self.seconds if self.seconds > 0 else 0.0
