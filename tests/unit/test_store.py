"""DirectoryStore: the default handler's callbacks, path safety, metadata and recovery."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from gsitransfer.errors import FileNotFound, NotAuthorized
from gsitransfer.filesink import FileSink
from gsitransfer.handler import DownloadTarget, IListingHandler, ITransferHandler
from gsitransfer.identity import ANONYMOUS, IdToken
from gsitransfer.store import DB_NAME, DirectoryStore, StoreError
from gsitransfer.store.metadata import SCHEMA_VERSION

ALICE = IdToken(dn="/C=US/O=Grid Test/OU=People/CN=Alice Example")
BOB = IdToken(dn="/C=US/O=Grid Test/OU=People/CN=Bob Example")
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAY = 86400.0


class Clock:
    """A settable clock for the store."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(root: Path, clock: Clock, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The store with its metadata in its own SQLite file, and in PostgreSQL (a ``--state`` URL)."""
    metadata = None
    if request.param == "postgresql":
        from gsitransfer.postgres import PostgresState, PostgresStoreMetadata

        state = PostgresState(request.getfixturevalue("postgres_url"), heartbeat=False)
        request.addfinalizer(state.close)
        metadata = PostgresStoreMetadata(state, str(root))
    s = DirectoryStore(str(root), clock=clock, metadata=metadata)
    yield s
    s.close()


def info(name: str, data: bytes = b"", **extra: object) -> dict[str, object]:
    return {"name": name, "size": len(data), "checksum": hashlib.md5(data).hexdigest(), **extra}


def upload(
    store: DirectoryStore,
    token: IdToken,
    name: str,
    data: bytes,
    transfer_key: str = "key-1",
    file_num: int = 0,
) -> str:
    """Run one file through every upload callback, writing it as the transport does."""
    assert store.CanUpload(token, info(name, data)) is True
    store.AddPendingUpload(token, name)
    file_info = info(name, data, transfer_key=transfer_key, file_num=file_num)
    path = store.GetUploadFilename(token, file_info)
    assert path is not None
    sink = FileSink(path, len(data))
    sink.write(data)
    assert sink.hexdigest() == file_info["checksum"]
    sink.commit()
    store.CompleteUpload(token, file_info)
    return path


# -- opening ---------------------------------------------------------------------


def test_implements_handler_interfaces(store: DirectoryStore) -> None:
    """The store provides ITransferHandler and IListingHandler."""
    assert verifyObject(ITransferHandler, store)
    assert verifyObject(IListingHandler, store)


def test_creates_root_with_mode_0755_and_database(store: DirectoryStore, root: Path) -> None:
    """A missing root is created with mode 0755 and holds the SQLite database (unless the metadata is shared)."""
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert (root / DB_NAME).is_file() is not store.shared


