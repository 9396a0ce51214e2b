"""Batches: restore many images, one fit each, on local workers or a Ray cluster.

With ``--pack K`` / ``pack=K``, up to K fresh images of one size are fitted together in one
packed fit (``dip.batch.packs``, ``dip.batch._pack``), each written as its own fit.

``run_batch`` (Python) and ``dip batch`` (command line, ``add_arguments`` / ``run``) fit every
image with the single-image command (``dip TASK`` / ``dip resume``), which writes each output,
report and checkpoint atomically into the output folder; the coordinating process keeps the
manifest. Rerunning a batch skips finished images and resumes interrupted ones. Ray is
imported only when ``--ray`` / ``ray_address`` is used (optional extra ``dip[ray]``).
"""
from dip.batch.command import add_arguments, fit_arguments, run
from dip.batch.core import BatchResult, default_threads, run_batch
from dip.batch.manifest import MANIFEST_NAME, SUMMARY_NAME, Manifest, format_table, read_manifest
from dip.batch.packs import plan_packs
from dip.batch.plan import BATCH_TASKS, DEFAULT_MASK_PATTERN, BatchError, ImageJob, collect_inputs, mask_path, plan
from dip.batch.work import Command, CommandRunner, StopFlag, is_done, read_report, run_image, run_pack, state

__all__ = [
    "add_arguments", "run", "fit_arguments", "run_batch", "BatchResult", "default_threads", "BatchError",
    "ImageJob", "plan", "collect_inputs", "mask_path", "BATCH_TASKS", "DEFAULT_MASK_PATTERN", "Command",
    "CommandRunner", "StopFlag", "run_image", "run_pack", "plan_packs", "state", "is_done", "read_report",
    "Manifest", "read_manifest",
    "format_table", "MANIFEST_NAME", "SUMMARY_NAME",
]
