"""Where a change keeps the files it replaced, so it can put them back.

A backup set is one operation's backup directory on each host it touches:
``<root>/<operation id>/`` holds a copy of each replaced file and ``manifest.json``
describing every entry (its path, mode, owner, or that it did not exist). The manifest
lives on the host, so a later run can restore without anything kept locally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict

DEFAULT_BACKUP_ROOT = PurePosixPath("/var/lib/kubeha/backups")
_OPERATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BackupSet:
    operation_id: str
    root: PurePosixPath = DEFAULT_BACKUP_ROOT

    def __post_init__(self) -> None:
        if not _OPERATION_ID.match(self.operation_id):
            raise ValueError(f"operation id {self.operation_id!r} is not a plain file name")

    @property
    def directory(self) -> PurePosixPath:
        return PurePosixPath(self.root) / self.operation_id

    @property
    def manifest_path(self) -> PurePosixPath:
        return self.directory / "manifest.json"


class BackupEntry(BaseModel):
    """One file as it was before the operation first changed it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    existed: bool
    saved_as: str | None = None  # name of the copy inside the backup directory
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None


class BackupManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    operation_id: str
    host: str
    entries: tuple[BackupEntry, ...] = ()

    def entry(self, path: str) -> BackupEntry | None:
        return next((e for e in self.entries if e.path == path), None)

    def with_entries(self, *entries: BackupEntry) -> BackupManifest:
        return self.model_copy(update={"entries": (*self.entries, *entries)})

    def saved_name(self, path: str, later: int = 0) -> str:
        """A unique, readable name for the copy of ``path`` (``later``: how many copies are
        named before it that are not entries yet)."""
        return f"{len(self.entries) + later + 1:04d}-{PurePosixPath(path).name}"
