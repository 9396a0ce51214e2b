"""What a run writes: checked before the fit (folder, name length, free space), never lost after it,
and never over an existing file without --force (nor over an input even with it)."""
from __future__ import annotations

import errno
import os

import pytest

from dip import cli
from dip import files as dip_files
from dip.cli import space


@pytest.fixture
def img(tmp_path, image_maker):
    path = tmp_path / "img.png"
    image_maker(path, 12, 14, "RGB")
    return path


def _err(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "this is a bug" not in captured.err
    return captured.err


def test_temporary_names_are_short(tmp_path):
    """A destination name the file system accepts can always be written (the temporary name is fixed in size)."""
    fits, limit = dip_files.name_fits(tmp_path / ("a" * 10))
    assert fits
    longest = tmp_path / ("b" * (limit - 4) + ".png")
    dip_files.atomic_write(longest, b"x")
    assert longest.read_bytes() == b"x"
    assert not dip_files.name_fits(tmp_path / ("c" * (limit + 1)))[0]


def test_unwritable_output_folder_is_refused_before_the_fit(img, capsys):
    code = cli.main(["denoise", str(img), "-o", "/proc/out.png", "--steps", "1"])
    assert code == 2
    assert "cannot write in the folder /proc" in _err(capsys)


def test_too_long_output_name_is_refused_before_the_fit(img, tmp_path, capsys):
    _fits, limit = dip_files.name_fits(tmp_path / "x")
    code = cli.main(["denoise", str(img), "-o", str(tmp_path / ("a" * limit + ".png")), "--steps", "1"])
    assert code == 2
    assert f"over the {limit}" in _err(capsys)
    # the implicit OUT.ckpt is five bytes longer: said before the fit, with the way out
    code = cli.main(["denoise", str(img), "-o", str(tmp_path / ("a" * (limit - 6) + ".png")), "--steps", "1"])
    assert code == 2
    assert "--checkpoint FILE" in _err(capsys)


def test_too_little_disk_space_is_refused_before_the_fit(img, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(space, "free_bytes", lambda folder: 1000)
    code = cli.main(["denoise", str(img), "-o", str(tmp_path / "out.png"), "--steps", "1"])
    assert code == 2
    assert "not enough free disk space" in _err(capsys)
    assert not (tmp_path / "out.png").exists()


def test_checkpoint_space_counts_weights_and_adam():
    small = space.checkpoint_bytes(1000, (16, 16), 3)
    assert small >= 3 * 3 * 4 * 1000
    assert space.checkpoint_bytes(2000, (16, 16), 3) - small == 3 * 3 * 4 * 1000


def test_a_failed_image_write_after_the_fit_keeps_the_result(img, tmp_path, capsys, monkeypatch):
    """The disk fills up after the checks: the image and the checkpoint go beside the report, exit 1."""
    from dip import checkpoint
    from dip.images import writing

    out_dir, report_dir = tmp_path / "out", tmp_path / "rep"
    out_dir.mkdir()
    report_dir.mkdir()
    real = writing.atomic_write

    def full_disk(path, data, **kw):
        if os.path.dirname(path) == str(out_dir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(writing, "atomic_write", full_disk)
    monkeypatch.setattr(checkpoint, "atomic_write", full_disk)
    code = cli.main(["denoise", str(img), "-o", str(out_dir / "out.png"), "--report", str(report_dir / "r.json"),
                     "--steps", "2", "--quiet"])
    err = _err(capsys)
    assert code == 1, err
    assert "No space left on device" in err and f"saved it to {report_dir / 'out.png'}" in err
    assert (report_dir / "out.png").is_file() and (report_dir / "r.json").is_file()
    assert (report_dir / "out.png.ckpt").is_file()  # the fit itself is kept, too
    assert not list(out_dir.iterdir())


def test_a_failed_write_falls_back_to_the_temp_folder(img, tmp_path, capsys, monkeypatch):
    """With no other output folder, the image goes to the system's temporary folder."""
    import tempfile

    from dip.images import writing

    spare = tmp_path / "spare"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(spare))
    real = writing.atomic_write

    def read_only(path, data, **kw):
        if os.path.dirname(path) == str(tmp_path / "out"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, data, **kw)

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(writing, "atomic_write", read_only)
    code = cli.main(["denoise", str(img), "-o", str(tmp_path / "out" / "o.png"), "--steps", "1", "--quiet"])
    err = _err(capsys)
    assert code == 1 and f"saved it to {spare / 'o.png'}" in err, err
    assert (spare / "o.png").is_file()


@pytest.mark.parametrize("argv,needle", [
    ("render {d}/m.onnx -o {d}/old.png", "-o {d}/old.png already exists"),
    ("export {d}/c.ckpt --onnx {d}/old.onnx", "--onnx {d}/old.onnx already exists"),
    ("export {d}/c.ckpt --torchscript {d}/old.pt", "--torchscript {d}/old.pt already exists"),
    ("eval --cases denoise --csv {d}/old.csv", "--csv {d}/old.csv already exists"),
], ids=["render", "export onnx", "export torchscript", "eval csv"])
def test_every_command_keeps_existing_files_without_force(tmp_path, capsys, argv, needle):
    for name in ("old.png", "old.onnx", "old.pt", "old.csv", "m.onnx", "c.ckpt"):
        (tmp_path / name).write_bytes(b"keep me")
    code = cli.main(argv.format(d=tmp_path).split())
    assert code == 2
    assert needle.format(d=tmp_path) in _err(capsys)
    assert all((tmp_path / n).read_bytes() == b"keep me" for n in ("old.png", "old.onnx", "old.pt", "old.csv"))


@pytest.mark.parametrize("argv", [
    "denoise {d}/img.png -o {d}/img.png --force",
    "denoise {d}/img.png -o {d}/link.png --force",
    "denoise {d}/img.png -o {d}/out.png --report {d}/img.png --force",
    "render {d}/m.onnx -o {d}/m.onnx --force",
    "export {d}/c.ckpt --onnx {d}/c.ckpt --force",
], ids=["fit -o input", "fit -o link to input", "fit --report input", "render -o model", "export over checkpoint"])
def test_an_output_that_is_an_input_is_refused_even_with_force(img, tmp_path, capsys, argv):
    (tmp_path / "link.png").symlink_to(img)
    (tmp_path / "m.onnx").write_bytes(b"model")
    (tmp_path / "c.ckpt").write_bytes(b"ckpt")
    before = img.read_bytes()
    code = cli.main(argv.format(d=tmp_path).split())
    err = _err(capsys)
    assert code == 2 and "would destroy" in err, err
    assert img.read_bytes() == before and (tmp_path / "m.onnx").read_bytes() == b"model"
    assert (tmp_path / "c.ckpt").read_bytes() == b"ckpt"


def test_frames_of_an_earlier_run_are_kept_without_force(img, tmp_path, capsys):
    frames = tmp_path / "fr"
    frames.mkdir()
    (frames / "step_000001.png").write_bytes(b"earlier")
    argv = ["denoise", str(img), "-o", str(tmp_path / "out.png"), "--steps", "1", "--save-every", "1",
            "--frames", str(frames), "--quiet"]
    assert cli.main(argv) == 2
    assert "already holds 1 frames" in _err(capsys)
    assert (frames / "step_000001.png").read_bytes() == b"earlier"
    assert cli.main(argv + ["--force"]) == 0
    assert (frames / "step_000001.png").read_bytes() != b"earlier"


def _failing_in(folder, real, code=errno.ENOSPC):
    def write(path, data, **kw):
        if os.path.dirname(path) == str(folder):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, data, **kw)
    return write


def test_frames_that_cannot_be_written_do_not_end_the_fit(img, tmp_path, capsys, monkeypatch):
    from dip.images import writing

    frames = tmp_path / "fr"
    monkeypatch.setattr(writing, "atomic_write", _failing_in(frames, writing.atomic_write))
    code = cli.main(["denoise", str(img), "-o", str(tmp_path / "out.png"), "--steps", "3", "--save-every", "1",
                     "--frames", str(frames), "--quiet"])
    err = _err(capsys)
    assert code == 0 and err.count("cannot write the frame") == 1, err
    assert (tmp_path / "out.png").is_file()


def test_a_periodic_checkpoint_that_fails_does_not_end_the_fit(img, tmp_path, capsys, monkeypatch):
    from dip import checkpoint

    ck = tmp_path / "ck"
    ck.mkdir()
    monkeypatch.setattr(checkpoint, "atomic_write", _failing_in(ck, checkpoint.atomic_write))
    code = cli.main(["denoise", str(img), "-o", str(tmp_path / "out.png"), "--steps", "2", "--stop", "steps",
                     "--checkpoint", str(ck / "c.ckpt"), "--checkpoint-every", "1", "--quiet"])
    err = _err(capsys)
    assert code == 1, err
    assert "cannot save the checkpoint" in err and f"saved it to {tmp_path / 'c.ckpt'}" in err
    assert (tmp_path / "out.png").is_file() and (tmp_path / "c.ckpt").is_file()


def test_an_unexpected_os_error_is_not_called_a_bug(img, tmp_path, capsys, monkeypatch):
    from dip.cli import fit_command

    def broken(task, args):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/some/file")

    monkeypatch.setattr(fit_command, "prepare", broken)
    assert cli.main(["denoise", str(img), "-o", str(tmp_path / "out.png")]) == 1
    assert "Input/output error: /some/file" in _err(capsys)


def test_resume_checks_free_space_too(img, tmp_path, capsys, monkeypatch):
    assert cli.main(["denoise", str(img), "-o", str(tmp_path / "fit.png"), "--steps", "1", "--stop", "steps",
                     "--checkpoint", str(tmp_path / "fit.ckpt"), "-q"]) == 0
    monkeypatch.setattr(space, "free_bytes", lambda folder: 1000)
    assert cli.main(["resume", str(tmp_path / "fit.ckpt"), "--steps", "2", "-q"]) == 2
    assert "not enough free disk space" in _err(capsys)
