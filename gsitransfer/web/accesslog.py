"""The access log: twisted.web's combined-format line per request, for less CPU.

:func:`access_line` gives exactly what ``twisted.web.http.combinedLogFormatter``
gives (the fields are escaped the same way), taking a shortcut for the usual
values (printable ASCII without quotes or backslashes). :func:`emit_access_line`
sends it where ``Site.log`` would: to the log file the site opened, or, by
default, to the global log as an event of the same namespace, level and format
that ``twisted.python.log.logfile`` makes of each line, so the log reads the same.
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any, Callable

from twisted.internet import address
from twisted.logger import Logger, LogLevel, formatTime
from twisted.python import log as legacy_log
from twisted.web import http

from .._internals import ClassicTextLog, classic_text_log

#: what twisted.python.log.logfile's lines are logged as
_LEGACY = Logger(namespace="twisted.python.log")

#: a byte that http._escape would change (or that makes repr() pick other quotes)
_NEEDS_ESCAPING = re.compile(rb"[^\x20-\x7e]|[\"'\\]")

_ADDRESSES = (address.IPv4Address, address.IPv6Address)


#: values up to this long have their escaped text remembered (URIs, agents and addresses repeat)
_REMEMBERED = 256


def escape(value: bytes) -> str:
    """``http._escape``: a repr-like text that is always safe inside double quotes."""
    if len(value) <= _REMEMBERED:
        return _escape_remembered(value)
    return _escape(value)


def _escape(value: bytes) -> str:
    if _NEEDS_ESCAPING.search(value) is None:
        return value.decode("ascii")
    return str(http._escape(value))


_escape_remembered = functools.lru_cache(maxsize=2048)(_escape)


def access_line(timestamp: str | None, request: http.Request) -> str:
    """The combined-log line for ``request`` (as ``combinedLogFormatter``)."""
    return combined_line(
        timestamp,
        request.getClientAddress(),
        request.method,
        request.uri,
        request.clientproto,
        request.code,
        request.sentLength,
        request.getHeader(b"referer"),
        request.getHeader(b"user-agent"),
    )


def combined_line(
    timestamp: str | None,
    client: Any,
    method: bytes,
    uri: bytes,
    version: bytes,
    code: int,
    sent: int,
    referrer: bytes | None,
    agent: bytes | None,
) -> str:
    """The combined-log line of one answered request, from its fields."""
    ip = escape(client.host.encode("ascii")) if isinstance(client, _ADDRESSES) else "-"
    return '"%s" - - %s "%s %s %s" %d %s "%s" "%s"' % (
        ip,
        timestamp,
        escape(method),
        escape(uri),
        escape(version),
        code,
        sent or "-",
        escape(referrer or b"-"),
        escape(agent or b"-"),
    )


#: where access lines meant for the global log go as text instead (a worker's stdout:
#: its global log observer only writes each event's text, which would be the line)
AccessLineWriter = Callable[[str], object]


def plain_get_line(timestamp: str | None, client: Any, target: bytes, sent: int,
                   referrer: bytes | None, agent: bytes | None) -> str:
    """``combined_line`` of an HTTP/1.1 GET answered 200, its variable parts' escapes remembered."""
    if len(referrer or b"") + len(agent or b"") <= _REMEMBERED:
        trailer = _trailer_remembered(referrer, agent)
    else:
        trailer = _trailer(referrer, agent)
    return '"%s" - - %s "GET %s HTTP/1.1" 200 %s %s' % (
        _client_text(client), timestamp, escape(target), sent or "-", trailer
    )


@functools.lru_cache(maxsize=256)
def _client_text(client: Any) -> str:
    return escape(client.host.encode("ascii")) if isinstance(client, _ADDRESSES) else "-"


def _trailer(referrer: bytes | None, agent: bytes | None) -> str:
    return '"%s" "%s"' % (escape(referrer or b"-"), escape(agent or b"-"))


_trailer_remembered = functools.lru_cache(maxsize=256)(_trailer)


def emit_access_line(log_file: Any, line: str, writer: AccessLineWriter | None = None) -> None:
    """Write ``line`` to ``log_file`` as ``Site.log`` would, without its per-line overhead.

    A line meant for the global log goes to ``writer`` instead, when given.
    """
    if log_file is legacy_log.logfile:
        if writer is not None:
            writer(line + "\n")
        else:
            emit_log_event(line)
    else:
        log_file.write(line + "\n")


def emit_log_event(line: str, observer: Any = None) -> None:
    """``line`` to ``observer`` (default: the global log): the event ``Logger.emit(LogLevel.info,
    format="{log_io}", log_io=line)`` makes for ``twisted.python.log.logfile``'s lines, made directly."""
    if observer is None:
        observer = _LEGACY.observer
    observer(
        {
            "log_io": line,
            "log_logger": _LEGACY,
            "log_level": LogLevel.info,
            "log_namespace": _LEGACY.namespace,
            "log_source": None,
            "log_format": "{log_io}",
            "log_time": time.time(),
        }
    )


@functools.lru_cache(maxsize=8)
def _log_time(second: int) -> str:
    return formatTime(float(second))


class ClassicLogWriter:
    """Access lines into twistd's default log file, as its observer writes them, without a log event each.

    ``twistd`` (``-n``, or ``--logfile``) logs through one
    ``textFileLogObserver``: each event costs a time-zone lookup, a
    ``strftime`` and a format-string parse (about a fifth of a keep-alive
    GET's CPU). This writer writes the same text — ``<time> [twisted.python.log#info] <line>``,
    the time made once per second — to the same file and flushes it, as the
    observer does. Whenever the global log is anything else (a custom
    ``--logger``, syslog, another observer added), the line goes as an event
    (:func:`emit_log_event`). The global log is looked at on the first line
    (logging has begun by then): :func:`gsitransfer._internals.classic_text_log`.
    """

    def __init__(self, publisher: Any = None) -> None:
        #: the log (default: the global one, ``twisted.logger.globalLogPublisher``)
        self.publisher = publisher
        self._log: ClassicTextLog | None = None
        self._looked = False

    def __call__(self, text: str) -> None:
        """Write one access line (``text`` ends in a newline)."""
        if not self._looked:
            self._looked = True
            self._log = classic_text_log(self.publisher)
        line = text[:-1]
        classic = self._log
        if classic is None or not classic.unchanged():
            emit_log_event(line, self.publisher)
            return
        # as formatEventAsClassicLogText: a line break continues on a tab-indented line
        entry = f"{_log_time(int(time.time()))} [{_LEGACY.namespace}#info] {line.replace(chr(10), chr(10) + chr(9))}\n"
        try:
            out = classic.out_file
            out.write(entry if classic.encoding is None else entry.encode(classic.encoding))
            out.flush()
        except (OSError, ValueError):
            self._log = None  # the observer's own path from now on: it reports the failure its way
            emit_log_event(line, self.publisher)
