"""The environment switches that force a hardware-dependent choice (torch-free, so that the
command can check them before it loads anything).

Each is ``1`` (force on), ``0`` (force off) or unset / ``auto`` (decide from the hardware); tests
set them to cover both branches on any machine. ``DIP_CPU_ISA`` (which compiled copy of the CPU
kernels runs) takes a copy's name and is checked by the native library.
"""
from __future__ import annotations

import os

#: switch -> what it forces
SWITCHES = {
    "DIP_BF16_NATIVE": "whether bf16 is native on this CPU (precision auto, bf16 fits)",
    "DIP_CHANNELS_LAST": "the channels_last memory layout of fp32 fits on the CPU",
    "DIP_BRANCH_FREE": "the stopping rule's branch-free (accelerator) path",
}

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def forced_choice(variable: str) -> bool | None:
    """The forced value of a hardware-dependent choice: environment ``variable`` set to
    ``1``/``true``/``yes``/``on`` → True, ``0``/``false``/``no``/``off`` → False, unset, empty or
    ``auto`` → None (decide from the hardware). Raises ValueError for any other value."""
    raw = os.environ.get(variable, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise ValueError(f"{variable} must be 0, 1 or auto, got {raw!r}; unset it to let dip decide "
                     "from the hardware")


def bad_switches() -> list[str]:
    """The messages of every switch of ``SWITCHES`` set to a value it does not take (empty when
    all are valid or unset)."""
    bad = []
    for variable in SWITCHES:
        try:
            forced_choice(variable)
        except ValueError as exc:
            bad.append(str(exc))
    return bad
