"""The ``gsitransfer`` command: upload, download, ls, status and cancel.

::

    gsitransfer upload https://host:8443/data results/*.csv
    gsitransfer upload https://host:8443/data/new-name.csv results.csv   (or --as new-name.csv)
    gsitransfer download https://host:8443/data/results.csv [DEST]
    gsitransfer download https://host:8443/data/a.csv https://host:8443/data/b.csv DEST/
    gsitransfer ls https://host:8443/data
    gsitransfer status https://host:8443/data/<transfer_key>
    gsitransfer cancel https://host:8443/data/<transfer_key>

What this module owns: the options (global ones are accepted before or after
the command), choosing the credential and trust (Globus lookup, see
:mod:`gsitransfer.client.credentials`), progress bars on a terminal only,
results on stdout (``--json`` for scripts), and errors as one line each on
stderr -- a traceback only with ``--debug``. Everything written goes through
:class:`Console`, which escapes control characters
(:mod:`gsitransfer.client.text`): names, reasons and JSON from a server cannot
drive the terminal. The work is done by
:mod:`gsitransfer.client.sync` (the Twisted client with its reactor in a
daemon thread).

Exit statuses: 0 success (files the server already had count as
success); 1 the server refused or a transfer failed (HTTP error, handler
refusal of the manifest, checksum); 2 bad usage (options, and URLs that
cannot mean what is asked: no prefix, a prefix to download); 3 credential or
trust problem; 4 server unreachable, TLS refused, plain HTTP on an https://
URL, connection lost; 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO, TypeVar

from treq.client import HTTPClient

from .client import api, output, sync
from .client.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ClientError,
    NotTLS,
    TLSRefused,
    UploadIncomplete,
    UploadRefused,
    UsageError,
)
from .client.credentials import terminal_prompt
from .client.results import DownloadReport
from .client.progress import LineProgress, NullProgress, ProgressListener, TerminalProgress
from .client.session import make_http_client
from .client.text import json_text, printable, printable_lines
from .client.tls import HANDSHAKE_TIMEOUT, GSIClientPolicy

PROG = "gsitransfer"

_DESCRIPTION = """\
Upload files to and download files from a gsitransfer (AccessGrid DataStore)
server, over mutual TLS (https://, with your grid certificate or proxy) or
plain HTTP (http://, anonymous).

Credential (https:// only): --proxy, or --cert/--key, else $X509_USER_PROXY,
else /tmp/x509up_u<uid> (grid-proxy-init), else $X509_USER_CERT/$X509_USER_KEY,
else ~/.globus/usercert.pem and userkey.pem (an encrypted key asks for its pass
phrase). Trusted CAs: --ca-dir/--ca-file, else $X509_CERT_DIR, else
~/.globus/certificates, else /etc/grid-security/certificates.
"""

_EPILOG = """\
exit status: 0 success (already stored files included); 1 refused or failed
transfer (a refused manifest too); 2 bad usage (a URL with no prefix, a prefix
to download); 3 credential or trust problem; 4 unreachable server, TLS refusal,
plain HTTP on an https:// URL, or lost connection; 130 interrupted.
See docs/client.md.
"""


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def _md5(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{32}", text):
        raise argparse.ArgumentTypeError(f"not an MD5 (32 hex digits): {text!r}")
    return text.lower()


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < minimum:
        wanted = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        raise argparse.ArgumentTypeError(f"{wanted}: {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def _positive(text: str) -> int:
    return _whole_number(text, 1)


def _count(text: str) -> int:
    return _whole_number(text, 0)


_DEFAULTS: dict[str, object] = {
    "cert": None, "key": None, "proxy": None, "ca_dir": None, "ca_file": None,
    "verbose": False, "quiet": False, "json": False, "debug": False, "jobs": 4, "handshake_timeout": HANDSHAKE_TIMEOUT,
}


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The global options; on a command's parser they default to 'not given' (SUPPRESS)."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("credential and trust (https:// only)")
    group.add_argument("--proxy", metavar="FILE", default=default,
                       help="proxy file (certificate, key and chain, as grid-proxy-init writes it)")
    group.add_argument("--cert", metavar="FILE", default=default, help="client certificate (PEM)")
    group.add_argument("--key", metavar="FILE", default=default,
                       help="its private key (PEM; default: the --cert file)")
    group.add_argument("--ca-dir", metavar="DIR", default=default,
                       help="trusted CAs, Globus layout (<hash>.0, <hash>.r0)")
    group.add_argument("--ca-file", metavar="FILE", default=default, help="trusted CAs, one PEM bundle")
    group.add_argument("--handshake-timeout", type=_seconds, metavar="SECONDS", default=default,
                       help="give up on a server that has not finished the TLS handshake by then (default 10)")
    out = parser.add_argument_group("output")
    out.add_argument("-v", "--verbose", action="store_true", default=default,
                     help="say which credential and trust are used")
    out.add_argument("-q", "--quiet", action="store_true", default=default,
                     help="no progress and no results; errors only")
    out.add_argument("--json", action="store_true", default=default,
                     help="machine-readable results (and errors) as JSON on stdout")
    out.add_argument("--debug", action="store_true", default=default, help="tracebacks with errors")
    parser.add_argument("-j", "--jobs", type=_positive, metavar="N", default=default,
                        help="files uploaded at once (default 4)")


def _version_text() -> str:
    """``gsitransfer X`` then the versions of what it runs on (as ``twistd accessgrid-transfer --version``)."""
    import platform

    import twisted

    import gsitransfer

    return f"{PROG} {gsitransfer.__version__}\nTwisted {twisted.__version__}\nPython {platform.python_version()}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every command has --help)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, suppress=False)
    parser.add_argument("--version", action="version", version=_version_text(),
                        help="print gsitransfer's version (and Twisted's, Python's) and exit")
    parser.set_defaults(**_DEFAULTS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, description: str, usage: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=description, epilog=_EPILOG, usage=usage,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common(sub, suppress=True)
        return sub

    upload = command("upload", "upload files", (
        "Compute each file's MD5, post the manifest, send the files (-j at once), re-send a file\n"
        "whose checksum failed, and print where each file can be downloaded. A file the server\n"
        "already has (same name, size and MD5) is not sent again; a file it holds part of (an\n"
        "interrupted upload: run the same command again) is continued from there, and so is a\n"
        "file cut off by the network during this run."))
    upload.add_argument("url", metavar="URL", help=(
        "the prefix, e.g. https://host:8443/data; or the prefix and a new name for one FILE, "
        "e.g. https://host:8443/data/new-name.csv"))
    upload.add_argument("files", metavar="FILE", nargs="+", help="files to upload (they keep their names)")
    upload.add_argument("--as", dest="as_name", metavar="NAME", help="store the one FILE under NAME")
    upload.add_argument("--retries", type=_count, default=5, metavar="N",
                        help="tries after a file is cut off or answered 5xx, each resuming from what the "
                             "server holds, after 1, 2, 4, 8, 16 s (default 5)")
    upload.add_argument("--no-resume", dest="resume", action="store_false",
                        help="never continue a file (no HEAD, no PATCH): send each file whole, again if cut off")
    upload.add_argument("--atomic", action="store_true",
                        help="all FILEs appear together or none does (an atomic batch: commit = atomic)")
    upload.add_argument("--transfer-key", metavar="KEY",
                        help="send FILEs as the pending files of this existing transfer (no new manifest)")
    upload.set_defaults(run=_upload)

    download = command("download", "download files", (
        "Stream a file to .<name>.gsitransfer-download beside DEST, resume an interrupted download\n"
        "with Range, verify the MD5 (Repr-Digest or --md5), then move it into place. Several URLs\n"
        "are downloaded one after the other into the directory DEST (default: the current one)."),
        usage="%(prog)s [options] URL [DEST]\n       %(prog)s [options] URL URL... [DEST/]")
    download.add_argument("targets", metavar="URL", nargs="+", help=(
        "file URLs, e.g. https://host:8443/data/results.csv, then the destination file or directory "
        "(default: the current directory; a directory when there are several URLs)"))
    download.add_argument("--md5", type=_md5, help="expected MD5 (hex), checked instead of the server's (one URL)")
    download.add_argument("--size", type=_count, help="expected size in bytes (one URL)")
    download.add_argument("--no-resume", dest="resume", action="store_false",
                          help="start again even if a partial download is there")
    download.add_argument("--retries", type=_count, default=2, metavar="N",
                          help="automatic resumes after the connection broke (default 2)")
    download.set_defaults(run=_download)

    listing = command("ls", "list the files of a prefix", "List names, sizes, owners and times.")
    listing.add_argument("url", metavar="URL", help="prefix URL, e.g. https://host:8443/data")
    listing.set_defaults(run=_list)

    status = command("status", "show a transfer's state", "Show the state of each file of a transfer.")
    status.add_argument("url", metavar="URL/KEY", help="e.g. https://host:8443/data/<transfer_key>")
    status.set_defaults(run=_status)

    cancel = command("cancel", "cancel a transfer", "Cancel a transfer: its pending files are given up.")
    cancel.add_argument("url", metavar="URL/KEY", help="e.g. https://host:8443/data/<transfer_key>")
    cancel.set_defaults(run=_cancel)
    return parser


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


class Console:
    """Where results, progress and errors go for one run: every line escaped (server text is untrusted)."""

    def __init__(self, options: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.credential_hint = ""

    def progress(self) -> ProgressListener:
        """Bars on a terminal; notices and retries as lines elsewhere; nothing with -q or --json."""
        if self.options.quiet or self.options.json:
            return NullProgress()
        if not _isatty(self.err):
            return LineProgress(self.err, f"{PROG}: ")
        return TerminalProgress(self.err)

    def result(self, lines: list[str], data: Mapping[str, object]) -> None:
        if self.options.json:
            self.json(data)
        elif not self.options.quiet:
            self.out.write("".join(printable(line) + "\n" for line in lines))
        self.out.flush()

    def json(self, data: Mapping[str, object]) -> None:
        """One JSON document on stdout (control characters escaped by JSON, DEL too)."""
        self.out.write(json_text(data) + "\n")

    def note(self, line: str) -> None:
        if self.options.verbose:
            self.err.write(f"{PROG}: {printable(line)}\n")

    def error(self, line: str) -> None:
        self.err.write(f"{PROG}: {printable(line)}\n")
        self.err.flush()

    def print_traceback(self) -> None:
        """The exception being handled, as ``--debug`` shows it (escaped like everything else)."""
        self.err.write(printable_lines(traceback.format_exc()))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _http_client(console: Console, url: str) -> HTTPClient:
    """The treq client for ``url``: credential and trust for https:// (told with --verbose)."""
    options = console.options
    policy: GSIClientPolicy | None = None
    if url.startswith("https:"):
        policy = api.globus_policy(
            cert=options.cert, key=options.key, proxy=options.proxy,
            ca_dir=options.ca_dir, ca_file=options.ca_file,
            passphrase=terminal_prompt(), handshake_timeout=options.handshake_timeout,
        )
        assert policy.credential is not None
        console.credential_hint = f"our credential: {policy.credential.credential.cert_file}"
        console.note(policy.credential.describe())
        console.note(f"{policy.trust.describe()}: {policy.material.summary()}")
    else:
        console.note("plain HTTP: no credential is sent, the server is not authenticated")
    return sync.call(lambda: make_http_client(tls=policy, pool_size=options.jobs))


_Result = TypeVar("_Result")


def _with_progress(console: Console, work: Callable[[ProgressListener], _Result]) -> _Result:
    """``work(progress)`` with the run's progress listener, closed afterwards (a terminal bar's last line)."""
    progress = console.progress()
    try:
        return work(progress)
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()


def _upload(console: Console) -> int:
    options = console.options
    http = _http_client(console, options.url)
    report = _with_progress(console, lambda progress: sync.call(
        api.upload_files, options.url, options.files, http=http, progress=progress,
        jobs=options.jobs, retries=options.retries, transfer_key=options.transfer_key, name=options.as_name,
        resume=options.resume, atomic=options.atomic,
    ))
    console.result(output.upload_lines(report), output.upload_json(report))
    return EXIT_OK


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _download_plan(options: argparse.Namespace) -> tuple[list[str], str | None]:
    """(the URLs, DEST or None) of ``download URL [URL...] [DEST]``; UsageError when they cannot work."""
    targets: list[str] = list(options.targets)
    if len(targets) > 1 and not _is_url(targets[-1]):
        urls, dest = targets[:-1], targets[-1]
    else:
        urls, dest = targets, None
    if len(urls) > 1:
        if options.md5 is not None or options.size is not None:
            raise UsageError("--md5 and --size are for one URL: download the files one at a time to check them")
        if dest is not None and not Path(dest).is_dir():
            raise UsageError(f"DEST must be a directory when downloading several files: {dest} is not one")
    return urls, dest


def _download(console: Console) -> int:
    options = console.options
    urls, dest = _download_plan(options)
    clients: dict[bool, HTTPClient] = {}

    def one(url: str) -> DownloadReport:
        tls = url.startswith("https:")
        if tls not in clients:
            clients[tls] = _http_client(console, url)
        try:
            return _with_progress(console, lambda progress: sync.call(
                api.download_file, url, dest, options.size, options.md5, http=clients[tls],
                progress=progress, resume=options.resume, retries=options.retries,
            ))
        except NotTLS as error:
            raise error.for_url(url) from None

    if len(urls) == 1:
        report = one(urls[0])
        console.result(output.download_lines(report), output.download_json(report))
        return EXIT_OK
    reports: list[DownloadReport] = []
    failures: list[tuple[str, ClientError]] = []
    for url in urls:
        try:
            reports.append(one(url))
        except ClientError as error:
            failures.append((url, error))
            console.error(f"{url}: {error.message}")
    lines = [line for report in reports for line in output.download_lines(report)]
    data: dict[str, object] = {"downloads": [output.download_json(report) for report in reports],
                               "errors": [{"url": url, "error": error.message, "exit_code": error.exit_code}
                                          for url, error in failures]}
    console.result(lines, data)
    if failures:
        console.error(f"{len(failures)} of {len(urls)} downloads failed")
        return failures[0][1].exit_code
    return EXIT_OK


def _list(console: Console) -> int:
    http = _http_client(console, console.options.url)
    listing = sync.call(api.list_files, console.options.url, http=http)
    console.result(output.listing_lines(listing), output.listing_json(listing))
    return EXIT_OK


def _status(console: Console) -> int:
    http = _http_client(console, console.options.url)
    status = sync.call(api.transfer_status, console.options.url, http=http)
    console.result(output.status_lines(status, time.time()), dict(status.raw))
    return EXIT_OK


def _cancel(console: Console) -> int:
    http = _http_client(console, console.options.url)
    line = sync.call(api.cancel_transfer, console.options.url, http=http)
    console.result([line], {"url": console.options.url, "cancelled": True, "answer": line})
    return EXIT_OK


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def report_error(console: Console, error: ClientError) -> None:
    """One line per problem on stderr (and a JSON document on stdout with --json)."""
    lines: list[str]
    if isinstance(error, UploadRefused):
        lines = list(error.reasons) + list(error.hints)
    elif isinstance(error, UploadIncomplete):
        lines = [f"{f.name}: {f.error}" for f in error.report.files if f.error is not None] + [error.message]
    elif isinstance(error, TLSRefused) and error.side == "server" and console.credential_hint:
        lines = [f"{error.message} ({console.credential_hint})"]
    else:
        lines = [error.message]
    for line in lines:
        console.error(line)
    if console.options.json:
        data: dict[str, object] = {"error": lines[0] if len(lines) == 1 else lines, "exit_code": error.exit_code}
        if isinstance(error, UploadIncomplete):
            data.update(output.upload_json(error.report))
        console.json(data)
        console.out.flush()


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command line; the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if exit_.code in (0, None) else EXIT_USAGE
    console = Console(options, out, err)
    try:
        return int(options.run(console))
    except ClientError as error:
        if options.debug:
            console.print_traceback()
        if isinstance(error, NotTLS) and isinstance(getattr(options, "url", None), str):
            error = error.for_url(options.url)
        report_error(console, error)
        return error.exit_code
    except KeyboardInterrupt:
        kept = {
            "download": " (the partial file is kept: run the same command again to resume)",
            "upload": " (the server keeps what it received: run the same command again to continue)",
        }.get(options.command, "")
        console.error(f"interrupted{kept}")
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug: say so in one line, trace with --debug
        if options.debug:
            console.print_traceback()
        console.error(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)")
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
