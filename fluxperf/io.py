"""Atomic file writes and one inter-process lock.

A write goes to a temp file in the target directory, is fsynced, then os.replace'd over the target: a reader sees
the old file or the new one, never half of one, and an interrupted write (SIGKILL, full disk) leaves the old file
intact. The new file keeps the mode of the file it replaces (a fresh one gets 0666 minus the umask, as `open`
would give it) — `tempfile.mkstemp` alone would make every rewritten baseline 0600.

Temp files are named `.fluxperf-<8 random>.tmp[<suffix>]` (TEMP_PREFIX, tempfile.mkstemp's random part,
TEMP_SUFFIX, then the target's last suffix where a writer needs it to pick the format): a fixed length whatever the
target's name, so every name the file system accepts (up to NAME_MAX, usually 255 bytes) can be written atomically;
a temp name that embedded the target's name could not be created for a target near the limit. A SIGKILL between
create and replace can leave one behind. `stale_temp_files` finds them (and those of the older
`.<name>.<random>.tmp` naming) so writers holding the directory's lock can remove them; readers ignore them (they
never match `NNNN_*.json` or `*.csv`).

`check_writable_file` proves, before any expensive work, that a file can later be written there atomically.

Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> atomic_write_json(p, {"a": 1}); open(p).read()
    '{\\n  "a": 1\\n}\\n'
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".fluxperf-"
TEMP_SUFFIX = ".tmp"
_RANDOM_CHARS = 8  # tempfile.mkstemp's random part
DEFAULT_NAME_MAX = 255  # bytes: ext4, xfs, btrfs, APFS, NTFS; used where os.pathconf cannot say
LOCK_TIMEOUT_S = 600.0  # a baseline update holds the lock for well under a second; 10 min means a stuck writer


def _target_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def name_max(directory: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of `directory` (an existing directory) accepts."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or the file system does not say
        return DEFAULT_NAME_MAX


def _temp_file(path: Path, *, keep_suffix: bool) -> tuple[int, str]:
    """(fd, name) of a new temp file next to `path`, of a fixed-length name (see the module docstring).

    The target's suffix is kept where asked, unless it alone would push the temp name past NAME_MAX: a suffix that
    long names no format a writer could pick anyway."""
    suffix = TEMP_SUFFIX + (path.suffix if keep_suffix else "")
    if len(os.fsencode(TEMP_PREFIX + suffix)) + _RANDOM_CHARS > name_max(path.parent):
        suffix = TEMP_SUFFIX
    return tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _target_mode(path)
    fd, tmp = _temp_file(path, keep_suffix=False)
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

    The temp file keeps the target's last suffix (writers such as PIL pick the format from it; torch's
    export_chrome_trace compresses for ".gz").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _target_mode(path)
    fd, tmp = _temp_file(path, keep_suffix=True)
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
    """Temp files left in `directory` (recursively) by writers killed between create and replace: dot files whose
    name ends in TEMP_SUFFIX or holds it before a kept suffix (`.fluxperf-<random>.tmp[.png]`, and the older
    `.<name>.<random>.tmp[.png]`)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob(".*") if p.is_file() and _is_temp_name(p.name))


def _is_temp_name(name: str) -> bool:
    if name.startswith(TEMP_PREFIX):
        stem = name[len(TEMP_PREFIX):]
        return stem[_RANDOM_CHARS:].startswith(TEMP_SUFFIX)
    return name.startswith(".") and (name.endswith(TEMP_SUFFIX) or f"{TEMP_SUFFIX}." in name)  # older naming


def _too_long(path: Path) -> str:
    """Which part of `path` the file system refused as too long, in words."""
    existing = next((q for q in path.parents if _is_dir(q)), Path("."))
    limit = name_max(existing)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            what = "the file name" if part == path.name else f"the directory name {part[:16] + '...'!r}"
            return f"{what} is {size} bytes, over the file system's limit of {limit}"
    return "the path is too long for the file system"


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. ENAMETOOLONG: not a directory that exists
        return False


def check_writable_file(path: str | os.PathLike, *, option: str, error: type[Exception] = ValueError) -> Path:
    """Prove, before any expensive work, that `path` can be written atomically later; return it user-expanded.

    Creates the parent directory (with parents); if the file does not exist yet, creates and removes it (so the
    file system accepts its name and the directory its entries); creates and removes a temp file of the atomic
    writers' naming there.

    Args:
        option: how the caller names the path in the message (e.g. "--output-file").
        error: the exception class to raise.
    Returns:
        the path, `~` expanded (the caller must write to THIS path, not the raw text).
    Raises:
        `error`: one line naming the option, the path, the rule and the fix: an existing directory, a name longer
            than the file system's NAME_MAX, a directory that cannot be created or written.
    """
    p = Path(path).expanduser()
    where = f"{option} {str(path)!r}"
    try:
        if p.is_dir():
            raise error(f"{where} is a directory; a file is written there. Fix: give a file name, e.g. "
                        f"{p / ('output' + (p.suffix or '.out'))}.")
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            with contextlib.suppress(FileExistsError):  # created meanwhile (or a dangling link): it is there
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                p.unlink()
        fd, tmp = _temp_file(p, keep_suffix=True)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise error(f"{where}: {_too_long(p)} (OSError: {exc.strerror}). Fix: choose a shorter name.") from None
        raise error(f"{where}: cannot write in {str(p.parent)!r} ({type(exc).__name__}: {exc.strerror or exc}). "
                    "Fix: choose a writable directory.") from None
    return p


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
