"""Text a hostile server sends cannot drive the terminal: every control character is printed escaped.

A small HTTP server in this process (``http.server`` on 127.0.0.1, an OS-chosen
port) answers the real ``gsitransfer`` command (a subprocess) with names,
owners, states, error reasons and JSON full of terminal escape sequences,
C1 controls, DEL and a right-to-left override. Nothing printed may contain
a control character other than the newline ending each line; what the
server sent is still there, visibly (``ESC`` as the four characters ``\\x1b``).
"""

from __future__ import annotations

import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from gsitransfer.client.progress import TerminalProgress
from gsitransfer.client.text import json_text, printable

#: sets the window title, clears the screen, an 8-bit CSI, DEL, a tab, a right-to-left override
NASTY = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\tfdp.\u202etxt"
#: how NASTY is printed
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x7f\\x09fdp.\\u202etxt"
#: in an error message, whose whitespace the client folds to single spaces (the tab among it)
NASTY_REASON = NASTY.replace("\t", " ")
SHOWN_REASON = SHOWN.replace("\\x09", " ")
KEY = "k" * 32

#: any control character but the newline, and the bidirectional overrides and isolates
_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class Hostile(BaseHTTPRequestHandler):
    """Answers every query of the client with NASTY wherever a server chooses text."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the base class's name
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/data/":
            listing = {"prefix": "data", "files": [
                {"name": NASTY, "size": 5, "owner": f"/CN={NASTY}", "modified": NASTY, "checksum": None}]}
            self._send(200, json.dumps(listing).encode(), "application/json")
        elif self.path == f"/data/{KEY}":
            status = {"transfer_key": KEY, "prefix": "data", "owner": NASTY, "created": 0, "expires": 1,
                      "complete": False, "files": [
                          {"file_num": 0, "name": NASTY, "size": 5, "checksum": "0" * 32, "state": NASTY}]}
            self._send(200, json.dumps(status, ensure_ascii=False).encode(), "application/json")
        else:
            self._send(404, f"no file {NASTY}\n".encode(), "text/plain; charset=utf-8")

    def do_DELETE(self) -> None:
        self._send(200, f"cancelled {NASTY}\n".encode(), "text/plain; charset=utf-8")


@pytest.fixture
def hostile() -> Iterator[str]:
    """The hostile server's base URL (``http://127.0.0.1:<port>/data``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/data"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def assert_inert(text: str) -> None:
    """No control character but newlines in ``text``."""
    assert not _RAW_CONTROL.search(text), repr(text)


def test_ls_prints_names_owners_and_times_escaped(run_cli, hostile):
    """``gsitransfer ls``: the name, owner and time the server sent are shown with every control escaped."""
    result = run_cli("ls", hostile)
    assert result.returncode == 0, result.stderr
    assert_inert(result.stdout + result.stderr)
    row = result.stdout.splitlines()[1]
    assert row.endswith(SHOWN) and f"/CN={SHOWN}" in row


def test_an_error_reason_is_one_escaped_line(run_cli, hostile):
    """A 404 whose reason carries escape sequences: one stderr line, escaped, exit 1."""
    result = run_cli("download", f"{hostile}/missing.txt")
    assert result.returncode == 1
    assert_inert(result.stdout + result.stderr)
    assert result.stderr.count("\n") == 1 and f"404 no file {SHOWN_REASON} (GET" in result.stderr


def test_status_and_cancel_print_the_servers_text_escaped(run_cli, hostile):
    """``status`` (owner, state, name) and ``cancel`` (the server's line) print no raw control character."""
    status = run_cli("status", f"{hostile}/{KEY}")
    cancel = run_cli("cancel", f"{hostile}/{KEY}")
    assert status.returncode == 0 and cancel.returncode == 0, status.stderr + cancel.stderr
    assert_inert(status.stdout + status.stderr + cancel.stdout + cancel.stderr)
    assert f"owner {SHOWN}" in status.stdout and cancel.stdout.strip() == f"cancelled {SHOWN}"


@pytest.mark.parametrize("command", ["ls", "status", "download"])
def test_json_output_has_no_raw_control_character_and_keeps_the_text(run_cli, hostile, command):
    """``--json``: JSON's own escapes (DEL too) on stdout; parsed back, the server's text is intact."""
    url = {"ls": hostile, "status": f"{hostile}/{KEY}", "download": f"{hostile}/missing.txt"}[command]
    result = run_cli("--json", command, url)
    assert_inert(result.stdout + result.stderr)
    data = json.loads(result.stdout)
    if command == "ls":
        assert data["files"][0]["name"] == NASTY
    elif command == "status":
        assert data["files"][0]["state"] == NASTY and data["owner"] == NASTY
    else:
        assert data["error"].startswith(f"404 no file {NASTY_REASON} (GET")


def test_progress_lines_escape_a_servers_reason():
    """The terminal progress keeps its own cursor movements but escapes a reason a server sent."""
    screen = io.StringIO()
    progress = TerminalProgress(screen, clock=lambda: 0.0, width=200)
    progress.file_started("a.csv", 10)
    progress.file_restarted("a.csv", f"422 {NASTY}")
    progress.close()
    drawn = screen.getvalue()
    assert NASTY not in drawn and "\x1b]0;" not in drawn and f"422 {SHOWN}" in drawn


def test_printable_escapes_every_control_and_nothing_else():
    """C0, DEL, C1 and the bidi controls become visible escapes; letters (any script) stay; escaping twice changes nothing."""
    controls = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x202E, 0x2066, 0x2028]))
    shown = printable(controls)
    assert_inert(shown)
    assert shown.startswith("\\x00\\x01") and "\\x1b" in shown and "\\x7f\\x80" in shown and shown.endswith("\\u2028")
    assert printable("José_Ω-数据 a\\b.txt") == "José_Ω-数据 a\\b.txt"
    assert printable(shown) == shown
    assert json.loads(json_text({"k": controls})) == {"k": controls}
    assert_inert(json_text({"k": controls}))
