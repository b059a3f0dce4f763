"""`backupfs init`: create a repository."""

from __future__ import annotations

import argparse

from backupfs.cli._common import err, get_password, open_backend, print_json, repo_url
from backupfs.crypto import SUITES
from backupfs.repository.repo import Repository


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="create a new repository")
    p.add_argument("--pack-size", type=int, default=16, metavar="MiB", help="target pack size (default 16)")
    p.add_argument("--compression", default="lz4", help="lz4 (default), zstd[:LEVEL] or none")
    p.add_argument("--aead", choices=SUITES, help="encryption (default aegis256 where available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    backend = open_backend(repo_url(args))
    password = get_password(args, confirm=True, prompt="enter password for new repository: ")
    repo = Repository.init(
        backend, password, suite=args.aead, pack_size=args.pack_size * 1024 * 1024, compression=args.compression
    )
    repo_id = repo.header.repo_id.hex()
    if args.json:
        print_json({"message_type": "initialized", "id": repo_id, "repository": backend.location})
    else:
        err(f"created backupfs repository {repo_id[:10]} at {backend.location}")
        err("Please note that knowledge of your password is required to access the repository.")
    repo.close()
    return 0
