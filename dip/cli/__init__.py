"""The ``dip`` command: restore an image from the shell.

    dip denoise noisy.png -o clean.png
    dip sr small.png --factor 4 -o large.png --gt truth.png --report run.json --plot curves.png
    dip inpaint photo.png --mask holes.png -o filled.png
    dip resume filled.png.ckpt --steps 6000   # continue an interrupted or finished fit
    dip demo            # restores a bundled example image
    dip info            # version, recipes, packages (--full: native ops, threads, CUDA)

Every fit command reads its inputs, checks everything that can be checked before fitting
(files, sizes, options, device, memory), and only then fits. A mistake is answered with exit
code 2 and one or two lines on stderr — what is wrong and what to do — and no output file is
created or overwritten. Outputs are written atomically (temporary file, then rename).
Every command that writes keeps existing files unless ``--force``, and never writes over one
of its own inputs, even with ``--force``.

Exit codes: 0 success; 1 an unexpected failure (run with ``--debug`` for the traceback);
2 bad input or options; 130 interrupted (SIGINT), 143 terminated (SIGTERM).

Interruption: the first SIGINT (Ctrl-C) or SIGTERM during a fit lets the current step finish,
then the checkpoint (``--checkpoint``, else ``OUT.ckpt`` next to the output) and the image so
far are written and the command exits 130 / 143; ``dip resume OUT.ckpt`` continues the fit
(bit-exact on the CPU). ``--checkpoint-every N`` also saves the checkpoint every N steps.

Memory check: before fitting, the generator is run once at its smallest input size and the
outputs of its leaf modules are counted and scaled to the padded image size: what autograd
keeps for the backward pass, counted once more for the gradients flowing back, plus four
copies of the parameters (weights, gradients, Adam's two moments), times 1.25 for allocator
slack (see ``estimate_fit_memory``). It is rough and errs high; it is compared with the memory
the system reports as available.

Modules, one job each (as in ``dip.batch``):

- ``entry``: ``main``, dispatch to the command, errors as exit codes; ``parser``: the parser,
  built from each command module's ``add_parser``;
- ``options``: the options of the fit commands and ``dip resume``, declared once; ``checks``:
  the checks both make before fitting (outputs, frames, ground truth, device); ``argtypes``;
- ``fit_command`` (denoise, jpeg, sr, inpaint, restore, flash, deblur; the deblur command's
  kernel options are ``kernel_options``), ``resume_command``, ``demo``,
  ``info``, ``hooks`` (eval, export, render, batch, implemented in their own modules);
- ``job``: fitting a checked ``Job`` and writing its outputs; ``rescue``: where a file goes
  when it cannot be written after the fit (beside the other outputs, else the temp folder:
  exit 1, never a lost fit); ``progress``: the fit callbacks (progress bar, frames);
  ``report``: the JSON report; ``memory``: the memory estimate; ``space``: free disk space
  against what a run writes; ``guards``: --force and the checks of export, render and eval;
  ``notes``: notes on inputs converted on reading; ``errors``: exit codes and ``UsageError``.
  Plots are drawn by ``dip.plots``, files written by ``dip.files.atomic_write``.

Nothing here imports torch before a command needs it: ``dip --help`` stays fast.
"""
from __future__ import annotations

from dip.cli.argtypes import whole_number
from dip.cli.checks import CHECKPOINT_SUFFIX
from dip.cli.demo import DEMO_SIGMA, DEMO_SIZE, DEMO_STEPS
from dip.cli.entry import main
from dip.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from dip.cli.fit_command import TASKS, recipe_for
from dip.cli.hooks import HOOKS
from dip.cli.info import example_image_path, info_dict
from dip.cli.memory import estimate_fit_memory
from dip.cli.parser import build_parser
from dip.cli.progress import FrameSaver, ProgressBar

__all__ = [
    "main", "build_parser", "recipe_for", "UsageError", "whole_number", "estimate_fit_memory",
    "example_image_path", "info_dict", "ProgressBar", "FrameSaver", "TASKS", "HOOKS", "CHECKPOINT_SUFFIX",
    "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERRUPTED", "DEMO_SIGMA", "DEMO_STEPS", "DEMO_SIZE",
]
