"""Issue 14's client (item 7) through the API, in memory, against the stand-in of ``tests.client.contract``.

Twisted's real Agent talks to the stand-in through iosim pumps on a fake
clock: the pauses between tries are waited on that clock (no real sleeping),
and the stand-in records when each request arrived on it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from gsitransfer.client import api, output
from gsitransfer.client.errors import ProtocolError, UploadIncomplete
from gsitransfer.client.progress import LineProgress, NullProgress, TerminalProgress
from gsitransfer.client.resume import backoff

from .contract import KEY, ContractRoot, Fault, stand_in

URL = "http://test/data"
SIZE = 1_000_000


class Recorder(NullProgress):
    """Every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def file_started(self, name, size, offset=0):
        self.events.append(("started", name, size, offset))

    def file_restarted(self, name, reason):
        self.events.append(("restarted", name, reason))

    def file_finished(self, name, error):
        self.events.append(("finished", name, error))

    def notice(self, message):
        self.events.append(("notice", message))

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]


def content_file(tmp_path: Path, name: str = "a.bin", size: int = SIZE) -> tuple[Path, bytes]:
    data = os.urandom(size)
    (tmp_path / name).write_bytes(data)
    return tmp_path / name, data


def run_upload(root: ContractRoot, paths, **options):
    served = stand_in(root)
    agent = served.pop("agent")
    return agent.settle(api.upload_files(URL, paths, **served, **options))  # type: ignore[attr-defined]


def trace(root: ContractRoot, num: int = 0) -> list[tuple[str, int | None, int]]:
    """(method, Upload-Offset, body bytes) of each HEAD, POST and PATCH on file ``num``."""
    return [(a.method, a.offset, a.length) for a in root.log if a.path == f"/data/{KEY}/{num}"]


def test_a_cut_body_is_continued_with_head_then_patch(tmp_path):
    """A POST cut after 300000 bytes: HEAD says what the server holds, PATCH sends only the rest; MD5 right."""
    path, data = content_file(tmp_path)
    root = ContractRoot(["/data/"], faults=[Fault("POST", 0, cut=True, keep=300_000)])
    progress = Recorder()
    report = run_upload(root, [path], progress=progress)
    assert trace(root) == [("POST", None, SIZE), ("HEAD", None, 0), ("PATCH", 300_000, SIZE - 300_000)]
    assert root.files[0].stored and bytes(root.files[0].held) == data
    [sent] = report.files
    assert sent.ok and sent.attempts == 2 and sent.resumed_from == 0 and sent.bytes_sent == 2 * SIZE - 300_000
    assert sent.url == "http://test/data/a.bin"
    assert progress.of("started") == [("started", "a.bin", SIZE, 0), ("started", "a.bin", SIZE, 300_000)]
    assert ("notice", "a.bin: resumed at 30.0% (293.0 KiB held by the server)") in progress.events


def test_resume_from_in_the_manifest_answer_patches_from_there(tmp_path):
    """resume_from: 0=400000 (an earlier run's bytes): one PATCH of the rest; the bar starts at 400000."""
    path, data = content_file(tmp_path)
    root = ContractRoot(["/data/"], held={0: data[:400_000]})
    progress = Recorder()
    report = run_upload(root, [path], progress=progress)
    assert trace(root) == [("PATCH", 400_000, SIZE - 400_000)]
    assert bytes(root.files[0].held) == data and root.files[0].stored
    [sent] = report.files
    assert (sent.attempts, sent.resumed_from, sent.bytes_sent) == (1, 400_000, SIZE - 400_000)
    assert progress.of("started") == [("started", "a.bin", SIZE, 400_000)]
    assert progress.of("notice") == [("notice", "a.bin: resumed at 40.0% (390.6 KiB held by the server)")]
    described = output.upload_json(report)["files"][0]  # type: ignore[index]
    assert described["resumed_from"] == 400_000 and described["bytes_sent"] == SIZE - 400_000


def test_only_the_files_with_held_bytes_are_patched(tmp_path):
    """Of three files, one already stored, one held in part, one new: no body, PATCH, POST."""
    paths, datas = zip(*(content_file(tmp_path, f"f{n}.bin", 10_000) for n in range(3)))
    root = ContractRoot(["/data/"], already_stored="0", held={1: datas[1][:4096]})
    report = run_upload(root, list(paths))
    assert trace(root, 0) == [] and trace(root, 1) == [("PATCH", 4096, 10_000 - 4096)]
    assert trace(root, 2) == [("POST", None, 10_000)]
    assert [(f.already_stored, f.resumed_from) for f in report.files] == [(True, 0), (False, 4096), (False, 0)]


