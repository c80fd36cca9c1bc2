"""Preprocessing parity with the reference, its properties, and the Ascend flow's
.bin / .info formats with their error messages."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from m2det_impl.errors import InputFileError
from m2det_impl.network.config import get_config
from m2det_impl.pipeline.preprocess import (
    bin_nbytes,
    load_image,
    preprocess_batch,
    preprocess_image,
    read_bin,
    read_info,
    write_bin,
    write_bin_info,
    write_jpg_info,
)

pytestmark = pytest.mark.cpu
MEANS_BGR = np.array([104, 117, 123], dtype=np.float32)


def _plain_reference(image, size):
    """reference section 4 written with numpy, independent of the implementation."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float32) - MEANS_BGR).transpose(2, 0, 1)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_golden_images_preprocess_exactly(i, golden_forward, cfg512):
    got = preprocess_image(golden_forward[f"image_{i}"], cfg512)
    expected = golden_forward[f"input_{i}"]
    assert got.shape == (3, 512, 512) and got.dtype == np.float32
    assert np.array_equal(got, expected), f"max diff {np.abs(got - expected).max()}"


def test_golden_images_from_jpeg_files(tmp_path, golden_forward, cfg512):
    """Through a lossless file (PNG) and load_image, the result is still exact."""
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), golden_forward["image_0"])
    tensor = preprocess_image(load_image(path), cfg512)
    assert np.array_equal(tensor, golden_forward["input_0"])


_images = st.tuples(st.integers(1, 80), st.integers(1, 80)).flatmap(
    lambda hw: arrays(np.uint8, (hw[0], hw[1], 3))
)


@given(image=_images, size=st.sampled_from([320, 512]))
def test_random_images_match_plain_formula(image, size):
    got = preprocess_image(image, get_config(size))
    assert got.shape == (3, size, size) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, _plain_reference(image, size))


@given(bgr=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
       h=st.integers(1, 60), w=st.integers(1, 60))
def test_channel_order_and_mean_subtraction(bgr, h, w):
    """A flat colour stays flat: channel c holds exactly value_c - mean_c (BGR, no swap, no /255)."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = bgr
    got = preprocess_image(image, get_config(320))
    for c in range(3):
        assert np.all(got[c] == np.float32(bgr[c]) - MEANS_BGR[c])


def test_batch_stacks_in_order(golden_forward, cfg512):
    batch = preprocess_batch([golden_forward[f"image_{i}"] for i in (2, 0)], cfg512)
    assert batch.shape == (2, 3, 512, 512)
    assert np.array_equal(batch[0], golden_forward["input_2"])
    assert np.array_equal(batch[1], golden_forward["input_0"])


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)])
def test_bad_arrays_rejected_with_shape_or_dtype(bad, cfg512):
    with pytest.raises(ValueError, match=r"shape|uint8|pixels"):
        preprocess_image(bad, cfg512)


# ------------------------------------------------------------------ files
def test_load_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all" * 10)
    truncated = tmp_path / "trunc.jpg"
    ok, enc = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))
    truncated.write_bytes(enc.tobytes()[:20])
    for path, needle in [(missing, "not found"), (empty, "empty"), (garbage, "not a decodable image"),
                         (truncated, "not a decodable image"), (tmp_path, "folder")]:
        with pytest.raises(InputFileError) as info:
            load_image(path)
        assert str(path) in str(info.value) and needle in str(info.value)


def test_bin_round_trip_and_layout(tmp_path, golden_forward, cfg512):
    path = write_bin(tmp_path / "a.bin", golden_forward["input_1"][None])
    assert path.stat().st_size == bin_nbytes(cfg512) == 3 * 512 * 512 * 4
    raw = np.fromfile(path, dtype=np.float32)  # the guide's reader: raw float32, C order
    assert np.array_equal(raw.reshape(1, 3, 512, 512)[0], golden_forward["input_1"])
    assert np.array_equal(read_bin(path, cfg512)[0], golden_forward["input_1"])


def test_wrong_bin_size_names_file_and_expected_size(tmp_path, cfg512):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\0" * 1000)
    with pytest.raises(InputFileError) as info:
        read_bin(path, cfg512)
    msg = str(info.value)
    assert str(path) in msg and "1000" in msg and str(bin_nbytes(cfg512)) in msg


def test_info_files_follow_the_guide(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w) in {"b.jpg": (30, 40), "a.jpg": (20, 10), "c.JPEG": (7, 9)}.items():
        (images / name).write_bytes(cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))[1].tobytes())
    info = tmp_path / "jpg.info"
    write_jpg_info(images, info)
    lines = info.read_text().splitlines()
    # index restarts per extension; real width then height
    assert lines == [f"0 {images / 'a.jpg'} 10 20", f"1 {images / 'b.jpg'} 40 30", f"0 {images / 'c.JPEG'} 9 7"]
    parsed = read_info(info)
    assert (parsed["b"].width, parsed["b"].height) == (40, 30)

    bins = tmp_path / "bins"
    bins.mkdir()
    for stem in ("y", "x"):
        (bins / f"{stem}.bin").write_bytes(b"")
    write_bin_info(bins, tmp_path / "bin.info", 512, 512)
    assert (tmp_path / "bin.info").read_text().splitlines() == [f"0 {bins / 'x.bin'} 512 512", f"1 {bins / 'y.bin'} 512 512"]


@pytest.mark.parametrize("content, needle", [
    ("0 a.jpg 640\n", "line 1"),
    ("0 a.jpg 640 480\nx b.jpg 1 2\n", "line 2"),
    ("0 a.jpg 0 480\n", "positive"),
])
def test_malformed_info_lines_are_reported(tmp_path, content, needle):
    path = tmp_path / "bad.info"
    path.write_text(content)
    with pytest.raises(InputFileError) as info:
        read_info(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_missing_info_file(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        read_info(Path(tmp_path) / "none.info")
