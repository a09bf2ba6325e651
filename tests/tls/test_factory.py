"""The seam (gsitransfer.tls.server_protocol_factory) and the start-up check of private internals."""

from __future__ import annotations

import OpenSSL
import pytest
import twisted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from gsitransfer._internals import BULK_TLS, EVENT_LOOP, InternalsReport, check_internals
from gsitransfer.testca import TestPKI
from gsitransfer.tls import ServerTLS, TrustConfig, server_protocol_factory
from gsitransfer.tls._bulk import BulkTLSFactory, BulkTLSProtocol


@pytest.fixture(scope="module")
def server_tls(test_pki: TestPKI) -> ServerTLS:
    return ServerTLS(str(test_pki.server_cert), str(test_pki.server_key), TrustConfig(ca_dir=str(test_pki.ca_dir)))


def test_the_installed_twisted_and_pyopenssl_have_what_the_fast_paths_use() -> None:
    """With the pinned Twisted and pyOpenSSL every fast path is available."""
    report = check_internals()
    assert report.available(BULK_TLS) and report.available(EVENT_LOOP), report.missing
    assert report.twisted_version == twisted.__version__ and report.pyopenssl_version == OpenSSL.__version__


def test_a_missing_hook_makes_the_bulk_transport_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Twisted without one of the hooks the bulk transport replaces: unavailable, the hook named; the event loop unaffected."""
    monkeypatch.delattr(TLSMemoryBIOProtocol, "_flushReceiveBIO")
    report = check_internals()
    assert not report.available(BULK_TLS) and "_flushReceiveBIO" in report.why_unavailable(BULK_TLS)
    assert report.available(EVENT_LOOP)


def test_versions_outside_the_tested_range_turn_the_fast_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twisted 27 turns off both fast paths; pyOpenSSL 27 only the bulk transport."""
    monkeypatch.setattr(OpenSSL, "__version__", "27.0.0")
    report = check_internals()
    assert not report.available(BULK_TLS) and "pyOpenSSL 27.0.0" in report.why_unavailable(BULK_TLS)
    assert report.available(EVENT_LOOP)
    monkeypatch.setattr(twisted, "__version__", "27.1.0")
    report = check_internals()
    assert not report.available(BULK_TLS) and not report.available(EVENT_LOOP)
    assert "Twisted 27.1.0" in report.why_unavailable(EVENT_LOOP)


def test_bulk_when_asked_and_available(server_tls: ServerTLS, log_lines: list[str]) -> None:
    """bulk=True with the internals present: the bulk transport, its protocol bound to Twisted's hooks, nothing logged."""
    factory = server_protocol_factory(server_tls, Factory.forProtocol(Protocol), bulk=True, reactor=Clock())
    assert isinstance(factory, BulkTLSFactory)
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, BulkTLSProtocol) and protocol.reports_handshakes
    assert log_lines == []


def test_twisteds_own_when_not_asked(server_tls: ServerTLS, log_lines: list[str]) -> None:
    """bulk=False: Twisted's TLSMemoryBIOFactory, whose connections get ServerTLS's info callback; nothing logged."""
    factory = server_protocol_factory(server_tls, Factory.forProtocol(Protocol), bulk=False, reactor=Clock())
    assert type(factory) is TLSMemoryBIOFactory
    assert not getattr(factory.buildProtocol(None), "reports_handshakes", False)
    assert log_lines == []


def test_twisteds_own_and_one_log_line_when_the_internals_are_missing(
    server_tls: ServerTLS, log_lines: list[str],
) -> None:
    """bulk=True but the check found a hook missing: Twisted's factory, and one line naming the path and why."""
    report = InternalsReport("26.0.0", "26.0.0", {BULK_TLS: ("missing: _flushSendBIO",)})
    factory = server_protocol_factory(server_tls, Factory.forProtocol(Protocol), bulk=True, reactor=Clock(),
                                      internals=report)
    assert type(factory) is TLSMemoryBIOFactory
    assert len(log_lines) == 1
    assert "bulk_tls" in log_lines[0] and "_flushSendBIO" in log_lines[0] and "TLSMemoryBIOFactory" in log_lines[0]
