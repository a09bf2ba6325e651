"""The workers' reactor: Twisted's epoll reactor without a log context per event, or Twisted's own.

What this module owns: :class:`DirectDispatchReactor` (the fast path) and
:func:`install` / :func:`make_reactor`, which choose between it and Twisted's
``EPollReactor``.

For every ready descriptor, ``EPollReactor.doPoll`` calls
``log.callWithLogger(selectable, ...)``: it asks the selectable for its log
prefix and runs the handler inside a new logging context, so that legacy log
events carry a ``system`` field naming the connection. A worker's log
observer never prints that field (its supervisor prefixes ``worker N:``
instead), and on a keep-alive GET the two context switches cost about 5 % of
the worker's CPU. :class:`DirectDispatchReactor` dispatches straight to the
reactor's own read-or-write step (reached through
:func:`gsitransfer._internals.epoll_ready`), keeping what ``callWithLogger``
does besides: an exception escaping it is logged and the loop goes on;
``KeyboardInterrupt`` is not caught. Everything else is Twisted's reactor,
unchanged.

The fast path runs only when asked for and when
:func:`gsitransfer._internals.check_internals` finds what it reaches for;
otherwise Twisted's ``EPollReactor`` runs, with one log line when the
internals were missing.
"""

from __future__ import annotations

import errno
from typing import Callable

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

from gsitransfer._internals import EVENT_LOOP, InternalsReport, check_internals, epoll_ready, log_unavailable


def _log_dispatch_error() -> None:
    """Log the exception being handled as Twisted's ``callWithLogger`` does (``log.err``)."""
    err: Callable[[], object] = log.err  # looked up at each call; unannotated in Twisted
    err()


class DirectDispatchReactor(EPollReactor):
    """``EPollReactor`` whose ``doPoll`` calls each ready selectable without a logging context."""

    def doPoll(self, timeout: float | None) -> None:
        """Wait for events (at most ``timeout`` seconds, None: until one) and dispatch each."""
        if timeout is None:
            timeout = -1  # wait until an event
        try:
            events, selectables, dispatch = epoll_ready(self, timeout)
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log_dispatch_error()

    doIteration = doPoll


def make_reactor(enabled: bool = True, internals: InternalsReport | None = None) -> EPollReactor:
    """A new :class:`DirectDispatchReactor` when ``enabled`` and the internals allow, else Twisted's ``EPollReactor``.

    ``internals`` is the start-up check's report (checked now when None);
    when it finds the event loop's internals missing, one line is logged.
    """
    if enabled:
        report = internals if internals is not None else check_internals()
        if report.available(EVENT_LOOP):
            return _new_reactor(DirectDispatchReactor)
        log_unavailable(report, EVENT_LOOP, "Twisted's EPollReactor")
    return _new_reactor(EPollReactor)


def _new_reactor(reactor_class: Callable[[], EPollReactor]) -> EPollReactor:
    """``reactor_class()`` (Twisted leaves the reactors' constructors unannotated)."""
    return reactor_class()


def install(enabled: bool = True, internals: InternalsReport | None = None) -> EPollReactor:
    """Install :func:`make_reactor`'s reactor as the global reactor; returns it.

    Must run before anything imports ``twisted.internet.reactor``.
    """
    from twisted.internet import main

    install_reactor: Callable[[EPollReactor], None] = main.installReactor  # unannotated in Twisted
    reactor = make_reactor(enabled, internals)
    install_reactor(reactor)
    return reactor


__all__ = ["DirectDispatchReactor", "install", "make_reactor"]
