"""One owner per run folder: live owners refuse a second run, stale locks are taken over (sfd/runlock.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from sfd.runlock import LOCK_NAME, RunFolderBusy, RunFolderLock, lock_run_folder


def write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                "started": time.time()}))


@pytest.fixture
def live_pid():
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_live_owner_refuses_a_second_run(tmp_path, live_pid):
    write_lock(tmp_path, live_pid)
    with pytest.raises(RunFolderBusy) as error:
        RunFolderLock(tmp_path).acquire()
    message = str(error.value)
    assert f"pid {live_pid} on {socket.gethostname()}" in message and str(tmp_path / LOCK_NAME) in message
    assert "\n" not in message
    with pytest.raises(RunFolderBusy, match="in use by pid 7 on elsewhere"):  # another host: cannot be checked
        write_lock(tmp_path / "remote", 7, host="elsewhere")
        lock_run_folder(tmp_path / "remote", is_main=True)


def test_stale_and_unreadable_locks_are_taken_over_and_released(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    with RunFolderLock(tmp_path) as lock:
        assert lock.note.startswith(f"took over the stale lock of pid {pid}")
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(RunFolderBusy):  # the folder is ours now: a second taker refuses
            RunFolderLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text("")  # a kill between creating and filling the lock
    lock = lock_run_folder(tmp_path, is_main=True)
    assert "unreadable stale lock" in lock.note
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
