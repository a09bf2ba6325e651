"""Fuzz targets for the two parsers a stranger's bytes reach first.

* :func:`manifest_target` -- ``gsitransfer.manifest.parse_manifest``: on any
  bytes it returns a Manifest or raises ManifestError; every accepted name is
  one safe path component; an accepted manifest survives the transfer
  database (``to_ini`` then ``parse_manifest`` gives it back unchanged);
* :func:`classify_target` -- ``gsitransfer.web.table.select`` (the route
  table over ``gsitransfer.web.routes``): on any method and request target it
  returns a route and its verb or raises a refusal with status 400, 404 or
  405 (with ``Allow``), nothing else; a route it returns only ever carries
  safe segments.

Input format of the classify target: the first byte picks the method from
:data:`METHODS` (its high bit prefixes the target with ``/``), the rest is the
raw request target (as on the request line).

Run by hand with atheris (``pip install atheris``)::

    python tests/adversarial/fuzz_targets.py manifest -runs=100000 tests/adversarial/corpus/manifest
    python tests/adversarial/fuzz_targets.py classify -max_total_time=60 /tmp/new tests/adversarial/corpus/classify

(the first corpus directory given receives what libFuzzer finds: give it a
scratch directory unless you mean to grow the checked-in corpus). The same
functions replay ``tests/adversarial/corpus/`` in the normal test run
(``test_fuzz.py``).
"""

from __future__ import annotations

import contextlib
import sys
import unicodedata
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository importable, instrument what we fuzz
    import atheris

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    _instrumented = atheris.instrument_imports(include=["gsitransfer", "configparser"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import configparser  # noqa: F401  (instrumented for coverage feedback when fuzzing)

    from gsitransfer.errors import ManifestError, TransferError
    from gsitransfer.manifest import parse_manifest
    from gsitransfer.web.routes import FileRoute, ListingRoute, ManifestRoute, TransferRoute, UploadRoute
    from gsitransfer.web.status import MethodNotAllowed, status_for
    from gsitransfer.web.table import select

METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"get", b"")


def safe_component(name: str) -> bool:
    """One path component that cannot name anything but itself."""
    return (
        name not in ("", ".", "..")
        and not any(c in "/\\\x00" or unicodedata.category(c) == "Cc" for c in name)
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)
    )


def manifest_target(data: bytes) -> None:
    """parse_manifest raises only ManifestError; what it accepts is safe and round-trips."""
    try:
        manifest = parse_manifest(data)
    except ManifestError:
        return
    for entry in manifest.files:
        assert safe_component(entry.name), entry.name
        assert len(entry.name.encode("utf-8")) <= 255
        assert not entry.name.startswith(".gsitransfer"), entry.name
        assert entry.name == unicodedata.normalize("NFC", entry.name), entry.name
        assert entry.size >= 0 and len(entry.checksum) == 32
    again = parse_manifest(manifest.to_ini().encode("utf-8"))
    assert again == manifest, "the manifest changed through to_ini()"


def split_classify_input(data: bytes) -> tuple[bytes, bytes]:
    """(method, raw request target) of a classify fuzz input.

    The low bits of the first byte pick the method; its high bit puts a ``/``
    before the target (so that most fuzzed targets get past the absolute-path check).
    """
    if not data:
        return METHODS[0], b"/"
    target = b"/" + data[1:] if data[0] & 0x80 else data[1:]
    return METHODS[(data[0] & 0x7F) % len(METHODS)], target


def classify_input(method: bytes, target: bytes) -> bytes:
    """Encode a (method, target) pair in the classify target's input format."""
    return bytes([METHODS.index(method)]) + target


def classify_target(data: bytes) -> None:
    """Routing raises only 400/404/405 refusals, and every route it returns carries only safe segments."""
    method, target = split_classify_input(data)
    try:
        route, _ = select(method, target)
    except TransferError as refusal:
        assert status_for(refusal) in (400, 404, 405), refusal
        assert not isinstance(refusal, MethodNotAllowed) or refusal.allow, refusal
        if not target.split(b"?", 1)[0].startswith(b"/"):  # not an absolute path: 400
            assert status_for(refusal) == 400, target
        return
    assert isinstance(route, (ManifestRoute, UploadRoute, ListingRoute, TransferRoute, FileRoute)), route
    assert safe_component(route.prefix), route
    if isinstance(route, FileRoute):
        assert method in (b"GET", b"HEAD", b"PUT", b"DELETE", b"PROPFIND", b"OPTIONS"), route
        assert all(safe_component(part) for part in route.url_path.split("/")), route
    if isinstance(route, TransferRoute):
        assert safe_component(route.name), route
    if isinstance(route, (ManifestRoute, UploadRoute)):
        assert method == b"POST", route
    if isinstance(route, UploadRoute):
        assert len(route.transfer_key) == 32 and safe_component(route.transfer_key), route


TARGETS = {"manifest": manifest_target, "classify": classify_target}


def main(argv: list[str]) -> None:
    """``fuzz_targets.py TARGET [libFuzzer options and corpus directories]``."""
    import atheris

    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: {argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer arguments]")
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
