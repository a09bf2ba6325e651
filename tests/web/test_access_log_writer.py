"""The access log's direct writer: the same text twistd's default observer writes, or the event when it is not alone."""

from __future__ import annotations

import io
import re

import pytest
from twisted.logger import LogPublisher, jsonFileLogObserver, textFileLogObserver

from gsitransfer.web import accesslog
from gsitransfer.web.accesslog import ClassicLogWriter, emit_log_event

LINES = [
    '"127.0.0.1" - - [05/Dec/2026:12:00:00 +0000] "GET /data/64k.bin HTTP/1.1" 200 65536 "-" "curl/7.88.1"',
    '"::1" - - [05/Dec/2026:12:00:01 +0000] "GET /data/%C3%BC HTTP/1.1" 404 - "-" "python-requests/2.31"',
    "a line\nwith a newline",
]


@pytest.mark.parametrize("when", [0.0, 1_764_936_000.25, 1_764_936_059.999, 2_000_000_000.5])
def test_the_direct_line_is_what_the_observer_writes(monkeypatch: pytest.MonkeyPatch, when: float) -> None:
    """With twistd's one text observer, the writer writes the observer's own text for the line's event."""
    monkeypatch.setattr(accesslog.time, "time", lambda: when)
    direct, reference = io.StringIO(), io.StringIO()
    writer = ClassicLogWriter(LogPublisher(textFileLogObserver(direct)))
    for line in LINES:
        writer(line + "\n")
        emit_log_event(line, LogPublisher(textFileLogObserver(reference)))
    assert direct.getvalue() == reference.getvalue()
    assert direct.getvalue().count("[twisted.python.log#info]") == len(LINES)


def test_a_bytes_file_gets_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accesslog.time, "time", lambda: 1_764_936_000.0)
    direct, reference = io.BytesIO(), io.BytesIO()
    writer = ClassicLogWriter(LogPublisher(textFileLogObserver(direct)))
    writer("ü line\n")
    emit_log_event("ü line", LogPublisher(textFileLogObserver(reference)))
    assert direct.getvalue() == reference.getvalue() != b""


def test_any_other_log_gets_the_event() -> None:
    """A second observer, another time format or a JSON log: the line goes as an event, to every observer."""
    text, other = io.StringIO(), []
    publisher = LogPublisher(textFileLogObserver(text), other.append)
    ClassicLogWriter(publisher)(LINES[0] + "\n")
    assert [event["log_io"] for event in other] == [LINES[0]] and LINES[0] in text.getvalue()

    iso_only = io.StringIO()
    ClassicLogWriter(LogPublisher(textFileLogObserver(iso_only, timeFormat="%H:%M")))(LINES[0] + "\n")
    assert re.match(r"\d\d:\d\d \[twisted.python.log#info\] ", iso_only.getvalue())  # its own time format

    records = io.StringIO()
    ClassicLogWriter(LogPublisher(jsonFileLogObserver(records)))(LINES[0] + "\n")
    assert '"log_io"' in records.getvalue()


def test_an_observer_added_later_is_honoured() -> None:
    """The publisher is looked at before every direct write: an observer added afterwards gets events."""
    text, later = io.StringIO(), []
    publisher = LogPublisher(textFileLogObserver(text))
    writer = ClassicLogWriter(publisher)
    writer("first\n")
    publisher.addObserver(later.append)
    writer("second\n")
    assert [event["log_io"] for event in later] == ["second"]
    assert "first" in text.getvalue() and "second" in text.getvalue()
