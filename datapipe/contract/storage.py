"""A dataset root on any fsspec filesystem, with the atomic write every commit relies on.

A local path is the default; `memory://`, `s3://`, `gs://` ... work through fsspec. Files become
visible under their final name only when complete: on a local disk we write a temporary file in
the same folder, fsync it and `os.replace` it over the final name (atomic on POSIX); on object
stores a single PUT is already all-or-nothing, and we still write under a temporary name first so
a crashed writer never leaves a half object under a real name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import uuid
from typing import IO, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_MARKER = ".tmp-"  # temporary names contain this; readers and verify skip them


class Storage:
    def __init__(self, root: str | os.PathLike):
        self.uri = os.fspath(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.root = os.path.abspath(self.root)

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __reduce__(self):  # fsspec objects pickle, but re-resolving the URI is simpler for Ray
        return (Storage, (self.uri,))

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def open(self, rel: str, mode: str = "rb") -> IO:
        return self.fs.open(self.path(rel), mode)

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) directly under `rel`; empty if it does not exist."""
        full = self.path(rel)
        if not self.fs.exists(full):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(full, detail=False))

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(rel))

    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[IO[bytes]]:
        """Yield a binary file; on clean exit it replaces `rel` in one step, else it vanishes."""
        final = self.path(rel)
        folder, name = posixpath.split(final)
        self.fs.makedirs(folder, exist_ok=True)
        tmp = posixpath.join(folder, f"{TMP_MARKER}{uuid.uuid4().hex[:12]}-{name}")
        try:
            if self.is_local:
                with open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
                _fsync_dir(folder)
            else:
                with self.fs.open(tmp, "wb") as f:
                    yield f
                self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            raise

    def write_atomic(self, rel: str, data: bytes) -> None:
        with self.atomic_writer(rel) as f:
            f.write(data)

    @contextlib.contextmanager
    def lock(self, rel: str) -> Iterator[None]:
        """An exclusive lock for read-modify-write of a small file (the manifest).

        On a local disk this is an flock that also serialises separate processes. Object stores
        offer no such lock: there, one process per manifest must do the committing (the job
        driver does; workers only write shard files).
        """
        if not self.is_local:
            yield
            return
        lock_path = self.path(rel + ".lock")
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        with open(lock_path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def remove_stale_temporaries(self, rel_dir: str) -> list[str]:
        """Delete temporaries a killed writer left behind in `rel_dir`; returns their names."""
        stale = [n for n in self.listdir(rel_dir) if n.startswith(TMP_MARKER)]
        for name in stale:
            self.remove(posixpath.join(rel_dir, name))
        return stale


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