def test_a_409_offset_mismatch_asks_again(tmp_path):
    """A stale resume_from (4000, the server holds 5000): 409 with Upload-Offset, HEAD, PATCH from 5000."""
    path, data = content_file(tmp_path, size=20_000)
    root = ContractRoot(["/data/"], held={0: data[:5000]}, claims={0: 4000})
    report = run_upload(root, [path])
    assert trace(root) == [("PATCH", 4000, 16_000), ("HEAD", None, 0), ("PATCH", 5000, 15_000)]
    assert report.ok and bytes(root.files[0].held) == data


def test_a_422_after_patch_sends_the_whole_file_again_once(tmp_path):
    """Held bytes that are not the file's: the last PATCH gets 422 (offset back to 0); one whole POST follows."""
    path, data = content_file(tmp_path, size=50_000)
    root = ContractRoot(["/data/"], held={0: bytes(10_000)})
    progress = Recorder()
    report = run_upload(root, [path], progress=progress)
    assert trace(root) == [("PATCH", 10_000, 40_000), ("POST", None, 50_000)]
    assert report.ok and bytes(root.files[0].held) == data and report.files[0].attempts == 2
    assert report.files[0].resumed_from == 0 and report.files[0].bytes_sent == 90_000
    assert progress.of("restarted")[0][2].startswith("422 checksum mismatch")


def test_a_second_422_fails_the_file(tmp_path):
    """A body that never matches: PATCH 422, whole POST 422, then the file fails (no third body)."""
    path, data = content_file(tmp_path, size=50_000)
    root = ContractRoot(["/data/"], held={0: bytes(10_000)})
    with pytest.raises(UploadIncomplete) as failed:
        run_upload(root, [path], open_body=lambda p, attempt: io.BytesIO(bytes(50_000)))
    assert [t[0] for t in trace(root)] == ["PATCH", "POST"]
    [outcome] = failed.value.report.files
    assert outcome.status == 422 and outcome.error.endswith("(after 2 attempts)")


def test_a_5xx_in_the_middle_is_resumed_after_a_pause(tmp_path):
    """PATCH answered 503: one second later HEAD, then PATCH from the held offset."""
    path, data = content_file(tmp_path)
    root = ContractRoot(["/data/"], held={0: data[:100_000]}, faults=[Fault("PATCH", 0, status=503)])
    report = run_upload(root, [path])
    assert [t[:2] for t in trace(root)] == [("PATCH", 100_000), ("HEAD", None), ("PATCH", 100_000)]
    times = [a.time for a in root.log if a.path == f"/data/{KEY}/0"]
    assert 1.0 <= times[1] - times[0] < 1.5
    assert report.ok and bytes(root.files[0].held) == data


def test_retries_are_bounded_and_back_off(tmp_path):
    """A server that keeps failing: HEADs 1, 2, 4, 8, 16 s apart on the clock, then the file fails (5 retries)."""
    path, data = content_file(tmp_path, size=10_000)
    faults = [Fault("POST", 0, cut=True)] + [Fault("HEAD", 0, status=503)] * 10
    root = ContractRoot(["/data/"], faults=faults)
    with pytest.raises(UploadIncomplete) as failed:
        run_upload(root, [path])
    log = [a for a in root.log if a.path == f"/data/{KEY}/0"]
    assert [a.method for a in log] == ["POST"] + ["HEAD"] * 5
    gaps = [later.time - earlier.time for earlier, later in zip(log, log[1:])]
    assert [round(gap) for gap in gaps] == [1, 2, 4, 8, 16] and all(gap < round(gap) + 0.5 for gap in gaps)
    [outcome] = failed.value.report.files
    assert outcome.status == 503 and outcome.error == "503 Service Unavailable (after 6 tries in a row)"
    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 16, 16]


def test_retries_follow_the_option(tmp_path):
    """--retries 2: three tries in all, then the cut-off file fails with the network's line."""
    path, _ = content_file(tmp_path, size=10_000)
    root = ContractRoot(["/data/"], faults=[Fault("POST", 0, cut=True)] * 5)
    with pytest.raises(UploadIncomplete) as failed:
        run_upload(root, [path], retries=2)
    assert [t[0] for t in trace(root)] == ["POST", "HEAD", "POST", "HEAD", "POST"]
    assert "closed the connection without answering" in failed.value.report.files[0].error


