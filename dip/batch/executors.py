"""Where the images of a batch are fitted: local child processes or Ray tasks.

The unit of work is a pack (``dip.batch.packs``): one image, fitted alone as ever, or images
of one size fitted together in one packed fit (``dip batch --pack K``); a plain ``ImageJob``
is a pack of one. Both executors call ``on_record(record)`` in the coordinating thread as each
image's attempt ends (the images of a pack end together), so that only the coordinator
writes the manifest. Both honour a ``StopFlag`` set by the batch's SIGINT/SIGTERM handler:
images not started are left for the next run; running fits are asked to stop (the signal
forwarded to local children; for Ray, the signal number written to ``OUTDIR/.stop``, which
each task's runner watches and forwards to its child, and ``ray.cancel`` for the tasks not
started), save their checkpoints and are recorded as interrupted.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dip.batch.plan import BatchError, ImageJob
from dip.batch.work import Command, Runner, StopFile, StopFlag, read_report, run_pack

log = logging.getLogger(__name__)

#: the Ray stop flag's file in the output folder (see ``work.StopFile``)
STOP_FILE_NAME = ".stop"
#: how often the coordinator looks at finished work and at the stop flag (seconds)
_POLL_S = 0.2
RecordSink = Callable[[dict[str, Any]], None]
StartSink = Callable[[ImageJob], None]  # called from a worker thread as an image's fit starts
TickSink = Callable[[], None]  # called in the coordinating thread about every _POLL_S seconds
Work = Sequence[ImageJob | Sequence[ImageJob]]  # packs (tuples of images), or images (packs of one)


def as_packs(work: Work) -> list[tuple[ImageJob, ...]]:
    """``work`` as packs: an ``ImageJob`` is a pack of one."""
    return [(item,) if isinstance(item, ImageJob) else tuple(item) for item in work]


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag, enabled: bool = True) -> Iterator[None]:
    """While active, SIGINT and SIGTERM set ``stop`` instead of ending the process.

    Only in the main thread (Python delivers signals there); elsewhere, or with ``enabled``
    False, it does nothing. The previous handlers are restored on exit.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if not stop:
            log.warning("dip batch: %s received: stopping the running fits after their current step "
                        "(they save checkpoints; rerun the same command to resume; a second signal "
                        "aborts them at once)", signal.Signals(signum).name)
        stop.set(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _failed(job: ImageJob, mode: str | None, error: str | None) -> dict[str, Any]:
    return {"image": str(job.input), "stem": job.stem, "output": str(job.output), "report": None,
            "mode": mode, "status": "failed", "exit_code": None, "psnr": None, "steps": None,
            "seconds": None, "stop_reason": None, "recoveries": None, "error": error, "host": None}


def _local_task(pack: tuple[ImageJob, ...], command: Command, runner: Runner | None, stop: StopFlag,
                on_start: StartSink | None) -> list[dict[str, Any]]:
    if stop:
        return []  # not started: left for the next run
    if on_start is not None:
        for job in pack:
            on_start(job)
    try:
        return run_pack(pack, command, runner, stop)
    except Exception as exc:  # the runner itself failed (e.g. the interpreter cannot start)
        log.debug("pack %s: runner failed", [str(job.input) for job in pack], exc_info=True)
        return [_failed(job, "resume" if job.checkpoint.is_file() else "fresh", f"{type(exc).__name__}: {exc}")
                for job in pack]


def run_local(jobs: Work, command: Command, *, workers: int, runner: Runner | None,
              stop: StopFlag, on_record: RecordSink, on_start: StartSink | None = None,
              on_tick: TickSink | None = None) -> None:
    """Fit ``jobs`` (packs, or images: packs of one) with ``workers`` packs at a time, each
    through ``runner`` (default: a child process, ``work.CommandRunner``), from threads of this
    process. A ``KeyboardInterrupt`` here stops the batch like SIGINT (the running fits save
    their checkpoints). ``on_start(job)`` is called as an image's fit starts, ``on_tick()``
    while the fits run."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dip-batch") as pool:
        pending = {pool.submit(_local_task, pack, command, runner, stop, on_start) for pack in as_packs(jobs)}
        while pending:
            try:
                done, pending = concurrent.futures.wait(pending, timeout=_POLL_S,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
            except KeyboardInterrupt:  # no handler of ours (not the main thread, or disabled)
                stop.set(signal.SIGINT)
                continue
            for future in done:
                for record in future.result():
                    on_record(record)
            if on_tick is not None:
                on_tick()


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------
def import_ray():
    """``ray``, or BatchError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BatchError(f"--ray needs the 'ray' package, which cannot be imported ({exc})",
                         "install it with: pip install 'dip[ray]'  (or run without --ray)") from None
    return ray


def _ray_task(pack: tuple[ImageJob, ...], command: Command, runner: Runner | None,
              stop: StopFile) -> list[dict[str, Any]]:
    """Body of the Ray task: one pack (often of one image), in a Ray worker."""
    return run_pack(pack, command, runner, stop)


def init_ray(ray, address: str, num_cpus: int) -> bool:
    """Connect to Ray unless already connected; returns whether this call started it.

    ``address``: ``"local"`` starts a private instance on this machine with ``num_cpus`` CPUs,
    on the loopback interface only (127.0.0.1, no dashboard); ``"auto"`` joins the cluster this
    machine belongs to; anything else is a cluster address (``HOST:PORT`` or ``ray://...``).
    """
    if ray.is_initialized():
        log.info("using the Ray instance this process is already connected to")
        return False
    if address == "local":
        # keeps every Ray process on 127.0.0.1 (otherwise Ray picks the machine's network address)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=False)
    else:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as exc:
            raise BatchError(f"--ray {address}: cannot connect to a Ray cluster ({exc})",
                             "start one with 'ray start --head', give its address, or use --ray local") from None
    return True


def _cancelled_record(job: ImageJob) -> dict[str, Any] | None:
    """A cancelled task's image: interrupted when its report says so, else None (not started)."""
    report = read_report(job.report)
    if report is not None and report.get("stop_reason") == "interrupted":
        record = _failed(job, None, None)
        record.update(status="interrupted", report=str(job.report), steps=report.get("steps_run"),
                      psnr=report.get("psnr"), stop_reason="interrupted")
        return record
    return None


def _ray_outcome(ray, ref, pack: tuple[ImageJob, ...]) -> list[dict[str, Any]]:
    """The records of a finished Ray task; none for the images of a task cancelled before it
    started."""
    try:
        return list(ray.get(ref))
    except ray.exceptions.TaskCancelledError:
        return [r for r in (_cancelled_record(job) for job in pack) if r is not None]
    except ray.exceptions.RayError as exc:  # worker died more often than --retries allows, ...
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return [_failed(job, "resume" if job.checkpoint.is_file() else "fresh", error) for job in pack]


def run_ray(jobs: Work, command: Command, *, address: str, num_cpus: int, retries: int,
            gpus: float, runner: Runner | None, stop: StopFlag, on_record: RecordSink,
            handle_signals: bool = True, on_tick: TickSink | None = None) -> None:
    """Fit ``jobs`` (packs, or images: packs of one) as Ray tasks, one per pack, each asking for
    ``command.threads`` CPUs and ``gpus`` GPUs (a pack as much as one image) and retried up to
    ``retries`` times when its worker process dies.

    A retried task starts over from the image's files: it resumes from the checkpoint the first
    attempt saved (with ``--checkpoint-every``), else fits from scratch. Ray is shut down at the
    end if this call started it.
    """
    packs = as_packs(jobs)
    if not packs:
        return
    ray = import_ray()
    started = init_ray(ray, address, num_cpus)
    stop_file = StopFile(packs[0][0].output.parent / STOP_FILE_NAME)
    stop_file.clear()
    try:
        remote = ray.remote(_ray_task).options(num_cpus=command.threads, num_gpus=gpus,
                                               max_retries=retries, retry_exceptions=False)
        refs = {remote.remote(pack, command, runner, stop_file): pack for pack in packs}
        pending: list[Any] = list(refs)
        cancelled = False
        with stop_on_signals(stop, handle_signals):
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=_POLL_S)
                for ref in ready:
                    for record in _ray_outcome(ray, ref, refs[ref]):
                        on_record(record)
                if on_tick is not None:
                    on_tick()
                if stop and not cancelled:
                    stop_file.set(stop.signum)  # running tasks forward it to their fits
                    for ref in pending:  # tasks not started yet are dropped
                        ray.cancel(ref, force=False)
                    cancelled = True
    finally:
        stop_file.clear()
        if started:
            ray.shutdown()