def test_database_uses_wal_and_schema_version(store: DirectoryStore, root: Path) -> None:
    """The metadata database is in WAL mode and carries a schema version."""
    if store.shared:
        pytest.skip("the metadata is in PostgreSQL (its schema: tests/unit/test_postgres_state.py)")
    db = sqlite3.connect(root / DB_NAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    finally:
        db.close()


def test_root_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    """A root that is a regular file gives a one-line StoreError naming it."""
    path = tmp_path / "plain"
    path.write_text("x")
    with pytest.raises(StoreError, match=re.escape(str(path))) as caught:
        DirectoryStore(str(path))
    assert "\n" not in str(caught.value)


def test_uncreatable_root_is_a_store_error(tmp_path: Path) -> None:
    """A root that cannot be created gives a StoreError naming it."""
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "store"
    with pytest.raises(StoreError, match="cannot create store directory"):
        DirectoryStore(str(target))


def test_corrupt_database_is_a_store_error(root: Path) -> None:
    """A database file that is not SQLite gives a StoreError naming its path."""
    root.mkdir()
    (root / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=re.escape(str(root / DB_NAME))):
        DirectoryStore(str(root))


def test_newer_schema_is_a_store_error(root: Path) -> None:
    """A database written by a newer schema version is refused, not altered."""
    root.mkdir()
    db = sqlite3.connect(root / DB_NAME)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        DirectoryStore(str(root))


# -- the upload callbacks ----------------------------------------------------------


def test_full_upload_then_download_gives_path_and_md5(store: DirectoryStore, root: Path) -> None:
    """A file through every upload callback is downloadable with its MD5."""
    data = b"results\n" * 100
    path = upload(store, ALICE, "results.csv", data)
    assert path == os.path.join(str(root), "results.csv")
    target = store.GetDownloadFilename(ALICE, "results.csv")
    assert target == DownloadTarget(str(root / "results.csv"), hashlib.md5(data).hexdigest())


def test_any_identity_may_download_a_stored_file(store: DirectoryStore) -> None:
    """Another user and an anonymous client may download a stored file."""
    upload(store, ALICE, "shared.txt", b"hello")
    assert store.GetDownloadFilename(BOB, "shared.txt").checksum is not None
    assert store.GetDownloadFilename(ANONYMOUS, "shared.txt").checksum is not None


def test_can_upload_accepts_new_name_from_anyone(store: DirectoryStore) -> None:
    """A new safe name is accepted for authenticated and anonymous identities."""
    assert store.CanUpload(ALICE, info("new.dat", b"x")) is True
    assert store.CanUpload(ANONYMOUS, info("new.dat", b"x")) is True


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "../x", "/abs", "a\\b", "nul\0byte", ".gsitransfer-store.sqlite",
     ".gsitransfer-x.part", ".gsitransferfoo"],
)
def test_can_upload_refuses_unsafe_names(store: DirectoryStore, name: str) -> None:
    """Separators, NUL, dot segments and the reserved prefix are refused with a reason."""
    with pytest.raises(NotAuthorized, match="refused"):
        store.CanUpload(ALICE, info(name, b"x"))


def test_can_upload_refuses_a_name_that_exists_on_disk(store: DirectoryStore, root: Path) -> None:
    """A name already present in the directory (file or directory) is refused."""
    (root / "taken.txt").write_text("mine")
    (root / "adir").mkdir()
    with pytest.raises(NotAuthorized, match="a file named taken.txt already exists"):
        store.CanUpload(ALICE, info("taken.txt", b"x"))
    with pytest.raises(NotAuthorized, match="already exists"):
        store.CanUpload(ALICE, info("adir", b"x"))


def test_can_upload_refuses_a_stored_name(store: DirectoryStore) -> None:
    """A name that was uploaded and stored is refused to everyone, its owner included."""
    upload(store, ALICE, "once.txt", b"data")
    for token in (ALICE, BOB):
        with pytest.raises(NotAuthorized, match="already exists"):
            store.CanUpload(token, info("once.txt", b"other"))


def test_can_upload_refuses_a_name_being_uploaded(store: DirectoryStore, clock: Clock) -> None:
    """A name pending for a live upload (younger than pending_ttl) is refused."""
    store.AddPendingUpload(ALICE, "busy.txt")
    clock.now += DAY - 1
    with pytest.raises(NotAuthorized, match="a file named busy.txt is already being uploaded"):
        store.CanUpload(BOB, info("busy.txt", b"x"))


def test_can_upload_accepts_a_name_whose_pending_row_expired(
    store: DirectoryStore, clock: Clock
) -> None:
    """A pending row older than pending_ttl no longer blocks the name."""
    store.AddPendingUpload(ALICE, "stale.txt")
    clock.now += DAY + 1
    assert store.CanUpload(BOB, info("stale.txt", b"x")) is True


def test_can_upload_accepts_a_name_whose_stored_file_was_deleted(
    store: DirectoryStore, root: Path
) -> None:
    """A stored file removed from disk by hand frees its name."""
    upload(store, ALICE, "gone.txt", b"data")
    (root / "gone.txt").unlink()
    assert store.CanUpload(BOB, info("gone.txt", b"new")) is True


def test_can_upload_refuses_a_file_larger_than_free_space(store: DirectoryStore) -> None:
    """A size beyond the filesystem's free space is refused with a reason."""
    huge = {"name": "huge.bin", "size": 1 << 62, "checksum": "0" * 32}
    with pytest.raises(NotAuthorized, match="too large"):
        store.CanUpload(ALICE, huge)


def test_get_upload_filename_needs_a_pending_row(store: DirectoryStore) -> None:
    """Without AddPendingUpload there is no upload path."""
    assert store.GetUploadFilename(ALICE, info("unannounced.txt", b"x")) is None


