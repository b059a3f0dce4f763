"""`backupfs serve`: repository directories over HTTP for `rest:` clients (docs/server.md).

An ASGI app served by hypercorn on trio. The API follows restic's REST backend protocol; the
directory layout is exactly the local backend's (format.md 2), so a repository can be served,
backed up to, and pruned on the server side interchangeably.

Safety properties, each enforced here and not trusted to the client:

- Paths are validated on their raw bytes: no percent-escapes, no `.`/`..` or empty segments, only
  known file types and 64-hex file names. Nothing a client sends can name a file outside the
  repository layout.
- Every upload is streamed to a temporary file, fsynced, and must hash (unkeyed BLAKE3) to its
  name before it is renamed into place, so a truncated or altered upload never lands.
- `--append-only`: nothing but lock files can be deleted or replaced; `config` can only be
  written while absent. Re-uploading an existing file with identical content (a retried request)
  succeeds without touching it.
- `--htpasswd`: every request needs valid HTTP basic credentials; `--private-repos` confines a
  user to paths under `/<user>/`. Verified logins are remembered and answered ahead of the
  bcrypt queue; failed ones are rate-limited per client address (`ratelimit`), in bounded memory.
- What a client can make the server spend is bounded: uploads declared too large are refused
  before their body, listings are streamed, a client gone or silent frees its upload.
"""

