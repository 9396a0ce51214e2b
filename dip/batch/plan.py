"""Which images a batch restores, with their masks, ground truths and output files.

Inputs are files, folders (the image files directly inside, sorted by name; not recursive) or
glob patterns. Files are recognised as images by their suffix (``input_suffixes``: what
``dip.images`` writes, ``SUPPORTED_SUFFIXES``, and GIF, which a fit reads);
other files inside folders are ignored silently, named or matched ones are reported. Every image
gets the files ``OUTDIR/<stem>.<ext>`` (the restored image), ``OUTDIR/<stem>.json`` (the fit's
report), ``OUTDIR/<stem>.ckpt`` (its checkpoint) and ``OUTDIR/<stem>.log`` (the fit's messages),
so two inputs with the same stem (``a.png`` and ``a.jpg``, or ``x/a.png`` and ``y/a.png``) are
refused.

Masks (inpaint, restore) follow a naming rule: a template with ``{stem}``, ``{name}`` (file name)
and ``{suffix}`` (with its dot) placeholders, resolved in the image's folder or in a masks folder
(default ``{stem}_mask.png`` next to the image). A file that is the mask of another input is not
an input itself. Ground truths (``--gt DIR``) are matched by stem: ``DIR/<stem>.<any image
suffix>``.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

log = logging.getLogger(__name__)

#: tasks a batch runs: one observation image per fit (flash needs two images per fit)
BATCH_TASKS = ("denoise", "jpeg", "sr", "inpaint", "restore", "deblur")
MASK_TASKS = ("inpaint", "restore")
DEFAULT_MASK_PATTERN = "{stem}_mask.png"
#: how many names an error message lists before "and N more"
_LIST_MAX = 5


class BatchError(ValueError):
    """A problem with the batch's inputs or options, found before any fit runs.

    ``message`` says what is wrong (with which file or value); ``hint`` what to do.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message if hint is None else f"{message} ({hint})")
        self.message = message
        self.hint = hint


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """One image of a batch and the files of its fit (all absolute paths).

    Picklable: it travels to Ray workers.
    """

    stem: str
    input: Path
    output: Path
    report: Path
    checkpoint: Path
    log: Path
    mask: Path | None = None
    gt: Path | None = None


#: formats a fit reads but ``dip.images`` does not write (a GIF's first frame): inputs, not outputs
READ_ONLY_SUFFIXES = (".gif",)


def _supported_suffixes() -> tuple[str, ...]:
    """Suffixes of the formats the restored images can be written in."""
    from dip import images

    return tuple(sorted(images.SUPPORTED_SUFFIXES))


def input_suffixes() -> tuple[str, ...]:
    """Suffixes of the files a batch takes as images: every one a single fit command reads."""
    return tuple(sorted(set(_supported_suffixes()) | set(READ_ONLY_SUFFIXES)))


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in input_suffixes()


def _shorten(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_MAX])
    if len(items) > _LIST_MAX:
        shown += f" and {len(items) - _LIST_MAX} more"
    return shown


