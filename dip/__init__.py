"""dip: Deep Image Prior image restoration.

Restores an image from one corrupted observation y by fitting a randomly initialised
generator G to a fixed random code z so that A(G(z)) matches y; the network's structure is
the only prior.

    >>> import dip
    >>> result = dip.denoise(noisy)           # noisy: (C, H, W) float tensor in [0, 1]
    >>> restored = result.image               # (1, C, H, W)
"""
from dip import inputs, metrics, models, ops, physics, recipes
from dip._version import __version__
from dip.fit import FitConfig, FitResult, StepEvent, fit
from dip.tasks import deblur, denoise, flash_no_flash, inpaint, remove_jpeg_artifacts, restore, super_resolve

__all__ = [
    "__version__", "ops", "physics", "models", "metrics", "inputs", "recipes",
    "FitConfig", "FitResult", "StepEvent", "fit",
    "denoise", "remove_jpeg_artifacts", "super_resolve", "inpaint", "restore", "flash_no_flash", "deblur",
]
