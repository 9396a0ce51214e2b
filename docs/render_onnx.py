"""Render a model exported by ``dip export --onnx`` to a PNG, with numpy, onnxruntime and Pillow only.

No torch and no dip are needed: copy this file next to the model.

    pip install numpy onnxruntime pillow
    python render_onnx.py model.onnx restored.png              # a model with z baked in (the default)
    python render_onnx.py model_z.onnx restored.png --z z.npy  # a model exported with --input-z (z from --save-z)

The model's output is the image (1, C, H, W) float32 in [0, 1] (C = 3 for RGB, 1 for grey); the
PNG holds it rounded to 8 bits, as ``dip render`` writes it.  ``--npy`` also saves the float
output.  The metadata dip writes into the model (``dip.*`` entries, each a JSON text) are printed
with ``--info``.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def metadata(session: ort.InferenceSession) -> dict:
    """The model's ``dip.*`` metadata as a dict (e.g. "inputs", "outputs", "crop", "recipe")."""
    props = session.get_modelmeta().custom_metadata_map
    return {key[len("dip."):]: json.loads(value) for key, value in props.items() if key.startswith("dip.")}


def render(model_path: str, z: np.ndarray | None = None) -> np.ndarray:
    """Run the model: the image (1, C, H, W) float32. ``z``: the code of an --input-z model."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if not inputs:
        if z is not None:
            raise SystemExit(f"{model_path} has z baked in and takes no input; leave out --z")
        return session.run(None, {})[0]
    if z is None:
        raise SystemExit(f"{model_path} takes the code z {inputs[0].shape} as input: pass --z Z.npy")
    z = np.ascontiguousarray(z, dtype=np.float32)
    if list(z.shape) != list(inputs[0].shape):
        raise SystemExit(f"{model_path} expects z of shape {inputs[0].shape}, got {list(z.shape)}")
    return session.run(None, {inputs[0].name: z})[0]


def write_png(image: np.ndarray, path: str) -> None:
    """Write a (1, C, H, W) float image in [0, 1] as an 8-bit PNG (C = 1 grey, 3 RGB)."""
    pixels = np.rint(np.clip(image[0], 0.0, 1.0).transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model.onnx written by dip export --onnx")
    parser.add_argument("output", help="PNG to write")
    parser.add_argument("--z", help="z.npy (dip export --save-z) for a model exported with --input-z")
    parser.add_argument("--npy", help="also save the float32 output (1, C, H, W) to this .npy file")
    parser.add_argument("--info", action="store_true",
                        help="print the model's dip metadata, one key a line (values as JSON)")
    args = parser.parse_args(argv)
    if args.info:
        info = metadata(ort.InferenceSession(args.model, providers=["CPUExecutionProvider"]))
        for key in sorted(info):
            print(f"{key}: {json.dumps(info[key])}")
    image = render(args.model, np.load(args.z, allow_pickle=False) if args.z else None)
    write_png(image, args.output)
    if args.npy:
        np.save(args.npy, image)
    print(f"wrote {args.output} ({image.shape[3]}x{image.shape[2]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
