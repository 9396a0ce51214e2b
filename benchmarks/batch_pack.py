"""Whole batches, ``--pack K`` against ``--pack 1``: the same images, the same fits, one process.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/batch_pack.py [--images 4] [--size 64] \\
        [--steps 30] [--rounds 2] [--precisions fp32,bf16]

Per round and precision, ``dip.batch.run_batch`` restores ``--images`` smooth test images
(``tests/oracle.py``) of ``--size``² with the denoise recipe, ``--steps`` steps each
(``--stop steps``), one worker, one thread, twice: every image alone, and all of them in one
pack (``--pack`` = the image count); the order alternates from round to round. Printed: the
batch's wall-clock seconds (with the child processes' start: one per image alone, one per
pack), and the step time of the four fits (alone: the sum of the images' reported ms/step;
packed: the pack's). Both are same-run ratios only; absolute times depend on the machine's load.

Measured (Intel Xeon, AVX-512 + AMX, 1 thread, 4 images of 64², 30 steps, 2 rounds, machine
shared with other jobs, load about 5.7 on 2 cores):

- fp32: step of the four 895 / 840 ms alone, 875 / 797 ms packed (1.02x, 1.05x); batch 65.8 / 60.3 s
  alone, 38.9 / 35.5 s packed (1.69x, 1.70x: three child processes fewer to start).
- bf16: step 560 / 564 ms alone, 399 / 376 ms packed (1.40x, 1.50x); batch 54.0 / 53.2 s alone,
  24.0 / 22.8 s packed (2.25x, 2.33x).

With fits of thousands of steps the step ratio decides; the start-up saved (seconds per image)
matters for short fits only.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def _batch(inputs: Path, out: Path, steps: int, precision: str, pack: int) -> tuple[float, float]:
    """(wall seconds, ms per step of all the images together) of one batch."""
    from dip.batch import run_batch

    start = time.perf_counter()
    result = run_batch("denoise", [inputs], out, steps=steps, threads=1, pack=pack, handle_signals=False,
                       fit_args=["--stop", "steps", "--precision", precision])
    wall = time.perf_counter() - start
    if result.exit_code != 0:
        raise RuntimeError(f"the batch failed: {result.records}")
    ms = [json.loads(Path(r["report"]).read_text())["ms_per_step"] for r in result.records]
    return wall, (ms[0] if pack > 1 else sum(ms))


def main() -> None:
    from tests import oracle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dip-batch-pack-"))
    try:
        (root / "in").mkdir()
        for i in range(args.images):
            oracle.write_image(root / "in" / f"i{i}.png", args.size, args.size, seed=i)
        for rnd in range(args.rounds):
            for precision in args.precisions.split(","):
                order = (1, args.images) if rnd % 2 == 0 else (args.images, 1)
                for pack in order:
                    wall, ms = _batch(root / "in", root / f"out-{rnd}-{precision}-{pack}", args.steps, precision, pack)
                    print(f"round {rnd} {precision} pack {pack}: batch {wall:.1f} s, step of the "
                          f"{args.images} images {ms:.0f} ms", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
