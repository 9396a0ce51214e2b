"""One-call task helpers: ``dip.denoise``, ``dip.super_resolve``, ``dip.inpaint``, ...

Each takes an image tensor (C, H, W) or (1, C, H, W), float in [0, 1], runs the task's
recipe (``dip.recipes``) with any ``FitConfig`` overrides, and returns a ``FitResult`` whose
``image`` is the restored image (1, C, H, W). ``ensemble=K`` fits K members (seeds ``seed`` to
``seed + K - 1``) at once in one packed network and returns an ``EnsembleResult``: ``image``
is the mean of the members' images, ``members`` their own results.
"""
from __future__ import annotations

import torch

from dip import recipes
from dip.engine import FitResult
from dip.engine.packed_result import EnsembleResult


def denoise(img: torch.Tensor, *, sigma: float | None = None, recipe: str | None = None,
            gt: torch.Tensor | None = None, callbacks=(), ensemble: int = 1,
            **overrides) -> FitResult | EnsembleResult:
    """Denoise ``img``. ``sigma`` (noise level in 0..255 units) picks ``denoise-50`` for
    sigma >= 37.5, else ``denoise``; ``recipe`` names one directly."""
    name = recipe or ("denoise-50" if sigma is not None and sigma >= 37.5 else "denoise")
    return recipes.run(recipes.get(name, **overrides), img, gt=gt, callbacks=callbacks, ensemble=ensemble)


def remove_jpeg_artifacts(img: torch.Tensor, *, recipe: str = "jpeg", gt=None, callbacks=(), ensemble: int = 1,
                          **overrides) -> FitResult | EnsembleResult:
    """Remove JPEG compression artefacts from ``img``."""
    return recipes.run(recipes.get(recipe, **overrides), img, gt=gt, callbacks=callbacks, ensemble=ensemble)


def super_resolve(img: torch.Tensor, factor: int = 4, *, recipe: str | None = None, gt=None,
                  callbacks=(), ensemble: int = 1, **overrides) -> FitResult | EnsembleResult:
    """Upscale the low-resolution ``img`` (C, h, w) by an integer ``factor`` >= 2; the result
    has size (h * factor, w * factor). Uses recipe ``sr{factor}`` where one exists (2, 4, 8),
    else ``sr4``'s settings with the given factor."""
    name = recipe or (f"sr{factor}" if f"sr{factor}" in recipes.names() else "sr4")
    return recipes.run(recipes.get(name, factor=factor, **overrides), img, gt=gt, callbacks=callbacks,
                       ensemble=ensemble)


def inpaint(img: torch.Tensor, mask: torch.Tensor, *, recipe: str = "inpaint-text", gt=None,
            callbacks=(), ensemble: int = 1, **overrides) -> FitResult | EnsembleResult:
    """Fill the pixels of ``img`` where ``mask`` (H, W) or (1|C, H, W) is zero (non-zero = known)."""
    return recipes.run(recipes.get(recipe, **overrides), img, mask=mask, gt=gt, callbacks=callbacks,
                       ensemble=ensemble)


def restore(img: torch.Tensor, mask: torch.Tensor, *, recipe: str = "restore-50", gt=None,
            callbacks=(), ensemble: int = 1, **overrides) -> FitResult | EnsembleResult:
    """Restore missing pixels (mask zero) scattered over ``img``."""
    return recipes.run(recipes.get(recipe, **overrides), img, mask=mask, gt=gt, callbacks=callbacks,
                       ensemble=ensemble)


def flash_no_flash(flash: torch.Tensor, noflash: torch.Tensor, *, recipe: str = "flash", callbacks=(),
                   ensemble: int = 1, **overrides) -> FitResult | EnsembleResult:
    """Combine a flash and a no-flash photograph of the same scene: the network is fed the
    flash image and fitted to the no-flash one; stopping early keeps the flash image's detail
    with the no-flash lighting."""
    return recipes.run(recipes.get(recipe, **overrides), noflash, flash=flash, callbacks=callbacks,
                       ensemble=ensemble)


def deblur(img: torch.Tensor, kernel=None, *, kernel_size=None, recipe: str | None = None,
           padding: str | None = None, gt=None, callbacks=(), ensemble: int = 1,
           **overrides) -> FitResult | EnsembleResult:
    """Deblur ``img`` (C, H, W). The result has ``img``'s size. Give exactly one of:

    - ``kernel``, the known point-spread function: a tensor or array (Kh, Kw) shared by the
      channels or (C, Kh, Kw) one per channel (normalised to sum 1), or a spec of
      ``dip.physics.parse_kernel`` (``"gaussian:1.6"``, ``"box:5"``, ``"motion:9,30"``, a
      ``.npy`` or image file); recipe ``deblur``;
    - ``kernel_size``, K or (Kh, Kw) (3 to 129), for blind deblurring: the kernel is estimated
      with the image (``dip.physics.BlindBlur``); recipe ``deblur-blind``. The estimate is
      ``result.physics.kernel`` ((1, Kh, Kw) float32, non-negative, summing to 1), the one of the
      returned image.

    ``padding`` replaces the recipe's boundary model (``"valid"``: the fit also renders the
    margin the scene blurred in from, the default; or ``"reflect"``, ``"replicate"``, ...)."""
    from dip.physics import parse_kernel

    if (kernel is None) == (kernel_size is None):
        raise ValueError("give exactly one of kernel= (the known blur) and kernel_size= (blind: the blur's size), "
                         f"got {'both' if kernel is not None else 'neither'}")
    blind = kernel is None
    name = recipe or ("deblur-blind" if blind else "deblur")
    r = recipes.get(name, **overrides)
    wanted = "blind_blur" if blind else "blur"
    if r.physics.get("name") != wanted:
        if r.task != "deblur":
            raise ValueError(f"recipe {name!r} is for the {r.task} task, not deblur")
        raise ValueError(f"recipe {name!r} is for {'blind' if not blind else 'non-blind'} deblurring; "
                         f"{'pass kernel_size= instead of kernel=' if not blind else 'pass kernel= (or drop recipe=)'}")
    if padding is not None:
        r.physics = {**r.physics, "padding": padding}
    if blind:
        r.physics = {**r.physics, "kernel_size": kernel_size}
        return recipes.run(r, img, gt=gt, callbacks=callbacks, ensemble=ensemble)
    psf = parse_kernel(kernel) if isinstance(kernel, str) else kernel
    return recipes.run(r, img, kernel=psf, gt=gt, callbacks=callbacks, ensemble=ensemble)

