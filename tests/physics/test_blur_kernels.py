"""Kernel specs: gaussian:SIGMA, box:SIZE, motion:LENGTH,ANGLE, .npy and image files; every bad
spec is a ValueError naming the value and what is accepted."""
import numpy as np
import pytest
from PIL import Image

from dip.physics.blur_kernels import MAX_SIZE, parse_kernel


def test_gaussian_box_and_motion_are_normalised_and_centred():
    g = parse_kernel("gaussian:1.6")
    assert g.shape == (11, 11) and abs(g.sum() - 1) < 1e-12 and np.unravel_index(g.argmax(), g.shape) == (5, 5)
    np.testing.assert_allclose(g, g.T)
    assert parse_kernel("box:4").shape == (4, 4) and np.allclose(parse_kernel("box:4"), 1 / 16)
    m = parse_kernel("motion:9,0")
    assert m.shape[0] % 2 == 1 and abs(m.sum() - 1) < 1e-12
    assert np.allclose(m, m[::-1, ::-1])  # symmetric about the centre
    rows = np.nonzero(m.sum(axis=1))[0]
    assert len(rows) == 1 and np.count_nonzero(m) >= 9  # a horizontal line of about 9 pixels
    vertical = parse_kernel("motion:9,90")
    np.testing.assert_allclose(vertical, m.T, atol=1e-12)
    diagonal = parse_kernel("motion:7.5,30")
    assert abs(diagonal.sum() - 1) < 1e-12 and (diagonal >= 0).all()


def test_files_npy_and_image(tmp_path):
    a = np.zeros((4, 6))
    a[1:3, 2:5] = 2.0
    np.save(tmp_path / "k.npy", a)
    np.testing.assert_allclose(parse_kernel(str(tmp_path / "k.npy")), a / a.sum())
    Image.fromarray((a * 100).astype(np.uint8)).save(tmp_path / "k.png")
    np.testing.assert_allclose(parse_kernel(str(tmp_path / "k.png")), a / a.sum())
    Image.fromarray(np.stack([(a * 100).astype(np.uint8)] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(parse_kernel(str(tmp_path / "rgb.png")), a / a.sum(), atol=1e-6)


def _bad_files(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    np.save(tmp_path / "neg.npy", np.array([[1.0, -1.0]]))
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    np.save(tmp_path / "3d.npy", np.ones((2, 2, 2)))
    np.save(tmp_path / "big.npy", np.ones((MAX_SIZE + 1, 3)))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    (tmp_path / "k.txt").write_text("1 2 3")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "black.png")
    (tmp_path / "adir").mkdir()


BAD = [
    ("", "is empty"),
    ("gaussian:", "not a number"),
    ("gaussian:abc", "not a number"),
    ("gaussian:0", "SIGMA must be > 0"),
    ("gaussian:-1", "SIGMA must be > 0"),
    ("gaussian:nan", "finite"),
    ("gaussian:inf", "finite"),
    ("gaussian:50", "<= 20"),
    ("gaussian:1,2", "expected 1 number"),
    ("box:0", "SIZE must be a whole number"),
    ("box:2.5", "SIZE must be a whole number"),
    ("box:500", "SIZE must be a whole number from 1 to 129"),
    ("motion:9", "expected 2 numbers"),
    ("motion:0,30", "LENGTH must be from 1"),
    ("motion:500,30", "LENGTH must be from 1 to 100"),
    ("motion:9,x", "not numbers"),
    ("blur:3", "no such file"),
    ("{d}/nope.npy", "no such file"),
    ("{d}/adir", "is a directory"),
    ("{d}/nan.npy", "non-finite"),
    ("{d}/neg.npy", "negative"),
    ("{d}/zero.npy", "all zero"),
    ("{d}/empty.npy", "non-empty"),
    ("{d}/3d.npy", "2-D array"),
    ("{d}/big.npy", "more than the 129 accepted"),
    ("{d}/text.npy", "not numbers"),
    ("{d}/junk.npy", "cannot read it as a .npy"),
    ("{d}/junk.png", "cannot read it as an image"),
    ("{d}/k.txt", "unknown file type"),
    ("{d}/black.png", "all zero"),
]


@pytest.mark.parametrize("spec,match", BAD, ids=[b[0].replace("{d}/", "") or "empty" for b in BAD])
def test_every_bad_spec_names_the_value_and_what_is_accepted(tmp_path, spec, match):
    _bad_files(tmp_path)
    spec = spec.format(d=tmp_path)
    with pytest.raises(ValueError, match=match) as info:
        parse_kernel(spec)
    message = str(info.value)
    assert repr(spec) in message and "accepted: gaussian:SIGMA" in message and "\n" not in message
