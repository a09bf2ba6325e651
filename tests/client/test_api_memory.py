"""The Twisted-native client API against a real TransferSite, in memory (the fast layer).

Twisted's real Agent and treq's HTTPClient talk to the real resource tree
and directory store through iosim pumps: no sockets, no threads, no sleeps.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from twisted.internet import defer

from gsitransfer.client import api
from gsitransfer.client.errors import NAME_TAKEN_HINT, ChecksumError, HTTPStatusError, UploadIncomplete, UploadRefused
from gsitransfer.client.partial import PartialDownload, PartialMeta
from gsitransfer.client.progress import NullProgress
from gsitransfer.client.session import Session, parse_fields

URL = "http://test/data"


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def upload(memory, paths, **options):
    return memory.agent.settle(api.upload_files(URL, paths, **memory.blocking(), **options))


def download(memory, url, dest, *args, **options):
    return memory.agent.settle(api.download_file(url, dest, *args, **memory.blocking(), **options))


class Recorder(NullProgress):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def file_started(self, name, size, offset=0):
        self.events.append(("started", name, size, offset))

    def file_advanced(self, name, nbytes):
        self.events.append(("advanced", name, nbytes))

    def file_restarted(self, name, reason):
        self.events.append(("restarted", name, reason))

    def file_finished(self, name, error):
        self.events.append(("finished", name, error))

    def moved(self, name: str) -> int:
        return sum(e[2] for e in self.events if e[0] == "advanced" and e[1] == name)


def test_upload_then_download_round_trip(memory, tmp_path):
    """Files uploaded through the API are stored under their names and come back identical, MD5-verified."""
    a = write(tmp_path / "a.csv", b"alpha," * 5000)
    b = write(tmp_path / "b.txt", b"")
    progress = Recorder()
    report = upload(memory, [a, b], progress=progress, jobs=2)
    assert report.ok and [f.name for f in report.files] == ["a.csv", "b.txt"]
    assert report.files[0].url == "http://test/data/a.csv"
    assert report.files[0].checksum == hashlib.md5(a.read_bytes()).hexdigest()
    assert (memory.store / "a.csv").read_bytes() == a.read_bytes()
    assert progress.moved("a.csv") == a.stat().st_size
    result = download(memory, report.files[0].url, tmp_path / "copy.csv")
    assert result.verified and result.resumed_from == 0
    assert (tmp_path / "copy.csv").read_bytes() == a.read_bytes()
    assert not PartialDownload.beside(tmp_path / "copy.csv").temp.exists()


def test_progress_callback_is_the_seed_style_function(memory, tmp_path):
    """A plain callback(name, done, total) gets the running byte count of each file."""
    a = write(tmp_path / "a.bin", b"x" * 700_000)
    seen: list[tuple[str, int, int | None]] = []
    upload(memory, [a], progress=lambda name, done, total: seen.append((name, done, total)))
    assert seen[0] == ("a.bin", 0, 700_000) and seen[-1] == ("a.bin", 700_000, 700_000)
    assert all(later[1] >= earlier[1] for earlier, later in zip(seen, seen[1:]))


def test_manifest_refusal_gives_the_handlers_reason(memory, tmp_path):
    """Another file under a name that exists is refused at the manifest: the handler's error_reason and a hint."""
    a = write(tmp_path / "a.csv", b"1")
    upload(memory, [a])
    write(a, b"2")
    with pytest.raises(UploadRefused) as refused:
        upload(memory, [a])
    assert refused.value.reasons == ("Upload error for file a.csv: a file named a.csv already exists",)
    assert refused.value.hints == (NAME_TAKEN_HINT,)


def test_unsafe_or_duplicate_names_are_refused_before_any_request(memory, tmp_path):
    """Two files with one name never reach the network."""
    (tmp_path / "x").mkdir()
    a = write(tmp_path / "a.csv", b"1")
    b = write(tmp_path / "x" / "a.csv", b"2")
    with pytest.raises(Exception, match="appears twice"):
        upload(memory, [a, b])
    assert memory.agent.requests == []


def test_checksum_failure_is_retried(memory, tmp_path):
    """A body refused with 422 is sent again; the second, correct body is stored."""
    content = b"precious data " * 1000
    a = write(tmp_path / "a.dat", content)

    def open_body(path: Path, attempt: int):
        data = path.read_bytes()
        return io.BytesIO(data.replace(b"precious", b"PRECIOUS", 1) if attempt == 1 else data)

    progress = Recorder()
    report = upload(memory, [a], open_body=open_body, progress=progress)
    assert report.files[0].attempts == 2
    assert (memory.store / "a.dat").read_bytes() == content
    assert [e[0] for e in progress.events if e[0] != "advanced"] == ["started", "restarted", "started", "finished"]
    assert "422" in progress.events[[e[0] for e in progress.events].index("restarted")][2]


