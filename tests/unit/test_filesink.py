"""FileSink: bodies to a temporary file beside the final name, MD5 on the way, durable moves."""

from __future__ import annotations

import hashlib

import pytest

from gsitransfer.errors import InsufficientStorage, UploadConflict
from gsitransfer.filesink import FileSink, is_temporary_name, remove_stale_temporaries


def test_commit_moves_into_place(tmp_path):
    """Written bytes appear under the final name only at commit, with their MD5."""
    sink = FileSink(str(tmp_path / "f"), 6)
    sink.write(b"abc")
    sink.write(b"def")
    assert not (tmp_path / "f").exists()
    assert [p.name for p in tmp_path.iterdir() if is_temporary_name(p.name)]
    assert sink.hexdigest() == hashlib.md5(b"abcdef").hexdigest()
    sink.commit()
    assert (tmp_path / "f").read_bytes() == b"abcdef"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_commit_never_replaces(tmp_path):
    """A file that appeared under the final name is kept; the upload is a conflict."""
    (tmp_path / "f").write_bytes(b"theirs")
    sink = FileSink(str(tmp_path / "f"), 4)
    sink.write(b"mine")
    with pytest.raises(UploadConflict):
        sink.commit()
    assert (tmp_path / "f").read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_uncommit_removes_only_its_own_file(tmp_path):
    """uncommit removes the committed file, but not one that replaced it."""
    sink = FileSink(str(tmp_path / "f"), 1)
    sink.write(b"x")
    sink.commit()
    (tmp_path / "f").unlink()
    (tmp_path / "f").write_bytes(b"other")
    sink.uncommit()
    assert (tmp_path / "f").read_bytes() == b"other"
    second = FileSink(str(tmp_path / "g"), 1)
    second.write(b"y")
    second.commit()
    second.uncommit()
    assert not (tmp_path / "g").exists()


def test_discard_and_stale_cleanup(tmp_path):
    """discard removes the temporary; stale temporaries are swept at start-up."""
    sink = FileSink(str(tmp_path / "f"), 3)
    sink.write(b"abc")
    sink.discard()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".gsitransfer-0123456789abcdef.part").write_bytes(b"left by a crash")
    (tmp_path / "keep.part").write_bytes(b"not ours")
    assert remove_stale_temporaries(str(tmp_path)) == [".gsitransfer-0123456789abcdef.part"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.part"]


def test_no_space_is_refused_up_front(tmp_path):
    """A size beyond the free space is InsufficientStorage before any file is made."""
    with pytest.raises(InsufficientStorage):
        FileSink(str(tmp_path / "f"), 10**18)
    assert list(tmp_path.iterdir()) == []


def test_commit_onto_identical_bytes_is_in_place(tmp_path):
    """The same bytes already under the final name (a retry after a crash) count as placed."""
    (tmp_path / "f").write_bytes(b"same")
    sink = FileSink(str(tmp_path / "f"), 4)
    sink.write(b"same")
    sink.commit()
    assert sink.already_present
    sink.uncommit()
    assert (tmp_path / "f").read_bytes() == b"same"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_writeback_started_every_few_mib(tmp_path, monkeypatch):
    """Big bodies have their writeback started on the way, so commit's fsync has little left."""
    from gsitransfer import filesink

    advised: list[tuple[int, int, int]] = []
    monkeypatch.setattr(filesink.os, "posix_fadvise",
                        lambda fd, offset, length, advice: advised.append((offset, length, advice)),
                        raising=False)
    step = filesink.WRITEBACK_BYTES
    sink = filesink.FileSink(str(tmp_path / "big"), 3 * step)
    block = b"\1" * (step // 2)
    for _ in range(6):
        sink.write(block)
    sink.commit()
    assert [(o, n) for o, n, _ in advised] == [(0, step), (step, step), (2 * step, step)]
    assert (tmp_path / "big").stat().st_size == 3 * step


def test_hash_then_store_is_write(tmp_path):
    """write is hash + store: the halves (run on two threads by uploads) give the same file and MD5."""
    data = [b"a" * 1000, b"b" * 3, b"c" * 70000]
    whole = FileSink(str(tmp_path / "whole"), 71003)
    halves = FileSink(str(tmp_path / "halves"), 71003)
    for chunk in data:
        whole.write(chunk)
        halves.hash(chunk)
    for chunk in data:
        halves.store(chunk)
    assert halves.hexdigest() == whole.hexdigest() == hashlib.md5(b"".join(data)).hexdigest()
    assert halves.received == whole.received == 71003
    whole.commit()
    halves.commit()
    assert (tmp_path / "whole").read_bytes() == (tmp_path / "halves").read_bytes()