def test_get_upload_filename_only_for_the_pending_owner(store: DirectoryStore, root: Path) -> None:
    """The final path is given to the DN that owns the pending row, to no one else."""
    store.AddPendingUpload(ALICE, "mine.txt")
    assert store.GetUploadFilename(BOB, info("mine.txt")) is None
    assert store.GetUploadFilename(ANONYMOUS, info("mine.txt")) is None
    assert store.GetUploadFilename(ALICE, info("mine.txt")) == str(root / "mine.txt")


def test_anonymous_pending_row_belongs_to_anonymous(store: DirectoryStore, root: Path) -> None:
    """An anonymous pending row is matched by an anonymous identity only."""
    store.AddPendingUpload(ANONYMOUS, "anon.txt")
    assert store.GetUploadFilename(ALICE, info("anon.txt")) is None
    assert store.GetUploadFilename(ANONYMOUS, info("anon.txt")) == str(root / "anon.txt")


def test_get_upload_filename_binds_the_transfer_key(store: DirectoryStore) -> None:
    """Once a transfer key uploads a pending name, another key gets None; the same key retries."""
    store.AddPendingUpload(ALICE, "bound.txt")
    assert store.GetUploadFilename(ALICE, info("bound.txt", transfer_key="k1", file_num=0))
    assert store.GetUploadFilename(ALICE, info("bound.txt", transfer_key="k2", file_num=0)) is None
    assert store.GetUploadFilename(ALICE, info("bound.txt", transfer_key="k1", file_num=0))


def test_get_upload_filename_refuses_unsafe_names(store: DirectoryStore) -> None:
    """An unsafe name never gets an upload path, even with a pending row."""
    store.metadata.add_pending("../escape", ALICE.dn, T0, T0)
    assert store.GetUploadFilename(ALICE, info("../escape")) is None


def test_get_upload_filename_refuses_a_stored_name(store: DirectoryStore) -> None:
    """A stored file is not given out again for upload."""
    upload(store, ALICE, "done.txt", b"data")
    assert store.GetUploadFilename(ALICE, info("done.txt", b"data", transfer_key="key-1")) is None


def test_complete_upload_records_metadata(
    store: DirectoryStore, root: Path, clock: Clock
) -> None:
    """CompleteUpload stores owner, size, lowercase MD5, time, key and file number."""
    data = b"abc"
    store.AddPendingUpload(ALICE, "m.txt")
    clock.now = T0 + 60
    (root / "m.txt").write_bytes(data)
    file_info = info("m.txt", data, transfer_key="tk", file_num="3")
    file_info["checksum"] = str(file_info["checksum"]).upper()
    store.CompleteUpload(ALICE, file_info)
    record = store.metadata.get("m.txt")
    assert record is not None
    assert record.state.value == "stored"
    assert (record.owner_dn, record.size, record.md5) == (ALICE.dn, 3, hashlib.md5(data).hexdigest())
    assert (record.completed, record.created) == (T0 + 60, T0)
    assert (record.transfer_key, record.file_num) == ("tk", 3)


def test_cancel_pending_upload_frees_the_name(store: DirectoryStore) -> None:
    """CancelPendingUpload deletes the pending row, and repeating it is harmless."""
    store.AddPendingUpload(ALICE, "c.txt")
    store.CancelPendingUpload(ALICE, "c.txt")
    store.CancelPendingUpload(ALICE, "c.txt")
    assert store.metadata.get("c.txt") is None
    assert store.CanUpload(BOB, info("c.txt", b"x")) is True


def test_cancel_pending_upload_never_removes_a_stored_row(store: DirectoryStore) -> None:
    """Cancelling a name that is stored leaves its metadata alone."""
    upload(store, ALICE, "kept.txt", b"data")
    store.CancelPendingUpload(ALICE, "kept.txt")
    assert store.GetDownloadFilename(ALICE, "kept.txt").checksum == hashlib.md5(b"data").hexdigest()


def test_cancel_pending_upload_leaves_another_owners_row(store: DirectoryStore) -> None:
    """A cancel on behalf of one DN does not drop another DN's pending row."""
    store.AddPendingUpload(BOB, "bobs.txt")
    store.CancelPendingUpload(ALICE, "bobs.txt")
    assert store.metadata.get("bobs.txt") is not None


