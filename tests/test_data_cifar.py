"""CIFAR python batches (read without running pickled code), the shared CIFAR .npz, opt-in torchvision."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from roiroa.data import load_dataset
from roiroa.data.cifar import read_cifar_batch, read_cifar_folder
from roiroa.errors import InputError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_NPZ = SHARED_DATA / "cifar10" / "cifar10_test_1000.npz"


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write_batches(folder: Path, n: int = 12, bytes_keys: bool = True) -> np.ndarray:
    """A CIFAR-10 batch folder (test_batch, data_batch_1, batches.meta) as the original's layout; returns HWC images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = [int(v) for v in np.arange(n) % 10]
    folder.mkdir(parents=True, exist_ok=True)

    def key(k: str) -> str | bytes:
        return k.encode() if bytes_keys else k

    batch = {
        key("batch_label"): b"testing batch 1 of 1",
        key("labels"): labels,
        key("data"): images.transpose(0, 3, 1, 2).reshape(n, -1),  # rows: 1024 R, 1024 G, 1024 B
        key("filenames"): [f"img_{i}.png".encode() for i in range(n)],
    }
    for name in ("test_batch", "data_batch_1"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {key("label_names"): [c.encode() for c in CLASSES], key("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return images


@pytest.mark.parametrize("bytes_keys", [True, False], ids=["bytes-keys", "str-keys"])
def test_cifar_batch_pixels_labels_and_class_names(tmp_path, bytes_keys):
    images = _write_batches(tmp_path / "cifar-10-batches-py", bytes_keys=bytes_keys)
    data = read_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert data.images.shape == (12, 3, 32, 32)
    np.testing.assert_array_equal((data.images * 255).round().byte().permute(0, 2, 3, 1).numpy(), images)
    assert data.labels.tolist() == [i % 10 for i in range(12)]
    assert list(data.classes) == CLASSES


def test_cifar_folder_through_load_dataset(tmp_path):
    _write_batches(tmp_path / "c")
    test = load_dataset(str(tmp_path / "c"))
    train = read_cifar_folder(tmp_path / "c", "train")
    assert len(test) == len(train) == 12 and test.classes == tuple(CLASSES)
    assert len(load_dataset(str(tmp_path / "c" / "data_batch_1"))) == 12


def test_malicious_cifar_batch_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "c"
    _write_batches(folder)
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": Payload(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(InputError, match=r"refused to unpickle.*global io\.open is not allowed") as err:
        load_dataset(str(folder))
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # the same through the meta file
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Payload(marker)}, protocol=2))
    with pytest.raises(InputError, match="refused to unpickle"):
        read_cifar_batch(folder / "data_batch_1")
    assert not marker.exists()


def test_truncated_cifar_batch(tmp_path):
    _write_batches(tmp_path / "c")
    raw = (tmp_path / "c" / "test_batch").read_bytes()
    (tmp_path / "c" / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_dataset(str(tmp_path / "c"))


def test_torchvision_path_is_opt_in_with_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed; never imported here
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(InputError, match="needs a working torchvision"):
        load_dataset("torchvision:CIFAR10")
    with pytest.raises(InputError, match="torchvision:NAME"):
        load_dataset("torchvision:CIFAR10:valid")


@pytest.mark.skipif(not CIFAR_NPZ.exists(), reason=f"shared CIFAR-10 sample not found at {CIFAR_NPZ}")
def test_shared_cifar10_npz_reads_with_class_names():
    data = load_dataset(str(CIFAR_NPZ))
    assert data.images.shape == (1000, 3, 32, 32) and data.images.dtype == torch.float32
    assert data.classes == tuple(CLASSES)
    assert torch.bincount(data.labels).tolist() == [100] * 10
