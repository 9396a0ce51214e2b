"""Fit callbacks of the command: the progress bar and the --save-every frames.

Both are called with the fit's ``StepEvent`` (``dip.fit``); ``every`` says how often.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


class ProgressBar:
    """A tqdm bar fed by the fit's step events.

    Called every step, it advances the bar without touching the loss tensor; at most every
    ``refresh_s`` seconds it reads the loss (one host sync) and the latest PSNR into the bar's
    text. tqdm shows steps/s and the remaining time.
    """

    every = 1

    def __init__(self, total: int, *, disable: bool = False, refresh_s: float = 0.5, desc: str = "fit"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", desc=desc, disable=disable, file=sys.stderr,
                        dynamic_ncols=True, leave=False, mininterval=refresh_s)
        self.refresh_s = refresh_s
        self._last = 0.0
        self._step = 0

    @classmethod
    def for_command(cls, total: int, *, quiet: bool, desc: str) -> ProgressBar:
        """The command's bar: shown when stderr is a terminal (or DIP_PROGRESS is set), never with --quiet."""
        shown = not quiet and (sys.stderr.isatty() or bool(os.environ.get("DIP_PROGRESS")))
        return cls(total, disable=not shown, desc=desc)

    def __call__(self, event) -> None:
        self.bar.update(event.step - self._step)
        self._step = event.step
        now = time.monotonic()
        if now - self._last >= self.refresh_s or event.step == event.steps:
            self._last = now
            post = {"loss": f"{float(event.loss):.2e}"}
            if event.psnr is not None:
                post["psnr"] = f"{event.psnr:.2f}"
            self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()


class FrameSaver:
    """Writes the current image (the averaged one where averaging is on) every ``every`` steps
    to ``folder/step_000100.png`` (8-bit PNG). A frame that cannot be written (full disk) ends
    the frames with one warning, not the fit."""

    def __init__(self, folder: Path, every: int):
        self.folder = folder
        self.every = int(every)
        self.written: list[Path] = []
        #: why writing frames stopped (the fit goes on without them), or None
        self.failure: str | None = None

    def __call__(self, event) -> None:
        from dip import images

        if self.failure is not None:
            return
        image = event.output_avg if event.output_avg is not None else event.output
        path = self.folder / f"step_{event.step:06d}.png"
        try:
            images.write_image(path, image[0], None)
        except OSError as exc:  # a full disk must not end the fit: its result matters more
            self.failure = f"{path}: {exc.strerror or exc}"
            sys.stderr.write(f"dip: warning: cannot write the frame {self.failure}; the fit goes on "
                             "without frames\n")
            return
        self.written.append(path)
