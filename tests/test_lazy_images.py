"""Image folders decoded lazily: indexing decodes exactly what the eager decode gives, a chunk's hash is that of its
decoded images (computed a block at a time), the grid holds one chunk of decoded images at a time, and a command
gives the same tables whether its test images are decoded up front or chunk by chunk."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import roiroa.data.lazy as lazy
from roiroa.cache import StageCache, hash_tensors
from roiroa.data.imagenet import LabelledFiles, list_labelled_files
from roiroa.data.lazy import ImageFiles, lazy_dataset
from roiroa.evaluate.attacking import attack_entries
from roiroa.evaluate.grid import Defence, GridContext, evaluate_grid, standard_cells
from roiroa.evaluate.tasks import chunks, content_digest

N_IMAGES, CLASSES = 12, 3


def write_folder(folder, n=N_IMAGES, seed=0):
    """n random RGB images of differing sizes (PNG, and one JPEG) in ``folder``, with labels.csv (3 classes)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["file,label"]
    for i in range(n):
        name = f"img{i}.jpg" if i == 5 else f"img{i}.png"
        h, w = (20, 24) if i % 2 else (26, 21)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        rows.append(f"{name},{i % CLASSES}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def files_of(folder, resize=18, crop=16) -> LabelledFiles:
    return list_labelled_files(folder, folder / "labels.csv", resize=resize, crop=crop)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "images")


def test_indexing_decodes_exactly_what_the_eager_decode_gives(folder):
    files = files_of(folder)
    eager = files.decode().images
    images = lazy_dataset(files).images
    assert isinstance(images, ImageFiles) and images.shape == eager.shape == (N_IMAGES, 3, 16, 16)
    for idx in (slice(None), slice(2, 7), slice(1, None, 3), torch.tensor([5, 0, 11, 5]), torch.arange(12) % 2 == 0):
        assert torch.equal(images[idx], eager[idx]), idx  # bit for bit, float32 in [0, 1]
    assert torch.equal(images[4], eager[4]) and torch.equal(images[-1], eager[-1])
    assert torch.equal(images[torch.tensor(3)], eager[torch.tensor(3)])
    assert images[3:3].shape == (0, 3, 16, 16)
    subset = lazy_dataset(files).subset(torch.tensor([9, 1]))
    assert isinstance(subset.images, ImageFiles) and torch.equal(subset.images[:], eager[[9, 1]])
    assert torch.equal(subset.decoded().images, eager[[9, 1]]) and subset.labels.tolist() == [0, 1]


def test_a_chunks_hash_is_the_hash_of_its_decoded_images(folder):
    def digests(resize=18, crop=16):
        data = lazy_dataset(files_of(folder, resize, crop))
        return [c.digest for c in chunks(data.images, data.labels, 5)]

    first = digests()
    eager = files_of(folder).decode()
    assert first == [c.digest for c in chunks(eager.images, eager.labels, 5)]  # the cache keys and seeds of main
    data = lazy_dataset(files_of(folder))
    assert content_digest(data.images, data.labels) == hash_tensors(eager.images, eager.labels)
    assert len(set(first)) == 3 and digests() == first  # stable: a new listing of the same files
    assert digests(resize=20)[0] != first[0] and digests(crop=14)[0] != first[0]
    pixels = np.asarray(Image.open(folder / "img7.png")).copy()
    pixels[10, 10] ^= 255  # one pixel in the centre crop
    Image.fromarray(pixels).save(folder / "img7.png")
    changed = digests()
    assert changed[0] == first[0] and changed[1] != first[1] and changed[2] == first[2]  # img7 is in chunk 1
    relabelled = chunks(data.images, (data.labels + 1) % CLASSES, 5)
    assert relabelled[0].digest != first[0]  # the labels are part of a chunk's content


def test_a_lazy_chunk_travels_as_its_file_names(folder):
    data = lazy_dataset(files_of(folder, resize=64, crop=64))
    chunk = chunks(data.images, data.labels, 6)[0]
    assert chunk.x.shape == (6, 3, 64, 64)  # 295 kB decoded
    assert len(pickle.dumps(chunk)) < 4_000  # what a Ray worker receives: names, labels, hash


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_the_grid_holds_at_most_one_chunk_decoded(folder, monkeypatch):
    decoded: list[int] = []
    decode = lazy.decode_rgb

    def counting(paths, resize, crop):
        decoded.append(len(paths))
        return decode(paths, resize, crop)

    data = lazy_dataset(files_of(folder))
    monkeypatch.setattr(lazy, "decode_rgb", counting)
    model = TinyNet().eval()
    f = Defence("none", "none", "f", model, model, "exact", "f")
    attacks = attack_entries(({"name": "fgsm", "eps": 0.05},), 4)
    context = GridContext(model, "tiny", StageCache(None), 0)
    found = evaluate_grid(context, [f], attacks, standard_cells([f], attacks), data.images, data.labels, 5)
    assert decoded == [5, 5, 2] * 2  # each chunk decoded to hash it, then once for all its cells
    decoded.clear()
    again = attack_entries(({"name": "fgsm", "eps": 0.1},), 4)
    evaluate_grid(context, [f], again, standard_cells([f], again), data.images, data.labels, 5)
    assert decoded == [5, 5, 2]  # the hashes are remembered: one decode per chunk
    eager = files_of(folder).decode()
    context = GridContext(model, "tiny", StageCache(None), 0)
    expected = evaluate_grid(context, [f], attacks, standard_cells([f], attacks), eager.images, eager.labels, 5)
    assert {c: r.correct.tolist() for c, r in found.items()} == {c: r.correct.tolist() for c, r in expected.items()}


