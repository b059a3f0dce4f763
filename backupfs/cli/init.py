"""`backupfs init`: create a repository."""

from __future__ import annotations

import argparse

from backupfs.chunker import DEFAULT_PARAMS
from backupfs.cli._common import backend_options, get_password, open_backend, repo_url
from backupfs.cli._output import err, print_json
from backupfs.cli.copy import add_from_repo_args, open_from_repository
from backupfs.crypto import SUITES, MasterKey
from backupfs.errors import UsageError
from backupfs.format.config import LOCK_MODES, MAX_LOCK_DAYS, ObjectLockConfig
from backupfs.ops.copy import chunking_like
from backupfs.repository.repo import Repository


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="create a new repository")
    p.add_argument("--pack-size", type=int, default=16, metavar="MiB", help="target pack size (default 16)")
    p.add_argument("--compression", default="lz4", help="lz4 (default), zstd[:LEVEL] or none")
    p.add_argument("--aead", choices=SUITES, help="encryption (default aegis256 where available)")
    p.add_argument(
        "--copy-chunker-params",
        action="store_true",
        help="chunk exactly like --from-repo, so data copied or backed up into both deduplicates alike",
    )
    p.add_argument(
        "--object-lock",
        type=_days,
        metavar="DAYS",
        help="keep everything a snapshot needs undeletable for DAYS after it, with S3 Object Lock "
        "(s3: repositories; a new bucket is created with Object Lock)",
    )
    p.add_argument(
        "--object-lock-mode",
        choices=LOCK_MODES,
        default="compliance",
        help="compliance (default: no one can delete or shorten it) or governance (users with "
        "s3:BypassGovernanceRetention can)",
    )
    add_from_repo_args(p)
    p.set_defaults(func=run)


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_LOCK_DAYS:
        raise argparse.ArgumentTypeError(f"expected a number of days from 1 to {MAX_LOCK_DAYS}, got {text!r}")
    return days


def run(args: argparse.Namespace) -> int:
    backend = open_backend(repo_url(args), backend_options(args))
    master: MasterKey | None = None
    chunker = DEFAULT_PARAMS
    if args.from_repo and not args.copy_chunker_params:
        raise UsageError("--from-repo is only used with --copy-chunker-params")
    if args.copy_chunker_params:
        with open_from_repository(args, lock=False, load_index=False) as src:
            master, chunker = chunking_like(src)
    lock = ObjectLockConfig(args.object_lock_mode, args.object_lock) if args.object_lock else None
    password = get_password(args, confirm=True, prompt="enter password for new repository: ")
    repo = Repository.init(
        backend,
        password,
        suite=args.aead,
        pack_size=args.pack_size * 1024 * 1024,
        compression=args.compression,
        master=master,
        chunker=chunker,
        object_lock=lock,
    )
    repo_id = repo.header.repo_id.hex()
    if args.json:
        print_json(
            {
                "message_type": "initialized",
                "repository_id": repo_id,
                "repository": backend.location,
                **({"object_lock": lock.encode()} if lock else {}),
            }
        )
    else:
        err(f"created backupfs repository {repo_id[:10]} at {backend.location}")
        if lock is not None:
            err(
                f"Object Lock ({lock.mode}): what a snapshot needs stays undeletable for {lock.days} days after it; "
                "forget and prune delete only what has passed its retention"
            )
        err("Please note that knowledge of your password is required to access the repository.")
    repo.close()
    return 0
