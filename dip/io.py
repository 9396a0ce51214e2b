"""Deprecated alias of :mod:`dip.images` (this name hid the standard library's ``io``).

``from dip import io`` keeps working for now and warns once (DeprecationWarning); import
``dip.images`` instead: ``from dip import images``.
"""
import warnings

from dip.images import *  # noqa: F401,F403
from dip.images import __all__  # noqa: F401

warnings.warn("dip.io is deprecated and will be removed; use dip.images (same functions)",
              DeprecationWarning, stacklevel=2)
