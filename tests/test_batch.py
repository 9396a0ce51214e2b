"""``dip batch`` and ``dip.batch.run_batch``: inputs, masks, manifest, interruption and rerun,
local workers and Ray (a private instance on 127.0.0.1 started here).

Fits are tiny (24x24 images, a dozen steps); each image's fit is a ``python -m dip`` child
process, so most of the time goes into starting those.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dip import cli
from dip import images as io
from dip.batch import BatchError, Command, CommandRunner, ImageJob, Manifest, plan, read_manifest, run_batch, state
from tests import oracle

SIZE = 24
STEPS = 8
FIT = ["--stop", "steps"]


def make_image(path: Path, seed: int = 0) -> None:
    """A smooth random SIZE x SIZE RGB image (tests/oracle.py)."""
    oracle.write_image(path, SIZE, SIZE, seed=seed)


def make_mask(path: Path) -> None:
    """A SIZE x SIZE mask with a missing block (tests/oracle.py)."""
    oracle.write_mask(path, SIZE, SIZE)


@pytest.fixture
def three(tmp_path) -> Path:
    """A folder with a.png, b.png, c.png (24x24 RGB)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, stem in enumerate("abc"):
        make_image(folder / f"{stem}.png", seed)
    return folder


def fresh_attempts(records, stem):
    return [r for r in records if r["stem"] == stem and r["mode"] == "fresh"]


# --------------------------------------------------------------------------------------------
# planning: inputs, masks, names (no fits)
# --------------------------------------------------------------------------------------------
def test_inputs_folders_globs_duplicates_and_ignored(tmp_path, three):
    (three / "notes.txt").write_text("not an image")  # inside a folder: ignored silently
    other = tmp_path / "other"
    other.mkdir()
    make_image(other / "d.png", 3)
    (other / "e.svg").write_text("<svg/>")  # named explicitly: reported
    jobs, ignored = plan("denoise", [three, str(three / "a.png"), str(other / "*.png"), other / "e.svg"],
                         tmp_path / "out")
    assert [j.stem for j in jobs] == ["a", "b", "c", "d"]
    assert len(ignored) == 1 and "e.svg" in ignored[0] and "not a supported image" in ignored[0]
    job = jobs[0]
    out = (tmp_path / "out").resolve()
    assert (job.output, job.report, job.checkpoint) == (out / "a.png", out / "a.json", out / "a.ckpt")
    jpg_jobs, _ = plan("jpeg", [three / "a.png"], tmp_path / "out", ext="same")
    assert jpg_jobs[0].output.suffix == ".png"
    tif_jobs, _ = plan("jpeg", [three / "a.png"], tmp_path / "out", ext="tif")
    assert tif_jobs[0].output == out / "a.tif"


def test_every_suffix_a_fit_reads_is_a_batch_input(tmp_path):
    """A GIF (read by a single fit: its first frame) is an input; --ext same writes it as PNG."""
    from PIL import Image

    from dip.batch.plan import input_suffixes

    assert set(io.SUPPORTED_SUFFIXES) | {".gif"} == set(input_suffixes())
    Image.new("RGB", (SIZE, SIZE), (10, 200, 30)).save(tmp_path / "g.gif")
    jobs, ignored = plan("denoise", [tmp_path], tmp_path / "out", ext="same")
    assert [j.stem for j in jobs] == ["g"] and not ignored
    assert jobs[0].output.suffix == ".png"


