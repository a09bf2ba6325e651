"""What the command line prints: results for people and for scripts (``--json``).

Each function turns one result value (:mod:`gsitransfer.client.results`) into
lines of text or a JSON-ready dict. Nothing here does I/O. What a server sent
(names, owners, URLs, states) is made :func:`~gsitransfer.client.text.printable`
in the lines (before a table's columns are measured); the command line's
``Console`` escapes every line again on the way out (escaping is idempotent).
"""

from __future__ import annotations

import datetime

from .progress import human_duration, human_size
from .results import DownloadReport, Listing, TransferFile, TransferStatus, UploadReport
from .text import printable

# -- upload ------------------------------------------------------------------------


def upload_lines(report: UploadReport) -> list[str]:
    """One line per stored file: name (``FILE → NEWNAME`` when renamed), size, where to download it.

    A file the server already had is ``NAME: already stored (same size and MD5), not sent``.
    """
    lines = []
    for f in report.files:
        if not f.ok:
            continue
        if f.already_stored:
            lines.append(f"{f.name}: already stored (same size and MD5), not sent")
            continue
        name = f.name if f.path.name == f.name else f"{f.path} \u2192 {f.name}"
        lines.append(f"{name}  {human_size(f.size)}  {f.url or '(stored)'}")
    return [printable(line) for line in lines]


def upload_json(report: UploadReport) -> dict[str, object]:
    return {
        "url": report.url,
        "transfer_key": report.transfer_key,
        "ok": report.ok,
        "files": [
            {"name": f.name, "path": str(f.path), "size": f.size, "md5": f.checksum, "url": f.url,
             "attempts": f.attempts, "error": f.error, "status": f.status, "already_stored": f.already_stored,
             "resumed_from": f.resumed_from, "bytes_sent": f.bytes_sent}
            for f in report.files
        ],
    }


# -- download ----------------------------------------------------------------------


def download_lines(report: DownloadReport) -> list[str]:
    check = "verified" if report.verified else "not verified: the server sent no digest (use --md5)"
    resumed = f", resumed at {human_size(report.resumed_from)}" if report.resumed_from else ""
    return [printable(f"{report.path}  {human_size(report.size)}  MD5 {report.checksum} {check}{resumed}")]


def download_json(report: DownloadReport) -> dict[str, object]:
    return {"url": report.url, "path": str(report.path), "size": report.size, "md5": report.checksum,
            "verified": report.verified, "resumed_from": report.resumed_from}


# -- ls ------------------------------------------------------------------------------


def listing_lines(listing: Listing) -> list[str]:
    """A table: size, modification time (UTC), owner, name."""
    if not listing.files:
        return [printable(f"(no files in {listing.url}/)")]
    rows = [
        (human_size(f.size), printable(_iso_to_text(f.modified)), printable(f.owner or "-"), printable(f.name))
        for f in listing.files
    ]
    size_w = max(len("SIZE"), *(len(r[0]) for r in rows))
    time_w = max(len("MODIFIED (UTC)"), *(len(r[1]) for r in rows))
    owner_w = max(len("OWNER"), *(len(r[2]) for r in rows))
    lines = [f"{'SIZE':>{size_w}}  {'MODIFIED (UTC)':<{time_w}}  {'OWNER':<{owner_w}}  NAME"]
    lines += [f"{s:>{size_w}}  {t:<{time_w}}  {o:<{owner_w}}  {n}" for s, t, o, n in rows]
    return lines


def listing_json(listing: Listing) -> dict[str, object]:
    return {
        "prefix": listing.prefix,
        "url": listing.url,
        "files": [
            {"name": f.name, "size": f.size, "md5": f.checksum, "owner": f.owner,
             "modified": f.modified, "uploaded": f.uploaded, "url": f.url}
            for f in listing.files
        ],
    }


def _iso_to_text(value: str | None) -> str:
    if not value:
        return "-"
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc)
    return f"{moment:%Y-%m-%d %H:%M}"


# -- status ----------------------------------------------------------------------------


def status_lines(status: TransferStatus, now: float) -> list[str]:
    left = status.expires - now
    expiry = f"expires {_epoch_to_text(status.expires)} UTC" + (
        f" (in {human_duration(left)})" if left > 0 else " (expired)")
    lines = [
        f"transfer {status.transfer_key} in /{status.prefix}/",
        f"owner {status.owner or 'anonymous'}, created {_epoch_to_text(status.created)} UTC, {expiry}",
        f"{'complete' if status.complete else 'not complete'}: "
        f"{sum(f.state == 'stored' for f in status.files)} of {len(status.files)} files stored",
    ]
    for f in status.files:
        lines.append(f"  {f.file_num:>4}  {printable(f.state):<9}  {human_size(f.size):>10}  {f.name}"
                     + (f"  {f.url}" if f.state == "stored" and f.url else "") + _held(f))
    return [printable(line) for line in lines]


def _held(f: TransferFile) -> str:
    """``  held 614.4 MiB (60.0%)``: the bytes the server holds of a file not stored (when it says)."""
    if f.state == "stored" or f.offset is None:
        return ""
    share = f" ({f.offset / f.size * 100:.1f}%)" if f.size else ""
    return f"  held {human_size(f.offset)}{share}"


def _epoch_to_text(value: float) -> str:
    return f"{datetime.datetime.fromtimestamp(value, datetime.timezone.utc):%Y-%m-%d %H:%M}"


__all__ = [
    "download_json",
    "download_lines",
    "listing_json",
    "listing_lines",
    "status_lines",
    "upload_json",
    "upload_lines",
]
