"""Interrupting a ``python -m dip`` child the way a user does: once its first periodic
checkpoint is on disk, send it a signal and collect what it says."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def signal_once_checkpointed(argv: list[str], checkpoint: Path, sig: int, env: dict,
                             timeout: float = 120.0) -> tuple[int, str]:
    """Run ``python -m dip *argv`` (which must write ``checkpoint`` periodically), send ``sig``
    as soon as the checkpoint exists, and return (exit status, stderr). Fails the test when no
    checkpoint appears within ``timeout`` seconds or the child ends before; never leaves the
    child running."""
    proc = subprocess.Popen([sys.executable, "-m", "dip", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err
