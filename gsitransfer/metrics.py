"""``--metrics ENDPOINT``: Prometheus metrics, ``/healthz`` and ``/readyz`` on their own plain-HTTP listener (SPEC §10).

:class:`Metrics` is an :class:`~gsitransfer.events.EventSink`: the records of
finished requests and expiries (``gsitransfer.events``) become counters and
histograms — counted in batches on the event fanout's thread (and before
every exposition), so no request path carries metric code of its own; a few gauges
(open connections, pending files and bytes, CRL next updates) are sampled
every :data:`SAMPLE_SECONDS`. The exposition is ``prometheus_client``'s.

With ``--workers N`` the supervisor makes a private directory and names it
in ``PROMETHEUS_MULTIPROC_DIR`` before anything imports ``prometheus_client``;
every process (the workers inherit it) writes its values there, and the
supervisor's ``/metrics`` adds them up (``MultiProcessCollector``); gauges
of processes that ended are dropped. The directory is removed at the end.

:class:`MetricsSite` answers ``GET /metrics``, ``GET /healthz`` (``200 ok``,
or ``503`` and each reason: a store directory where a file cannot be created,
the transfer database not answering, a CRL past its ``nextUpdate``) and
``GET /readyz`` (``503 draining`` from SIGTERM until the process ends; the
listener stays up through the drain).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.web import resource, server

from .events import CANCEL, DELETE, DOWNLOAD, EXPIRY, MANIFEST, REFUSAL, UPLOAD, Run

#: seconds between samples of the gauges
SAMPLE_SECONDS = 5.0
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def start_multiprocess(owner: tuple[int, int] | None = None) -> str:
    """Make the directory every process of ``--workers`` writes its values to, and name it in the environment.

    Must run before ``prometheus_client`` is imported (it reads the variable
    then). ``owner``: (uid, gid) the workers run as (``--uid``/``--gid``).
    """
    directory = tempfile.mkdtemp(prefix="gsitransfer-metrics-")
    if owner is not None:
        os.chown(directory, *owner)
    os.environ[MULTIPROC_VARIABLE] = directory
    return directory


def end_multiprocess(directory: str) -> None:
    """Remove the directory of :func:`start_multiprocess`."""
    shutil.rmtree(directory, ignore_errors=True)


def _result(status: int | None) -> str:
    if status is None or status < 400:
        return "ok"
    return "refused" if status < 500 else "failed"


class Metrics:
    """The metric families, fed by events (``emit``) and samples (``sample``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = MULTIPROC_VARIABLE in os.environ
        self.registry = CollectorRegistry()
        #: the labelled children already made, by (family, label values): bounded by the label values there are
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        #: called before each exposition: hands over the records not yet counted (the event fanout's ``flush``)
        self.before_exposition: Callable[[], None] = lambda: None
        into: dict[str, Any] = {"registry": None if self.multiprocess else self.registry}
        self.uploads = Counter("gsitransfer_uploads", "File uploads (POST, PUT, PATCH) answered, by prefix and result.",
                               ["prefix", "result"], **into)
        self.downloads = Counter("gsitransfer_downloads", "File downloads (GET) answered, by prefix and result.",
                                 ["prefix", "result"], **into)
        self.manifests = Counter("gsitransfer_manifests", "Manifests (and tus creations), by prefix and result.",
                                 ["prefix", "result"], **into)
        self.refusals = Counter("gsitransfer_refusals", "Requests refused, by prefix, what they asked and status.",
                                ["prefix", "action", "status"], **into)
        self.ends = Counter("gsitransfer_transfer_ends", "Transfers or files ended early: cancel, delete, expiry.",
                            ["prefix", "event"], **into)
        self.received_bytes = Counter("gsitransfer_received_bytes", "File bytes received and stored.", **into)
        self.sent_bytes = Counter("gsitransfer_sent_bytes", "File bytes sent by downloads.", **into)
        self.handshake_failures = Counter("gsitransfer_tls_handshake_failures",
                                          "TLS handshakes refused, by reason.", ["reason"], **into)
        self.trust_reloads = Counter("gsitransfer_trust_reloads", "Trust (CAs, CRLs, grid-mapfile) reloads.", **into)
        self.durations = Histogram("gsitransfer_request_duration_seconds",
                                   "Seconds from a request's head to its answer, by what it did.", ["event"],
                                   buckets=_DURATION_BUCKETS, **into)
        gauge = dict(into, multiprocess_mode="livesum") if self.multiprocess else into
        shared = dict(into, multiprocess_mode="max") if self.multiprocess else into
        self.open_connections = Gauge("gsitransfer_open_connections", "Client connections open.", **gauge)
        self.pending_files = Gauge("gsitransfer_pending_files", "Files announced and not yet stored.", **shared)
        self.pending_bytes = Gauge("gsitransfer_pending_bytes", "Bytes announced and not yet stored.", **shared)
        self.crl_next_update = Gauge("gsitransfer_crl_next_update_seconds",
                                     "Unix time of each CRL's nextUpdate.", ["issuer"], **shared)

    def _child(self, family: Any, *labels: str) -> Any:
        """``family.labels(*labels)``, remembered (``labels`` checks and locks on every call)."""
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def take(self, runs: Sequence[Run]) -> None:
        """Count a batch of records (``EventSink``, on the event fanout's thread): each kind of record
        (what, where, how it ended) once per batch, each duration one by one."""
        totals: dict[tuple[str, str, str, int | None], list[int]] = {}
        #: by the record's identity (alike records share one in a batch): its total, bytes, duration's histogram
        counted: dict[int, tuple[list[int], int, Callable[[float], None] | None]] = {}
        for event, times in runs:
            known = counted.get(id(event))
            if known is None:
                action = event.action or event.event
                total = totals.setdefault((event.event, action, event.prefix or "", event.status), [0, 0])
                observe = None if event.duration_s is None else self._child(self.durations, action).observe
                known = counted[id(event)] = (total, event.bytes or 0, observe)
            total, size, observe = known
            count = len(times)
            total[0] += count
            total[1] += size * count
            if observe is not None:
                for _ in range(count):
                    observe(event.duration_s)  # type: ignore[arg-type]
        for (kind, action, prefix, status), (count, size) in totals.items():
            self._count(kind, action, prefix, status, count, size)

    def close(self) -> None:
        """Nothing to release (``EventSink``): the families live as long as the process."""

    def _count(self, kind: str, action: str, prefix: str, status: int | None, count: int, size: int) -> None:
        """Count ``count`` records of one kind that moved ``size`` file bytes in all."""
        result = _result(status)
        if kind == REFUSAL:
            self._child(self.refusals, prefix, action, str(status)).inc(count)
        if action == DOWNLOAD:
            self._child(self.downloads, prefix, result).inc(count)
            if result == "ok" and size:
                self.sent_bytes.inc(size)
        elif action == UPLOAD:
            self._child(self.uploads, prefix, result).inc(count)
            if result == "ok" and size:
                self.received_bytes.inc(size)
        elif action == MANIFEST:
            self._child(self.manifests, prefix, result).inc(count)
        elif action in (CANCEL, DELETE, EXPIRY) and result == "ok":
            self._child(self.ends, prefix, action).inc(count)

    def handshake_failed(self, reason: str) -> None:
        """A TLS handshake was refused for ``reason`` (OpenSSL's verify text, or the alert sent)."""
        self.handshake_failures.labels(reason).inc()

    def reloaded(self) -> None:
        """Trust was reloaded."""
        self.trust_reloads.inc()

    def sample(self, connections: int, pending: tuple[int, int] | None, crls: Iterable[tuple[str, float]]) -> None:
        """Set the gauges: this process's open connections, the pending totals (when this process keeps them)."""
        self.open_connections.set(connections)
        if pending is not None:
            self.pending_files.set(pending[0])
            self.pending_bytes.set(pending[1])
            for issuer, next_update in crls:
                self.crl_next_update.labels(issuer).set(next_update)

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every metric (of every process with ``--workers``) and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self.before_exposition()
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def process_ended(self, pid: int) -> None:
        """A worker ended: its live gauges no longer count."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


#: a health check: the reasons the server is not healthy (empty: it is)
HealthCheck = Callable[[], Sequence[str]]


class _Text(resource.Resource):
    isLeaf = True

    def __init__(self, answer: Callable[[], tuple[int, bytes, bytes]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.answer = answer

    def render_GET(self, request: server.Request) -> bytes:
        code, content_type, body = self.answer()
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        return body


class MetricsSite(server.Site):
    """The metrics listener's site: ``/metrics``, ``/healthz``, ``/readyz``."""

    noisy = False

    def __init__(self, metrics: Metrics, health: HealthCheck, draining: Callable[[], bool]) -> None:
        root = resource.Resource()
        root.putChild(b"metrics", _Text(self._metrics))
        root.putChild(b"healthz", _Text(self._health))
        root.putChild(b"readyz", _Text(self._ready))
        super().__init__(root)  # type: ignore[no-untyped-call]
        self.metrics, self.health, self.draining = metrics, health, draining

    def log(self, request: Any) -> None:
        """No access line per scrape."""

    def _metrics(self) -> tuple[int, bytes, bytes]:
        body, content_type = self.metrics.exposition()
        return 200, content_type.encode("ascii"), body

    def _health(self) -> tuple[int, bytes, bytes]:
        problems = list(self.health())
        if problems:
            return 503, b"text/plain; charset=utf-8", ("\n".join(problems) + "\n").encode("utf-8")
        return 200, b"text/plain; charset=utf-8", b"ok\n"

    def _ready(self) -> tuple[int, bytes, bytes]:
        if self.draining():
            return 503, b"text/plain; charset=utf-8", b"draining: not taking new requests\n"
        return 200, b"text/plain; charset=utf-8", b"ready\n"


def store_problems(directories: Iterable[str]) -> list[str]:
    """Each store directory where a file cannot be created and removed (the test the uploads depend on)."""
    problems = []
    for directory in directories:
        probe = os.path.join(directory, f".gsitransfer-health-{os.getpid()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            problems.append(f"store {directory} is not writable: {error.strerror}")
    return problems


def crl_problems(crls: Iterable[tuple[str, float]], now: float | None = None) -> list[str]:
    """Each CRL whose ``nextUpdate`` has passed (fetch-crl has not run)."""
    now = time.time() if now is None else now
    return [
        f"CRL of {issuer} is past its nextUpdate ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(next_update))})"
        for issuer, next_update in crls
        if next_update < now
    ]


__all__ = [
    "MULTIPROC_VARIABLE", "SAMPLE_SECONDS", "HealthCheck", "Metrics", "MetricsSite",
    "crl_problems", "end_multiprocess", "start_multiprocess", "store_problems",
]