def test_a_try_that_gained_bytes_does_not_count(tmp_path):
    """Cut every 200000 bytes with --retries 1: each HEAD shows progress, so the file still completes."""
    path, data = content_file(tmp_path)
    faults = [Fault("POST", 0, cut=True, keep=200_000)] + [Fault("PATCH", 0, cut=True, keep=200_000)] * 3
    root = ContractRoot(["/data/"], faults=faults)
    report = run_upload(root, [path], retries=1)
    assert [t[1] for t in trace(root) if t[0] == "PATCH"] == [200_000, 400_000, 600_000, 800_000]
    assert report.ok and bytes(root.files[0].held) == data


def test_a_file_stored_before_its_answer_was_lost_is_not_sent_again(tmp_path):
    """The connection dropped after the last byte: HEAD reports offset = size, nothing more is sent."""
    path, data = content_file(tmp_path, size=30_000)
    root = ContractRoot(["/data/"], faults=[Fault("POST", 0, cut=True, keep=30_000)])
    report = run_upload(root, [path])
    assert trace(root) == [("POST", None, 30_000), ("HEAD", None, 0)]
    assert report.ok and report.files[0].attempts == 1


def test_a_409_already_arriving_fails_at_once_but_is_retried_after_a_break(tmp_path):
    """409 on the first body: another connection is sending it, the file fails; after our own break: retried."""
    path, data = content_file(tmp_path, size=30_000)
    busy = Fault("POST", 0, status=409, reason="a file named a.bin is already being uploaded")
    root = ContractRoot(["/data/"], faults=[busy])
    with pytest.raises(UploadIncomplete) as failed:
        run_upload(root, [path])
    assert failed.value.report.files[0].error == "409 a file named a.bin is already being uploaded"
    assert [t[0] for t in trace(root)] == ["POST"]
    root = ContractRoot(["/data/"], faults=[Fault("POST", 0, cut=True, keep=1000),
                                            Fault("PATCH", 0, status=409, reason=busy.reason)])
    report = run_upload(root, [path])
    assert [t[0] for t in trace(root)] == ["POST", "HEAD", "PATCH", "HEAD", "PATCH"] and report.ok


def test_no_resume_sends_whole_posts_only(tmp_path):
    """resume=False (--no-resume): resume_from is ignored and a cut body is sent whole again; no HEAD, no PATCH."""
    path, data = content_file(tmp_path)
    root = ContractRoot(["/data/"], held={0: data[:500_000]}, faults=[Fault("POST", 0, cut=True, keep=700_000)])
    report = run_upload(root, [path], resume=False)
    assert trace(root) == [("POST", None, SIZE), ("POST", None, SIZE)]
    assert report.ok and report.files[0].resumed_from == 0 and bytes(root.files[0].held) == data


@pytest.mark.parametrize("held, status", [(False, 405), (True, 405), (False, 404)],
                         ids=["HEAD 405", "PATCH 405", "HEAD 404"])
def test_an_older_server_gets_whole_posts_said_once(tmp_path, held, status):
    """A server that answers 405 (or 404 without Tus-Resumable) to HEAD/PATCH: whole POSTs, one notice."""
    paths, datas = zip(*(content_file(tmp_path, f"f{n}.bin", 20_000) for n in range(2)))
    faults = [Fault("POST", n, cut=True, keep=5000) for n in range(2)]
    root = ContractRoot(["/data/"], resumes=False, faults=faults, held={0: datas[0][:5000]} if held else None,
                        old_status=status)
    progress = Recorder()
    report = run_upload(root, list(paths), progress=progress, jobs=1)
    assert report.ok and [bytes(f.held) for f in root.files] == list(datas)
    assert "PATCH" not in [t[0] for t in trace(root, 1)]
    assert [f.resumed_from for f in report.files] == [0, 0]
    method = "PATCH" if held else "HEAD"
    what = "does not resume uploads" + (", or no longer knows the transfer" if status == 404 else "")
    assert progress.of("notice")[-1:] == [("notice", f"the server {what} ({method} answered {status}): "
                                                     "a file that is cut off is sent again whole")]
    assert len([e for e in progress.of("notice") if "does not resume" in e[1]]) == 1


def test_status_shows_each_files_offset(tmp_path):
    """A file cut at 300000 bytes and given up: the transfer's state has its offset, the status line says held."""
    path, data = content_file(tmp_path)
    root = ContractRoot(["/data/"], faults=[Fault("POST", 0, cut=True, keep=300_000)])
    with pytest.raises(UploadIncomplete):
        run_upload(root, [path], retries=0)
    served = stand_in(root)
    agent = served.pop("agent")
    status = agent.settle(api.transfer_status(f"{URL}/{KEY}", http=served["http"], reactor=served["reactor"]))
    assert [(f.state, f.offset) for f in status.files] == [("receiving", 300_000)]
    lines = output.status_lines(status, now=0.0)
    assert lines[-1] == "     0  receiving   976.6 KiB  a.bin  held 293.0 KiB (30.0%)"


