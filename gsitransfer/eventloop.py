"""The workers' reactor: Twisted's epoll reactor without a log context per event.

For every ready descriptor, ``EPollReactor.doPoll`` calls
``log.callWithLogger(selectable, ...)``: it asks the selectable for its log
prefix and runs the handler inside a new logging context, so that legacy log
events carry a ``system`` field naming the connection. A worker's log
observer never prints that field (its supervisor prefixes ``worker N:``
instead), and on a keep-alive GET the two context switches cost about 5 % of
the worker's CPU. :class:`DirectDispatchReactor` dispatches straight to
``_doReadOrWrite``, keeping what ``callWithLogger`` does besides: an
exception escaping it is logged and the loop goes on; ``KeyboardInterrupt``
is not caught. Everything else is Twisted's reactor, unchanged.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log


class DirectDispatchReactor(EPollReactor):
    """``EPollReactor`` whose ``doPoll`` calls each ready selectable without a logging context."""

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # wait until an event
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err()

    doIteration = doPoll


def install() -> Any:
    """Install :class:`DirectDispatchReactor` as the global reactor; returns it.

    Must run before anything imports ``twisted.internet.reactor``.
    """
    from twisted.internet.main import installReactor

    reactor = DirectDispatchReactor()
    installReactor(reactor)
    return reactor


__all__ = ["DirectDispatchReactor", "install"]
