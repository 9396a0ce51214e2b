"""dip.plots: what the --plot figure shows a user."""
from __future__ import annotations

from dip.plots import fit_curves_figure, fit_curves_png

SHORT = {"step": list(range(1, 31)), "loss": [1.0 / k for k in range(1, 31)],
         "psnr_step": [10, 20, 30], "psnr": [15.0, 18.0, 20.0], "psnr_avg": [14.0, 17.0, 19.5]}


def test_a_short_fit_shows_markers_the_input_and_the_returned_image():
    fig = fit_curves_figure(SHORT, title="t", input_psnr=20.4, returned_step=30, returned_psnr=20.0)
    psnr_axes = fig.axes[1]
    labels = psnr_axes.get_legend_handles_labels()[1]
    assert labels == ["output", "averaged", "input 20.40 dB", "returned 20.00 dB (step 30)"]
    assert psnr_axes.lines[0].get_marker() == "o"  # three points: each is visible
    ticks = [t for t in psnr_axes.get_xticks() if 10 <= t <= 30]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_the_plot_is_a_png_of_900_by_360_pixels():
    data = fit_curves_png(SHORT, title="t")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 900 and int.from_bytes(data[20:24], "big") == 360
