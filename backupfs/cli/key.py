"""`backupfs key list|add|remove|passwd`: manage the passwords that open a repository."""

from __future__ import annotations

import argparse

from backupfs.cli._common import err, format_time, new_password, open_repository, print_json
from backupfs.cli._quote import escape
from backupfs.errors import BackupfsError, UnderRetention


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    exclusive = args.key_command in ("remove", "passwd")  # both delete a key file
    deletes = f"key {args.key_command}" if exclusive else None
    with open_repository(
        args, lock="exclusive" if exclusive else "shared", load_index=False, deletes=deletes
    ) as repo:
        if args.key_command == "list":
            keys = repo.list_keys()
            if args.json:
                print_json(
                    [
                        {
                            "id": k.name,
                            "current": k.current,
                            "userName": k.user,
                            "hostName": k.host,
                            "created": format_time(k.created_ns),
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
            err(f"saved new key {name[:8]}")
        elif args.key_command == "remove":
            try:
                repo.remove_key(args.id)
            except UnderRetention as exc:
                raise BackupfsError(f"key {args.id} not removed: {_kept(exc)}") from exc
            err(f"removed key {args.id}")
        else:
            old = repo.key_name
            try:
                name = repo.change_password(new_password(args))
            except UnderRetention as exc:
                raise BackupfsError(
                    f"saved new key {repo.key_name[:8]}, but the old key {old[:8]} stays: {_kept(exc)}; "
                    "until then the old password opens the repository too"
                ) from exc
            err(f"saved new key {name[:8]}, removed the old one")
    return 0


def _kept(exc: UnderRetention) -> str:
    when = f" until {format_time(int(exc.until * 1e9))}" if exc.until else ""
    return f"it is under Object Lock retention{when} (run the command again after that)"
