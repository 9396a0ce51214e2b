"""Every fit subcommand in a subprocess on tiny images with a few steps: size, mode, bit depth."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from PIL import Image

from dip import images


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_denoise_odd_size_with_everything(tmp_path, dip_run, image_maker):
    """denoise on 27x33 RGB with --gt, --report, --plot, --save-every/--frames and a progress bar."""
    src, gt = tmp_path / "noisy.png", tmp_path / "gt.png"
    image_maker(src, 27, 33, "RGB", seed=1)
    image_maker(gt, 27, 33, "RGB", seed=2)
    out, report, plot, frames = (tmp_path / n for n in ("out.png", "r.json", "p.png", "frames"))
    proc = dip_run("denoise", src, "-o", out, "--steps", 3, "--gt", gt, "--report", report, "--plot", plot,
                   "--save-every", 1, "--frames", frames, "--stop", "steps", "--seed", 3,
                   env={"DIP_PROGRESS": "1"})
    _ok(proc)
    image, info = images.read_image(out)
    assert image.shape == (3, 27, 33) and (info.mode, info.bit_depth) == ("RGB", 8)
    data = json.loads(report.read_text())
    for key in ("task", "recipe", "steps", "seconds", "ms_per_step", "psnr", "ssim", "stop_reason",
                "stop_step", "native", "device", "precision"):
        assert key in data, key
    assert data["task"] == "denoise" and data["recipe"] == "denoise" and data["steps"] == 3
    assert data["device"] == "cpu" and data["precision"] == "fp32" and data["seed"] == 3
    assert data["allocator_tuned"] is True  # a command-line fit raises glibc's mmap threshold
    assert isinstance(data["psnr"], float) and isinstance(data["ssim"], float)
    assert data["stop_reason"] == "steps" and data["stop_step"] == 3
    assert Image.open(plot).format == "PNG" and Image.open(plot).size[0] > 300
    assert sorted(p.name for p in frames.iterdir()) == [f"step_00000{i}.png" for i in (1, 2, 3)]
    assert "step/s" in proc.stderr  # the progress bar
    assert "PSNR" in proc.stdout and "wrote" in proc.stdout


def test_jpeg_grey_input(tmp_path, dip_run, image_maker):
    src = tmp_path / "in.png"
    image_maker(src, 25, 31, "L")
    Image.open(src).save(tmp_path / "in.jpg", quality=30)
    out = tmp_path / "out.png"
    _ok(dip_run("jpeg", tmp_path / "in.jpg", "-o", out, "--steps", 2, "--quiet", module="dip.cli"))
    image, info = images.read_image(out)
    assert image.shape == (1, 25, 31) and (info.mode, info.bit_depth) == ("L", 8)


def test_sr_rgba_20x24_to_80x96(tmp_path, dip_run, image_maker):
    src, out = tmp_path / "lr.png", tmp_path / "hr.png"
    image_maker(src, 20, 24, "RGBA")
    _ok(dip_run("sr", src, "--factor", 4, "-o", out, "--steps", 2, "-q"))
    image, info = images.read_image(out)
    assert image.shape == (3, 80, 96) and (info.mode, info.bit_depth) == ("RGBA", 8)
    assert info.alpha.shape == (1, 80, 96)


def test_inpaint_16bit_rgb(tmp_path, dip_run, image_maker, mask_maker):
    src, mask, out = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "out.png"
    image = image_maker(src, 24, 30, "RGB", bits=16)
    mask_maker(mask, 24, 30)
    _ok(dip_run("inpaint", src, "--mask", mask, "-o", out, "--steps", 2, "-q"))
    restored, info = images.read_image(out)
    assert restored.shape == (3, 24, 30) and (info.mode, info.bit_depth) == ("RGB", 16)
    assert not torch.equal(restored, image)


def test_restore_16bit_grey_tiff(tmp_path, dip_run, image_maker, mask_maker):
    src, mask, out = tmp_path / "in.tif", tmp_path / "mask.png", tmp_path / "out.tif"
    image_maker(src, 21, 25, "L", bits=16)
    mask_maker(mask, 21, 25)
    _ok(dip_run("restore", src, "--mask", mask, "-o", out, "--steps", 2, "-q"))
    restored, info = images.read_image(out)
    assert restored.shape == (1, 21, 25) and (info.mode, info.bit_depth, info.format) == ("L", 16, "TIFF")


def test_flash(tmp_path, dip_run, image_maker):
    flash, noflash, out = tmp_path / "f.png", tmp_path / "n.png", tmp_path / "out.png"
    image_maker(flash, 26, 22, "RGB", seed=1)
    image_maker(noflash, 26, 22, "RGB", seed=2)
    _ok(dip_run("flash", "--flash", flash, "--noflash", noflash, "-o", out, "--steps", 2, "-q"))
    image, info = images.read_image(out)
    assert image.shape == (3, 26, 22) and info.mode == "RGB"


@pytest.mark.parametrize("argv_tail,shape,mode,bits", [
    (["sr", "--factor", "2"], (3, 30, 34), "RGB", 8),
    (["denoise", "--recipe", "denoise-50", "--net", "unet", "--precision", "bf16"], (3, 15, 17), "RGB", 8),
    (["jpeg", "--bit-depth", "16"], (3, 15, 17), "RGB", 16),
])
def test_in_process_variants(tmp_path, image_maker, argv_tail, shape, mode, bits):
    from dip.cli import main

    src, out = tmp_path / "in.png", tmp_path / "out.png"
    image_maker(src, 15, 17, "RGB")
    command, *options = argv_tail
    assert main([command, str(src), "-o", str(out), "--steps", "2", "-q", *options]) == 0
    image, info = images.read_image(out)
    assert image.shape == shape and (info.mode, info.bit_depth) == (mode, bits)


def test_checkpoint_written_and_loadable(tmp_path, image_maker):
    from dip import checkpoint
    from dip.cli import main

    src, out, ckpt = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "fit.ckpt"
    image_maker(src, 16, 20, "RGBA")
    assert main(["sr", str(src), "--factor", "2", "-o", str(out), "--steps", "2", "-q",
                 "--checkpoint", str(ckpt)]) == 0
    payload = checkpoint.load(ckpt)
    assert payload["options"]["task"] == "sr" and payload["image_info"]["mode"] == "RGBA"
    assert payload["returned"]["image"].shape == (1, 3, 32, 40)
    assert payload["physics"]["name"] == "downsample" and payload["physics"]["factor"] == 2


def test_a_mask_with_no_missing_pixel_is_fitted_with_a_warning(tmp_path, image_maker, caplog):
    import logging

    from dip.cli import main

    src, mask, out = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "out.png"
    image_maker(src, 16, 16, "RGB")
    images.write_image(mask, torch.ones(1, 16, 16))
    with caplog.at_level(logging.WARNING, logger="dip.cli"):  # stderr at the command line
        assert main(["inpaint", str(src), "--mask", str(mask), "-o", str(out), "--steps", "1", "-q"]) == 0
    assert "the mask marks every pixel as known" in caplog.text and out.is_file()


def test_sr_at_a_factor_without_its_own_recipe_says_whose_settings_it_runs(tmp_path, image_maker, capsys):
    from dip.cli import main

    src = tmp_path / "lr.png"
    image_maker(src, 20, 20, "RGB")
    for factor, recipe in ((3, "recipe sr4 (its settings at x3),"), (2, "recipe sr2,")):
        assert main(["sr", str(src), "--factor", str(factor), "-o", str(tmp_path / f"x{factor}.png"),
                     "--steps", "1"]) == 0
        said = capsys.readouterr()
        assert recipe in said.out + said.err


def test_sr_gt_reports_bicubic_baseline_and_16bit_jpeg_note(tmp_path, image_maker, capsys):
    from dip.cli import main

    src, gt, out, report = tmp_path / "lr.png", tmp_path / "gt.png", tmp_path / "out.jpg", tmp_path / "r.json"
    image_maker(src, 12, 14, "RGB", bits=16)
    image_maker(gt, 24, 28, "RGB", seed=5)
    assert main(["sr", str(src), "--factor", "2", "--gt", str(gt), "-o", str(out), "--steps", "2", "-q",
                 "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert isinstance(data["psnr_input"], float) and isinstance(data["psnr"], float)
    assert (data["mode"], data["bit_depth"], data["size_out"]) == ("RGB", 8, [24, 28])
    err = capsys.readouterr().err
    assert "note" in err and "8 bits" in err  # shown despite --quiet
    _, info = images.read_image(out)
    assert info.bit_depth == 8


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_outputs_take_the_umask(tmp_path, image_maker):
    """Image, report, plot and checkpoint are readable by others under umask 022 (not 0600)."""
    from dip.cli import main

    src = tmp_path / "in.png"
    image_maker(src, 12, 14, "RGB")
    outs = [tmp_path / n for n in ("out.png", "r.json", "p.png", "fit.ckpt")]
    old = os.umask(0o022)
    try:
        assert main(["denoise", str(src), "-o", str(outs[0]), "--report", str(outs[1]), "--plot", str(outs[2]),
                     "--checkpoint", str(outs[3]), "--steps", "1", "-q"]) == 0
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in outs} == {p.name: 0o644 for p in outs}
    assert outs[2].read_bytes().startswith(b"\x89PNG")
