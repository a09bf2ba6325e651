"""The keep-alive GET's small-file cache (gsitransfer.web.smallfiles): the same bytes as reading the file, and
never a file's old state."""

from __future__ import annotations

import os
from pathlib import Path

from gsitransfer.fastpaths import FastPaths
from gsitransfer.web.smallfiles import SmallFiles

from .test_plain_get import FAST, PLAIN, _exchange, fill_store, serving
from .wire import get


def test_a_kept_file_is_answered_with_the_bytes_of_reading_it(tmp_path: Path):
    store = fill_store(tmp_path / "store")
    requests = [get("/data/small.bin"), get("/data/small.bin"), get("/data/page.html"), get("/data/small.bin")]
    assert _exchange(serving(store, FAST), *requests)[0] == _exchange(serving(store, PLAIN), *requests)[0]


def test_a_file_replaced_removed_or_rewritten_is_read_again(tmp_path: Path):
    store = fill_store(tmp_path / "store")
    server = serving(store, FAST)
    site = server.site()
    kept = site.small_files
    assert isinstance(kept, SmallFiles)
    path = str(store / "small.bin")
    first = (store / "small.bin").read_bytes()
    status = os.stat(path)
    kept.keep(path, status, None, b"block", first)
    assert kept.get(path, None) == (b"block", first)
    assert kept.get(path, "md5=x") is None  # another digest from the handler: read again

    kept.keep(path, status, None, b"block", first)
    replacement = store / "new.bin"
    replacement.write_bytes(os.urandom(len(first)))
    os.replace(replacement, path)  # the store's way: a new inode under the name
    assert kept.get(path, None) is None

    kept.keep(path, os.stat(path), None, b"block", b"x")
    with open(path, "r+b") as rewrite:  # in place, same size; the modification time moves
        rewrite.write(b"y")
    stamp = os.stat(path).st_mtime_ns
    os.utime(path, ns=(stamp, stamp + 1_000_000))
    assert kept.get(path, None) is None

    kept.keep(path, os.stat(path), None, b"block", b"x")
    os.unlink(path)
    assert kept.get(path, None) is None and len(kept) == 0


def test_a_changed_file_is_served_new_on_the_same_connection(tmp_path: Path):
    store = fill_store(tmp_path / "store")
    fast, plain = serving(store, FAST), serving(store, PLAIN)
    before = _exchange(fast, get("/data/small.bin"))[0]
    replacement = store / "next.bin"
    replacement.write_bytes(b"B" * 5000)
    os.replace(replacement, store / "small.bin")
    after_fast = _exchange(fast, get("/data/small.bin"))[0]
    assert after_fast != before and after_fast.endswith(b"B" * 5000)
    assert after_fast == _exchange(plain, get("/data/small.bin"))[0]


def test_the_budget_bounds_the_bodies_kept(tmp_path: Path):
    kept = SmallFiles(budget=10_000)
    for number in range(3):
        path = tmp_path / f"{number}.bin"
        path.write_bytes(b"z" * 5000)
        kept.keep(str(path), os.stat(path), None, b"", b"z" * 5000)
    assert len(kept) == 2 and kept.get(str(tmp_path / "0.bin"), None) is None
    assert kept.get(str(tmp_path / "2.bin"), None) is not None
    kept.keep(str(tmp_path / "big"), os.stat(tmp_path / "2.bin"), None, b"", b"z" * 10_001)
    assert kept.get(str(tmp_path / "big"), None) is None


def test_the_switch_turns_it_off(tmp_path: Path):
    store = fill_store(tmp_path / "store")
    assert serving(store, FastPaths(small_file_cache=False)).site().small_files is None
    assert serving(store, PLAIN).site().small_files is None
    requests = [get("/data/small.bin"), get("/data/small.bin")]
    off = _exchange(serving(store, FastPaths(small_file_cache=False)), *requests)
    assert off[0] == _exchange(serving(store, PLAIN), *requests)[0]
