"""``run_batch``: restore many images, one fit each (alone, or packed with images of the
same size), resumably."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dip.batch import executors, packs
from dip.batch.manifest import SUMMARY_NAME, Manifest, write_summary_csv
from dip.batch.plan import DEFAULT_MASK_PATTERN, BatchError, ImageJob, plan
from dip.batch.work import Command, Runner, StopFlag, read_report, state

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SOME_FAILED = 1


@dataclasses.dataclass
class BatchResult:
    """What a batch did.

    Attributes:
        records: one per image, in input order: the record of its attempt in this run (status
            ``done``, ``failed`` or ``interrupted``; see ``work.run_image``), ``skipped`` for an
            image done by an earlier run, ``pending`` for one not started because the batch
            was stopped.
        ignored: messages about inputs that are not images.
        signal: the signal (2 SIGINT, 15 SIGTERM) that stopped the batch, or 0.
        outdir: the output folder.
    """

    records: list[dict[str, Any]]
    ignored: list[str]
    signal: int
    outdir: Path

    @property
    def ok(self) -> bool:
        """Every image is restored (now or by an earlier run)."""
        return all(r["status"] in ("done", "skipped") for r in self.records)

    @property
    def exit_code(self) -> int:
        """0 all restored; 130/143 stopped by SIGINT/SIGTERM; 1 some image failed."""
        if self.signal:
            return 128 + self.signal
        return EXIT_OK if self.ok else EXIT_SOME_FAILED


def default_threads(workers: int) -> int:
    """CPU threads per fit when ``workers`` fits share this machine: ``cpu_count // workers``."""
    return max(1, (os.cpu_count() or 1) // workers)


def _skipped_record(job: ImageJob) -> dict[str, Any]:
    report = read_report(job.report) or {}
    return {"image": str(job.input), "stem": job.stem, "output": str(job.output), "report": str(job.report),
            "mode": None, "status": "skipped", "exit_code": None, "psnr": report.get("psnr"),
            "steps": report.get("steps_run", report.get("steps")), "seconds": report.get("seconds"),
            "stop_reason": report.get("stop_reason"), "recoveries": report.get("recoveries"), "error": None}


def _pending_record(job: ImageJob, steps: int | None) -> dict[str, Any]:
    return {"image": str(job.input), "stem": job.stem, "output": str(job.output), "report": None,
            "mode": state(job, steps), "status": "pending", "exit_code": None, "psnr": None, "steps": None,
            "seconds": None, "stop_reason": None, "recoveries": None, "error": None}


def preflight(command: Command, job: ImageJob, pack: int = 1) -> None:
    """Check the single-image command of ``job`` without running it: ``dip``'s own parser and
    recipe lookup, so that an unknown option, recipe or net fails the batch before any fit;
    with ``pack`` > 1, that its fits can be packed (``packs.check_packable``).

    Raises:
        BatchError: with the parser's or the recipe lookup's message.
    """
    import contextlib
    import io

    from dip import cli

    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):
            args = cli.build_parser().parse_args(command.fresh_argv(job))
    except SystemExit:
        lines = [line for line in messages.getvalue().splitlines() if line.strip()]
        detail = lines[0].split("error:", 1)[-1].strip() if lines else "rejected"
        raise BatchError(f"the fit options are not valid: {detail}",
                         f"see 'dip {command.task} --help' for the options of a fit") from None
    try:
        recipe = cli.recipe_for(command.task, args)
    except cli.UsageError as exc:
        raise BatchError(exc.message, exc.hint) from None
    if pack > 1:
        packs.check_packable(recipe, command.fit_args)


