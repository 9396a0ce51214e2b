"""The fitting engine's public names, as imported since the first release.

Their home is :mod:`dip.engine` (one module per job); this module keeps ``from dip.fit import
FitConfig, fit, generator_geometry, ...`` working.
"""
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
