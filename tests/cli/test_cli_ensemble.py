"""``--ensemble K``: the mean of K fits, its report, its checkpoint, export of a member, resume."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from dip import checkpoint, images


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """An ensemble of 3 (seeds 5-7), 4 steps on a 14x18 RGB image with a ground truth, fitted
    once for this module's readers: (exit code, folder with out.png, r.json and e.ckpt, report).
    Tests that write copy what they change to their own folder."""
    from dip.cli import main
    from tests import oracle

    folder = tmp_path_factory.mktemp("ensemble")
    src, gt, out = folder / "in.png", folder / "gt.png", folder / "out.png"
    oracle.write_image(src, 14, 18, "RGB", seed=1)
    oracle.write_image(gt, 14, 18, "RGB", seed=2)
    code = main(["denoise", str(src), "-o", str(out), "--steps", "4", "--stop", "steps", "-q", "--ensemble", "3",
                 "--gt", str(gt), "--report", str(folder / "r.json"), "--checkpoint", str(folder / "e.ckpt"),
                 "--seed", "5"])
    return code, folder, json.loads((folder / "r.json").read_text())


def test_the_output_is_the_mean_of_the_members_and_the_report_lists_them(fitted):
    code, folder, report = fitted
    assert code == 0
    ens = report["ensemble"]
    assert ens["members"] == 3 and ens["mode"] == "mean"
    assert [m["seed"] for m in ens["each"]] == [5, 6, 7] and all(m["steps"] == 4 for m in ens["each"])
    payload = checkpoint.load(folder / "e.ckpt")
    assert payload["kind"] == "ensemble" and len(payload["members"]) == 3
    mean = torch.stack([m["returned"]["image"] for m in payload["members"]]).mean(0)
    assert torch.allclose(payload["image"], mean)
    written, _ = images.read_image(folder / "out.png")
    assert float((written - mean[0].clamp(0, 1)).abs().max()) <= 1 / 255 + 1e-6  # 8-bit rounding
    assert report["psnr"] == pytest.approx(payload["psnr"], abs=1e-3)


def test_a_member_of_an_ensemble_exports_and_a_missing_one_is_an_error(fitted, tmp_path, capsys):
    from dip.cli import main

    code, folder, _ = fitted
    assert code == 0
    capsys.readouterr()
    assert main(["export", str(folder / "e.ckpt"), "--torchscript", str(tmp_path / "m.pt"), "--member", "2"]) == 0
    assert "exported member 2" in capsys.readouterr().err
    assert main(["export", str(folder / "e.ckpt"), "--torchscript", str(tmp_path / "n.pt"), "--member", "3"]) == 2
    err = capsys.readouterr().err
    assert "has 3 members (0 to 2)" in err and "Traceback" not in err and not (tmp_path / "n.pt").exists()


def test_an_ensemble_resumes_from_its_checkpoint(fitted, tmp_path):
    from dip import resume
    from dip.cli import main

    code, folder, _ = fitted
    assert code == 0
    ckpt = tmp_path / "e.ckpt"
    shutil.copyfile(folder / "e.ckpt", ckpt)
    loaded = resume.load(ckpt)
    assert isinstance(loaded, resume.ResumableEnsemble) and loaded.steps_run == 4
    assert main(["resume", str(ckpt), "--steps", "6", "-q", "--report", str(tmp_path / "r2.json"),
                 "-o", str(tmp_path / "out.png")]) == 0
    report = json.loads((tmp_path / "r2.json").read_text())
    assert report["ensemble"]["members"] == 3 and all(m["steps"] == 6 for m in report["ensemble"]["each"])


def test_ensemble_with_compile_is_refused(tmp_path, image_maker, capsys):
    from dip.cli import main

    src = tmp_path / "in.png"
    image_maker(src, 14, 18, "RGB")
    assert main(["denoise", str(src), "-o", str(tmp_path / "o.png"), "--ensemble", "2", "--compile"]) == 2
    assert "--compile does not combine with --ensemble" in capsys.readouterr().err
    assert main(["denoise", str(src), "-o", str(tmp_path / "o.png"), "--ensemble", "0"]) == 2


@pytest.mark.slow
def test_an_interrupted_ensemble_leaves_its_checkpoint_and_resume_finishes_it(tmp_path, image_maker, child_env):
    import signal

    from dip.cli import main
    from tests.interrupt import signal_once_checkpointed

    src, out, ckpt = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "out.png.ckpt"
    image_maker(src, 14, 18, "RGB", seed=1)
    argv = ["denoise", str(src), "-o", str(out), "--steps", "500", "--stop", "steps", "--ensemble", "2",
            "--checkpoint-every", "2", "-q"]
    returncode, err = signal_once_checkpointed(argv, ckpt, signal.SIGINT, child_env)
    assert returncode == 130, err
    assert "dip resume" in err and "Traceback" not in err and out.is_file()
    payload = checkpoint.load(ckpt)
    assert payload["kind"] == "ensemble" and payload["stop_reasons"] == ["interrupted", "interrupted"]
    ran = payload["members"][0]["fit"]["steps_run"]
    assert 2 <= ran < 500
    assert main(["resume", str(ckpt), "--steps", str(ran + 2), "-q"]) == 0
    assert [m["fit"]["steps_run"] for m in checkpoint.load(ckpt)["members"]] == [ran + 2, ran + 2]


def test_ensemble_with_blind_deblurring_is_refused(tmp_path, image_maker, capsys):
    from dip.cli import main

    src = tmp_path / "in.png"
    image_maker(src, 14, 18, "RGB")
    assert main(["deblur", str(src), "-o", str(tmp_path / "o.png"), "--kernel-size", "3", "--ensemble", "2"]) == 2
    err = capsys.readouterr().err
    assert "--ensemble does not combine with --kernel-size" in err and err.count("\n") <= 2
    assert not (tmp_path / "o.png").exists()