def collect_inputs(specs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand input specs into image files.

    Args:
        specs: file paths, folder paths (their image files, sorted, not recursive) or glob
            patterns (``*``, ``?``, ``[...]``; ``**`` recursive).
    Returns:
        ``(images, ignored)``: absolute image paths without duplicates, in the order given
        (folders and globs sorted); ``ignored`` lists messages about named or matched files that
        are not supported images.
    Raises:
        BatchError: a spec that names no existing file or folder and matches nothing.
    """
    images: list[Path] = []
    seen = set()
    ignored: list[str] = []
    missing: list[str] = []

    def add(path: Path, named: bool) -> None:
        path = path.resolve()
        if path in seen or not path.is_file():
            return
        if not _is_image_name(path):
            if named:
                ignored.append(f"{path}: not a supported image file (suffix {path.suffix or '(none)'!r})")
            return
        seen.add(path)
        images.append(path)

    for spec in specs:
        text = os.fspath(spec)
        path = Path(text).expanduser()
        if path.is_dir():
            for child in sorted(path.iterdir()):
                add(child, named=False)
        elif path.is_file():
            add(path, named=True)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                missing.append(text)
            for match in files:
                add(match, named=True)
        else:
            missing.append(text)
    if missing:
        raise BatchError(f"no file, folder or glob match for input {_shorten(missing)}",
                         "check the paths; quote glob patterns so that the shell does not expand them")
    return images, ignored


def mask_path(image: Path, pattern: str = DEFAULT_MASK_PATTERN, masks_dir: Path | None = None) -> Path:
    """The mask file of ``image`` by the naming rule ``pattern`` (see the module docstring).

    Raises:
        BatchError: the pattern has an unknown placeholder.
    """
    try:
        name = pattern.format(stem=image.stem, name=image.name, suffix=image.suffix)
    except (KeyError, IndexError, ValueError) as exc:
        raise BatchError(f"mask pattern {pattern!r} is not valid ({exc})",
                         "use the placeholders {stem}, {name} and {suffix}, e.g. '{stem}_mask.png'") from None
    folder = masks_dir if masks_dir is not None else image.parent
    return (folder / name).resolve()


def find_gt(stem: str, gt_dir: Path) -> Path | None:
    """The ground truth of image ``stem`` in ``gt_dir``: the image file named ``<stem>.<suffix>``
    (``.png`` first, then the other suffixes in sorted order), or None."""
    suffixes = input_suffixes()
    ordered = (".png",) + tuple(s for s in suffixes if s != ".png")
    for suffix in ordered:
        for candidate in (gt_dir / f"{stem}{suffix}", gt_dir / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate.resolve()
    return None


def output_suffix(image: Path, ext: str) -> str:
    """Suffix of the restored image: ``.ext``, or the input's suffix when ``ext == "same"``
    (``.png`` for an input in a format that is read only, such as GIF).

    Raises:
        BatchError: ``ext`` is not a supported image format.
    """
    if ext == "same":  # a format that is read only (GIF) is written as PNG
        suffix = image.suffix.lower()
        return suffix if suffix in _supported_suffixes() else ".png"
    suffix = "." + ext.lower().lstrip(".")
    if suffix not in _supported_suffixes():
        raise BatchError(f"--ext {ext!r} is not a supported image format",
                         f"use one of {', '.join(s.lstrip('.') for s in _supported_suffixes())} or 'same'")
    return suffix


def plan(task: str, specs: Sequence[str | os.PathLike], outdir: str | os.PathLike, *,
         mask_pattern: str = DEFAULT_MASK_PATTERN, masks_dir: str | os.PathLike | None = None,
         gt_dir: str | os.PathLike | None = None, ext: str = "png") -> tuple[list[ImageJob], list[str]]:
    """Everything a batch will do, checked before any fit runs.

    Args:
        task: one of ``BATCH_TASKS``.
        specs: inputs (see ``collect_inputs``).
        outdir: output folder (need not exist yet; its parent must).
        mask_pattern, masks_dir: mask naming rule (inpaint, restore).
        gt_dir: folder of ground truths, matched by stem (every image must have one).
        ext: output format suffix (``png``, ``tif``...) or ``same`` (the input's).
    Returns:
        ``(jobs, ignored)``: one ``ImageJob`` per image, and messages about ignored files.
    Raises:
        BatchError: unknown task, no inputs, missing masks or ground truths, two images with the
            same output name, an output folder that cannot be used.
    """
    if task not in BATCH_TASKS:
        raise BatchError(f"unknown batch task {task!r}", f"choose one of: {', '.join(BATCH_TASKS)}")
    out = _check_outdir(Path(outdir))
    images, ignored = collect_inputs(specs)
    masks_folder = _check_folder(masks_dir, "--masks") if masks_dir is not None else None
    gts_folder = _check_folder(gt_dir, "--gt") if gt_dir is not None else None

    inside = [p for p in images if p.parent == out]
    if inside:
        ignored.extend(f"{p}: inside the output folder, not an input" for p in inside)
        images = [p for p in images if p.parent != out]
    masks: dict[Path, Path] = {}
    if task in MASK_TASKS:
        masks = {p: mask_path(p, mask_pattern, masks_folder) for p in images}
        mask_files = set(masks.values())
        images = [p for p in images if p not in mask_files]
        missing = [f"{masks[p]} (for {p.name})" for p in images if not masks[p].is_file()]
        if missing:
            raise BatchError(f"missing mask for {len(missing)} image(s): {_shorten(missing)}",
                             f"masks are found by the rule {mask_pattern!r}"
                             + (f" in {masks_folder}" if masks_folder else " next to each image")
                             + "; change it with --mask-pattern / --masks DIR")
    if not images:
        _no_images(out, inside)
    _check_clashes(images)

    jobs = []
    missing_gt = []
    for image in images:
        stem = image.stem
        gt = find_gt(stem, gts_folder) if gts_folder is not None else None
        if gts_folder is not None and gt is None:
            missing_gt.append(image.name)
        jobs.append(ImageJob(stem=stem, input=image, output=out / f"{stem}{output_suffix(image, ext)}",
                             report=out / f"{stem}.json", checkpoint=out / f"{stem}.ckpt",
                             log=out / f"{stem}.log", mask=masks.get(image), gt=gt))
    if missing_gt:
        raise BatchError(f"no ground truth in {gts_folder} for {_shorten(missing_gt)}",
                         "ground truths are matched by file stem (DIR/<stem>.png, .tif, ...)")
    return jobs, ignored


def _no_images(out: Path, inside: Sequence[Path]) -> NoReturn:
    """Raise the error for a batch left with no image, saying why when the images found were all
    in the output folder."""
    if inside:
        raise BatchError(f"no input images: every image found ({_shorten([p.name for p in inside])}) is inside "
                         f"the output folder {out}, where the batch writes its results",
                         "put the inputs in another folder, or choose another output folder with -o")
    raise BatchError("no input images: the inputs name no image file "
                     f"({', '.join(input_suffixes())})", "check the paths and patterns")


def _check_clashes(images: Sequence[Path]) -> None:
    by_stem: dict[str, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image.stem, []).append(image)
    clashes = [" and ".join(str(p) for p in group) for group in by_stem.values() if len(group) > 1]
    if clashes:
        raise BatchError(f"inputs with the same name would write the same output files: {_shorten(clashes)}",
                         "rename them, or run them as separate batches into different output folders")
    reserved = [p for p in images if p.stem in ("manifest", "summary")]
    if reserved:
        raise BatchError(f"input {reserved[0]} would overwrite the batch's own {reserved[0].stem} file",
                         "rename the image")


def _check_outdir(out: Path) -> Path:
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise BatchError(f"output folder {out} is a file", "give a folder name with -o")
    if not out.exists():
        parent = out.resolve().parent
        if not parent.is_dir():
            raise BatchError(f"output folder {out}: its parent folder {parent} does not exist",
                             "create it first or choose another folder")
        _check_writable(parent, f"output folder {out}: cannot create it in {parent}")
        return out.resolve()
    _check_writable(out, f"output folder {out} is not writable")
    return out.resolve()


def _check_writable(folder: Path, what: str) -> None:
    """A file can be created in ``folder`` (tried: ``os.access`` says yes to root on a read-only disk)."""
    from dip.files import probe_folder

    try:
        probe_folder(folder)
    except OSError as exc:
        raise BatchError(f"{what} ({exc.strerror or exc})", "choose a folder you can write to") from None


def _check_folder(path: str | os.PathLike, option: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise BatchError(f"{option} {folder} is not a folder", "give an existing folder")
    return folder.resolve()
