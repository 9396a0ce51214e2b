"""The fitting engine's public names, as imported since the first release.

Their home is :mod:`dip.engine` (one module per job); this module keeps ``from dip.engine import
FitConfig, fit, generator_geometry, ...`` working.

``dip.fit`` is also the package's name for the function :func:`dip.engine.fit`. Importing this
module makes Python bind the package attribute ``dip.fit`` to the module, so the module is
callable and forwards to the function: ``dip.fit(...)`` fits whichever of the two it names.
"""
import sys
import types
from typing import Any

from dip.engine import (
                        OPTIMIZE,
                        OPTIMIZERS,
                        PRECISIONS,
                        STOPS,
                        FitConfig,
                        FitResult,
                        FitState,
                        StepEvent,
                        center_crop_box,
                        data_loss,
                        fit,
                        generator_geometry,
                        pad_to,
                        padded_size,
                        render,
                        tv_loss,
)

__all__ = [
    "OPTIMIZE", "OPTIMIZERS", "PRECISIONS", "STOPS", "FitConfig", "FitResult", "FitState", "StepEvent",
    "center_crop_box", "data_loss", "fit", "generator_geometry", "pad_to", "padded_size", "render", "tv_loss",
]


class _CallableModule(types.ModuleType):
    """The module type of ``dip.fit``: calling the module calls :func:`dip.engine.fit`."""

    def __call__(self, *args: Any, **kwargs: Any) -> FitResult:
        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
