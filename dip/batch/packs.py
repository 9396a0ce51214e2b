"""Which images of a batch are fitted together: packs of images of one size (``--pack K``).

A pack is K fresh images fitted in one packed network (``dip.engine.packed_loop.fit_packed``,
run by ``dip.batch._pack``): each image keeps its own generator, code, observation, mask,
optimiser state and stopping rule, and gets the fit it would get alone (same seed; up to the
rounding of the grouped convolutions, which an fp32 fit's early Adam steps amplify), written to
its own files. Only images that give observations of one shape can share a pack, so images
are grouped by what their file header says: width, height and PIL mode (the mode fixes the
channel count; two modes that would read alike still go to different packs). Within a
group, packs of at most K are formed in input order; what is left over runs alone.

An interrupted pack leaves every image its own single-fit checkpoint and a report saying at
which step of which pack it stopped (``work.interrupted_pack``): the images still unfinished
are packed again (K at a time) and continue together from their checkpoints. Other images to
resume (a lone fit's checkpoint, a periodic checkpoint left by a worker that died) and images
whose header cannot be read run alone, as without packing; so does everything with K = 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dip.batch.plan import BatchError, ImageJob
from dip.batch.work import interrupted_pack, state

#: a pack: the images fitted together, in input order (one image: today's single fit)
Pack = tuple[ImageJob, ...]


def check_pack_size(pack: Any) -> int:
    """``pack`` as a whole number >= 1 (images per packed fit); BatchError otherwise."""
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise BatchError(f"pack must be a whole number >= 1 (images fitted together), got {pack!r}",
                         "use 1 to fit every image alone, or e.g. 4")
    return pack


def check_packable(recipe: Any, fit_args: Sequence[str]) -> None:
    """BatchError unless the fits of ``recipe`` (and ``fit_args``) can be packed: Adam on the
    network's weights, no ``--compile``, no trainable operator (blind deblurring)."""
    if "--compile" in fit_args:
        raise BatchError("--compile does not combine with --pack (a pack is rebuilt as its images stop)",
                         "drop --compile, or use --pack 1")
    fit = recipe.fit
    if fit.optimizer != "adam" or fit.optimize != "net":
        raise BatchError(f"recipe {recipe.name!r} cannot be packed (optimizer {fit.optimizer!r}, optimize "
                         f"{fit.optimize!r}; a pack runs Adam on the networks only)",
                         "use --pack 1 for this recipe")
    if recipe.physics.get("name") == "blind_blur":
        raise BatchError("blind deblurring (--kernel-size) cannot be packed: its kernel generator is fitted too",
                         "use --pack 1, or give the known --kernel")


def header_key(job: ImageJob) -> tuple[int, int, str] | None:
    """(width, height, PIL mode) from the image file's header (the pixels are not read), or
    None when it cannot be read (the image's own fit reports why)."""
    from PIL import Image

    try:
        with Image.open(job.input) as image:
            return int(image.size[0]), int(image.size[1]), str(image.mode)
    except (OSError, ValueError, SyntaxError):
        return None


def _key(job: ImageJob, steps: int | None) -> tuple | None:
    """What ``job`` must share with the other images of its pack, or None: alone."""
    mode = state(job, steps)
    if mode == "fresh":
        header = header_key(job)
        return None if header is None else ("fresh", header)
    interrupted = interrupted_pack(job) if mode == "resume" else None
    return None if interrupted is None else ("resume", interrupted)


def plan_packs(jobs: Sequence[ImageJob], size: int, steps: int | None = None) -> list[Pack]:
    """Group ``jobs`` (the images to fit) into packs of at most ``size`` images.

    Args:
        jobs: images to fit, in input order.
        size: most images per pack (1: every image alone).
        steps: the batch's total steps (``work.state``: which images resume).
    Returns:
        the packs, ordered by their first image's place in ``jobs``: fresh images of one
        header key (``header_key``) together, and images of one interrupted pack stopped at one
        step together, ``size`` at a time; every other image alone.
    """
    check_pack_size(size)
    packs: list[list[ImageJob]] = []
    open_packs: dict[tuple, list[ImageJob]] = {}
    for job in jobs:
        key = _key(job, steps) if size > 1 else None
        if key is None:
            packs.append([job])
            continue
        current = open_packs.get(key)
        if current is None or len(current) >= size:
            current = []
            open_packs[key] = current
            packs.append(current)
        current.append(job)
    return [tuple(pack) for pack in packs]
