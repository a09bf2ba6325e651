"""The audit log's lines and file handling (a real file; the writer thread is the real one)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gsitransfer.audit import AuditLog, audit_line, audit_pieces
from gsitransfer.events import EventFanout, Run, TransferEvent, key_hash

FIELDS = {"time", "event", "dn", "peer", "prefix", "name", "size", "md5", "bytes", "duration_s", "status", "reason",
          "key", "method", "action"}


def wait_for_lines(path: Path, count: int) -> list[dict[str, object]]:
    """The file's lines once it has ``count`` (bounded wait: the writer is a thread)."""
    for _ in range(500):
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.01)
    raise AssertionError(f"{path} has {len(lines)} lines, expected {count}")


def test_a_line_has_every_field_and_stays_one_line():
    """Every field is present (null when unknown); a name with a newline and quotes stays one JSON line."""
    event = TransferEvent("upload", 1_764_900_000.5, dn="/CN=a", name='x\ny"z', size=3, status=201, key=key_hash("K" * 32))
    line = audit_line(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert set(record) == FIELDS
    assert record["name"] == 'x\ny"z' and record["md5"] is None and record["time"] == "2025-12-05T02:00:00.500Z"
    assert record["key"] != "K" * 32 and len(record["key"]) == 12


def test_lines_are_appended_and_reopened_after_a_rename(tmp_path: Path):
    """Lines are appended; after the file is renamed away, reopen() sends the next lines to a new file."""
    path = tmp_path / "audit.log"
    audit = AuditLog(str(path))
    fanout = EventFanout((audit,))
    assert fanout and not EventFanout()
    fanout.emit(TransferEvent("download", time.time(), name="a"))
    wait_for_lines(path, 1)
    os.rename(path, tmp_path / "audit.log.1")
    fanout.emit(TransferEvent("download", time.time(), name="b"))  # still the renamed file
    wait_for_lines(tmp_path / "audit.log.1", 2)
    audit.reopen()
    fanout.emit(TransferEvent("download", time.time(), name="c"))
    assert [r["name"] for r in wait_for_lines(path, 1)] == ["c"]
    fanout.close()
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_an_unopenable_file_is_one_clear_error(tmp_path: Path):
    """A directory that does not exist: AuditError naming the option and the reason."""
    from gsitransfer.audit import AuditError

    try:
        AuditLog(str(tmp_path / "missing" / "audit.log"))
    except AuditError as error:
        assert str(error).startswith("--audit-log ") and "No such file or directory" in str(error)
    else:
        raise AssertionError("no error")


def test_the_fast_line_is_the_json_of_the_record():
    """audit_line gives exactly json.dumps(audit_record(...)) for many times, names and values."""
    import random

    from gsitransfer.audit import audit_record

    chooser = random.Random(7)
    names = ["a.txt", "ü 日本.bin", 'quote"back\\slash', "line\nbreak", "x" * 600, None]
    for _ in range(2000):
        event = TransferEvent(
            chooser.choice(["upload", "download", "refusal"]), chooser.uniform(0, 2e9), dn=chooser.choice(names),
            name=chooser.choice(names), size=chooser.choice([None, 0, 10**12]), duration_s=chooser.choice([None, 0.1234567]),
            status=chooser.choice([None, 200, 404]), reason=chooser.choice(names), bytes=chooser.choice([None, 5]),
        )
        reference = json.dumps(audit_record(event), ensure_ascii=False, separators=(", ", ": ")) + "\n"
        assert audit_line(event) == reference.encode("utf-8")


def test_the_pieces_of_runs_are_the_lines_of_each_record():
    """audit_pieces (a record's fields once, a millisecond's time once), two joined, give audit_line of each record
    at each time,
    for times in the same millisecond, across seconds and at the rounding edges."""
    import random

    chooser = random.Random(3)
    edges = [1_764_900_000.9995, 1_764_900_000.9994999, 1_764_900_001.0, 1_764_900_001.0004999, 1_764_900_001.0005]
    edges += [1_764_900_001 + millisecond / 1000 + offset / 1e6  # around each millisecond's edges and the spans' ends
              for millisecond in (0, 1, 2, 998, 999) for offset in (-3, -2.5, -2, -1.5, -0.5, 0, 0.5, 1.5, 2, 2.5, 3)]
    runs = []
    when = 1_764_900_000.0
    shared = [  # alike records share one object in a batch (the fanout makes them once)
        TransferEvent("download", 0.0, dn="/CN=alice", peer=peer, prefix="data", name=name, bytes=65536, status=200)
        for peer in ("127.0.0.1", "::1") for name in ("a", "b")
    ]
    for _ in range(2000):
        event = TransferEvent("download", 0.0, dn="/CN=alice", peer=chooser.choice(["127.0.0.1", "::1"]),
                              prefix="data", name=chooser.choice(["a", "b"]), bytes=65536, status=200,
                              duration_s=chooser.choice([None, None, 0.25]))
        event = chooser.choice(shared) if chooser.random() < 0.5 else event
        times = []
        for _ in range(chooser.randint(1, 30)):
            when += chooser.choice([0.0, 0.00004, 0.0003, 0.002, 1.1])
            times.append(chooser.choice(edges) if chooser.random() < 0.3 else when)
        runs.append(Run(event, times))
    expected = [audit_line(event._replace(time=when)) for event, times in runs for when in times]
    pieces = audit_pieces(runs)
    assert [pieces[number] + pieces[number + 1] for number in range(0, len(pieces), 2)] == expected


def test_a_batch_of_many_lines_is_written_whole_in_order(tmp_path: Path):
    """More lines than one writev takes (512): every line, whole, in order."""
    path = tmp_path / "audit.log"
    audit = AuditLog(str(path))
    times = [1_764_900_000 + step / 997 for step in range(1500)]
    audit.take([Run(TransferEvent("download", times[0], name="a", bytes=65536, status=200), times[:700]),
                Run(TransferEvent("upload", times[700], name="b", duration_s=0.5, status=201), (times[700],)),
                Run(TransferEvent("download", times[701], name="c", bytes=1, status=200), times[701:])])
    audit.close()
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1500
    assert [json.loads(line)["name"] for line in lines] == ["a"] * 700 + ["b"] + ["c"] * 799
    assert lines[1000] == audit_line(TransferEvent("download", times[1000], name="c", bytes=1, status=200))
