"""A batch's pack in its child process: ``python -m dip.batch._child --pack JSON``.

``JSON`` is the list of the members' ``dip`` argument lists, each exactly what that image's
single fit would run: all ``dip TASK IMAGE ...`` (``work.Command.fresh_argv``), or all
``dip resume CKPT ...`` (``resume_argv``: continuing an interrupted pack). For every member the
single command's own checks and loading run (``dip.cli.fit_command.prepare`` or
``dip.cli.resume_command.prepare``), so every option and check is the same as alone; a fresh
member is built from its recipe and seed (``dip.recipes.build``: the generator and code it
would get alone), a resumed one from its checkpoint. The members are fitted together in one
``dip.engine.packed_loop.fit_packed`` (no progress bar; resumed members from their states, which
must be at one step), and each member's files are written by the single fit's writer
(``dip.cli.job``): image, report (with ``"pack": {"size", "index", "images"}``), plot when
asked, and a normal single-fit checkpoint that ``dip resume`` continues alone.
``--checkpoint-every N`` saves every member's checkpoint every N steps. On SIGINT/SIGTERM every
member's image so far and checkpoint are written and the process exits 130/143, like a single
fit; members that had finished keep their results.

Exit code: 130/143 after a signal, else 1 when any member's file could not be written where
asked (``dip.cli.job.conclude``), else 0; errors before the fit as ``dip`` answers them (2 for
bad input: the whole pack fails).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from dip.cli import fit_command, memory, resume_command
from dip.cli.entry import INTERRUPTED, guarded
from dip.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UsageError
from dip.cli.job import Job, announce, conclude, periodic_checkpoint, tune_process, write_outputs
from dip.cli.parser import build_parser

#: the first argument of ``python -m dip.batch._child`` that makes it run a pack
PACK_FLAG = "--pack"


def pack_argv(members: Sequence[Sequence[str]]) -> list[str]:
    """The ``dip.batch._child`` arguments that fit ``members`` (each a ``dip`` argv) as one pack."""
    return [PACK_FLAG, json.dumps([[str(a) for a in m] for m in members])]


def _parse(members: Sequence[Sequence[str]]) -> list[argparse.Namespace]:
    """Each member's parsed ``dip`` arguments: all a fit command's, or all ``dip resume``'s;
    UsageError for anything else."""
    parser = build_parser()
    parsed = []
    for argv in members:
        try:
            args = parser.parse_args(list(argv))
        except SystemExit:
            raise UsageError(f"not valid arguments of a fit: {' '.join(argv)}") from None
        if args.command not in fit_command.TASKS and args.command != "resume":
            raise UsageError(f"a pack fits images with a fit command or dip resume, got {args.command!r}")
        args.argv, args.process_wide = list(argv), True
        parsed.append(args)
    if len({args.command == "resume" for args in parsed}) > 1:
        raise UsageError("a pack either fits images afresh or resumes them all, not both")
    return parsed


def _prepare(args: argparse.Namespace) -> Job:
    """The member's single command's checks and loading."""
    if args.command == "resume":
        return resume_command.prepare(args)
    return fit_command.prepare(args.command, args)


def _check_alike(jobs: Sequence[Job]) -> None:
    """The members must share the recipe, the observation's shape and (resumed) the step; no frames."""
    first = jobs[0]
    for job in jobs[1:]:
        if tuple(job.observation.shape) != tuple(first.observation.shape) or job.out_hw != first.out_hw:
            raise UsageError(f"the images of a pack must have one size and channel count: {job.output} is "
                             f"{tuple(job.observation.shape)}, {first.output} {tuple(first.observation.shape)}",
                             "fit them without --pack")
        if job.recipe != first.recipe:
            raise UsageError("the images of a pack must be fitted with the same recipe and options",
                             "fit them without --pack")
    if any(job.frames is not None for job in jobs):
        raise UsageError("--save-every does not combine with a pack", "drop it, or fit the images alone")
    ran = {job.output.name: int(job.resumed.steps_run) for job in jobs if job.resumed is not None}
    if len(set(ran.values())) > 1:
        raise UsageError(f"the checkpoints of a pack must be at one step to continue together, got {ran}",
                         "continue them one by one (dip batch ... --pack 1)")


def _check_memory(jobs: Sequence[Job]) -> None:
    """The pack needs about the sum of its members' estimates; UsageError when it exceeds what is
    available (each member alone was checked by its own ``prepare``)."""
    estimates = [job.memory_estimate for job in jobs]
    if any(e is None for e in estimates):
        return
    need = sum(e for e in estimates if e is not None)
    available = memory.available_memory(jobs[0].device)
    if available is not None and need > available:
        raise UsageError(f"a pack of {len(jobs)} images needs about {memory.format_bytes(need)}, "
                         f"{memory.format_bytes(available)} of {jobs[0].device} memory is available",
                         "use a smaller --pack")


