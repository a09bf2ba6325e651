"""Name squatting: what one identity may have announced and not yet stored, over a real server.

``--max-pending-files`` and ``--max-pending-bytes`` bound the files (and their
bytes) one identity has pending over all its live transfers; every anonymous
client is one identity. Past either, a manifest is refused with 429 and a
plain-text reason, and nothing of it is registered.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.http import manifest_for, request
from tests.support.server import ServerProcess

from .support import assert_healthy, http_args, running, unique

CAROL = "/C=US/O=Grid Test/CN=Carol Example"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("pending-quota")
    args = http_args(work / "store", "--max-pending-files", "5", "--max-pending-bytes", "100000",
                     "--trusted-proxy", "127.0.0.1")
    with running(ServerProcess(work, args)) as process:
        yield process
        assert_healthy(process)


def names(count: int) -> list[str]:
    return [unique(f"q{n}") for n in range(count)]


def test_pending_file_limit_is_429_and_registers_nothing(server):
    """Anonymous: 3 files pending, 3 more are refused with 429 and a reason; the refused names
    stay free, and cancelling the first transfer frees the budget."""
    base = server.url()
    first = request(base, "POST", "/data/manifest", manifest_for([(n, b"") for n in names(3)]))
    assert first.status == 200 and first.fields()["return_code"] == "0", first.text
    refused_names = names(3)
    refused = request(base, "POST", "/data/manifest", manifest_for([(n, b"") for n in refused_names]))
    assert refused.status == 429, (refused.status, refused.text)
    assert refused.headers.get("content-type", "").startswith("text/plain")
    assert "too many pending files for anonymous clients" in refused.text and "at most 5" in refused.text
    key = first.fields()["transfer_key"]
    assert request(base, "DELETE", f"/data/{key}").status in (200, 204)
    again = request(base, "POST", "/data/manifest", manifest_for([(n, b"") for n in refused_names]))
    assert again.status == 200 and again.fields()["return_code"] == "0", again.text
    assert request(base, "DELETE", f"/data/{again.fields()['transfer_key']}").status in (200, 204)


def test_pending_byte_limit_and_stored_files_free_the_budget(server):
    """60 000 + 60 000 announced bytes pass --max-pending-bytes 100 000: 429; once the first file is
    stored it no longer counts and the second manifest is accepted."""
    base = server.url()
    content = b"x" * 60_000
    first = request(base, "POST", "/data/manifest", manifest_for([(unique("big"), content)]))
    assert first.status == 200, first.text
    second_body = manifest_for([(unique("big"), content)])
    refused = request(base, "POST", "/data/manifest", second_body)
    assert refused.status == 429 and "too many pending bytes" in refused.text, refused.text
    key = first.fields()["transfer_key"]
    assert request(base, "POST", f"/data/{key}/0", content).status == 200
    accepted = request(base, "POST", "/data/manifest", second_body)
    assert accepted.status == 200 and accepted.fields()["return_code"] == "0", accepted.text
    assert request(base, "DELETE", f"/data/{accepted.fields()['transfer_key']}").status in (200, 204)


def test_each_identity_has_its_own_budget(server):
    """While anonymous clients have used their budget, a DN (from a trusted proxy) still posts."""
    base = server.url()
    squat = request(base, "POST", "/data/manifest", manifest_for([(n, b"") for n in names(5)]))
    assert squat.status == 200, squat.text
    assert request(base, "POST", "/data/manifest", manifest_for([(unique("a"), b"")])).status == 429
    carol = request(base, "POST", "/data/manifest", manifest_for([(unique("c"), b"")]),
                    headers={"X-Client-DN": CAROL})
    assert carol.status == 200 and carol.fields()["return_code"] == "0", carol.text
    assert request(base, "DELETE", f"/data/{squat.fields()['transfer_key']}").status in (200, 204)


def test_help_lists_the_new_limits():
    """`twistd accessgrid-transfer --help` lists --max-pending-files, --max-pending-bytes and
    --handshake-timeout."""
    done = subprocess.run([sys.executable, "-m", "twisted", "accessgrid-transfer", "--help"],
                          capture_output=True, timeout=60, text=True)
    assert done.returncode == 0, done.stderr
    for option in ("--max-pending-files", "--max-pending-bytes", "--handshake-timeout"):
        assert option in done.stdout, option