def test_inputs_that_match_nothing(tmp_path, three, capsys):
    with pytest.raises(BatchError, match="no file, folder or glob match for input .*nomatch"):
        plan("denoise", [three, str(tmp_path / "nomatch*.png")], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the checks pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BatchError, match="no input images"):
        plan("denoise", [empty], tmp_path / "out")
    code = cli.main(["batch", "denoise", str(tmp_path / "nope.png"), "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nope.png" in err and "Traceback" not in err


def test_a_batch_whose_images_are_all_in_its_output_folder_says_so(tmp_path, three, capsys):
    code = cli.main(["batch", "denoise", str(three), "-o", str(three), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "every image found (a.png, b.png, c.png) is inside the output folder" in err
    assert "choose another output folder" in err and "Traceback" not in err
    assert sorted(p.name for p in three.iterdir()) == ["a.png", "b.png", "c.png"]  # nothing written


def test_same_names_are_refused(tmp_path, three):
    make_image(three / "a.jpg", 5)
    with pytest.raises(BatchError, match="same output files.*a.jpg and .*a.png|same output files.*a.png and .*a.jpg"):
        plan("denoise", [three], tmp_path / "out")


def test_masks_by_naming_rule(tmp_path, three, capsys):
    for stem in "ab":
        make_mask(three / f"{stem}_mask.png")
    with pytest.raises(BatchError, match=r"missing mask for 1 image\(s\): .*c_mask.png \(for c.png\)"):
        plan("inpaint", [three], tmp_path / "out")
    code = cli.main(["batch", "inpaint", str(three), "-o", str(tmp_path / "out"), "--quiet"])
    assert code == 2 and "c_mask.png" in capsys.readouterr().err
    make_mask(three / "c_mask.png")
    jobs, _ = plan("inpaint", [three], tmp_path / "out")
    assert [j.stem for j in jobs] == ["a", "b", "c"]  # the masks are not inputs
    assert jobs[1].mask == (three / "b_mask.png").resolve()
    masks = tmp_path / "masks"
    masks.mkdir()
    make_mask(masks / "m-a.png")
    jobs, _ = plan("restore", [three / "a.png"], tmp_path / "out", masks_dir=masks, mask_pattern="m-{stem}.png")
    assert jobs[0].mask == (masks / "m-a.png").resolve()
    argv = Command("restore", mask_invert=True).fresh_argv(jobs[0])
    assert argv[:5] == ["restore", str(jobs[0].input), "--mask", str(masks / "m-a.png"), "--mask-invert"]


def test_ground_truth_by_stem(tmp_path, three):
    gt = tmp_path / "gt"
    gt.mkdir()
    make_image(gt / "a.png", 9)
    make_image(gt / "b.tif", 9)
    with pytest.raises(BatchError, match="no ground truth .* for c.png"):
        plan("denoise", [three], tmp_path / "out", gt_dir=gt)
    jobs, _ = plan("denoise", [three / "a.png", three / "b.png"], tmp_path / "out", gt_dir=gt)
    assert [j.gt.name for j in jobs] == ["a.png", "b.tif"]
    assert Command("denoise").fresh_argv(jobs[1])[-2:] == ["--gt", str(jobs[1].gt)]


def test_bad_fit_options_fail_before_any_fit(tmp_path, three, capsys):
    code = cli.main(["batch", "denoise", str(three), "-o", str(tmp_path / "out"), "--recipe", "sr4"])
    err = capsys.readouterr().err
    assert code == 2 and "recipe 'sr4' is for the sr task" in err
    assert not (tmp_path / "out").exists()  # nothing written, no fit started


def test_state_from_files_and_commands(tmp_path):
    out = tmp_path
    job = ImageJob(stem="x", input=out / "x_in.png", output=out / "x.png", report=out / "x.json",
                   checkpoint=out / "x.ckpt", log=out / "x.log")
    assert state(job) == "fresh"
    job.checkpoint.write_bytes(b"ckpt")
    assert state(job) == "resume"
    job.report.write_text(json.dumps({"stop_reason": "interrupted"}))
    job.output.write_bytes(b"png")
    assert state(job) == "resume"  # an interrupted fit's image is not a result
    job.report.write_text(json.dumps({"stop_reason": "steps"}))
    assert state(job) == "done"
    # a rerun asking for more steps continues a fit that ran all of fewer ...
    job.report.write_text(json.dumps({"stop_reason": "steps", "steps_run": 3}))
    assert state(job, steps=3) == "done" and state(job, steps=5) == "resume"
    # ... but not one that stopped by itself
    job.report.write_text(json.dumps({"stop_reason": "auto", "steps_run": 3}))
    assert state(job, steps=5) == "done"
    job.output.unlink()
    assert state(job) == "resume"  # finished report but no image: not done
    command = Command("denoise", fit_args=("--seed", "3"), steps=40, checkpoint_every=10, threads=2)
    resume = command.resume_argv(job)
    assert resume[:2] == ["resume", str(job.checkpoint)]
    for flag, value in (("-o", job.output), ("--report", job.report), ("--checkpoint", job.checkpoint),
                        ("--steps", 40), ("--checkpoint-every", 10), ("--threads", 2)):
        assert resume[resume.index(flag) + 1] == str(value)
    assert "--seed" not in resume and "--seed" in command.fresh_argv(job)


def test_manifest_counts_attempts_and_survives_a_torn_line(tmp_path):
    manifest = Manifest(tmp_path)
    assert manifest.append({"image": "/a.png", "status": "interrupted"})["attempt"] == 1
    assert manifest.append({"image": "/b.png", "status": "done"})["attempt"] == 1
    with open(manifest.path, "a") as fh:
        fh.write('{"image": "/a.png", "sta')  # a writer killed mid-line
    again = Manifest(tmp_path)
    assert again.attempts("/a.png") == 1
    assert again.append({"image": "/a.png", "status": "done"})["attempt"] == 2


def test_without_ray_installed(tmp_path, three, child_env):
    """``--ray`` without the ray package: exit 2, how to install it, nothing written."""
    code = ("import sys, dip.batch, dip.cli\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'importing dip imported ray'\n"
            "sys.modules['ray'] = None  # as if it were not installed\n"
            "from dip.cli import main\n"
            f"sys.exit(main(['batch', 'denoise', {str(three)!r}, '-o', {str(tmp_path / 'out')!r}, '--ray', 'local']))")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'dip[ray]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# the batch's bookkeeping, with a stand-in for the single-image command (no fits)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StandInRunner:
    """Does what ``dip TASK IMG -o OUT --report R ...`` does to the files, without fitting:
    writes OUT and a finished report; for the images named in ``fail`` it writes an error to
    the log and exits 2, as the command does for a bad input."""

    fail: tuple = ()

    def __call__(self, argv, *, threads, log, stop=None):
        assert threads >= 1 and stop is not None
        if Path(argv[1]).stem in self.fail:
            Path(log).write_text("dip: error: input: not an image file\n")
            return 2
        Path(argv[argv.index("-o") + 1]).write_bytes(b"image")
        report = {"stop_reason": "steps", "steps_run": 3, "psnr": 21.5, "argv": list(argv)}
        Path(argv[argv.index("--report") + 1]).write_text(json.dumps(report))
        return 0


def test_failed_image_is_recorded_and_the_batch_goes_on(tmp_path, three, capsys):
    out = tmp_path / "out"
    result = run_batch("denoise", [three], out, workers=2, threads=1, runner=StandInRunner(fail=("b",)),
                       fit_args=["--seed", "4"], steps=3, handle_signals=False)
    assert result.exit_code == 1 and not result.ok
    assert [(r["stem"], r["status"], r["exit_code"]) for r in result.records] == [
        ("a", "done", 0), ("b", "failed", 2), ("c", "done", 0)]
    assert "not an image" in result.records[1]["error"]
    argv = json.loads((out / "a.json").read_text())["argv"]
    assert argv[:2] == ["denoise", str(three / "a.png")] and argv[argv.index("--seed") + 1] == "4"
    # rerun: the failed image is tried again (fresh: it left no checkpoint), the others skipped
    again = run_batch("denoise", [three], out, runner=StandInRunner(), handle_signals=False)
    assert [(r["stem"], r["status"]) for r in again.records] == [("a", "skipped"), ("b", "done"), ("c", "skipped")]
    assert again.exit_code == 0
    assert [(r["stem"], r["attempt"]) for r in read_manifest(out / "manifest.jsonl")][-1] == ("b", 2)
    # --redo fits everything again
    redone = run_batch("denoise", [three], out, runner=StandInRunner(), redo=True, handle_signals=False)
    assert [(r["status"], r["mode"]) for r in redone.records] == [("done", "fresh")] * 3


def test_a_failed_image_is_told_by_its_own_error_once_per_attempt(tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG but no image")
    for _ in range(2):  # the second attempt appends to the same log
        assert cli.main(["batch", "denoise", str(folder), "-o", str(out), "--threads", "1", "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"dip batch: {folder / 'broken.png'} failed (exit 2): dip: error: input: "), err
        assert err.count("not an image file") == 1 and "$ dip" not in err and "\n" not in err, err
    assert (out / "broken.log").read_text().count("not an image file") == 2  # the log keeps both


def test_no_cuda_graph_reaches_every_fresh_fit(tmp_path, three):
    """--no-cuda-graph of dip batch is passed to each image's fit, whose config then runs eagerly."""
    from dip.batch import fit_arguments
    from dip.cli.fit_command import _fit_overrides

    batch = cli.build_parser(hooked="batch")
    off = fit_arguments(batch.parse_args(["batch", "denoise", str(three), "-o", "out", "--no-cuda-graph"]))
    on = fit_arguments(batch.parse_args(["batch", "denoise", str(three), "-o", "out"]))
    assert "--no-cuda-graph" in off and "--no-cuda-graph" not in on
    single = cli.build_parser().parse_args(["denoise", str(three / "a.png"), "-o", "a.png", *off])
    assert _fit_overrides(single)["cuda_graph"] is False
    result = run_batch("denoise", [three], tmp_path / "o", runner=StandInRunner(), fit_args=off, steps=3,
                       handle_signals=False)
    assert "--no-cuda-graph" in json.loads((tmp_path / "o" / "a.json").read_text())["argv"]
    assert result.ok


# --------------------------------------------------------------------------------------------
# local workers: interrupted and rerun
# --------------------------------------------------------------------------------------------
def _wait_for_second_fit(proc, out: Path, timeout: float = 180.0) -> None:
    """Until a.png is recorded done and b's fit has started (its log shows the fit's line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        records = read_manifest(out / "manifest.jsonl")
        log = out / "b.log"
        if records and log.is_file() and "denoise: " in log.read_text():
            assert [(r["stem"], r["status"]) for r in records] == [("a", "done")]
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the batch did not reach its second image in time")


@pytest.mark.slow
def test_local_batch_interrupted_then_rerun_fits_each_image_once(tmp_path, three, child_env):
    out = tmp_path / "out"
    argv = ["batch", "denoise", str(three), "-o", str(out), "--steps", str(STEPS), *FIT, "--threads", "1",
            "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "dip", *argv], env=child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_second_fit(proc, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    records = read_manifest(out / "manifest.jsonl")
    assert [(r["stem"], r["status"], r["exit_code"]) for r in records] == [("a", "done", 0), ("b", "interrupted", 130)]
    assert (out / "b.ckpt").is_file(), "the interrupted fit saved no checkpoint"
    assert not (out / "c.log").exists() and not (out / "c.png").exists()  # never started
    a_written = (out / "a.png").stat().st_mtime_ns

    result = run_batch("denoise", [three], out, steps=STEPS, fit_args=FIT, workers=2, threads=1,
                       handle_signals=False)
    assert result.exit_code == 0, result.records
    assert {r["stem"]: (r["status"], r["mode"]) for r in result.records} == {
        "a": ("skipped", None), "b": ("done", "resume"), "c": ("done", "fresh")}
    records = read_manifest(out / "manifest.jsonl")
    assert sorted((r["stem"], r["status"], r["mode"], r["attempt"]) for r in records) == [
        ("a", "done", "fresh", 1), ("b", "done", "resume", 2), ("b", "interrupted", "fresh", 1),
        ("c", "done", "fresh", 1)]
    for stem in "abc":
        assert len(fresh_attempts(records, stem)) == 1  # fitted from scratch exactly once
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["stop_reason"] != "interrupted"
        assert report.get("steps_run", report.get("steps")) == STEPS
        image, _ = io.read_image(out / f"{stem}.png")
        assert tuple(image.shape) == (3, SIZE, SIZE)
    assert (out / "a.png").stat().st_mtime_ns == a_written  # a was not refitted
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("image,status") and len(summary) == 4


# --------------------------------------------------------------------------------------------
# Ray (a private instance on 127.0.0.1)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CrashOnceRunner:
    """Kills its Ray worker process (``os._exit``) during the first attempt at image ``stem``,
    remembering it in the file ``marker``; later attempts run the real command."""

    marker: str
    stem: str

    def __call__(self, argv, **kwargs):
        if any(Path(a).name == f"{self.stem}.png" for a in argv[:2]) and not os.path.exists(self.marker):
            with open(self.marker, "w") as fh:
                fh.write(str(os.getpid()))
            os._exit(1)
        return CommandRunner()(argv, **kwargs)


@pytest.fixture(scope="module")
def ray_local():
    """One Ray instance for this module: 2 CPUs, loopback only, no dashboard."""
    ray = pytest.importorskip("ray")
    previous = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # the test module's runner travels by value: Ray workers cannot import this file
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
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
def test_ray_batch_retries_a_dead_worker_and_reruns_as_skips(tmp_path, three, ray_local, capsys):
    out = tmp_path / "out"
    marker = tmp_path / "crashed"
    gt = tmp_path / "gt"
    gt.mkdir()
    for seed, stem in enumerate("ab"):
        make_image(gt / f"{stem}.png", seed)
    inputs = [str(three / "[ab].png")]  # two of the three images: Ray's start-up is the time here
    result = run_batch("denoise", inputs, out, ray_address="local", threads=1, retries=2, steps=STEPS,
                       fit_args=FIT, gt_dir=gt, runner=CrashOnceRunner(str(marker), "b"), handle_signals=False)
    assert marker.is_file(), "the runner did not crash its worker"
    assert int(marker.read_text()) != os.getpid()  # it was a Ray worker that died
    assert result.exit_code == 0, result.records
    records = read_manifest(out / "manifest.jsonl")
    assert sorted((r["stem"], r["status"], r["attempt"]) for r in records) == [("a", "done", 1), ("b", "done", 1)]
    for r in records:
        assert r["psnr"] is not None and r["psnr"] > 5  # PSNR against the ground truth
        assert Path(r["output"]).is_file() and Path(r["output"]).parent == out.resolve()
    # rerun through the command line on the same Ray instance: everything is done
    code = cli.main(["batch", "denoise", *inputs, "-o", str(out), "--ray", "local", "--steps", str(STEPS),
                     "--stop", "steps", "--threads", "1", "--gt", str(gt)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert sorted(row[:2] for row in rows if row and row[0] in ("a.png", "b.png", "c.png")) == [
        ["a.png", "skipped"], ["b.png", "skipped"]]
    assert len(read_manifest(out / "manifest.jsonl")) == 2


@dataclasses.dataclass(frozen=True)
class SlowRunner(StandInRunner):
    """The stand-in, taking ``seconds`` per image like a fit does."""

    seconds: float = 1.5

    def __call__(self, argv, **kwargs):
        time.sleep(self.seconds)
        return super().__call__(argv, **kwargs)


def test_the_bar_moves_while_an_image_is_fitted(tmp_path, three, capsys, monkeypatch):
    # the bar names the image being fitted and its time so far before any image has finished,
    # then the finished image's status and PSNR
    monkeypatch.setenv("DIP_PROGRESS", "1")
    result = run_batch("denoise", [three / "a.png"], tmp_path / "out", threads=1, runner=SlowRunner(),
                       progress=True, handle_signals=False)
    assert result.exit_code == 0
    err = capsys.readouterr().err
    assert "0/1" in err and "fitting=a 1s" in err
    assert "last=a done 21.50 dB" in err
