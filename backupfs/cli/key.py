"""`backupfs key list|add|remove|passwd`: manage the passwords that open a repository."""

from __future__ import annotations

import argparse
import os
import sys

from backupfs.cli._common import (
    backend_options,
    format_time,
    get_password,
    iso_time,
    new_password,
    open_backend,
    open_repository,
    repo_url,
)
from backupfs.cli._output import err, print_json
from backupfs.cli._qrhtml import key_html
from backupfs.cli._quote import escape
from backupfs.errors import BackupfsError, RepositoryNotFound, UnderRetention, UsageError
from backupfs.format.keyexport import MAX_EXPORT, parse
from backupfs.repository.repo import Repository

EXPORT_DESCRIPTION = """\
Writes the repository's master key as the key file in use holds it: wrapped by the password you
are using now (keep that password: the export needs it). With it, `key import` makes a new key
file if every file in keys/ is lost or damaged. Forms: plain text (default), --paper (hex lines
with a checksum each, borg's layout, to print and type back) or --qr-html (a page to print, with a
QR code of the plain form). Anyone with the export and its password can read every backup.
"""
IMPORT_DESCRIPTION = """\
Reads a key export (plain or paper; a scanned QR code is the plain form) and writes a new key
file for a new password. The export's own password (the one in use when it was made) comes from
BACKUPFS_PASSWORD, --password-file, --password-command or a prompt; the new one from
--new-password-file, BACKUPFS_NEW_PASSWORD or a prompt. The export must belong to this repository
(its id and config are checked). Typos in a paper key are reported by line.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("key", help="manage passwords (key files)")
    ks = p.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    ks.add_parser("list", help="list key files")
    a = ks.add_parser("add", help="add a password")
    a.add_argument("--new-password-file", help="file holding the new password")
    r = ks.add_parser("remove", help="remove a key file")
    r.add_argument("id", help="key id or unique prefix")
    c = ks.add_parser("passwd", help="change the password in use")
    c.add_argument("--new-password-file", help="file holding the new password")
    e = ks.add_parser(
        "export",
        help="write the master key, wrapped by the password in use, for safe keeping",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    form = e.add_mutually_exclusive_group()
    form.add_argument(
        "--paper", action="store_true", help="hex lines with a checksum each, to print and type back (as borg)"
    )
    form.add_argument("--qr-html", action="store_true", help="an HTML page with a QR code and the paper lines")
    e.add_argument("file", nargs="?", metavar="FILE", help="write to FILE, mode 0600 (default: standard output)")
    i = ks.add_parser(
        "import",
        help="write a new key file from a key export (when keys/ is lost or damaged)",
        description=IMPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("file", metavar="FILE", help="the export, plain or paper ('-' for standard input)")
    i.add_argument("--paper", action="store_true", help="accepted as in borg; the form is recognised by itself")
    i.add_argument("--new-password-file", help="file holding the password for the new key file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.key_command == "import":
        return _import(args)
    if args.key_command == "export":
        return _export(args)
    exclusive = args.key_command in ("remove", "passwd")  # both delete a key file
    deletes = f"key {args.key_command}" if exclusive else None
    with open_repository(args, lock="exclusive" if exclusive else "shared", load_index=False, deletes=deletes) as repo:
        if args.key_command == "list":
            keys = repo.list_keys()
            if args.json:
                print_json(
                    [
                        {
                            "id": k.name,
                            "current": k.current,
                            "username": k.user,
                            "hostname": k.host,
                            "created": iso_time(k.created_ns),
                        }
                        for k in keys
                    ]
                )
            else:
                print(" ID        User        Host                 Created")
                for k in keys:
                    mark = "*" if k.current else " "
                    print(f"{mark}{k.name[:8]}  {escape(k.user):<10}  {escape(k.host):<20} {format_time(k.created_ns)}")
        elif args.key_command == "add":
            name = repo.add_key(new_password(args))
            _done(args, {"message_type": "key_added", "key_id": name}, f"saved new key {name[:8]}")
        elif args.key_command == "remove":
            try:
                repo.remove_key(args.id)
            except UnderRetention as exc:
                raise BackupfsError(f"key {args.id} not removed: {_kept(exc)}") from exc
            _done(args, {"message_type": "key_removed", "key_id": args.id}, f"removed key {args.id}")
        else:
            old = repo.key_name
            try:
                name = repo.change_password(new_password(args))
            except UnderRetention as exc:
                raise BackupfsError(
                    f"saved new key {repo.key_name[:8]}, but the old key {old[:8]} stays: {_kept(exc)}; "
                    "until then the old password opens the repository too"
                ) from exc
            _done(
                args, {"message_type": "key_changed", "key_id": name}, f"saved new key {name[:8]}, removed the old one"
            )
    return 0


def _done(args: argparse.Namespace, doc: dict[str, object], line: str) -> None:
    if args.json:
        print_json(doc)
    elif not args.quiet:
        err(line)


def _export(args: argparse.Namespace) -> int:
    if args.json and not args.file:
        raise UsageError("--json needs FILE: standard output carries the key")
    with open_repository(args, lock=None, load_index=False) as repo:
        export = repo.export_key()
    repo_id = export.repo_id.hex()
    if args.qr_html:
        text, form = key_html(export.plain(), export.paper(), repo_id), "qr-html"
    elif args.paper:
        text, form = export.paper(), "paper"
    else:
        text, form = export.plain(), "plain"
    if args.file:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if args.json:
        print_json({"message_type": "key_export", "repository_id": repo_id, "format": form, "file": args.file})
    elif args.file and not args.quiet:
        err(f"key of repository {repo_id[:10]} written to {args.file} ({form}); keep it with its password")
    return 0


def _import(args: argparse.Namespace) -> int:
    if args.file == "-":
        text = sys.stdin.read(MAX_EXPORT + 1)
    else:
        with open(args.file, encoding="utf-8", errors="replace") as f:
            text = f.read(MAX_EXPORT + 1)
    export = parse(text)  # every typo is reported before any password is asked for
    backend = open_backend(repo_url(args), backend_options(args))
    if not backend.exists():
        raise RepositoryNotFound(f"no repository at {backend.location} (a key export cannot recreate its config)")
    try:
        name = Repository.import_key(
            backend, export, get_password(args, prompt="password of the exported key: "), new_password(args)
        )
    finally:
        backend.close()
    if args.json:
        print_json({"message_type": "key_import", "repository_id": export.repo_id.hex(), "key_id": name})
    elif not args.quiet:
        err(f"saved new key {name[:8]}")
    return 0


def _kept(exc: UnderRetention) -> str:
    when = f" until {format_time(int(exc.until * 1e9))}" if exc.until else ""
    return f"it is under Object Lock retention{when} (run the command again after that)"