def test_checksum_retries_are_bounded(memory, tmp_path):
    """A body that never matches is re-sent from 0 once, whatever --retries says, then fails with the 422 reason."""
    a = write(tmp_path / "a.dat", b"abc" * 100)
    with pytest.raises(UploadIncomplete) as failed:
        upload(memory, [a], retries=5, open_body=lambda path, attempt: io.BytesIO(b"xyz" * 100))
    outcome = failed.value.report.files[0]
    assert outcome.attempts == 2 and outcome.status == 422 and outcome.bytes_sent == 600
    assert outcome.error.startswith("422 checksum mismatch") and "after 2 attempts" in outcome.error
    assert not (memory.store / "a.dat").exists()


def test_resume_sends_range_and_if_range(memory, tmp_path):
    """A partial download with its record is resumed with Range + If-Range and verified whole."""
    content = bytes(range(256)) * 4000
    upload(memory, [write(tmp_path / "big.bin", content)])
    first = memory.agent.settle(memory.agent.client().head(f"{URL}/big.bin"))
    etag = first.headers.getRawHeaders("etag")[0]
    target = tmp_path / "down.bin"
    partial = PartialDownload.beside(target)
    partial.temp.write_bytes(content[:300_000])
    partial.save(PartialMeta(f"{URL}/big.bin", etag, len(content), None))
    progress = Recorder()
    report = download(memory, f"{URL}/big.bin", target, progress=progress)
    assert report.resumed_from == 300_000 and report.verified
    assert target.read_bytes() == content
    method, uri, headers = memory.agent.requests[-1]
    assert headers[b"range"] == [b"bytes=300000-"] and headers[b"if-range"] == [etag.encode()]
    assert progress.events[0] == ("started", "down.bin", len(content), 300_000)
    assert progress.moved("down.bin") == len(content) - 300_000


def test_resume_of_a_changed_file_starts_over(memory, tmp_path):
    """A stale validator makes the server send the whole file (200), which replaces the partial bytes."""
    content = b"new content " * 10_000
    upload(memory, [write(tmp_path / "f.bin", content)])
    target = tmp_path / "f.bin.copy"
    partial = PartialDownload.beside(target)
    partial.temp.write_bytes(b"OLD" * 1000)
    partial.save(PartialMeta(f"{URL}/f.bin", '"stale-etag"', len(content), None))
    report = download(memory, f"{URL}/f.bin", target)
    assert report.resumed_from == 0 and target.read_bytes() == content


def test_a_partial_file_without_record_is_not_trusted(memory, tmp_path):
    """Bytes left without their resume record are thrown away, not resumed."""
    content = b"z" * 50_000
    upload(memory, [write(tmp_path / "z.bin", content)])
    target = tmp_path / "z.copy"
    PartialDownload.beside(target).temp.write_bytes(b"garbage")
    report = download(memory, f"{URL}/z.bin", target)
    assert report.resumed_from == 0 and target.read_bytes() == content
    assert b"range" not in memory.agent.requests[-1][2]


def test_wrong_checksum_saves_nothing(memory, tmp_path):
    """A download whose MD5 is not the expected one leaves neither the file nor a partial."""
    upload(memory, [write(tmp_path / "c.bin", b"c" * 10_000)])
    target = tmp_path / "c.copy"
    with pytest.raises(ChecksumError, match="nothing was saved"):
        download(memory, f"{URL}/c.bin", target, None, "0" * 32)
    assert not target.exists() and not PartialDownload.beside(target).temp.exists()


def test_expected_size_is_checked(memory, tmp_path):
    """``size`` that differs from the server's is an error before the body is written."""
    upload(memory, [write(tmp_path / "s.bin", b"s" * 100)])
    with pytest.raises(ChecksumError, match="has 100 bytes, not the expected 99"):
        download(memory, f"{URL}/s.bin", tmp_path / "s.copy", 99)


def test_missing_file_is_one_line_404(memory, tmp_path):
    """A 404 carries the server's one-line reason."""
    with pytest.raises(HTTPStatusError) as missing:
        download(memory, f"{URL}/none.bin", tmp_path)
    assert missing.value.status == 404 and "none.bin" in missing.value.message
    assert "\n" not in missing.value.message


def test_download_into_a_directory_keeps_the_name(memory, tmp_path):
    """DEST may be a directory: the file keeps its name there."""
    upload(memory, [write(tmp_path / "n.txt", b"n")])
    (tmp_path / "out").mkdir()
    report = download(memory, f"{URL}/n.txt", tmp_path / "out")
    assert report.path == tmp_path / "out" / "n.txt" and report.path.read_bytes() == b"n"


