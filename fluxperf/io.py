"""Atomic file writes and one inter-process lock.

A write goes to a temp file in the target directory, is fsynced, then os.replace'd over the target: a reader sees
the old file or the new one, never half of one, and an interrupted write (SIGKILL, full disk) leaves the old file
intact. The new file keeps the mode of the file it replaces (a fresh one gets 0666 minus the umask, as `open`
would give it) — `tempfile.mkstemp` alone would make every rewritten baseline 0600.

Temp files are named `.<name>.<random>.tmp`; a SIGKILL between create and replace can leave one behind.
`stale_temp_files` finds them so writers holding the directory's lock can remove them; readers ignore them
(they never match `NNNN_*.json` or `*.csv`).

Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> atomic_write_json(p, {"a": 1}); open(p).read()
    '{\\n  "a": 1\\n}\\n'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"
LOCK_TIMEOUT_S = 600.0  # a baseline update holds the lock for well under a second; 10 min means a stuck writer


def _target_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _target_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Standard JSON (no NaN/Infinity tokens, which strict parsers refuse): a non-finite float is written as the
    string "inf", "-inf" or "nan" (e.g. the PSNR of identical images), so a record is never lost to a ValueError;
    readers that need a number (baselines, thresholds) then refuse the string by name."""
    return atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False, default=str,
                                              allow_nan=False) + "\n")


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # 'inf', '-inf', 'nan'
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_save(path: str | os.PathLike, save) -> Path:
    """Atomic write through a writer callback `save(tmp_path)` (e.g. PIL Image.save, DataFrame.to_csv).

    The temp file keeps the target's suffix (writers such as PIL pick the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _target_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_SUFFIX}{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Temp files left in `directory` (recursively) by writers killed between create and replace."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob(".*") if p.is_file() and (p.name.endswith(TEMP_SUFFIX)
                                                                  or f"{TEMP_SUFFIX}." in p.name))


@contextlib.contextmanager
def locked(path: str | os.PathLike, *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive inter-process lock on `<path>.lock` (filelock; released on exit, also on SIGKILL).

    Raises:
        TimeoutError: another process held the lock for `timeout` seconds (names the lock file).
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    try:
        with FileLock(lock_path, timeout=timeout):
            yield
    except Timeout:
        raise TimeoutError(f"{lock_path} is held by another process for over {timeout:.0f} s. Fix: wait for the "
                           "other update to finish, or delete the lock file if no fluxperf process is running.") from None
