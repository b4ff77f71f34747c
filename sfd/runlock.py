"""One owner per run folder: a lock file naming the owning process (pid, host, start time).

Two trainers writing into one run folder (say a worker left alive after only torchrun's group was killed, and a
rerun) would interleave checkpoints and logs; two samplers writing one sample folder with different settings would mix
images. The main process of a run takes the folder's lock before writing anything and removes it when the run ends.
A lock whose owner is gone (same host, pid no longer running, or an unreadable lock left by a kill during its own
creation) is stale and taken over, saying so; a live owner, or one on another host (whose pid cannot be checked from
here), makes the new run refuse with one line naming the owner and the lock file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from sfd.files import process_alive, remove_stale_temporaries

LOCK_NAME = "lock.json"


class RunFolderBusy(ValueError):
    """The folder is owned by another live run; the message names it and the lock file."""


def _owner_text(owner: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')} since {since}"


class RunFolderLock:
    """``with RunFolderLock(folder) as lock:`` owns ``folder`` for the block (``lock.note``: what was taken over)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.note: Optional[str] = None
        self.held = False

    def acquire(self) -> Optional[str]:
        """Take the lock; returns a one-line note when a stale lock was taken over, raises :class:`RunFolderBusy`
        when a live run owns the folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.note = self._clear_stale(me["host"])
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self.note
        raise RunFolderBusy(f"{self.folder}: could not take the lock {self.path} (another run took it meanwhile)")

    def _clear_stale(self, host: str) -> str:
        try:
            owner = json.loads(self.path.read_text())
            pid, owner_host = int(owner["pid"]), str(owner["host"])
        except FileNotFoundError:
            return "a lock vanished while being checked"
        except (OSError, ValueError, KeyError, TypeError):
            # written by a run killed while creating it (the lock is created empty, then filled)
            self.path.unlink(missing_ok=True)
            return f"removed an unreadable stale lock {self.path}"
        if owner_host != host or process_alive(pid):
            raise RunFolderBusy(f"{self.folder} is in use by {_owner_text(owner)} (lock {self.path}); wait for that "
                                "run to end, or delete the lock file if it is dead")
        self.path.unlink(missing_ok=True)
        return f"took over the stale lock of {_owner_text(owner)} (no longer running)"

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunFolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_folder(folder: str | Path, is_main: bool) -> RunFolderLock:
    """The lock of ``folder`` taken by the main process, with the outcome shared by every process: all of them
    raise :class:`RunFolderBusy` when the folder is owned, so none waits at a barrier for a main process that left.
    Release it (main process) when the run ends; ``lock.note`` says what stale lock was taken over."""
    from sfd import distributed

    lock = RunFolderLock(folder)
    refusal = None
    if is_main:
        try:
            lock.acquire()
        except RunFolderBusy as error:
            refusal = str(error)
    refusal = distributed.broadcast_from_main(refusal)
    if refusal:
        raise RunFolderBusy(refusal)
    return lock


@contextlib.contextmanager
def owned_folder(folder: str | Path, is_main: bool, *also_clean: str | Path) -> Iterator[RunFolderLock]:
    """The start-up every writer of a run or sample folder goes through: the folder's lock (:func:`lock_run_folder`;
    every process refuses together when a live run owns it), a warning when a dead run's lock was taken over, and
    the temporary files a killed writer left in ``folder`` and ``also_clean`` removed — safe at once, since the lock
    says no writer lives. The lock is released when the block ends, however it ends."""
    lock = lock_run_folder(folder, is_main)
    try:
        if is_main:
            if lock.note:
                print(f"warning: {folder}: {lock.note}", file=sys.stderr, flush=True)
            for path in (folder, *also_clean):
                remove_stale_temporaries(path, older_than_s=0)
        yield lock
    finally:
        lock.release()
