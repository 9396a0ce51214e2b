"""Curves of fits as PNG images (matplotlib's Agg canvas; no display, no pyplot state).

``fit_curves_png`` draws one fit's loss and PSNR against the step (``dip denoise ... --plot``);
``eval_curve_png`` draws one ``dip.evaluate.run_case`` row: PSNR against the step with the
input, baseline, fixed-step and automatic-stop results marked (``dip eval --plots``). Both
return the PNG file's bytes; the caller writes them (``dip.files.atomic_write``).
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["eval_curve_png", "fit_curves_figure", "fit_curves_png"]


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def fit_curves_png(history: Mapping[str, Any], *, title: str, stop_step: int | None = None,
                   input_psnr: float | None = None, returned_step: int | None = None,
                   returned_psnr: float | None = None) -> bytes:
    """:func:`fit_curves_figure` as PNG bytes."""
    return _png(fit_curves_figure(history, title=title, stop_step=stop_step, input_psnr=input_psnr,
                                  returned_step=returned_step, returned_psnr=returned_psnr))


def fit_curves_figure(history: Mapping[str, Any], *, title: str, stop_step: int | None = None,
                      input_psnr: float | None = None, returned_step: int | None = None,
                      returned_psnr: float | None = None):
    """Loss (log scale) and PSNR against the step, side by side, 900x360 pixels (a matplotlib
    ``Figure`` on an Agg canvas).

    Args:
        history: a ``FitResult.history``: ``step`` and ``loss`` lists; ``psnr_step``, ``psnr``
            and ``psnr_avg`` (dB) when the fit had a ground truth.
        title: the figure's title.
        stop_step: where automatic stopping returned its image (a dashed line), or None.
        input_psnr: the observation's PSNR against the ground truth (dB), drawn as a dotted
            line, or None.
        returned_step, returned_psnr: the step and PSNR (dB) of the returned image, marked with
            a dot, or None.
    Sparse curves (fewer than 30 points) are drawn with markers; step ticks are integers.
    """
    fig = _figure((9, 3.6))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(history["step"], history["loss"], lw=0.8, marker="." if len(history["step"]) < 30 else None)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("fit loss")
    ax.grid(alpha=0.3)
    _integer_steps(ax)
    ax2 = fig.add_subplot(1, 2, 2)
    if history.get("psnr_step"):
        marker = "o" if len(history["psnr_step"]) < 30 else None
        ax2.plot(history["psnr_step"], history["psnr"], label="output", lw=1, marker=marker, ms=3)
        averaged = history.get("psnr_avg") and any(
            a != b for a, b in zip(history["psnr_avg"], history["psnr"], strict=False))
        if averaged:
            ax2.plot(history["psnr_step"], history["psnr_avg"], label="averaged", lw=1, marker=marker, ms=3)
        if input_psnr is not None and math.isfinite(input_psnr):
            ax2.axhline(input_psnr, ls=":", color="grey", lw=0.8, label=f"input {input_psnr:.2f} dB")
        if returned_step is not None and returned_psnr is not None and math.isfinite(returned_psnr):
            ax2.plot([returned_step], [returned_psnr], "o", color="red", ms=5,
                     label=f"returned {returned_psnr:.2f} dB (step {returned_step})")
        ax2.set_ylabel("PSNR (dB)")
        ax2.legend(loc="lower right", fontsize=8)
        _integer_steps(ax2)
    else:
        ax2.text(0.5, 0.5, "no ground truth (--gt):\nno PSNR", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_xticks([])
        ax2.set_yticks([])
    if stop_step is not None:
        for a in (ax, ax2):
            a.axvline(stop_step, color="grey", ls="--", lw=0.8)
    ax2.set_xlabel("step")
    ax2.set_title("PSNR vs ground truth")
    ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def eval_curve_png(row: Mapping[str, Any]) -> bytes:
    """PSNR against the step of one ``dip.evaluate.run_case`` row, 640x400 pixels: the plain
    and averaged outputs, the input and baseline PSNRs, the fixed-step result and the
    automatic stop (step and result)."""
    import numpy as np

    c = row["curve"]
    fig = _figure((6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(c["step"], c["psnr"], lw=0.8, label="output")
    if np.isfinite(np.asarray(c["psnr_avg"], dtype=float)).any():
        ax.plot(c["step"], c["psnr_avg"], lw=1.2, label="averaged output")
    for key, style, label in (("input_psnr", ":", "input"), ("baseline_psnr", "--", "baseline")):
        if math.isfinite(row[key]):
            ax.axhline(row[key], ls=style, color="grey", lw=0.8, label=f"{label} {row[key]:.2f}")
    ax.plot([row["fixed_steps"]], [row["fixed_psnr"]], "s", color="black",
            label=f"fixed result {row['fixed_psnr']:.2f}")
    ax.axvline(row["auto_steps"], color="red", lw=0.8, label=f"auto stop {row['auto_steps']}")
    if row["auto_return_step"] is not None:
        ax.plot([row["auto_return_step"]], [row["auto_psnr"]], "o", color="red",
                label=f"auto result {row['auto_psnr']:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"PSNR (dB, {row['metric']})")
    ax.set_title(f"{row['case']} / {row['image']} / seed {row['seed']}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)
