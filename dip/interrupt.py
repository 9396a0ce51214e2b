"""Turn SIGINT / SIGTERM into a request to stop a fit cleanly.

A fit polls ``SignalStop.is_set()`` after every step (``dip.fit.fit(stop_event=...)``): the first
SIGINT (Ctrl-C) or SIGTERM lets the current step finish, after which the caller writes its
checkpoint and the image so far and exits with ``exit_code`` (130 for SIGINT, 143 for SIGTERM,
the shell's convention). A second SIGINT while the first is pending aborts at once with
``KeyboardInterrupt``, for a user who does not want to wait.

Handlers can only be installed from the main thread of the main interpreter; elsewhere (a
worker thread, some task runners) ``SignalStop`` installs nothing and ``is_set`` stays False
unless ``set`` is called.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_NAMES: dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class SignalStop:
    """Context manager: while active, SIGINT/SIGTERM set a flag instead of ending the process.

    Attributes:
        signal_number: the first signal received (int), or None.
        installed: whether the handlers were installed (main thread only).
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = tuple(signals)
        self.signal_number: int | None = None
        self.installed = False
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ flag
    def is_set(self) -> bool:
        """True once a stop was requested."""
        return self._event.is_set()

    def set(self, signum: int = signal.SIGINT) -> None:
        """Request a stop as if ``signum`` had been received."""
        if self.signal_number is None:
            self.signal_number = int(signum)
        self._event.set()

    @property
    def signal_name(self) -> str:
        """"SIGINT", "SIGTERM" (or the signal's number), "" when none was received."""
        if self.signal_number is None:
            return ""
        return _NAMES.get(self.signal_number, str(self.signal_number))

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (130 SIGINT, 143 SIGTERM); 130 when none was received."""
        return 128 + (self.signal_number if self.signal_number is not None else int(signal.SIGINT))

    # --------------------------------------------------------------- handlers
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the step to finish
        self.set(signum)
        log.warning("%s received: stopping after the current step (Ctrl-C again to abort at once)",
                    _NAMES.get(signum, signum))

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            try:
                for sig in self.signals:
                    self._previous[sig] = signal.signal(sig, self._handle)
                self.installed = True
            except ValueError:  # not the main interpreter
                self._restore()
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.installed = False

    def __exit__(self, *exc) -> None:
        self._restore()