# -- downloads and path safety ------------------------------------------------------


@pytest.mark.parametrize(
    "url_path",
    [
        "",
        "..",
        "../secret.txt",
        "../store/../secret.txt",
        "sub/../../secret.txt",
        "./inside.txt",
        "sub/./inside.txt",
        "/etc/passwd",
        str(Path("/etc/passwd")),
        "sub//inside.txt",
        "sub/",
        "inside.txt\0",
        "sub\\inside.txt",
        "..\\secret.txt",
        DB_NAME,
        DB_NAME + "-wal",
        ".gsitransfer-0123456789abcdef.part",
        "sub/.gsitransfer-hidden",
    ],
)
def test_download_refuses_unsafe_paths(
    store: DirectoryStore, root: Path, tmp_path: Path, url_path: str
) -> None:
    """Dot segments, empty segments, absolute paths, NUL, backslash and hidden names are refused."""
    (tmp_path / "secret.txt").write_text("outside")
    (root / "inside.txt").write_text("inside")
    (root / "sub").mkdir()
    (root / "sub" / "inside.txt").write_text("nested")
    (root / "sub" / ".gsitransfer-hidden").write_text("hidden")
    (root / ".gsitransfer-0123456789abcdef.part").write_text("in flight")
    with pytest.raises(FileNotFound):
        store.GetDownloadFilename(ALICE, url_path)


def test_download_of_decoded_percent_forms_is_literal(store: DirectoryStore, root: Path) -> None:
    """A name that still looks percent-encoded is a literal name, not a traversal."""
    with pytest.raises(FileNotFound):
        store.GetDownloadFilename(ALICE, "%2e%2e/secret.txt")
    (root / "%2e%2e").write_text("odd but legal")
    assert store.GetDownloadFilename(ALICE, "%2e%2e").path == str(root / "%2e%2e")


def test_download_serves_nested_files(store: DirectoryStore, root: Path) -> None:
    """A regular file in a subdirectory is served by its relative path."""
    (root / "sub").mkdir()
    (root / "sub" / "deep.txt").write_text("nested")
    assert store.GetDownloadFilename(ALICE, "sub/deep.txt") == DownloadTarget(
        str(root / "sub" / "deep.txt"), None
    )


def test_download_refuses_symlink_to_outside(
    store: DirectoryStore, root: Path, tmp_path: Path
) -> None:
    """A symlink (file or directory) leading out of the store is refused."""
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(tmp_path, root / "updir")
    with pytest.raises(FileNotFound):
        store.GetDownloadFilename(ALICE, "link.txt")
    with pytest.raises(FileNotFound):
        store.GetDownloadFilename(ALICE, "updir/secret.txt")


def test_download_allows_symlink_inside(store: DirectoryStore, root: Path) -> None:
    """A symlink to a file in the store serves the target, with the target's MD5."""
    upload(store, ALICE, "target.txt", b"target")
    os.symlink("target.txt", root / "alias.txt")
    target = store.GetDownloadFilename(ALICE, "alias.txt")
    assert target == DownloadTarget(str(root / "target.txt"), hashlib.md5(b"target").hexdigest())


def test_download_refuses_symlink_to_hidden_file(store: DirectoryStore, root: Path) -> None:
    """A symlink in the store pointing at the database is refused."""
    os.symlink(DB_NAME, root / "db-alias")
    with pytest.raises(FileNotFound):
        store.GetDownloadFilename(ALICE, "db-alias")


def test_download_refuses_dangling_and_looping_symlinks(store: DirectoryStore, root: Path) -> None:
    """Symlinks to nothing or to themselves are not found."""
    os.symlink("nowhere", root / "dangling")
    os.symlink("loop", root / "loop")
    for name in ("dangling", "loop"):
        with pytest.raises(FileNotFound):
            store.GetDownloadFilename(ALICE, name)


def test_download_refuses_directories_and_missing_files(store: DirectoryStore, root: Path) -> None:
    """Directories and absent names are not downloadable."""
    (root / "adir").mkdir()
    for name in ("adir", "missing.txt"):
        with pytest.raises(FileNotFound):
            store.GetDownloadFilename(ALICE, name)


