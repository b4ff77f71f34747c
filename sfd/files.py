"""Atomic file writes: every file the project writes appears whole under its name, or not at all.

A writer writes to a hidden temporary file in the target's folder and renames it onto the target when it is done
(a rename within one filesystem is atomic), so a crash, a kill or a full disk never leaves half a checkpoint, shard,
image or report behind under the real name, and readers that look for finished files (resume, the npz packer)
never see one. Temporary names are ``.{target name}.{host}.{pid}.{8 hex digits}.tmp``: they start with a dot and end
in ``.tmp``, so globs such as ``*.pt`` or ``*.png`` skip them, and they name their writer, so that
:func:`remove_stale_temporaries` can tell the leftovers of a killed run from files still being written.

A full disk or a refused write (permissions, read-only filesystem) raises :class:`WriteError`, whose message is one
line naming the target; the temporary file is removed and an existing target is left as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

# errno values that mean "this file cannot be written here", as opposed to a bug in the writer.
WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS})

# Writers implemented in Rust (safetensors) report the OS error only inside their message.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")

# torch.save reports a full disk as an opaque RuntimeError ("unexpected pos …"); below this much free space a
# failed write is taken to be an out-of-space failure (a partial write fills the disk before it fails).
_NEARLY_FULL_BYTES = 16 * 2**20

_TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.tmp")


class WriteError(OSError):
    """A file that could not be written (disk full, quota, permissions, read-only filesystem). Constructed like
    ``OSError(errno, strerror, target)``; ``str()`` is one line: ``"<target>: cannot write: <strerror>"``."""

    def __str__(self) -> str:
        return f"{self.filename}: cannot write: {self.strerror}"


def _host_tag() -> str:
    """This machine's name as it appears in temporary names (letters, digits and dashes only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def temporary_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _failure_errno(error: BaseException, tmp: Path, path: Path) -> Optional[int]:
    """The errno of ``error`` when it means the target cannot be written, else None (the error is re-raised)."""
    if isinstance(error, OSError):
        # An OSError about some other file (a source the writer reads) is not a failure to write the target.
        name = error.filename
        own = name is None or (isinstance(name, (str, os.PathLike)) and Path(name) in (tmp, path, path.parent))
        return error.errno if own and error.errno in WRITE_FAILURES else None
    if not isinstance(error, Exception):
        return None  # KeyboardInterrupt, SystemExit: not a write failure
    match = _RUST_OS_ERROR.search(str(error))
    if match and int(match.group(1)) in WRITE_FAILURES:
        return int(match.group(1))
    if isinstance(error, RuntimeError):
        with suppress(OSError):
            if shutil.disk_usage(path.parent).free < _NEARLY_FULL_BYTES:
                return errno.ENOSPC
    return None


def _write_error(path: Path, code: int) -> WriteError:
    return WriteError(code, os.strerror(code), str(path))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without an error,
    removed otherwise. Parent folders are created. Writers that pick a format from the file name (PIL, matplotlib,
    ``np.savez``) must be told the format or given an open file. A full disk or a refused write raises
    :class:`WriteError` naming ``path``; other errors of the writer pass through unchanged."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno not in WRITE_FAILURES:
            raise
        raise _write_error(path, error.errno) from error
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        code = _failure_errno(error, tmp, path)  # before the temporary file is removed: it may be what fills the disk
        if code is None:
            raise
        raise _write_error(path, code) from error
    finally:
        with suppress(OSError):  # a leftover is harmless (hidden, and removable by remove_stale_temporaries)
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any, indent: int = 1) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when it cannot be told)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _is_stale(entry: Path, match: re.Match, older_than_s: float, now: float) -> bool:
    """A temporary file is stale when nobody has written to it for ``older_than_s`` seconds, or when its writer ran
    on this machine (same host name) and has exited. A writer on another machine sharing the folder is judged by age
    alone, since its process ids mean nothing here."""
    try:
        if now - entry.stat().st_mtime >= older_than_s:
            return True
    except FileNotFoundError:  # renamed onto its target meanwhile
        return False
    pid = int(match["pid"])
    return match["host"] == _host_tag() and pid != os.getpid() and not process_alive(pid)


def remove_stale_temporaries(folder: str | Path, older_than_s: float = 3600.0) -> list[Path]:
    """Remove the temporary files that :func:`atomic_path` left in ``folder`` (not its subfolders) when a run was
    killed mid-write. Only regular files named exactly like its temporaries are considered, and only stale ones:
    idle for ``older_than_s`` seconds, or written by a process of this machine that has exited. ``older_than_s=0``
    removes every one, for callers that know no writer is alive (a run holding its folder's lock). Files that vanish
    or cannot be removed are skipped. Returns the removed paths, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for entry in sorted(folder.iterdir()):
        match = _TEMPORARY_NAME.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_file():
            continue
        if _is_stale(entry, match, older_than_s, now):
            with suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    """Hex SHA-256 of a file, read in chunks (weights and reference batches are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def local_file(path: Optional[str | Path], env: str, missing: Callable[[str], Exception]) -> Path:
    """A weights file the project never downloads: the explicit ``path``, else the one ``$env`` names; it must exist.
    ``missing(detail)`` builds the error raised otherwise (it should say where to get the file)."""
    if path is None and not os.environ.get(env):
        raise missing(f"no path given and ${env} is unset")
    chosen = Path(path if path is not None else os.environ[env]).expanduser()
    if not chosen.is_file():
        raise missing(f"{chosen} does not exist")
    return chosen
