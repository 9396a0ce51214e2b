"""``--ensemble K``: the mean of K fits, its report, its checkpoint, export of a member, resume."""
from __future__ import annotations

import json

import pytest
import torch

from dip import checkpoint, images


def _ensemble(tmp_path, image_maker, *extra):
    from dip.cli import main

    src, gt, out = tmp_path / "in.png", tmp_path / "gt.png", tmp_path / "out.png"
    image_maker(src, 14, 18, "RGB", seed=1)
    image_maker(gt, 14, 18, "RGB", seed=2)
    code = main(["denoise", str(src), "-o", str(out), "--steps", "4", "--stop", "steps", "-q", "--ensemble", "3",
                 "--gt", str(gt), "--report", str(tmp_path / "r.json"), "--checkpoint", str(tmp_path / "e.ckpt"),
                 "--seed", "5", *extra])
    return code, out, json.loads((tmp_path / "r.json").read_text())


def test_the_output_is_the_mean_of_the_members_and_the_report_lists_them(tmp_path, image_maker):
    code, out, report = _ensemble(tmp_path, image_maker)
    assert code == 0
    ens = report["ensemble"]
    assert ens["members"] == 3 and ens["mode"] == "mean"
    assert [m["seed"] for m in ens["each"]] == [5, 6, 7] and all(m["steps"] == 4 for m in ens["each"])
    payload = checkpoint.load(tmp_path / "e.ckpt")
    assert payload["kind"] == "ensemble" and len(payload["members"]) == 3
    mean = torch.stack([m["returned"]["image"] for m in payload["members"]]).mean(0)
    assert torch.allclose(payload["image"], mean)
    written, _ = images.read_image(out)
    assert float((written - mean[0].clamp(0, 1)).abs().max()) <= 1 / 255 + 1e-6  # 8-bit rounding
    assert report["psnr"] == pytest.approx(payload["psnr"], abs=1e-3)


def test_a_member_of_an_ensemble_exports_and_a_missing_one_is_an_error(tmp_path, image_maker, capsys):
    from dip.cli import main

    assert _ensemble(tmp_path, image_maker)[0] == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "e.ckpt"), "--torchscript", str(tmp_path / "m.pt"), "--member", "2"]) == 0
    assert "exported member 2" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "e.ckpt"), "--torchscript", str(tmp_path / "n.pt"), "--member", "3"]) == 2
    err = capsys.readouterr().err
    assert "has 3 members (0 to 2)" in err and "Traceback" not in err and not (tmp_path / "n.pt").exists()


def test_an_ensemble_resumes_from_its_checkpoint(tmp_path, image_maker):
    from dip import resume
    from dip.cli import main

    assert _ensemble(tmp_path, image_maker)[0] == 0
    loaded = resume.load(tmp_path / "e.ckpt")
    assert isinstance(loaded, resume.ResumableEnsemble) and loaded.steps_run == 4
    assert main(["resume", str(tmp_path / "e.ckpt"), "--steps", "6", "-q", "--report", str(tmp_path / "r2.json"),
                 "--force"]) == 0
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
    import subprocess
    import sys
    import time

    from dip.cli import main

    src, out, ckpt = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "out.png.ckpt"
    image_maker(src, 14, 18, "RGB", seed=1)
    proc = subprocess.Popen([sys.executable, "-m", "dip", "denoise", str(src), "-o", str(out), "--steps", "500",
                             "--stop", "steps", "--ensemble", "2", "--checkpoint-every", "2", "-q"], env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
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
