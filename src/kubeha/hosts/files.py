"""File operations as commands to run on a host: POSIX sh and coreutils, nothing else.

Why commands and not SFTP: they run under ``sudo`` like every other command (an SFTP
session runs as the login user and could not write root's files), and each operation is
one round trip (SFTP needs one per open, write, fsync, chmod, chown and rename).

Each script runs as ``sh -c SCRIPT sh ARG...``: paths travel as arguments and are never
spliced into the script text.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass

MISSING = 44  # exit status of a script that found nothing at its path

_STAT_FORMAT = "%a %u %g %s"
_IF_EXISTS = f'[ -e "$1" ] || exit {MISSING}; '

# Write $2 (a file, or /dev/stdin) to the target $1 atomically: a temp file in the same
# directory, fsync, mode $3 and owner $4 (default: those of the file it replaces, else
# 644 and the running user), rename over the target, fsync the directory; with $5, only
# when exactly that many bytes came (else the target is left as it was). mktemp makes
# the temp file 0600, so a key is never readable by others on its way in.
_INSTALL = """set -e
dir=$(dirname -- "$1")
mkdir -p -- "$dir"
tmp=$(mktemp -- "$dir/.kubeha-XXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
dd if="$2" of="$tmp" bs=65536 conv=fsync status=none
# stdin cut short (the sender killed mid-transfer) ends like a whole file: count the bytes
if [ -n "$5" ] && [ "$(stat -c %s -- "$tmp")" != "$5" ]; then
  echo "received $(stat -c %s -- "$tmp") of $5 bytes: the transfer was cut, $1 left as it was" >&2; exit 1
fi
mode=$3 owner=$4
if [ -e "$1" ]; then
  [ -n "$mode" ] || mode=$(stat -c %a -- "$1")
  [ -n "$owner" ] || owner=$(stat -c %u:%g -- "$1")
fi
chmod -- "${mode:-644}" "$tmp"
[ -z "$owner" ] || chown -- "$owner" "$tmp"
mv -f -- "$tmp" "$1"
trap - EXIT
sync -- "$dir"
"""

# Copy $1, if it exists, to $2 (in a directory only the running user can read) and print
# its mode, owner and size; print nothing if it does not exist.
# For each (path, copy) pair: its stat line once copied, or "-" when there is no such file.
_SAVE_COPIES = f"""set -e
umask 077
while [ $# -gt 1 ]; do
  mkdir -p -- "$(dirname -- "$2")"
  if [ -e "$1" ]; then stat -c '{_STAT_FORMAT}' -- "$1"; cat -- "$1" > "$2"; sync -- "$2"; else echo -; fi
  shift 2
done
"""


# For each path: "+" and its content in base64 on one line, or "-" when there is no such file
# (base64: any bytes, one line each, so one command reads many files and they cannot run together).
_READ_MANY = """set -e
for f; do
  if [ -e "$f" ]; then printf +; base64 -w0 -- "$f"; echo; else echo -; fi
done
"""


@dataclass(frozen=True)
class FileStat:
    mode: int  # permission bits, with setuid/setgid/sticky
    uid: int
    gid: int
    size: int


def parse_stat(line: str) -> FileStat:
    """Parse what ``stat -c '%a %u %g %s'`` prints."""
    mode, uid, gid, size = line.split()
    return FileStat(mode=int(mode, 8), uid=int(uid), gid=int(gid), size=int(size))


def _sh(script: str, *args: str) -> list[str]:
    return ["sh", "-c", script, "sh", *args]


def read_command(path: str) -> list[str]:
    return _sh(_IF_EXISTS + 'exec cat -- "$1"', path)


def read_many_command(paths: Iterable[str]) -> list[str]:
    """Read every path in one command; see ``parse_read_many``."""
    return _sh(_READ_MANY, *paths)


def parse_read_many(stdout: bytes, count: int) -> list[bytes | None]:
    """What ``read_many_command`` printed for ``count`` paths: each file's bytes, or None when
    there was no such file."""
    lines = stdout.splitlines()
    if len(lines) != count:
        raise ValueError(f"it printed {len(lines)} lines for {count} files")
    if any(line[:1] not in (b"+", b"-") for line in lines):
        raise ValueError("it printed a line that is neither a file's content nor '-'")
    return [base64.b64decode(line[1:], validate=True) if line[:1] == b"+" else None for line in lines]


def stat_command(path: str) -> list[str]:
    return _sh(_IF_EXISTS + f"exec stat -c '{_STAT_FORMAT}' -- \"$1\"", path)


def remove_command(*paths: str) -> list[str]:
    return ["rm", "-f", "--", *paths]


def save_copies_command(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Copy each path to its copy path (private), in one command; see ``parse_saved``."""
    return _sh(_SAVE_COPIES, *(part for pair in pairs for part in pair))


def parse_saved(stdout: str) -> list[FileStat | None]:
    """What ``save_copies_command`` printed: each path's stat, or None when it did not exist."""
    return [None if line.strip() == "-" else parse_stat(line) for line in stdout.splitlines() if line.strip()]


def install_command(target: str, source: str, mode: int | None, owner: str | None,
                    size: int | None = None) -> list[str]:
    """Put ``source``'s bytes at ``target`` atomically (a temporary file renamed over it);
    with ``size``, only when exactly that many bytes came (stdin from a sender that may die)."""
    return _sh(_INSTALL, target, source, "" if mode is None else format(mode, "o"), owner or "",
               "" if size is None else str(size))