def _forget(job: ImageJob) -> None:
    """Remove an image's earlier results so that it is fitted from scratch."""
    for path in (job.output, job.report, job.checkpoint):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class _Progress:
    """A tqdm bar over images on stderr. The postfix names the images being fitted and for how
    long (refreshed about once a second, so the bar moves while an image is fitted) and, once
    an image is done, its status and PSNR."""

    REFRESH_S = 1.0

    def __init__(self, total: int, done: int, enabled: bool):
        from tqdm import tqdm

        disable = not enabled or (not sys.stderr.isatty() and not os.environ.get("DIP_PROGRESS"))
        self.bar = tqdm(total=total, initial=done, unit="image", desc="batch", file=sys.stderr,
                        disable=disable, dynamic_ncols=True, leave=False)
        self._lock = threading.Lock()
        self._running: dict[str, float] = {}  # stem -> monotonic start time
        self._last = ""
        self._shown = 0.0

    def start(self, job: ImageJob) -> None:
        """Called from a worker thread as ``job``'s fit starts."""
        with self._lock:
            self._running[job.stem] = time.monotonic()

    def tick(self) -> None:
        """Show the running images and their time so far (at most once per ``REFRESH_S``)."""
        now = time.monotonic()
        if now - self._shown < self.REFRESH_S:
            return
        self._shown = now
        self.bar.set_postfix(self._postfix(now), refresh=True)

    def _postfix(self, now: float) -> dict[str, str]:
        with self._lock:
            running = sorted(self._running.items(), key=lambda item: item[1])
        post = {"fitting": ", ".join(f"{stem} {now - t0:.0f}s" for stem, t0 in running)} if running else {}
        if self._last:
            post["last"] = self._last
        return post

    def update(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._running.pop(record["stem"], None)
        self._last = f"{record['stem']} {record['status']}"
        if record.get("psnr") is not None:
            self._last += f" {float(record['psnr']):.2f} dB"
        self.bar.set_postfix(self._postfix(time.monotonic()), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _check_counts(workers: Any, threads: Any, retries: Any) -> None:
    """BatchError unless workers >= 1, threads None or >= 1 and retries >= 0 are whole numbers."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise BatchError(f"workers must be a whole number >= 1, got {workers!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise BatchError(f"threads must be a whole number >= 1, got {threads!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise BatchError(f"retries must be a whole number >= 0, got {retries!r}")


def _final_record(job: ImageJob, attempted: dict[str, dict[str, Any]], todo: list[ImageJob],
                  steps: int | None) -> dict[str, Any]:
    """The summary's record of ``job``: its attempt in this run, else skipped (done earlier) or
    pending (not reached before the batch stopped)."""
    if str(job.input) in attempted:
        return attempted[str(job.input)]
    if job not in todo:
        return _skipped_record(job)
    return _pending_record(job, steps)


def _execute(todo: list[packs.Pack], command: Command, *, ray_address: str | None, workers: int, retries: int,
             device: str | None, runner: Runner | None, stop: StopFlag, on_record: Any,
             handle_signals: bool, progress: _Progress) -> None:
    """Fit the packs ``todo``: local child processes (``ray_address`` None) or one Ray task per pack."""
    if ray_address is None:
        with executors.stop_on_signals(stop, handle_signals):
            executors.run_local(todo, command, workers=workers, runner=runner, stop=stop, on_record=on_record,
                                on_start=progress.start, on_tick=progress.tick)
    else:
        executors.run_ray(todo, command, address=ray_address, num_cpus=workers * command.threads, retries=retries,
                          gpus=1 if device == "cuda" else 0, runner=runner, stop=stop, on_record=on_record,
                          handle_signals=handle_signals, on_tick=progress.tick)


def _plan_work(jobs: list[ImageJob], redo: bool, steps: int | None,
               pack: int) -> tuple[list[ImageJob], list[packs.Pack]]:
    """The images still to fit (all of them after forgetting earlier results with ``redo``) and
    the fits that restore them (``dip.batch.packs.plan_packs``)."""
    if redo:
        for job in jobs:
            _forget(job)
    todo = [job for job in jobs if state(job, steps) != "done"]
    work = packs.plan_packs(todo, pack, steps)
    log.info("batch: %d image(s), %d done earlier, %d to fit (%d to resume) in %d fit(s)", len(jobs),
             len(jobs) - len(todo), len(todo), sum(state(j, steps) == "resume" for j in todo), len(work))
    return todo, work


def run_batch(task: str, inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike, *,
              workers: int = 1, threads: int | None = None, ray_address: str | None = None,
              retries: int = 3, fit_args: Sequence[str] = (), steps: int | None = None,
              checkpoint_every: int | None = None, device: str | None = None,
              gt_dir: str | os.PathLike | None = None, masks_dir: str | os.PathLike | None = None,
              mask_pattern: str = DEFAULT_MASK_PATTERN, mask_invert: bool = False, ext: str = "png",
              redo: bool = False, pack: int = 1, runner: Runner | None = None, progress: bool = False,
              handle_signals: bool = True) -> BatchResult:
    """Restore every image of ``inputs`` into ``outdir``, one fit per image (``pack`` of them
    at a time in one packed fit).

    Rerunning the same batch skips the images already done and resumes the interrupted ones
    from their checkpoints. Outputs per image: ``<stem>.<ext>``, ``<stem>.json`` (report),
    ``<stem>.ckpt`` (checkpoint), ``<stem>.log`` (the fit's messages); per batch:
    ``manifest.jsonl`` (one line per attempt) and ``summary.csv``.

    Args:
        task: denoise, jpeg, sr, inpaint or restore.
        inputs: files, folders or glob patterns (see ``dip.batch.plan``).
        outdir: output folder (created if missing).
        workers: local mode: fits run at the same time (child processes).
        threads: CPU threads per fit; default ``cpu_count // workers`` locally and with
            ``ray_address="local"``, 1 on a Ray cluster (one image per CPU).
        ray_address: None for local mode; ``"local"`` (a private Ray instance on this machine,
            ``workers * threads`` CPUs), ``"auto"`` or a cluster address: one Ray task per image.
        retries: Ray: how often a task whose worker died is run again.
        fit_args: further options of the single-image command for fresh fits, e.g.
            ``["--recipe", "sr4", "--factor", "4", "--seed", "1"]``.
        steps: total steps per image (fresh and resumed fits).
        checkpoint_every: save each fit's checkpoint every N steps (what a worker that dies
            resumes from).
        device: ``cpu``, ``cuda`` or ``auto`` for every fit; ``cuda`` makes each Ray task ask
            for one GPU.
        gt_dir: ground truths, matched by stem: PSNR per image.
        masks_dir, mask_pattern, mask_invert: masks of inpaint/restore (see ``dip.batch.plan``).
        ext: output format suffix, or ``"same"`` for the input's.
        redo: fit every image from scratch, replacing earlier results.
        pack: fit up to ``pack`` fresh images of one size (width, height, mode) together in one
            packed fit (``dip.batch.packs``), each written as its own fit, and continue the
            images of an interrupted pack together; the others (a size with fewer images left
            over, a lone fit's checkpoint) alone. 1: every image alone.
        runner: runs one image's ``dip`` command, or a pack's (``dip.batch._pack``), (default
            ``work.CommandRunner()``: a child process); must be picklable for Ray.
        progress: show a progress bar over images on stderr (when it is a terminal).
        handle_signals: SIGINT/SIGTERM stop the batch cleanly (main thread only).
    Returns:
        a ``BatchResult``.
    Raises:
        BatchError: bad inputs or options (nothing has run).
    """
    _check_counts(workers, threads, retries)
    packs.check_pack_size(pack)
    if ray_address is not None:
        executors.import_ray()  # before anything is written
    jobs, ignored = plan(task, inputs, outdir, mask_pattern=mask_pattern, masks_dir=masks_dir,
                         gt_dir=gt_dir, ext=ext)
    out = jobs[0].output.parent
    for message in ignored:
        log.warning("ignored %s", message)
    extra = list(fit_args) + (["--device", device] if device else [])
    if threads is None:  # one image per CPU on a cluster
        threads = 1 if ray_address not in (None, "local") else default_threads(workers)
    command = Command(task=task, fit_args=tuple(extra), steps=steps, checkpoint_every=checkpoint_every,
                      threads=threads, mask_invert=mask_invert)
    preflight(command, jobs[0], pack)
    out.mkdir(exist_ok=True)
    todo, work = _plan_work(jobs, redo, steps, pack)

    manifest = Manifest(out)
    attempted: dict[str, dict[str, Any]] = {}
    bar = _Progress(len(jobs), len(jobs) - len(todo), progress)

    def on_record(record: dict[str, Any]) -> None:
        record = manifest.append(record)
        attempted[record["image"]] = record
        bar.update(record)
        log.info("%s: %s (exit %s)", record["stem"], record["status"], record["exit_code"])

    stop = StopFlag()
    try:
        _execute(work, command, ray_address=ray_address, workers=workers, retries=retries, device=device,
                 runner=runner, stop=stop, on_record=on_record, handle_signals=handle_signals, progress=bar)
    finally:
        bar.close()
    records = [_final_record(job, attempted, todo, steps) for job in jobs]
    write_summary_csv(out / SUMMARY_NAME, records)
    return BatchResult(records=records, ignored=ignored, signal=stop.signum, outdir=out)
