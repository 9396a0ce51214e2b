"""How much memory a fit needs, and how much the machine has: ``estimate_fit_memory``,
``available_memory``.

The estimate runs the generator once at its smallest input size and counts the outputs of
its leaf modules, scaled to the padded image size: what autograd keeps for the backward pass,
counted once more for the gradients flowing back, plus four copies of the parameters (weights,
gradients, Adam's two moments), times 1.25 for allocator slack. It is rough and errs high.
"""
from __future__ import annotations

import dataclasses
import os

MEMORY_SLACK = 1.25


def available_memory(device: str) -> int | None:
    """Bytes of memory available for a fit on ``device``, or None when unknown."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _leaf_output_elements(net, depth: int, z_hw: tuple[int, int]) -> int:
    """Elements of all leaf modules' outputs for one forward pass on a (1, depth, *z_hw) input."""
    import torch

    total = [0]

    def hook(_module, _inp, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net(torch.zeros(1, depth, *z_hw))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _build_net(recipe, channels: int, in_channels: int | None):
    """(input depth, the recipe's generator), built without touching the global random state."""
    import torch

    from dip import models

    depth = in_channels if in_channels is not None else recipe.input_depth
    kwargs = {k: v for k, v in recipe.net.items() if k != "name"}
    with torch.random.fork_rng(devices=[]):
        net = models.build(recipe.net["name"], depth, channels, **kwargs)
    return depth, net


@dataclasses.dataclass(frozen=True)
class FitEstimate:
    """What a fit will take: ``memory`` (bytes, rough, errs high), the generator's ``params``
    (elements) and the ``padded_hw`` (H, W) it renders before cropping to the image."""

    memory: int
    params: int
    padded_hw: tuple[int, int]


def estimate_fit_memory(recipe, x_hw: tuple[int, int], channels: int, in_channels: int | None = None) -> int:
    """Rough peak memory of fitting ``recipe`` to an image of size ``x_hw`` (bytes); see ``fit_estimate``."""
    return fit_estimate(recipe, x_hw, channels, in_channels).memory


def fit_estimate(recipe, x_hw: tuple[int, int], channels: int, in_channels: int | None = None) -> FitEstimate:
    """Rough peak memory of fitting ``recipe`` to an image of size ``x_hw`` (bytes).

    Runs the generator once, without gradients, at the smallest input it accepts and counts
    the elements of the outputs of its leaf modules; every layer's output scales with the
    number of pixels, so the count is scaled to the padded size of the image. Autograd keeps
    those outputs for the backward pass and as many again flow back as gradients (x2); add
    four copies of the parameters (weights, gradients, two Adam moments), the input code, a
    few image-sized buffers and, with automatic stopping, its window of W outputs; fp32 (4 bytes);
    times 1.25 for allocator slack. It errs high for bf16.
    """
    from dip.engine import generator_geometry

    depth, net = _build_net(recipe, channels, in_channels)
    net.eval()  # running statistics: the smallest input may have 1x1 maps at the deepest scale
    out_hw, z_hw = generator_geometry(net, x_hw)
    small_out, small_z = generator_geometry(net, (1, 1))
    activations = _leaf_output_elements(net, depth, small_z)
    scale = (out_hw[0] * out_hw[1]) / float(small_out[0] * small_out[1])
    params = sum(p.numel() for p in net.parameters())
    # automatic stopping keeps the last W outputs (its window) on the fit's device
    window = int(recipe.fit.stop_window) if recipe.fit.stop == "auto" else 0
    elements = (2 * activations * scale + 4 * params + 2 * depth * z_hw[0] * z_hw[1]
                + (4 + window) * channels * out_hw[0] * out_hw[1])
    return FitEstimate(memory=int(MEMORY_SLACK * 4 * elements), params=int(params),
                       padded_hw=(int(out_hw[0]), int(out_hw[1])))


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 KiB``, ... ``2.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