def prepare_pack(members: Sequence[Sequence[str]]) -> tuple[list[Job], list[argparse.Namespace]]:
    """Every member's ``Job`` (its single command's checks and loading) and parsed arguments,
    each job marked with its place in the pack."""
    parsed = _parse(members)
    jobs = [_prepare(args) for args in parsed]
    _check_alike(jobs)
    _check_memory(jobs)
    images = [job.inputs.get("input") or job.options.get("input") for job in jobs]  # resumed: as recorded
    for index, job in enumerate(jobs):
        job.pack = {"size": len(jobs), "index": index, "images": images}
    return jobs, parsed


def _pieces(jobs: Sequence[Job]) -> tuple[list[Any], ...]:
    """(ys, operators, generators, codes, states) of the members: built from each recipe and
    seed (``states`` empty), or read back from each checkpoint (each one's ``FitState``)."""
    if jobs[0].resumed is None:
        from dip import recipes

        built = [recipes.build(job.recipe, job.observation, mask=None if job.mask is None else job.mask[None],
                               kernel=job.kernel) for job in jobs]
        return [b[0] for b in built], [b[1] for b in built], [b[2] for b in built], [b[3] for b in built], []
    loaded = [job.resumed for job in jobs]
    if any(hasattr(fit, "members") for fit in loaded):
        raise UsageError("an ensemble's checkpoint cannot be resumed in a pack", "resume it alone with dip resume")
    return ([fit.y for fit in loaded], [fit.physics for fit in loaded], [fit.generator for fit in loaded],
            [fit.z for fit in loaded], [fit.state for fit in loaded])


def fit_pack(jobs: Sequence[Job], stop_event: Any = None):
    """Fit ``jobs`` together: ``PackedFitResult`` whose member k is job k's single-fit result."""
    from dip.engine.packed_loop import fit_packed

    ys, operators, generators, codes, states = _pieces(jobs)
    kwargs: dict[str, Any] = {"stop_event": stop_event}
    if states:
        kwargs["resume"] = {"members": states, "stop_reasons": ["interrupted"] * len(states),
                            "stop_details": [""] * len(states)}
    first = jobs[0]
    if first.checkpoint_every is not None:
        def save_each(partial) -> None:
            for job, member in zip(jobs, partial.members, strict=True):
                periodic_checkpoint(job, member)

        kwargs["checkpoint_every"] = first.checkpoint_every
        kwargs["on_checkpoint"] = save_each
    result = fit_packed(ys, operators, generators, codes, first.recipe.fit, seeds=[job.recipe.fit.seed for job in jobs],
                        gt=[job.gt for job in jobs], **kwargs)
    for job, member in zip(jobs, result.members, strict=True):
        member.recipe = job.recipe
    return result


def run_pack(members: Sequence[Sequence[str]]) -> int:
    """Check, fit and write a pack (see the module docstring); returns the exit code."""
    from dip.interrupt import SignalStop

    jobs, parsed = prepare_pack(members)
    tuned = tune_process(parsed[0])
    for job, args in zip(jobs, parsed, strict=True):
        job.allocator_tuned = tuned
        announce(job, args)
    with SignalStop() as stop:  # signals during the writing below wait for it to finish, too
        result = fit_pack(jobs, stop_event=stop)
        written = [write_outputs(job, args, member)
                   for job, args, member in zip(jobs, parsed, result.members, strict=True)]
    codes = [conclude(job, args, member, stop, psnr_input, saver) for job, args, member, (psnr_input, saver)
             in zip(jobs, parsed, result.members, written, strict=True)]
    if stop.is_set():
        return stop.exit_code
    return EXIT_FAILURE if any(code != EXIT_OK for code in codes) else EXIT_OK


def _members(argv: Sequence[str]) -> list[list[str]]:
    """The members' argument lists from ``argv`` (``[JSON]``); UsageError when malformed."""
    if len(argv) != 1:
        raise UsageError(f"{PACK_FLAG} takes one JSON list of the members' arguments, got {len(argv)} arguments")
    try:
        members = json.loads(argv[0])
    except ValueError as exc:
        raise UsageError(f"{PACK_FLAG}: the members are not JSON ({exc})") from None
    if not isinstance(members, list) or not members or not all(isinstance(m, list) for m in members):
        raise UsageError(f"{PACK_FLAG}: expected a non-empty list of argument lists")
    return members


def main(argv: Sequence[str]) -> int:
    """``argv``: ``[JSON]`` (see ``pack_argv``); returns the exit code. A second Ctrl-C aborts at
    once (130, nothing more written), as for a single fit."""
    logging.basicConfig(level=logging.WARNING, format="dip: %(message)s")
    try:
        return guarded(lambda: run_pack(_members(argv)))
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        return EXIT_INTERRUPTED
