"""Atomic file writes: every file the project writes appears whole under its name, or not at all.

A writer writes to a hidden temporary file in the target's folder and renames it onto the target when it is done
(a rename within one filesystem is atomic), so a crash, a kill or a full disk never leaves half a checkpoint, shard,
image or report behind under the real name, and readers that look for finished files (resume, the npz packer)
never see one. Temporary names start with a dot and end in ``.tmp``, so globs such as ``*.pt`` or ``*.png`` skip them.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without an error,
    removed otherwise. Parent folders are created. Writers that pick a format from the file name (PIL, matplotlib,
    ``np.savez``) must be told the format or given an open file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any, indent: int = 1) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")
