"""No silently wrong number from the readers: each input is read right, or refused with one InputError line.

High-bit-depth images scaled by their own range, hidden and empty folders, class names that repeat or
do not fit the labels, one class only, decompression bombs and memory limits, and values that a cast
would cut (floats near [0, 1], bool labels, float labels, 16-bit arrays).
"""

from __future__ import annotations

import logging
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from roiroa.data import ImageDataset, load_dataset, make_dataset, read_idx, read_image_folder, read_npz
from roiroa.data.cifar import read_cifar_batch
from roiroa.data.dataset import sample_per_class
from roiroa.errors import InputError

# ---------------------------------------------------------------------------------------------- helpers


def refused(call, *words: str) -> str:
    """The message of the InputError that ``call()`` raises: one line holding every one of ``words``."""
    with pytest.raises(InputError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def save_gray8(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("L", (array.shape[1], array.shape[0]), array.astype(np.uint8).tobytes()).save(path)
    return path


def save_gray16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit grayscale file (mode "I;16") holding ``array`` (H, W) exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pic = Image.frombytes("I;16", (array.shape[1], array.shape[0]), array.astype("<u2").tobytes())
    assert pic.mode == "I;16"
    pic.save(path)
    return path


def save_rgb(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("RGB", (array.shape[1], array.shape[0]), array.astype(np.uint8).tobytes()).save(path)
    return path


def save_mode(path: Path, array: np.ndarray, mode: str) -> Path:
    """A file of Pillow mode "F" (float32) or "I" (int32) holding ``array`` (H, W)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = {"F": np.float32, "I": np.int32}[mode]
    Image.frombytes(mode, (array.shape[1], array.shape[0]), np.ascontiguousarray(array, dtype).tobytes()).save(path)
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` 8-bit gray pixels but holds almost no data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def two_classes(root: Path, size: int = 4) -> Path:
    """A valid folder: classes a and b, one 8-bit image each."""
    save_gray8(root / "a" / "1.png", np.zeros((size, size)))
    save_gray8(root / "b" / "1.png", np.full((size, size), 255))
    return root


def f32(v: float) -> float:
    return float(np.float32(v))


# ---------------------------------------------------------------------------------------------- bit depth


def test_16bit_png_scaled_by_65535(tmp_path):
    values = np.array([[0, 30000, 65535], [1, 257, 65534]])
    save_gray16(tmp_path / "d" / "a" / "1.png", values)
    save_gray16(tmp_path / "d" / "b" / "1.png", 65535 - values)
    data = read_image_folder(tmp_path / "d")
    assert data.images.shape == (2, 1, 2, 3)
    expected = torch.from_numpy(values.astype(np.float32)) / 65535
    assert torch.equal(data.images[0, 0], expected)
    assert data.images[0, 0, 0, 1].item() == pytest.approx(30000 / 65535, rel=1e-7)
    assert data.images[0, 0, 0, 1].item() == f32(np.float32(30000) / np.float32(65535))
    assert data.images[0, 0, 0, 2].item() == 1.0 and data.images[1, 0, 0, 0].item() == 1.0
    assert data.images[0, 0, 1, 0].item() == f32(1 / 65535)  # 1 is not rounded up to a full 8-bit level


def test_mixed_bit_depths_each_scaled_by_its_own_range(tmp_path):
    save_gray8(tmp_path / "d" / "a" / "8bit.png", np.array([[0, 128], [255, 64]]))
    save_gray16(tmp_path / "d" / "b" / "16bit.png", np.array([[0, 32768], [65535, 16384]]))
    data = read_image_folder(tmp_path / "d")
    assert data.images.shape == (2, 1, 2, 2)
    assert data.images[0, 0].flatten().tolist() == [0.0, f32(128 / 255), 1.0, f32(64 / 255)]
    assert data.images[1, 0].flatten().tolist() == [0.0, f32(32768 / 65535), 1.0, f32(16384 / 65535)]


def test_16bit_gray_with_rgb_repeated_to_three_channels(tmp_path):
    save_gray16(tmp_path / "d" / "a" / "1.png", np.array([[30000, 65535]]))
    save_rgb(tmp_path / "d" / "b" / "1.png", np.array([[[255, 0, 51], [0, 0, 0]]]))
    data = read_image_folder(tmp_path / "d")
    assert data.images.shape == (2, 3, 1, 2)
    assert torch.all(data.images[0, :, 0, 0] == f32(30000 / 65535))
    assert data.images[1, :, 0, 0].tolist() == [1.0, 0.0, f32(51 / 255)]


def test_16bit_tiff_and_1bit_png(tmp_path):
    save_gray16(tmp_path / "d" / "a" / "1.tif", np.array([[0, 1000], [40000, 65535]]))
    (tmp_path / "d" / "b").mkdir()
    Image.frombytes("1", (2, 2), bytes([0b01000000, 0b10000000])).save(tmp_path / "d" / "b" / "1.png")
    data = read_image_folder(tmp_path / "d")
    assert data.images[0, 0].flatten().tolist() == [0.0, f32(1000 / 65535), f32(40000 / 65535), 1.0]
    assert data.images[1, 0].flatten().tolist() == [0.0, 1.0, 1.0, 0.0]


def test_float_tiff_in_unit_range_read_as_is(tmp_path):
    save_mode(tmp_path / "d" / "a" / "1.tif", np.array([[0.0, 0.25], [0.7, 1.0]]), "F")
    save_mode(tmp_path / "d" / "b" / "1.tif", np.array([[1.0, 0.5], [0.125, 1.0 + 1e-7]]), "F")
    data = read_image_folder(tmp_path / "d")
    assert data.images.shape == (2, 1, 2, 2)
    assert data.images[0, 0].flatten().tolist() == [0.0, 0.25, f32(0.7), 1.0]
    assert data.images[1, 0, 1, 1].item() == 1.0  # float rounding above 1 is clipped


@pytest.mark.parametrize(
    ("values", "words"), [(np.array([[0.0, 2.5]]), ("1.tif", "reach 2.5")), (np.array([[0.0, np.nan]]), ("NaN",))]
)
def test_float_tiff_outside_unit_range_refused(tmp_path, values, words):
    save_mode(tmp_path / "d" / "a" / "1.tif", values, "F")
    save_mode(tmp_path / "d" / "b" / "1.tif", np.zeros((1, 2)), "F")
    refused(lambda: read_image_folder(tmp_path / "d"), *words)


def test_32bit_integer_tiff_refused(tmp_path):
    save_mode(tmp_path / "d" / "a" / "1.tif", np.array([[0, 70000]]), "I")
    save_gray8(tmp_path / "d" / "b" / "1.png", np.zeros((1, 2)))
    refused(lambda: read_image_folder(tmp_path / "d"), "1.tif", "mode I", "no known range", "16-bit PNG")


def test_mode_i_from_a_16bit_format_scaled_by_65535(tmp_path):
    # Pillow opens 16-bit PGM (and, in some versions, 16-bit PNG) as 32-bit mode "I"
    from roiroa.data.readers import pixel_values

    path = tmp_path / "x.pgm"
    Image.frombytes("I;16", (3, 1), np.array([0, 30000, 65535], "<u2").tobytes()).save(path)
    with Image.open(path) as pic:
        assert pic.mode == "I"
        values = pixel_values(pic, path)
    assert values.tolist() == [[0.0, f32(30000 / 65535), 1.0]]


# ---------------------------------------------------------------------------------------------- folder layout


def test_hidden_folders_and_files_skipped(tmp_path):
    root = two_classes(tmp_path / "d")
    save_gray8(root / ".ipynb_checkpoints" / "1.png", np.zeros((4, 4)))
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "a" / "._1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork, not a PNG
    save_gray8(root / "b" / ".hidden.png", np.zeros((4, 4)))
    data = read_image_folder(root)
    assert data.classes == ("a", "b")
    assert data.labels.tolist() == [0, 1]


def test_empty_class_folder_skipped_with_a_warning(tmp_path, caplog):
    root = two_classes(tmp_path / "d")
    (root / "a_empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images here")
    with caplog.at_level(logging.WARNING, logger="roiroa.data.readers"):
        data = read_image_folder(root)
    assert data.classes == ("a", "b")
    assert data.labels.tolist() == [0, 1]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "a_empty" in warned[0] and "notes" in warned[0], warned


def test_one_class_folder_refused(tmp_path):
    save_gray8(tmp_path / "d" / "cat" / "1.png", np.zeros((4, 4)))
    save_gray8(tmp_path / "d" / "cat" / "2.png", np.zeros((4, 4)))
    (tmp_path / "d" / "dog").mkdir()  # empty: skipped, so one class is left
    refused(
        lambda: load_dataset(str(tmp_path / "d")),
        "has only one class ('cat'",
        "need at least two classes",
        "give data with two or more classes",
    )


# ---------------------------------------------------------------------------------------------- class names


def npz(path: Path, n: int = 6, **arrays) -> Path:
    content = {"images": np.zeros((n, 4, 4), np.uint8), "labels": np.arange(n) % 2}
    content.update(arrays)
    np.savez(path, **content)
    return path


def test_duplicate_class_names_in_npz_refused(tmp_path):
    path = npz(tmp_path / "d.npz", labels=np.arange(6) % 3, classes=np.array(["cat", "dog", "cat"]))
    refused(lambda: read_npz(path), "d.npz", "'cat'", "2 times", "different name")


def test_duplicate_class_names_in_cifar_meta_refused(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    batch = {b"data": np.zeros((4, 3 * 32 * 32), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [b"cat", b"dog", b"ship", b"dog"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    refused(lambda: load_dataset(str(folder)), "'dog'", "2 times", "different name")


def test_duplicate_class_names_refused_when_built_directly():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(InputError, match="'a' is given 2 times"):
        ImageDataset(x, torch.tensor([0, 1]), ("a", "a"), "toy", torch.arange(2))


def test_fewer_class_names_than_labels_refused(tmp_path):
    path = npz(tmp_path / "d.npz", labels=np.arange(6) % 3, classes=np.array(["cat", "dog"]))
    refused(lambda: read_npz(path), "label 2 has no class name", "names 2 classes", "0..K-1")


def test_more_class_names_than_labels_read_with_a_warning(tmp_path, caplog):
    path = npz(tmp_path / "d.npz", classes=np.array(["cat", "dog", "ship"]))
    with caplog.at_level(logging.WARNING, logger="roiroa.data.dataset"):
        data = read_npz(path)
    assert data.classes == ("cat", "dog", "ship") and data.num_classes == 3
    assert any("'ship'" in r.getMessage() and "no images" in r.getMessage() for r in caplog.records)


def test_bytes_class_names_decoded(tmp_path):
    data = read_npz(npz(tmp_path / "d.npz", classes=np.array([b"cat", b"dog"])))
    assert data.classes == ("cat", "dog")


def test_two_dimensional_class_names_refused(tmp_path):
    path = npz(tmp_path / "d.npz", classes=np.array([["cat", "dog"]]))
    refused(lambda: read_npz(path), "'classes' must be a 1-D array", "(1, 2)")


@pytest.mark.parametrize("classes", [None, np.array(["cat", "dog"])], ids=["unnamed", "named"])
def test_labels_all_equal_refused(tmp_path, classes):
    extra = {} if classes is None else {"classes": classes}
    path = npz(tmp_path / "d.npz", labels=np.ones(6, np.int64), **extra)
    name = "'1'" if classes is None else "'dog'"
    refused(lambda: read_npz(path), f"only one class ({name}, all 6 images)", "two or more classes")


def test_one_class_subset_of_read_data_still_allowed(tmp_path):
    data = read_npz(npz(tmp_path / "d.npz"))
    one = sample_per_class(data, 1, seed=0)
    assert len(one) == 1 and one.num_classes == 2


def test_labels_that_are_ids_refused(tmp_path):
    path = npz(tmp_path / "d.npz", labels=np.array([0, 1, 10**9, 0, 1, 0]))
    refused(lambda: read_npz(path), "up to 1000000000", "class indices 0..K-1", "renumber")


# ---------------------------------------------------------------------------------------------- limits


def test_decompression_bomb_header_refused(tmp_path):
    root = two_classes(tmp_path / "d")
    png_header(root / "b" / "bomb.png", 20_000, 20_000)  # above twice Pillow's limit: Pillow raises
    refused(lambda: read_image_folder(root), "bomb.png", "20000x20000", "400,000,000 pixels", "ROIROA_MAX_IMAGE_PIXELS")
    png_header(root / "b" / "bomb.png", 10_000, 10_000)  # between the limit and twice it: Pillow only warns
    refused(
        lambda: read_image_folder(root), "bomb.png", "100,000,000 pixels", "89,478,485", "set ROIROA_MAX_IMAGE_PIXELS"
    )


def test_pixel_limit_from_environment(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "d", size=8)  # 64 pixels each
    monkeypatch.setenv("ROIROA_MAX_IMAGE_PIXELS", "63")
    refused(lambda: read_image_folder(root), "8x8 = 64 pixels", "limit of 63 pixels", "ROIROA_MAX_IMAGE_PIXELS")
    monkeypatch.setenv("ROIROA_MAX_IMAGE_PIXELS", "64")
    assert len(read_image_folder(root)) == 2
    monkeypatch.setenv("ROIROA_MAX_IMAGE_PIXELS", "lots")
    refused(lambda: read_image_folder(root), "ROIROA_MAX_IMAGE_PIXELS must be a positive whole number", "'lots'")


def test_our_limit_governs_pillow_and_pillow_is_restored(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "d", size=8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 8x8 would be a "bomb" to Pillow
    monkeypatch.delenv("ROIROA_MAX_IMAGE_PIXELS", raising=False)
    assert len(read_image_folder(root)) == 2
    assert Image.MAX_IMAGE_PIXELS == 10


def test_data_bytes_limit_checked_before_decoding(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "d", size=10)
    save_gray8(root / "b" / "2.png", np.random.default_rng(0).integers(0, 256, (10, 10)))
    broken = (root / "b" / "2.png").read_bytes()
    (root / "b" / "2.png").write_bytes(broken[:60])  # header fine, data cut: fails on decode
    monkeypatch.setenv("ROIROA_MAX_DATA_BYTES", "1000")
    refused(lambda: read_image_folder(root), "(3, 1, 10, 10)", "1,200 bytes", "limit of 1,000", "ROIROA_MAX_DATA_BYTES")
    monkeypatch.setenv("ROIROA_MAX_DATA_BYTES", "1200")
    refused(lambda: read_image_folder(root), "2.png", "cannot read this image")


def test_data_bytes_limit_for_arrays(tmp_path, monkeypatch):
    path = npz(tmp_path / "d.npz", n=10)  # 10 x 1 x 4 x 4 float32 = 640 bytes
    monkeypatch.setenv("ROIROA_MAX_DATA_BYTES", "639")
    refused(lambda: read_npz(path), "640 bytes", "ROIROA_MAX_DATA_BYTES")
    monkeypatch.setenv("ROIROA_MAX_DATA_BYTES", "640")
    assert len(read_npz(path)) == 10


# ---------------------------------------------------------------------------------------------- array values


def test_float_npz_rounding_outside_unit_range_clipped(tmp_path):
    images = np.full((4, 2, 2), 0.5, np.float32)
    images[0, 0, 0], images[1, 0, 0] = np.float32(1) + np.float32(1e-6), np.float32(-1e-7)
    data = read_npz(npz(tmp_path / "d.npz", n=4, images=images))
    assert data.images[0, 0, 0, 0].item() == 1.0 and data.images[1, 0, 0, 0].item() == 0.0
    assert data.images[2, 0].tolist() == [[0.5, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize(("value", "words"), [(1.01, ("reach 1.01", "[0, 1]")), (-0.01, ("down to -0.01", "[0, 1]"))])
def test_float_npz_beyond_rounding_refused(tmp_path, value, words):
    images = np.full((4, 2, 2), 0.5, np.float32)
    images[2, 1, 1] = value
    refused(lambda: read_npz(npz(tmp_path / "d.npz", n=4, images=images)), *words)


def test_uint16_npz_refused_not_read_as_8bit(tmp_path):
    images = np.full((4, 2, 2), 40000, np.uint16)
    refused(lambda: read_npz(npz(tmp_path / "d.npz", n=4, images=images)), "uint16", "0..40000", "65535")


def test_int64_npz_of_8bit_values_refused(tmp_path):
    images = np.full((4, 2, 2), 200, np.int64)
    refused(lambda: read_npz(npz(tmp_path / "d.npz", n=4, images=images)), "int64", "store 8-bit values as uint8")


def test_bool_images_read_as_zero_and_one(tmp_path):
    images = np.zeros((4, 2, 2), bool)
    images[0, 1, 1] = True
    data = read_npz(npz(tmp_path / "d.npz", n=4, images=images))
    assert data.images[0, 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_bool_labels_refused(tmp_path):
    path = npz(tmp_path / "d.npz", labels=np.arange(6) % 2 == 1)
    refused(lambda: read_npz(path), "'labels' must be a 1-D integer array", "bool", "0..K-1")


def write_idx(path: Path, array: np.ndarray, code: int) -> Path:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())
    return path


def test_idx_float_labels_refused(tmp_path):
    images = write_idx(tmp_path / "i.idx", np.zeros((3, 4, 4), np.uint8), 0x08)
    labels = write_idx(tmp_path / "l.idx", np.array([0.0, 1.7, 1.2], ">f4"), 0x0D)
    refused(lambda: read_idx(images, labels), "l.idx", "float32", "integers")


def test_idx_labels_above_255_read_exactly(tmp_path):
    images = write_idx(tmp_path / "i.idx", np.zeros((4, 4, 4), np.uint8), 0x08)
    labels = write_idx(tmp_path / "l.idx", np.array([0, 300, 1, 300], ">i2"), 0x0B)
    data = read_idx(images, labels)
    assert data.labels.tolist() == [0, 300, 1, 300] and data.num_classes == 301


def cifar_batch(path: Path, data: np.ndarray, labels: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    return path


def test_cifar_float_pixels_refused_not_cut_to_uint8(tmp_path):
    path = cifar_batch(tmp_path / "c" / "test_batch", np.full((2, 3 * 4 * 4), 0.9), [0, 1])
    refused(lambda: read_cifar_batch(path), "float64", "0..255 as uint8")


def test_cifar_int_pixels_in_range_read(tmp_path):
    data = np.arange(2 * 48, dtype=np.int64).reshape(2, 48) + 100
    read = read_cifar_batch(cifar_batch(tmp_path / "c" / "test_batch", data, [0, 1]))
    assert read.images[1, 2, 3, 3].item() == f32(195 / 255)
    refused(lambda: read_cifar_batch(cifar_batch(tmp_path / "d" / "test_batch", data * 2, [0, 1])), "values 200..")


def test_cifar_float_labels_refused(tmp_path):
    path = cifar_batch(tmp_path / "c" / "test_batch", np.zeros((2, 48), np.uint8), [0.0, 1.6])
    refused(lambda: read_cifar_batch(path), "'labels' must be a list of integer class indices", "float64")


def test_make_dataset_errors_are_one_line():
    x = torch.zeros(2, 1, 4, 4)
    refused(lambda: make_dataset(x, torch.tensor([0, 1]), "toy", ("a\nb", "a\nb")), "'a\\nb'")
