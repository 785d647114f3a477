"""Atomic file output: write to a temporary sibling, then rename over the target.

Files and folders get the permissions ``open()`` and ``mkdir`` would give them (0666 and 0777
less the umask), so a colleague can read an exported model or a report; ``private=True``
(0600 / 0700) is for secrets such as keys. The temporary sibling is created with those
permissions from the start, never loosened afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

_Made = TypeVar("_Made")


def _temporary_sibling(path: Path, make: Callable[[Path], _Made]) -> tuple[Path, _Made]:
    """Create ``.NAME.<random>.tmp`` next to ``path`` with ``make`` (which must fail if it
    exists) and return it with what ``make`` returned."""
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return candidate, make(candidate)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def atomic_write_bytes(path: str | Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix.

    Args:
        path: The file to write.
        data: Its new content.
        private: Owner-only (0600) whatever the umask, for secrets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    mode = 0o600 if private else 0o666  # the umask applies, as with open()
    tmp, fd = _temporary_sibling(path, lambda candidate: os.open(candidate, flags, mode))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, private: bool = False) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), private)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Pretty-printed JSON, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def temporary_directory(path: str | Path, private: bool = False) -> Path:
    """A new empty folder next to ``path``, to fill and then rename onto it.

    Args:
        path: The folder it will become.
        private: Owner-only (0700) whatever the umask, for secrets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o700 if private else 0o777  # the umask applies, as with mkdir
    tmp, _ = _temporary_sibling(path, lambda candidate: candidate.mkdir(mode=mode))
    return tmp


@contextmanager
def atomic_directory(path: str | Path, private: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds
    (``private`` as for ``temporary_directory``)."""
    path = Path(path)
    tmp = temporary_directory(path, private)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file written by fedit (blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Rewrite a whole JSON-lines file atomically (metrics files are small)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
