"""Finding entries in snapshots (`backupfs find`): by name or glob, or by the id of a blob or tree.

Patterns mean what they mean for excludes (restic's `find`): a pattern without a leading `/` matches
any run of path components, so `docs` finds `/home/a/docs` and everything in it, and `*.pdf` every
PDF; one with a leading `/` is anchored at the root, which lets the walk skip every folder that
cannot lead to a match.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence

from backupfs.errors import UsageError
from backupfs.format.tree import DIR, FILE, Node
from backupfs.ops.excludes import pattern_regex
from backupfs.ops.walk import Kind, walk
from backupfs.repository.repo import Repository

_HEX = re.compile(r"[0-9a-f]+")
MIN_ID_PREFIX = 4  # shorter prefixes match too much to be meant


class PathMatcher:
    def __init__(self, patterns: Sequence[str], ignore_case: bool = False) -> None:
        if not patterns or not all(patterns):
            raise UsageError("find needs a non-empty PATTERN")
        flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        self._match = re.compile(f"(?:{'|'.join(pattern_regex(p) for p in patterns)})(?:/.*)?$", flags)
        # An absolute pattern can only match below folders that match its first components: per
        # pattern, a regex for each prefix length, up to a `**` (which may span any depth).
        self._prefixes: list[tuple[list[re.Pattern[str]], bool]] | None = []
        for p in patterns:
            parts = [c for c in p.split("/") if c]
            if not p.startswith("/") or parts[:1] == ["**"]:
                self._prefixes = None  # a relative pattern may match anywhere: walk everything
                break
            open_ended = "**" in parts  # below the `**`, any depth may match
            if open_ended:
                parts = parts[: parts.index("**")]
            prefixes = [
                re.compile(pattern_regex("/" + "/".join(parts[:k])) + "$", flags) for k in range(1, len(parts) + 1)
            ]
            self._prefixes.append((prefixes, open_ended))

    def matches(self, path: str) -> bool:
        return self._match.match(path) is not None

    def may_match_below(self, folder: str) -> bool:
        """Whether anything inside `folder` can match (restic's ChildMatch)."""
        if self._prefixes is None:
            return True
        depth = folder.count("/")
        for prefixes, open_ended in self._prefixes:
            if depth > len(prefixes):
                if open_ended or self.matches(folder):  # inside a match, everything matches
                    return True
            elif prefixes[depth - 1].match(folder):
                return True
        return False


def find_paths(
    repo: Repository, root: bytes, matcher: PathMatcher, oldest_ns: int | None = None, newest_ns: int | None = None
) -> Iterator[tuple[bytes, Node]]:
    """(path, node) of every match below the tree `root`, depth-first, each folder before its
    contents; `oldest_ns`/`newest_ns` bound the modification time of what is reported."""
    for step in walk(repo.load_tree, root):
        node = step.node
        assert node is not None
        path = step.path
        text = os.fsdecode(path)
        if (
            matcher.matches(text)
            and (oldest_ns is None or node.mtime_ns >= oldest_ns)
            and (newest_ns is None or node.mtime_ns <= newest_ns)
        ):
            yield path, node
        if step.enter and not matcher.may_match_below(text):
            step.enter = False


@dataclasses.dataclass(frozen=True, slots=True)
class IdHit:
    kind: str  # "blob" or "tree"
    id: bytes
    path: bytes  # the file holding the blob, or the folder the tree lists
    parent_tree: bytes | None  # the listing holding that file or folder (None for a root tree)


def parse_id_prefixes(texts: Sequence[str], kind: str) -> list[str]:
    out = []
    for t in texts:
        t = t.strip().lower()
        if not _HEX.fullmatch(t) or not MIN_ID_PREFIX <= len(t) <= 64:
            raise UsageError(f"invalid {kind} id {t!r}: give 4 to 64 hex digits")
        out.append(t)
    return out


def find_ids(repo: Repository, root: bytes, blobs: Sequence[str] = (), trees: Sequence[str] = ()) -> Iterator[IdHit]:
    """Where blobs (data chunks, by id prefix) and trees (folder listings) occur below `root`."""
    blob_prefixes, tree_prefixes = tuple(blobs), tuple(trees)
    if tree_prefixes and root.hex().startswith(tree_prefixes):
        yield IdHit("tree", root, b"/", None)
    listings = [root]  # the tree ids of the folders on the walk's path, by depth
    for step in walk(repo.load_tree, root, listings=True):
        node = step.node
        if step.kind is Kind.LISTING:
            del listings[step.depth :]
            listings.append(root if node is None or node.subtree is None else node.subtree)
            continue
        assert node is not None
        parent = listings[step.depth - 1]
        if node.type == FILE and blob_prefixes:
            for _offset, blob_id in node.content or ():
                if blob_id.hex().startswith(blob_prefixes):
                    yield IdHit("blob", blob_id, step.path, parent)
        subtree = node.subtree if node.type == DIR else None
        if tree_prefixes and subtree is not None and subtree.hex().startswith(tree_prefixes):
            yield IdHit("tree", subtree, step.path, parent)
