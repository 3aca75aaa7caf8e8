"""Processes a test or benchmark starts in a session of their own, ended by session id.

Ray's processes leave the process group of whatever started them but keep its session, so a
session id finds all of them: never a name, never ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support import REPO


def start_session(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``command`` in a new session, run from the repository, stdout and stderr to ``log``."""
    return subprocess.Popen(
        command,
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(REPO), **(env or {})},
    )


def session_processes(session_id: int) -> list[int]:
    """Live processes of a session (zombies, already dead, are left to their reaper)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and os.getsid(int(entry.name)) == session_id:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return pids


def _wait_until_gone(session_id: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while session_processes(session_id) and time.monotonic() < deadline:
        time.sleep(0.1)


def kill_session(session_id: int, wait_s: float = 20, grace_s: float = 0) -> None:
    """SIGKILL every process of a session this code started, as a machine's crash would end
    them; waits up to ``grace_s`` first for them to end by themselves, and up to ``wait_s``
    after the signal.

    For where how they end proves nothing: a local Ray's GCS and raylet may take 20 s and more
    over a SIGTERM.
    """
    _wait_until_gone(session_id, grace_s)
    for pid in session_processes(session_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_until_gone(session_id, wait_s)


def end_session(session_id: int, wait_s: float = 20, grace_s: float = 0) -> int:
    """SIGTERM, then SIGKILL, every process of a session this code started.

    Waits up to ``grace_s`` first for them to end by themselves, and up to ``wait_s`` after each
    signal. Returns how many were left when the grace time was over.
    """
    _wait_until_gone(session_id, grace_s)
    left = len(session_processes(session_id))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = session_processes(session_id)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        _wait_until_gone(session_id, wait_s)
    return left
