"""``dip batch --pack K``: images of one size fitted K at a time in one packed fit, each with
its own files; the others alone. Tiny images (16 and 20 px), a few steps, one thread."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from dip import cli
from dip import images as io
from dip.batch import BatchError, CommandRunner, plan, plan_packs, read_manifest, run_batch
from dip.batch._pack import PACK_FLAG
from tests import oracle

SMALL, OTHER = 16, 20
FIT = ["--stop", "steps"]


@pytest.fixture
def four(tmp_path) -> Path:
    """a, b, c: 16x16 RGB; d: 20x20 RGB."""
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, stem in enumerate("abc"):
        oracle.write_image(folder / f"{stem}.png", SMALL, SMALL, seed=seed)
    oracle.write_image(folder / "d.png", OTHER, OTHER, seed=5)
    return folder


def stems(packs):
    return [[job.stem for job in pack] for pack in packs]


def test_packs_group_fresh_images_of_one_size_in_input_order(tmp_path, four):
    oracle.write_image(four / "e.png", SMALL, SMALL, layout="L", seed=6)  # one size, another mode
    jobs, _ = plan("denoise", [four], tmp_path / "out")
    assert stems(plan_packs(jobs, 2)) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert stems(plan_packs(jobs, 3)) == [["a", "b", "c"], ["d"], ["e"]]
    assert stems(plan_packs(jobs, 1)) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    (tmp_path / "out").mkdir()
    jobs[0].checkpoint.write_bytes(b"ckpt")  # a lone fit's checkpoint: a resumes alone
    assert stems(plan_packs(jobs, 2)) == [["a"], ["b", "c"], ["d"], ["e"]]


def test_an_interrupted_pack_continues_as_a_pack_when_its_images_stopped_together(tmp_path, four):
    jobs, _ = plan("denoise", [four], tmp_path / "out")
    (tmp_path / "out").mkdir()
    a, b, c, _ = jobs

    def interrupted(job, step, images=(a, b, c)):
        job.checkpoint.write_bytes(b"ckpt")
        job.report.write_text(json.dumps({"stop_reason": "interrupted", "steps_run": step,
                                          "pack": {"size": 3, "index": 0, "images": [str(j.input) for j in images]}}))

    for job in (a, b, c):
        interrupted(job, 7)
    assert stems(plan_packs(jobs, 3)) == [["a", "b", "c"], ["d"]]
    assert stems(plan_packs(jobs, 2)) == [["a", "b"], ["c"], ["d"]]
    assert stems(plan_packs(jobs, 1)) == [["a"], ["b"], ["c"], ["d"]]  # --pack 1: image by image
    interrupted(b, 5)  # not at the same step: alone
    assert stems(plan_packs(jobs, 3)) == [["a", "c"], ["b"], ["d"]]
    c.report.unlink()  # a periodic checkpoint without a report (its worker died): alone
    assert stems(plan_packs(jobs, 3)) == [["a"], ["b"], ["c"], ["d"]]


@pytest.mark.parametrize("value", ["0", "two", "1.5"])
def test_a_bad_pack_size_is_refused(tmp_path, four, capsys, value):
    code = cli.main(["batch", "denoise", str(four), "-o", str(tmp_path / "out"), "--pack", value])
    err = capsys.readouterr().err
    assert code == 2 and "--pack" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_what_cannot_be_packed_is_refused_before_any_fit(tmp_path, four, capsys):
    with pytest.raises(BatchError, match="pack must be a whole number >= 1"):
        run_batch("denoise", [four], tmp_path / "out", pack=0)
    code = cli.main(["batch", "denoise", str(four), "-o", str(tmp_path / "out"), "--pack", "2", "--compile"])
    err = capsys.readouterr().err
    assert code == 2 and "--compile does not combine with --pack" in err
    assert not (tmp_path / "out").exists()
    code = cli.main(["batch", "deblur", str(four), "-o", str(tmp_path / "out"), "--pack", "2", "--kernel-size", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "blind deblurring (--kernel-size) cannot be packed" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# the bookkeeping, with a stand-in for the fits (no fits)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StandInPackRunner:
    """Does to the files what a single fit or a pack does, without fitting; a pack holding an
    image named in ``fail`` exits 2 with an error, as for a bad input. Each call appends its
    first argument (the task, or ``--pack``) and images to the file ``calls``."""

    calls: str
    fail: tuple = ()

    def __call__(self, argv, *, threads, log, stop=None):
        members = json.loads(argv[1]) if argv[0] == PACK_FLAG else [list(argv)]
        with open(self.calls, "a") as fh:
            fh.write(json.dumps([argv[0], [Path(m[1]).stem for m in members], os.getpid()]) + "\n")
        if any(Path(m[1]).stem in self.fail for m in members):
            Path(log).write_text("dip: error: input: not an image file\n")
            return 2
        for m in members:
            Path(m[m.index("-o") + 1]).write_bytes(b"image")
            Path(m[m.index("--report") + 1]).write_text(json.dumps({"stop_reason": "steps", "steps_run": 3}))
        return 0


def calls(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_failed_pack_fits_its_images_alone_so_only_the_bad_one_fails(tmp_path, four):
    out, log = tmp_path / "out", tmp_path / "calls"
    result = run_batch("denoise", [four], out, pack=2, runner=StandInPackRunner(str(log), fail=("b",)),
                       handle_signals=False)
    assert [c[:2] for c in calls(log)] == [[PACK_FLAG, ["a", "b"]], ["denoise", ["a"]], ["denoise", ["b"]],
                                           ["denoise", ["c"]], ["denoise", ["d"]]]
    assert [(r["stem"], r["status"]) for r in result.records] == [
        ("a", "done"), ("b", "failed"), ("c", "done"), ("d", "done")]
    bad = result.records[1]
    assert "not an image" in bad["error"] and bad["exit_code"] == 2 and "not an image" in bad["pack_failed"]
    assert "not an image" in (out / "a.log").read_text()  # the pack's log, in each of its images' logs
    assert not list(out.glob(".pack-*"))
    packs = {r["stem"]: r.get("pack") for r in read_manifest(out / "manifest.jsonl")}
    assert packs["a"] is None and packs["b"] is None  # the records of their fits alone
    again = run_batch("denoise", [four], out, pack=2, runner=StandInPackRunner(str(log)), handle_signals=False)
    assert [(r["stem"], r["status"]) for r in again.records] == [
        ("a", "skipped"), ("b", "done"), ("c", "skipped"), ("d", "skipped")]


@pytest.fixture(scope="module")
def ray_local():
    """A Ray instance for this module: 2 CPUs, loopback only, no dashboard."""
    ray = pytest.importorskip("ray")
    previous = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this file
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             log_to_driver=False)
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if previous is None:
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = previous


@pytest.mark.slow
def test_ray_runs_one_task_per_pack(tmp_path, four, ray_local):
    out, log = tmp_path / "out", tmp_path / "calls"
    result = run_batch("denoise", [four], out, pack=3, ray_address="local", threads=1,
                       runner=StandInPackRunner(str(log)), handle_signals=False)
    assert result.exit_code == 0, result.records
    made = calls(log)
    assert sorted(c[:2] for c in made) == [[PACK_FLAG, ["a", "b", "c"]], ["denoise", ["d"]]]
    assert all(pid != os.getpid() for *_, pid in made)  # in Ray workers
    assert [r["status"] for r in result.records] == ["done"] * 4


# --------------------------------------------------------------------------------------------
# real packed fits
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_packed_images_get_their_own_files_and_resume_alone(tmp_path, four):
    """Inpainting: each image of a pack has its own mask and ground truth. (An image left over
    from a full pack is fitted alone: the planning test covers it, without a third child here.)"""
    out, masks, gt = tmp_path / "out", tmp_path / "masks", tmp_path / "gt"
    masks.mkdir()
    gt.mkdir()
    (four / "c.png").unlink()
    for stem in "abd":
        side = OTHER if stem == "d" else SMALL
        oracle.write_mask(masks / f"{stem}_mask.png", side, side)
        oracle.write_image(gt / f"{stem}.png", side, side, seed=9)
    code = cli.main(["batch", "inpaint", str(four), "-o", str(out), "--masks", str(masks), "--gt", str(gt),
                     "--pack", "2", "--steps", "2", *FIT, "--threads", "1", "--workers", "2", "--quiet"])
    assert code == 0
    reports = {stem: json.loads((out / f"{stem}.json").read_text()) for stem in "abd"}
    pair = [str(four / "a.png"), str(four / "b.png")]
    assert reports["a"]["pack"] == {"size": 2, "index": 0, "images": pair}
    assert reports["b"]["pack"] == {"size": 2, "index": 1, "images": pair}
    assert "pack" not in reports["d"]  # alone: no other image of its size
    for stem, side in (("a", SMALL), ("b", SMALL), ("d", OTHER)):
        assert reports[stem]["steps_run"] == 2 and reports[stem]["stop_reason"] == "steps"
        assert reports[stem]["seed"] == 0  # the batch's seed, as alone
        assert reports[stem]["inputs"]["mask"] == str(masks / f"{stem}_mask.png")
        assert reports[stem]["psnr"] is not None  # against its own ground truth
        image, _ = io.read_image(out / f"{stem}.png")
        assert tuple(image.shape) == (3, side, side)
        assert (out / f"{stem}.ckpt").is_file() and "inpaint: " in (out / f"{stem}.log").read_text()
    # a packed image's checkpoint is a single fit's: dip resume continues it alone
    code = cli.main(["resume", str(out / "b.ckpt"), "--steps", "3", "--report", str(tmp_path / "b3.json"),
                     "--threads", "1", "--quiet"])
    resumed = json.loads((tmp_path / "b3.json").read_text())
    assert code == 0 and resumed["steps_run"] == 3 and resumed["stop_reason"] == "steps"


@dataclasses.dataclass(frozen=True)
class StopWhenFittingRunner:
    """The real runner; once the pack's log shows both fits started, sets the batch's stop flag
    (as the batch's SIGINT handler does), which the runner forwards to the pack."""

    def __call__(self, argv, *, threads, log, stop=None):
        def watch():
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if Path(log).is_file() and Path(log).read_text().count("denoise: ") >= 2:
                    time.sleep(0.5)
                    stop.set(signal.SIGINT)
                    return
                time.sleep(0.05)

        if argv[0] == PACK_FLAG:
            threading.Thread(target=watch, daemon=True).start()
        return CommandRunner()(argv, threads=threads, log=log, stop=stop)


@pytest.mark.slow
def test_an_interrupted_pack_leaves_checkpoints_and_a_rerun_completes_every_image(tmp_path, four):
    out = tmp_path / "out"
    inputs = [str(four / "[abd].png")]
    result = run_batch("denoise", inputs, out, pack=2, steps=400, fit_args=FIT, threads=1,
                       runner=StopWhenFittingRunner(), handle_signals=False)
    assert result.exit_code == 130
    assert [(r["stem"], r["status"]) for r in result.records] == [
        ("a", "interrupted"), ("b", "interrupted"), ("d", "pending")]
    ran = []
    for stem in "ab":
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["stop_reason"] == "interrupted" and report["pack"]["size"] == 2
        assert (out / f"{stem}.ckpt").is_file() and (out / f"{stem}.png").is_file()
        ran.append(report["steps_run"])
    assert ran[0] == ran[1] >= 1
    steps = ran[0] + 2
    again = run_batch("denoise", inputs, out, pack=2, steps=steps, fit_args=FIT, threads=1, workers=2,
                      handle_signals=False)
    assert again.exit_code == 0, again.records
    assert [(r["stem"], r["status"], r["mode"], r.get("pack")) for r in again.records] == [
        ("a", "done", "resume", ["a", "b"]), ("b", "done", "resume", ["a", "b"]), ("d", "done", "fresh", None)]
    for stem in "abd":
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["steps_run"] == steps and report["stop_reason"] == "steps"
        assert ("pack" in report) == (stem != "d")  # a and b continued together ...
        assert report["command"][1] == ("denoise" if stem == "d" else "resume")  # ... from their checkpoints