def test_download_refuses_a_pending_file(store: DirectoryStore, root: Path) -> None:
    """A file whose row is still pending is not downloadable, even if its name exists."""
    store.AddPendingUpload(ALICE, "arriving.txt")
    (root / "arriving.txt").write_text("finished but not recorded")
    with pytest.raises(FileNotFound, match="being uploaded"):
        store.GetDownloadFilename(ALICE, "arriving.txt")


def test_hand_placed_file_is_served_without_checksum(store: DirectoryStore, root: Path) -> None:
    """A file dropped in the directory by an administrator is served with checksum None."""
    (root / "manual.txt").write_text("by hand")
    assert store.GetDownloadFilename(ANONYMOUS, "manual.txt") == DownloadTarget(
        str(root / "manual.txt"), None
    )


def test_replaced_file_loses_its_checksum(store: DirectoryStore, root: Path) -> None:
    """A stored file replaced by hand (new size or mtime) is served without the stale MD5."""
    upload(store, ALICE, "a.txt", b"aaaa")
    upload(store, ALICE, "b.txt", b"bbbb", transfer_key="key-2")
    (root / "a.txt").write_bytes(b"longer content")
    (root / "b.txt").write_bytes(b"BBBB")
    os.utime(root / "b.txt", ns=(0, 1_000_000_000))
    assert store.GetDownloadFilename(ALICE, "a.txt").checksum is None
    assert store.GetDownloadFilename(ALICE, "b.txt").checksum is None


# -- listing --------------------------------------------------------------------------


def test_list_files(store: DirectoryStore, root: Path, tmp_path: Path, clock: Clock) -> None:
    """The listing has the downloadable top-level files, sorted, with their metadata."""
    clock.now = T0 + 1
    upload(store, ALICE, "b.txt", b"bee")
    (root / "a.txt").write_text("hand")
    os.utime(root / "a.txt", (T0, T0))
    (root / "adir").mkdir()
    (root / ".gsitransfer-0000000000000000.part").write_text("temp")
    (tmp_path / "outside.txt").write_text("outside")
    os.symlink(tmp_path / "outside.txt", root / "escape.txt")
    store.AddPendingUpload(BOB, "c.txt")
    (root / "c.txt").write_text("pending")
    listing = store.ListFiles(ANONYMOUS)
    assert [entry["name"] for entry in listing] == ["a.txt", "b.txt"]
    assert listing[0] == {
        "name": "a.txt",
        "size": 4,
        "checksum": None,
        "owner": None,
        "modified": "2023-11-14T22:13:20Z",
        "uploaded": None,
    }
    b = listing[1]
    assert (b["size"], b["checksum"], b["owner"]) == (3, hashlib.md5(b"bee").hexdigest(), None)
    assert store.ListFiles(ALICE)[1]["owner"] == ALICE.dn
    assert b["uploaded"] == "2023-11-14T22:13:21Z"
    assert b["modified"].endswith("Z")


def test_list_files_is_empty_for_a_new_store(store: DirectoryStore) -> None:
    """A fresh store lists nothing (its database is hidden)."""
    assert store.ListFiles(ALICE) == []


# -- recovery and persistence ------------------------------------------------------------


def test_constructor_removes_stale_temporaries(root: Path, clock: Clock) -> None:
    """Temporary files left by a crashed upload are removed when the store opens."""
    root.mkdir()
    (root / ".gsitransfer-deadbeefdeadbeef.part").write_bytes(b"partial")
    (root / "keep.txt").write_text("keep")
    s = DirectoryStore(str(root), clock=clock)
    try:
        assert not (root / ".gsitransfer-deadbeefdeadbeef.part").exists()
        assert (root / "keep.txt").exists()
        assert (root / DB_NAME).exists()
    finally:
        s.close()


def test_recover_reports_removed_temporaries(store: DirectoryStore, root: Path) -> None:
    """recover() removes temporaries and says which — not when the metadata is shared by nodes:
    another node's temporaries in the shared directory may be live."""
    (root / ".gsitransfer-0123456789abcdef.part").write_bytes(b"partial")
    report = store.recover()
    if store.shared:
        assert report.removed_temporaries == ()
        assert (root / ".gsitransfer-0123456789abcdef.part").exists()
    else:
        assert report.removed_temporaries == (".gsitransfer-0123456789abcdef.part",)