def test_status_and_cancel_of_a_transfer(memory, tmp_path):
    """status shows each file's state; cancel forgets the key; status then says 404."""
    key = _announce(memory, "p.bin", b"abc")
    status = memory.agent.settle(api.transfer_status(f"{URL}/{key}", **memory.options()))
    assert status.transfer_key == key and [(f.name, f.state) for f in status.files] == [("p.bin", "pending")]
    answer = memory.agent.settle(api.cancel_transfer(f"{URL}/{key}", **memory.options()))
    assert answer == f"cancelled {key}"
    with pytest.raises(HTTPStatusError, match="no such transfer"):
        memory.agent.settle(api.transfer_status(f"{URL}/{key}", **memory.options()))


def test_continue_a_transfer_sends_only_its_pending_files(memory, tmp_path):
    """With transfer_key, no manifest is posted and files already stored are skipped."""
    key = _announce(memory, "q.bin", b"qqq", "r.bin", b"rr")
    q, r = write(tmp_path / "q.bin", b"qqq"), write(tmp_path / "r.bin", b"rr")
    first = upload(memory, [q], transfer_key=key)
    assert first.transfer_key == key and first.files[0].attempts == 1
    second = upload(memory, [q, r], transfer_key=key)
    assert [f.attempts for f in second.files] == [0, 1]
    assert sum(uri.endswith(b"/manifest") for _, uri, _ in memory.agent.requests) == 1  # _announce only


def test_cancelling_an_upload_stops_it(memory, tmp_path):
    """Cancelling the Deferred fails it with CancelledError; nothing is stored."""
    a = write(tmp_path / "a.bin", b"a" * 100_000)
    running = api.upload_files(URL, [a], **memory.blocking())
    running.cancel()
    with pytest.raises(defer.CancelledError):
        memory.agent.settle(running)
    assert not (memory.store / "a.bin").exists()


def _announce(memory, *names_and_contents) -> str:
    """Post a manifest through the API's own client; the transfer key."""
    pairs = list(zip(names_and_contents[::2], names_and_contents[1::2]))
    lines = [f"[manifest]\nnum_files = {len(pairs)}\n"]
    for num, (name, content) in enumerate(pairs):
        lines.append(f"[{num}]\nname = {name}\nsize = {len(content)}\nchecksum = {hashlib.md5(content).hexdigest()}\n")
    session = Session(memory.agent.client(), memory.agent.reactor)

    async def post() -> bytes:
        response = await session.request("POST", f"{URL}/manifest", body="\n".join(lines).encode())
        return await session.expect(response, (200,), "POST", f"{URL}/manifest")

    fields = parse_fields(memory.agent.settle(defer.Deferred.fromCoroutine(post())))
    return fields["transfer_key"][0]


def test_cancelled_download_keeps_its_partial_for_resuming(memory, tmp_path):
    """Cancelling mid-body keeps the bytes so far; the next call resumes from there."""
    content = bytes(range(251)) * 8000
    upload(memory, [write(tmp_path / "long.bin", content)])
    target = tmp_path / "long.copy"
    running: list[defer.Deferred] = []

    def cancel_after_first_chunk(name: str, done: int, total: int | None) -> None:
        if done > 0:
            running[0].cancel()

    running.append(api.download_file(f"{URL}/long.bin", target, progress=cancel_after_first_chunk,
                                     **memory.blocking()))
    with pytest.raises(defer.CancelledError):
        memory.agent.settle(running[0])
    kept = PartialDownload.beside(target).temp.stat().st_size
    assert 0 < kept < len(content) and not target.exists()
    report = download(memory, f"{URL}/long.bin", target)
    assert report.resumed_from == kept and target.read_bytes() == content


def test_a_corrupt_partial_is_fetched_again_once(memory, tmp_path):
    """Resumed bytes that turn out wrong (MD5 mismatch) make one fresh download, which succeeds."""
    content = b"good bytes " * 20_000
    upload(memory, [write(tmp_path / "g.bin", content)])
    etag = memory.agent.settle(memory.agent.client().head(f"{URL}/g.bin")).headers.getRawHeaders("etag")[0]
    target = tmp_path / "g.copy"
    partial = PartialDownload.beside(target)
    partial.temp.write_bytes(b"X" * 1000)
    partial.save(PartialMeta(f"{URL}/g.bin", etag, len(content), None))
    progress = Recorder()
    report = download(memory, f"{URL}/g.bin", target, progress=progress)
    assert report.resumed_from == 0 and target.read_bytes() == content
    assert ("restarted", "g.copy", "checksum mismatch after a resume") in progress.events