@pytest.mark.slow
def test_defend_gives_the_same_tables_on_lazy_and_decoded_images(tmp_path):
    from roiroa.evaluate.defend import run_defend
    from roiroa.evaluate.validate import config_from_dict

    folder = write_folder(tmp_path / "images", n=30)
    data = {"source": str(folder), "labels": str(folder / "labels.csv"), "resize": 18, "crop": 16}
    evaluation = {
        "n_test": 12,
        "defences": ["global", "bit_depth"],
        "run_defences": ["bit_depth"],
        "sweep_scopes": ["global"],
    }
    evaluation |= {"sweep_q_roa": [0.1], "sweep_dilation": [0], "sweep_fills": ["zero"], "n_sanity": 6}
    evaluation |= {"sanity_eps": [0.02, 1.0], "attacks": [{"name": "pgd-linf", "eps": 0.03, "steps": 2}]}
    config = config_from_dict(
        {"data": data | {"test_fraction": 0.5, "n_fit": 9}, "evaluation": evaluation, "chunk_size": 5}
        | {"attacks": [{"name": "fgsm", "eps": 0.03}], "maps": {"importance": "saliency"}}
    )

    def results(**given):
        out = run_defend(config, model=TinyNet().eval(), cache=StageCache(None), **given).results
        return json.loads(json.dumps({k: v for k, v in out.items() if k != "timings"}))

    lazily = results()
    assert lazily == results(data=list_labelled_files(folder, folder / "labels.csv", resize=18, crop=16).decode())
    assert lazily["n_test"] == 12 and lazily["table"]


@pytest.mark.slow
def test_run_reads_image_files_chunk_by_chunk_and_gives_the_decoded_results(tmp_path, monkeypatch):
    """``run`` on an image folder never decodes the test set at once (only chunks of 5, the gallery's images and
    hash blocks), and its results.json and arrays equal those of the same images decoded up front."""
    from roiroa.evaluate.run import run_experiment
    from roiroa.evaluate.validate import config_from_dict

    folder = write_folder(tmp_path / "images", n=36)
    data = {"source": str(folder), "labels": str(folder / "labels.csv"), "resize": 18, "crop": 16}
    config = config_from_dict(
        {"data": data | {"test_fraction": 0.5, "n_fit": 9}, "chunk_size": 5, "examples": 2}
        | {"attacks": [{"name": "fgsm", "eps": 0.03}, {"name": "pgd-linf", "eps": 0.03, "steps": 2}]}
        | {"maps": {"importance": "saliency"}, "defence": {"oracle_q": [0.2]}, "statistics": {"bootstrap": 100}}
        | {"evaluation": {"run_images": 6, "run_defences": ["bit_depth"]}}
    )
    test_files = {str(folder / f"img{i}.png") for i in range(36)} | {str(folder / "img5.jpg")}
    decoded: list[int] = []
    decode = lazy.decode_rgb

    def counting(paths, resize, crop):
        decoded.append(len(test_files.intersection(map(str, paths))))
        return decode(paths, resize, crop)

    monkeypatch.setattr(lazy, "decode_rgb", counting)
    lazily = run_experiment(config, model=TinyNet().eval(), cache=StageCache(None))
    monkeypatch.setattr(lazy, "decode_rgb", decode)
    eager = run_experiment(
        config,
        model=TinyNet().eval(),
        data=list_labelled_files(folder, folder / "labels.csv", resize=18, crop=16).decode(),
        cache=StageCache(None),
    )
    n_test, gallery = len(lazily.folder.arrays["labels"]), len(lazily.folder.arrays["gallery_index"])
    assert n_test == 18 and max(decoded) <= max(5, gallery) < n_test
    without_timings = [{k: v for k, v in r.results.items() if k != "timings"} for r in (lazily, eager)]
    assert json.loads(json.dumps(without_timings[0])) == json.loads(json.dumps(without_timings[1]))
    assert lazily.folder.arrays.keys() == eager.folder.arrays.keys()
    for k, v in lazily.folder.arrays.items():
        assert np.array_equal(v, eager.folder.arrays[k]), k


def test_certified_rows_read_image_files_chunk_by_chunk(folder):
    from roiroa.evaluate.certified import certified_rows

    files = files_of(folder)
    eager, data = files.decode(), lazy_dataset(files)
    model = TinyNet().eval()

    def rows(test):
        return certified_rows(model, "tiny", (test, eager), (0.1,), 2, StageCache(None), chunk_size=5)

    assert rows(data) == rows(eager)  # the same rows and flags; the same cache key (the images' content hash)