def test_transfer_key_continues_from_the_offsets(tmp_path):
    """--transfer-key: the transfer's state gives the offset, and only the rest is sent (PATCH)."""
    path, data = content_file(tmp_path)
    root = ContractRoot(["/data/"], faults=[Fault("POST", 0, cut=True, keep=250_000)])
    with pytest.raises(UploadIncomplete):
        run_upload(root, [path], retries=0)
    report = run_upload(root, [path], transfer_key=KEY)
    assert trace(root)[-1] == ("PATCH", 250_000, SIZE - 250_000)
    assert report.ok and report.files[0].resumed_from == 250_000 and bytes(root.files[0].held) == data


@pytest.mark.parametrize("line", ["0=x", "5=10", "0=2000000", "0"])
def test_a_resume_from_line_that_breaks_the_contract_is_refused(tmp_path, line):
    """resume_from naming no file of the manifest, or an offset past the file: a protocol error, nothing sent."""
    path, _ = content_file(tmp_path)
    root = ContractRoot(["/data/"])
    root.manifest = lambda body, original=root.manifest: original(body) + f"resume_from: {line}\n".encode()  # type: ignore[method-assign]
    with pytest.raises(ProtocolError, match="unexpected resume_from line"):
        run_upload(root, [path])
    assert [m for m, _ in root.seen] == ["POST"]


def test_md5_of_the_stored_file_is_the_manifests(tmp_path):
    """After a cut and a resume the stand-in's bytes hash to the MD5 the client announced."""
    path, data = content_file(tmp_path)
    root = ContractRoot(["/data/"], faults=[Fault("POST", 0, cut=True, keep=123_457)])
    report = run_upload(root, [path])
    assert hashlib.md5(root.files[0].held).hexdigest() == report.files[0].checksum == hashlib.md5(data).hexdigest()


def test_line_progress_prints_notices_and_retries_only():
    """Stderr that is not a terminal: a notice and a retry are one escaped line each; bytes print nothing."""
    stream = io.StringIO()
    lines = LineProgress(stream, "gsitransfer: ")
    lines.file_started("a.bin", 100, 40)
    lines.file_advanced("a.bin", 60)
    lines.notice("a\x1bb.bin: resumed at 40.0% (40 B held by the server)")
    lines.file_restarted("a.bin", "503 busy -- pausing 1 s")
    lines.file_finished("a.bin", None)
    assert stream.getvalue().splitlines() == [
        "gsitransfer: a\\x1bb.bin: resumed at 40.0% (40 B held by the server)",
        "gsitransfer: a.bin: 503 busy -- pausing 1 s; again",
    ]


def test_the_terminal_bar_starts_at_the_resumed_offset():
    """A file resumed at 60%: its bar and the total start at 60%, the notice stays above them."""
    stream = io.StringIO()
    bars = TerminalProgress(stream, clock=lambda: 0.0, width=120)
    bars.transfer_started([("big.bin", 1000 * 1024)])
    bars.notice("big.bin: resumed at 60.0% (600.0 KiB held by the server)")
    bars.file_started("big.bin", 1000 * 1024, 600 * 1024)
    screen = stream.getvalue()
    assert "big.bin: resumed at 60.0% (600.0 KiB held by the server)\n" in screen
    last = screen.rsplit("\x1b[J", 1)[1].splitlines()
    assert last[0].startswith("big.bin") and " 60%  600.0 KiB/1000.0 KiB" in last[0]
    assert last[1].startswith("total 0/1 files") and " 60%" in last[1]


@pytest.mark.parametrize("atomic, commit", [(False, "each"), (True, "atomic")])
def test_atomic_asks_for_a_batch_in_the_manifest(tmp_path, atomic, commit):
    """``atomic=True`` (the CLI's ``--atomic``) posts ``commit = atomic``; without it the manifest has none."""
    first, _ = content_file(tmp_path, "a.bin", 1000)
    second, _ = content_file(tmp_path, "b.bin", 2000)
    root = ContractRoot(["/data/"])
    report = run_upload(root, [first, second], atomic=atomic)
    assert report.ok and root.commit == commit
    assert all(held.stored for held in root.files)
