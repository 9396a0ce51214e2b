"""One image's fit inside a batch: its state on disk, its command, and running it.

The single-image commands do the work (``dip TASK ...`` for a fresh fit, ``dip resume CKPT``
for an interrupted one). They write the output, the report and the checkpoint atomically, so a
file in the output folder is either complete or absent; the state of an image is read from them:

- ``done``: the report exists, says the fit finished (``stop_reason`` other than
  ``"interrupted"``) and the output exists;
- ``resume``: not done, and the checkpoint exists (an interrupted fit, or one whose worker died
  after a periodic checkpoint);
- ``fresh``: neither.

``run_image`` decides between fresh and resume when it starts, not when the batch is planned,
so a task retried on another worker continues from whatever checkpoint the first attempt left.
``run_pack`` fits images of one size together (``dip batch --pack K``); it too decides when it
starts: fresh, continuing an interrupted pack from its images' checkpoints (their reports say
they stopped at the same step of the same pack), or, for a pack retried after its worker died
whose images left periodic checkpoints, image by image.
Everything here is picklable, for Ray workers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dip.batch.plan import ImageJob

log = logging.getLogger(__name__)

EXIT_OK = 0
#: exit codes of a fit stopped by SIGINT / SIGTERM (after writing its checkpoint)
INTERRUPTED_CODES = (130, 143, -signal.SIGINT, -signal.SIGTERM)
#: lines of the fit's log kept in a failed image's record
_ERROR_LINES = 3
#: what sets an attempt's header line in an image's log apart: ``[time host] $ dip ARGS``
_ATTEMPT_MARK = "] $ dip "


class StopFlag:
    """Set by the batch when it receives SIGINT/SIGTERM: runners forward the signal to their
    fit and wait for it to save its checkpoint; a second signal is forwarded too (a fit aborts
    at once on a second Ctrl-C). In memory, for local workers (threads of the batch's process);
    Ray tasks get a ``StopFile``.

    Attributes:
        signum: the first signal received, or 0.
        count: how many signals were received.
    """

    def __init__(self) -> None:
        self.signum = 0
        self.count = 0

    def set(self, signum: int) -> None:
        """Ask running fits to stop with signal ``signum`` (the first signal is the one
        forwarded and reported)."""
        if not self.signum:
            self.signum = int(signum)
        self.count += 1

    def __bool__(self) -> bool:
        return bool(self.signum)


@dataclasses.dataclass(frozen=True)
class StopFile:
    """A stop flag shared through a file (``OUTDIR/.stop``, holding the signal number), for
    Ray tasks: they may run on other machines, which see the batch's output folder.

    Attributes:
        path: the file.
    """

    path: Path

    @property
    def signum(self) -> int:
        """The signal to forward to the running fits, or 0 while the batch goes on."""
        try:
            return int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def __bool__(self) -> bool:
        return bool(self.signum)

    def set(self, signum: int) -> None:
        """Ask every running fit to stop with ``signum``."""
        self.path.write_text(f"{int(signum)}\n")

    def clear(self) -> None:
        """Remove the file (at the start and the end of a batch)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


# A runner: runner(argv, *, threads, log, stop) -> exit code. argv: the arguments of the ``dip``
# command (without "dip"); threads: CPU threads of the fit; log: file for the fit's output;
# stop: a StopFlag, a StopFile or None. It must be picklable to run on Ray.
Runner = Callable[..., int]


def _dip_root() -> str:
    import dip

    return str(Path(dip.__file__).resolve().parents[1])


@dataclasses.dataclass(frozen=True)
class CommandRunner:
    """The default runner: the ``dip`` command (``python -m dip.batch._child ARGV``, which is
    ``python -m dip ARGV`` with SIGINT/SIGTERM restored) as a child process.

    The child gets ``OMP_NUM_THREADS=threads``, this process's ``dip`` first on its
    ``PYTHONPATH``, its own session (a terminal's Ctrl-C reaches only the batch, which forwards
    it, and a second one) and its stdout and stderr appended to ``log``. When ``stop`` is set, or a
    ``KeyboardInterrupt`` arrives (Ray's ``ray.cancel``), the signal is forwarded to the child,
    which saves its checkpoint and exits with 130/143; the runner waits for it.

    A child process rather than ``dip.cli.main`` in the calling process: a fit that crashes
    (native code, out of memory) takes only its own process down and is recorded as failed;
    thread counts, allocator settings and signal handlers stay per fit, where a Ray worker
    process would otherwise carry them from one image to the next; and the child's signal
    handling is the single-image command's own. The cost, importing torch once per image
    (seconds), is small next to a fit (minutes).

    Attributes:
        python: interpreter of the child (default: the calling process's ``sys.executable``,
            looked up where the runner runs).
        poll_s: how often the stop flag is checked (seconds).
    """

    python: str | None = None
    poll_s: float = 0.2

    def __call__(self, argv: Sequence[str], *, threads: int, log: Path,
                 stop: StopFlag | StopFile | None = None) -> int:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(threads)
        env["PYTHONPATH"] = _dip_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("DIP_PROGRESS", None)
        # the dip command, with SIGINT/SIGTERM unblocked (see dip.batch._child)
        command = [self.python or sys.executable, "-m", "dip.batch._child", *map(str, argv)]
        with open(log, "ab") as fh:
            fh.write(f"\n[{time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()}{_ATTEMPT_MARK}"
                     f"{' '.join(map(str, argv))}\n".encode())
            fh.flush()
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            return self._wait(proc, stop)

    def _wait(self, proc: subprocess.Popen, stop: StopFlag | StopFile | None) -> int:
        forwarded = 0
        try:
            while True:
                try:
                    return proc.wait(timeout=self.poll_s)
                except subprocess.TimeoutExpired:
                    pass
                if stop and forwarded < min(getattr(stop, "count", 1), 2):
                    proc.send_signal(stop.signum)
                    forwarded += 1
        except KeyboardInterrupt:
            if not forwarded:
                proc.send_signal(signal.SIGINT)
            return proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise


@dataclasses.dataclass(frozen=True)
class Command:
    """How every image of a batch is fitted.

    Attributes:
        task: the single-image command (denoise, jpeg, sr, inpaint, restore, deblur).
        fit_args: further options of a fresh fit (``--recipe sr4``, ``--factor 4``, ...).
        steps: total steps (passed to fresh fits and, as the total, to resumed ones).
        checkpoint_every: periodic checkpoint interval in steps (None: the command's default).
        threads: CPU threads per fit.
        mask_invert: masks mark the missing pixels instead of the known ones.
    """

    task: str
    fit_args: Sequence[str] = ()
    steps: int | None = None
    checkpoint_every: int | None = None
    threads: int = 1
    mask_invert: bool = False

    def _common(self, job: ImageJob) -> list[str]:
        args = ["-o", str(job.output), "--report", str(job.report), "--checkpoint", str(job.checkpoint),
                "--force", "--threads", str(self.threads)]
        if job.gt is not None:
            args += ["--gt", str(job.gt)]
        if self.steps is not None:
            args += ["--steps", str(self.steps)]
        if self.checkpoint_every is not None:
            args += ["--checkpoint-every", str(self.checkpoint_every)]
        return args

    def fresh_argv(self, job: ImageJob) -> list[str]:
        """Arguments of ``dip`` for a fit from scratch."""
        args = [self.task, str(job.input)]
        if job.mask is not None:
            args += ["--mask", str(job.mask)]
            if self.mask_invert:
                args.append("--mask-invert")
        return args + self._common(job) + list(self.fit_args)

    def resume_argv(self, job: ImageJob) -> list[str]:
        """Arguments of ``dip`` that continue the fit from the image's checkpoint."""
        return ["resume", str(job.checkpoint)] + self._common(job)


def read_report(path: Path) -> dict[str, Any] | None:
    """The JSON report at ``path``, or None when it is missing or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_done(job: ImageJob, steps: int | None = None) -> bool:
    """Whether the image's fit finished: a report saying so, and the output. With ``steps``
    (the batch's requested total), a fit that ran all of fewer steps is not done: it is
    continued to the new total (a fit that stopped automatically or diverged is done)."""
    report = read_report(job.report)
    if report is None or report.get("stop_reason") in (None, "interrupted") or not job.output.is_file():
        return False
    ran = report.get("steps_run", report.get("steps"))
    if steps is not None and report.get("stop_reason") == "steps" and isinstance(ran, int) and ran < steps:
        return False
    return True


def state(job: ImageJob, steps: int | None = None) -> str:
    """``"done"``, ``"resume"`` or ``"fresh"`` (see the module docstring); ``steps`` as in
    :func:`is_done`."""
    if is_done(job, steps):
        return "done"
    return "resume" if job.checkpoint.is_file() else "fresh"


def interrupted_pack(job: ImageJob) -> tuple[tuple[str, ...], int] | None:
    """``(the pack's images, steps run)`` for an image of an interrupted pack that can continue
    as a pack: its report says it was interrupted in a pack after that many steps, and its
    checkpoint exists; else None. Members with the same key were interrupted at the same step
    of the same pack, so their checkpoints continue together."""
    report = read_report(job.report)
    if report is None or report.get("stop_reason") != "interrupted" or not job.checkpoint.is_file():
        return None
    pack, ran = report.get("pack"), report.get("steps_run")
    if not isinstance(pack, dict) or not isinstance(pack.get("images"), list) or not isinstance(ran, int):
        return None
    return tuple(str(image) for image in pack["images"]), ran


def pack_mode(jobs: Sequence[ImageJob]) -> str | None:
    """How ``jobs`` can be fitted as one pack now: ``"fresh"`` (no image has a checkpoint),
    ``"resume"`` (all were interrupted at one step of one pack, ``interrupted_pack``), or None
    (each alone: e.g. a retried pack whose images left periodic checkpoints)."""
    if not any(job.checkpoint.is_file() for job in jobs):
        return "fresh"
    keys = {interrupted_pack(job) for job in jobs}
    return "resume" if len(keys) == 1 and None not in keys else None


def _last_lines(path: Path, n: int) -> str:
    """The last ``n`` lines (joined by `` | ``) that the latest attempt wrote to the log
    ``path``: what follows the last attempt header (``[time host] $ dip ...``, written by
    ``CommandRunner``), without it; a log with no header is read whole."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    headers = [i for i, line in enumerate(lines) if line.startswith("[") and _ATTEMPT_MARK in line]
    if headers:
        lines = lines[headers[-1] + 1:]
    return " | ".join(lines[-n:])


def _status(code: int, report: dict[str, Any] | None, job: ImageJob) -> str:
    if code in INTERRUPTED_CODES:
        return "interrupted"
    if code == EXIT_OK and report is not None and job.output.is_file():
        return "done"
    return "failed"


def _unlink_report(job: ImageJob) -> None:
    try:
        job.report.unlink()  # a stale report must not make an unfinished fit look done
    except FileNotFoundError:
        pass


def _record(job: ImageJob, mode: str, code: int, seconds: float, status: str, log: Path) -> dict[str, Any]:
    """The record of ``job``'s attempt (see ``run_image``); ``log``: where its error lines are."""
    report = read_report(job.report)
    record: dict[str, Any] = {
        "image": str(job.input),
        "stem": job.stem,
        "output": str(job.output),
        "report": str(job.report) if report is not None else None,
        "mode": mode,
        "status": status,
        "exit_code": code,
        "psnr": (report or {}).get("psnr"),
        "steps": (report or {}).get("steps_run", (report or {}).get("steps")),
        "seconds": round(seconds, 3),
        "stop_reason": (report or {}).get("stop_reason"),
        "recoveries": (report or {}).get("recoveries"),
        "error": None,
        "host": socket.gethostname(),
    }
    if status == "failed":
        detail = _last_lines(log, _ERROR_LINES)
        if code < 0:
            detail = f"killed by signal {-code}" + (f": {detail}" if detail else "")
        elif code == EXIT_OK:
            detail = "the fit exited 0 but left no report or no output" + (f": {detail}" if detail else "")
        record["error"] = detail or f"exit code {code}"
    return record


def run_image(job: ImageJob, command: Command, runner: Runner | None = None,
              stop: StopFlag | StopFile | None = None) -> dict[str, Any]:
    """Fit one image (fresh, or resumed from its checkpoint) and describe the outcome.

    Args:
        job: the image and its files.
        command: how to fit it.
        runner: runs the ``dip`` command (default ``CommandRunner()``).
        stop: the batch's stop flag (``StopFlag`` for local workers, ``StopFile`` for Ray), or
            None.
    Returns:
        a record: image, stem, output, report, mode (fresh/resume), status
        (done/failed/interrupted), exit_code, psnr, steps, seconds (wall-clock of the command),
        stop_reason, recoveries, error (last lines of the fit's log when it failed), host.
    """
    runner = runner if runner is not None else CommandRunner()
    mode = "resume" if job.checkpoint.is_file() else "fresh"
    argv = command.resume_argv(job) if mode == "resume" else command.fresh_argv(job)
    _unlink_report(job)
    start = time.monotonic()
    code = int(runner(argv, threads=command.threads, log=job.log, stop=stop))
    seconds = time.monotonic() - start
    report = read_report(job.report)
    status = _status(code, report, job)
    if status == "done" and report is not None and report.get("stop_reason") == "interrupted":
        status = "interrupted"
    return _record(job, mode, code, seconds, status, job.log)


def _member_status(code: int, job: ImageJob) -> str:
    """A pack member's status from its own files: done (a finished report and the image, even
    when the pack was interrupted after it stopped), interrupted (the pack was stopped by a
    signal before it finished), else failed."""
    report = read_report(job.report)
    finished = report is not None and report.get("stop_reason") not in (None, "interrupted")
    if finished and job.output.is_file():
        return "done"
    return "interrupted" if code in INTERRUPTED_CODES else "failed"


def _share_log(pack_log: Path, jobs: Sequence[ImageJob]) -> None:
    """Append the pack's messages to every member's log, then remove the pack's log."""
    try:
        text = pack_log.read_bytes()
    except OSError:
        return
    for job in jobs:
        with open(job.log, "ab") as fh:
            fh.write(text)
    pack_log.unlink()


def run_pack(jobs: Sequence[ImageJob], command: Command, runner: Runner | None = None,
             stop: StopFlag | StopFile | None = None) -> list[dict[str, Any]]:
    """Fit ``jobs`` (images of one size, ``dip.batch.packs``) together in one packed fit
    (``dip.batch._pack``, through ``runner``), fresh, or continuing an interrupted pack from the
    images' checkpoints (``pack_mode``, decided now); a single image is ``run_image``'s fit.

    Returns:
        one record per image, as ``run_image``'s (``seconds``: the pack's), with ``pack``: the
        stems of the pack's images. When a pack fails (bad input, a crash), each of its images
        without a finished report is fitted alone at once (its record is that fit's, with
        ``pack_failed``: the pack's error), so a bad image fails alone; a stopped batch leaves
        them failed, as the pack left them. When the images cannot
        be packed now (``pack_mode`` None: a retried pack whose images left checkpoints), each
        is fitted alone instead, in turn, as ``run_image`` fits it; those not started when
        ``stop`` is set get no record.
    """
    mode = pack_mode(jobs) if len(jobs) > 1 else None
    if mode is None:
        records: list[dict[str, Any]] = []
        for job in jobs:
            if records and stop:
                break  # not started: left for the next run
            records.append(run_image(job, command, runner, stop))
        return records
    from dip.batch._pack import pack_argv

    runner = runner if runner is not None else CommandRunner()
    argvs = [command.resume_argv(job) if mode == "resume" else command.fresh_argv(job) for job in jobs]
    for job in jobs:
        _unlink_report(job)
    pack_log = jobs[0].log.with_name(f".pack-{jobs[0].stem}.log")
    start = time.monotonic()
    try:
        code = int(runner(pack_argv(argvs), threads=command.threads, log=pack_log, stop=stop))
    finally:
        _share_log(pack_log, jobs)
    seconds = time.monotonic() - start
    stems = [job.stem for job in jobs]
    records = [dict(_record(job, mode, code, seconds, _member_status(code, job), job.log), pack=stems)
               for job in jobs]
    if code in INTERRUPTED_CODES or code == EXIT_OK or stop:
        return records
    # the pack failed (one bad input fails them all): its unfinished images are fitted alone now,
    # so that only a bad one fails, and the next run does not build the same failing pack again
    log.warning("the pack of %s failed (exit %d); fitting its images one by one", ", ".join(stems), code)
    retried: list[dict[str, Any]] = []
    for job, record in zip(jobs, records, strict=True):
        if record["status"] != "failed" or stop:
            retried.append(record)
            continue
        retried.append(dict(run_image(job, command, runner, stop), pack_failed=record["error"]))
    return retried