def test_recover_expires_old_pending_rows(store: DirectoryStore, clock: Clock) -> None:
    """Pending rows older than pending_ttl are forgotten; younger ones are kept."""
    store.AddPendingUpload(ALICE, "old.txt")
    clock.now += DAY / 2
    store.AddPendingUpload(ALICE, "young.txt")
    clock.now += DAY / 2 + 1
    report = store.recover()
    assert report.expired_pending == ("old.txt",)
    assert store.metadata.get("old.txt") is None
    assert store.metadata.get("young.txt") is not None


def test_pending_ttl_is_configurable(root: Path, clock: Clock) -> None:
    """A shorter pending_ttl expires pending rows sooner."""
    s = DirectoryStore(str(root), pending_ttl=60, clock=clock)
    try:
        s.AddPendingUpload(ALICE, "quick.txt")
        clock.now += 61
        assert s.CanUpload(BOB, info("quick.txt")) is True
        assert s.recover().expired_pending == ("quick.txt",)
    finally:
        s.close()


def test_recover_keeps_an_expired_pending_file_that_is_in_place(
    store: DirectoryStore, root: Path, clock: Clock
) -> None:
    """An old pending row whose file reached its final name is recorded as stored, no checksum."""
    store.AddPendingUpload(ALICE, "landed.txt")
    (root / "landed.txt").write_bytes(b"verified bytes")
    clock.now += DAY + 1
    report = store.recover()
    assert report.promoted_pending == ("landed.txt",)
    assert store.GetDownloadFilename(BOB, "landed.txt").checksum is None
    assert store.ListFiles(ALICE)[0]["owner"] == ALICE.dn


def test_recover_forgets_stored_rows_whose_file_vanished(store: DirectoryStore, root: Path) -> None:
    """Stored rows for files deleted from disk are removed."""
    upload(store, ALICE, "vanish.txt", b"data")
    (root / "vanish.txt").unlink()
    assert store.recover().vanished_stored == ("vanish.txt",)
    assert store.metadata.get("vanish.txt") is None


def test_recover_on_a_clean_store_reports_nothing(store: DirectoryStore) -> None:
    """recover() on a clean store finds nothing to do."""
    assert not store.recover()


def test_metadata_persists_across_reopen(root: Path, clock: Clock) -> None:
    """Stored and pending rows survive closing and reopening the store."""
    first = DirectoryStore(str(root), clock=clock)
    upload(first, ALICE, "persist.txt", b"durable")
    first.AddPendingUpload(BOB, "later.txt")
    first.close()
    second = DirectoryStore(str(root), clock=clock)
    try:
        target = second.GetDownloadFilename(ANONYMOUS, "persist.txt")
        assert target.checksum == hashlib.md5(b"durable").hexdigest()
        assert second.ListFiles(ALICE)[0]["owner"] == ALICE.dn
        with pytest.raises(NotAuthorized, match="already being uploaded"):
            second.CanUpload(ALICE, info("later.txt"))
        assert second.GetUploadFilename(BOB, info("later.txt")) == str(root / "later.txt")
    finally:
        second.close()


@pytest.mark.parametrize(
    "mode, seen_by_anonymous, seen_by_bob, seen_by_alice",
    [("own", None, None, ALICE.dn), ("none", None, None, None), ("all", ALICE.dn, ALICE.dn, ALICE.dn)],
)
def test_listing_owners_option(
    root: Path, mode: str, seen_by_anonymous: str | None, seen_by_bob: str | None, seen_by_alice: str | None
) -> None:
    """--listing-owners: by default (own) only the uploader sees its DN; anonymous clients never (issue 12 finding 14)."""
    now = [T0]
    store = DirectoryStore(str(root), listing_owners=mode, clock=lambda: now[0])
    store.AddPendingUpload(ALICE, "f.txt")
    (root / "f.txt").write_bytes(b"x")
    now[0] += DAY + 1
    store.recover()  # the landed file is recorded as Alice's
    seen = [store.ListFiles(who)[0]["owner"] for who in (ANONYMOUS, BOB, ALICE)]
    assert seen == [seen_by_anonymous, seen_by_bob, seen_by_alice]
