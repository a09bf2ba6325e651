"""``gsitransfer-admin``: the administrator's command (SPEC §10).

::

    gsitransfer-admin explain [--ca-dir DIR] [--ca-file F] [--crl-policy P] [--signing-policy P]
                              [--gridmap FILE] [--at TIME] [--json] CREDENTIAL_PEM
    gsitransfer-admin transfers --state FILE [--prefix P] [--json]
    gsitransfer-admin transfers --state FILE --cancel KEY_HASH

``explain`` runs a certificate or proxy chain through the server's own trust
judgement (:mod:`gsitransfer.explain`) and prints the decision and why: exit
0 when the server would accept it, 1 when it would refuse it, 2 when the
question cannot be asked (an unreadable file, no CAs). ``transfers`` lists
the live transfers of a state database (keys as their short hashes, as the
audit log shows them) and ``--cancel`` ends one: its key expires now, so
every process refuses it at once and the server's expiry sweep (every
``--reload-interval``) cancels its pending files with the handler's
``CancelPendingUpload``, exactly as for a key that expired by itself. Every
error is one line on stderr.
"""

from __future__ import annotations

from typing import Any

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence

from .events import key_hash
from .explain import ExplainError, explain, read_chain
from .tls.context import CRL_POLICIES, TLSConfigError, TrustConfig

PROGRAM = "gsitransfer-admin"
DEFAULT_CA_DIR = "/etc/grid-security/certificates"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """A usage error: one line, exit 2."""
        sys.stderr.write(f"{self.prog}: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROGRAM, description="Administer a gsitransfer server: explain refusals, list transfers.")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("explain", help="would the server accept this certificate or proxy chain, and why")
    ask.add_argument("credential", metavar="CREDENTIAL_PEM", help="a PEM certificate or proxy chain (keys are ignored)")
    ask.add_argument("--ca-dir", help=f"trusted CAs, Globus layout (default: $X509_CERT_DIR or {DEFAULT_CA_DIR})")
    ask.add_argument("--ca-file", help="trusted CAs, a PEM bundle")
    ask.add_argument("--crl-policy", default="if-present", choices=CRL_POLICIES)
    ask.add_argument("--signing-policy", default="if-present", choices=("if-present", "require", "ignore"))
    ask.add_argument("--gridmap", help="the server's grid-mapfile: the account, or a refusal")
    ask.add_argument("--at", help="judge at this time (ISO 8601, UTC unless it says otherwise) instead of now")
    ask.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    listing = commands.add_parser("transfers", help="list the live transfers of a state database, or cancel one")
    listing.add_argument("--state", required=True, help="the server's transfer database (--state)")
    listing.add_argument("--prefix", help="only this prefix's transfers")
    listing.add_argument("--cancel", metavar="KEY_HASH", help="end this transfer now (its key hash, as listed)")
    listing.add_argument("--json", action="store_true", help="one JSON object per transfer")
    return parser


def _moment(text: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ExplainError(f"--at {text}: not an ISO 8601 time (e.g. 2026-12-05T12:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def run_explain(args: argparse.Namespace) -> int:
    """``explain``: 0 accepted, 1 refused."""
    ca_dir = args.ca_dir
    if ca_dir is None and args.ca_file is None:
        ca_dir = os.environ.get("X509_CERT_DIR") or DEFAULT_CA_DIR
    try:
        with open(args.credential, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise ExplainError(f"{args.credential}: {error.strerror}") from None
    try:
        trust = TrustConfig(ca_dir=ca_dir, ca_file=args.ca_file, crl_policy=args.crl_policy,
                            signing_policy=args.signing_policy)
    except TLSConfigError as error:
        raise ExplainError(str(error)) from None
    at = _moment(args.at) if args.at else None
    result = explain(read_chain(data, args.credential), trust, args.gridmap, at)
    if args.json:
        facts = dict(result.facts)
        print(json.dumps({"accepted": result.accepted, "reason": result.reason or None, **facts}))
    else:
        sys.stdout.write(result.render())
    return 0 if result.accepted else 1


def _open_table(state: str) -> Any:
    """The server's transfer table: its SQLite file, or its PostgreSQL (``postgresql://…``)."""
    from .postgres.connection import is_postgres_url

    if is_postgres_url(state):
        from .postgres import PostgresState, PostgresTransferTable, StateConfigError

        try:
            return PostgresTransferTable(PostgresState(state, heartbeat=False))
        except StateConfigError as error:
            raise ExplainError(str(error)) from None
    from .transfers_db import SQLiteTransferTable, TransferDBError

    if not os.path.exists(state):
        raise ExplainError(f"--state {state}: no such file")
    try:
        return SQLiteTransferTable(state, reset_receiving=False)
    except TransferDBError as error:
        raise ExplainError(str(error)) from None


def run_transfers(args: argparse.Namespace) -> int:
    """``transfers``: list, or ``--cancel`` one."""
    from .keys import FileState

    table = _open_table(args.state)
    now = time.time()
    live = [record for record in table.records() if not record.expired(now)
            and (args.prefix is None or record.prefix == args.prefix)]
    if args.cancel:
        matches = [record for record in live if key_hash(record.key) == args.cancel]
        if not matches:
            raise ExplainError(f"no live transfer with key hash {args.cancel}")
        table.expire_now(matches[0].key, now)
        print(f"transfer {args.cancel} ends now: the server cancels its pending files at its next expiry sweep")
        return 0
    for record in sorted(live, key=lambda r: r.created):
        states = table.states(record.key)
        progress = table.progress(record.key)
        files = [
            {"num": entry.num, "name": entry.name, "size": entry.size,
             "state": states.get(entry.num, FileState.PENDING).value, "offset": progress.get(entry.num, (0, ""))[0]}
            for entry in record.manifest.files
        ]
        if args.json:
            print(json.dumps({"key": key_hash(record.key), "prefix": record.prefix, "owner": record.owner_dn,
                              "created": record.created, "expires": record.expires, "files": files}))
            continue
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.expires))
        print(f"{key_hash(record.key)}  /{record.prefix}/  {record.owner_dn or 'anonymous'}  expires {expires}")
        for item in files:
            print(f"    {item['num']:>4} {item['state']:<9} {item['offset']}/{item['size']} {item['name']}")
    if not live and not args.json:
        print("no live transfers")
    table.close()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``gsitransfer-admin``."""
    args = _parser().parse_args(argv)
    try:
        code = run_explain(args) if args.command == "explain" else run_transfers(args)
    except ExplainError as error:
        sys.stderr.write(f"{PROGRAM}: {error}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
