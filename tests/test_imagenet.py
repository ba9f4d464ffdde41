"""ImageNet scale: image folders whose labels are the model's output indices (a labels CSV, or class subfolders
numbered by a class index), the declared resize and centre crop, MobileNetV1 x0.25 with the shared checkpoint
(60.9% top-1 on the 1,300 shared validation images), and the GPU paths (skipped without CUDA)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from roiroa.data import load_dataset
from roiroa.data.imagenet import read_class_index, resize_crop
from roiroa.errors import InputError
from roiroa.models import accuracy, create_model
from roiroa.models.loading import load_model, read_state_dict
from roiroa.models.normalize import normalization_values

IMAGENET = SHARED_DATA / "imagenet"
MOBILENET = IMAGENET / "models" / "mobilenetV1X0.25_pretrain.tar"
needs_imagenet = pytest.mark.skipif(
    not (MOBILENET.exists() and (IMAGENET / "val1300" / "labels.csv").exists()),
    reason=f"shared ImageNet sample and MobileNetV1 not found under {SHARED_DATA}; set ROIROA_SHARED",
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def write_image(path, h, w, seed):
    """A random RGB PNG of h x w pixels; returns its pixels (h, w, 3) uint8."""
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def class_index(tmp_path):
    index = {str(i): [f"n{i:08d}", f"class{i}"] for i in range(1000)}
    index["7"][1] = index["9"][1] = "crane"  # ImageNet names two classes 'crane'
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index))
    return path


def test_a_labels_csv_keeps_each_files_output_index(tmp_path, class_index):
    folder = tmp_path / "val"
    folder.mkdir()
    pixels = [write_image(folder / f"img{i}.png", 10, 12, i) for i in range(3)]
    (tmp_path / "labels.csv").write_text("file,label,wnid\nimg2.png,981,x\nimg0.png,5,y\nimg1.png,981,z\n")
    data = load_dataset(str(folder), str(tmp_path / "labels.csv"), str(class_index))
    assert data.labels.tolist() == [981, 5, 981] and data.num_classes == 1000
    assert data.classes[5] == "class5" and data.classes[7] == "crane (n00000007)"
    assert torch.equal(data.images[1], torch.from_numpy(pixels[0]).permute(2, 0, 1).float() / 255)


def test_class_subfolders_are_numbered_by_the_class_index_not_renumbered(tmp_path, class_index):
    for wnid, seed in (("n00000400", 0), ("n00000012", 1)):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        write_image(tmp_path / "train" / wnid / "a.png", 8, 8, seed)
    data = load_dataset(str(tmp_path / "train"), class_index=str(class_index))
    assert data.labels.tolist() == [12, 400] and data.classes[400] == "class400"
    (tmp_path / "train" / "stray").mkdir()
    with pytest.raises(InputError, match="not in the class index"):
        load_dataset(str(tmp_path / "train"), class_index=str(class_index))


def test_resize_then_centre_crop_is_the_torchvision_recipe(tmp_path):
    pixels = write_image(tmp_path / "a.png", 227, 300, 3)
    with Image.open(tmp_path / "a.png") as pic:
        out = np.asarray(resize_crop(pic, 256, 224))
    # shorter side 227 -> 256, the other 300 * 256 / 227 = 338; then the centre 224 x 224
    expected = np.asarray(Image.fromarray(pixels).resize((338, 256), Image.Resampling.BILINEAR))[16:240, 57:281]
    assert out.shape == (224, 224, 3) and np.array_equal(out, expected)
    write_image(tmp_path / "b.png", 227, 300, 4)
    (tmp_path / "labels.csv").write_text("file,label\na.png,1\nb.png,0\n")
    with pytest.raises(InputError, match="larger than an image"):
        load_dataset(str(tmp_path), str(tmp_path / "labels.csv"), resize=100, crop=224)


def test_bad_labels_and_class_index_files_are_one_line_errors(tmp_path):
    (tmp_path / "labels.csv").write_text("name,class\na.png,1\n")
    with pytest.raises(InputError, match="columns 'file' and 'label'"):
        load_dataset(str(tmp_path), str(tmp_path / "labels.csv"))
    (tmp_path / "index.json").write_text('{"1": ["n1", "a"]}')
    with pytest.raises(InputError, match="keys must be '0'..'K-1'"):
        read_class_index(tmp_path / "index.json")


def test_mobilenet_has_the_checkpoints_parameter_names():
    model = create_model("mobilenet_v1_025")
    assert sum(p.numel() for p in model.parameters()) == 470_072
    names = set(model.state_dict())
    assert {"stage1.0.0.weight", "stage1.0.1.running_mean", "stage3.1.3.weight", "fc.bias"} <= names
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 1000)


@needs_imagenet
def test_checkpoint_loads_from_its_training_checkpoint():
    state = read_state_dict(MOBILENET)  # nested state_dict, 'module.' prefix stripped, weights_only
    assert set(state) == set(create_model("mobilenet_v1_025").state_dict())


@needs_imagenet
@pytest.mark.slow
def test_mobilenet_reaches_its_top1_on_the_1300_validation_images():
    folder, index = IMAGENET / "val1300", IMAGENET / "imagenet_class_index.json"
    data = load_dataset(str(folder), str(folder / "labels.csv"), str(index), resize=256, crop=224)
    assert len(data) == 1300 and data.image_shape == (3, 224, 224) and data.num_classes == 1000
    model = load_model(
        "mobilenet_v1_025", MOBILENET, image_shape=(3, 224, 224), num_classes=1000,
        normalization=normalization_values("imagenet"),
    )  # fmt: skip
    top1 = accuracy(model, data.images, data.labels, batch_size=100)
    assert abs(top1 - 0.609) <= 0.01, top1


@needs_cuda
@pytest.mark.gpu
def test_mobilenet_on_the_gpu_gives_the_cpus_logits():
    torch.manual_seed(0)
    model = create_model("mobilenet_v1_025").eval()
    x = torch.rand(4, 3, 224, 224)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to("cuda")(x.to("cuda")).cpu()
    assert torch.allclose(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_the_command_line_declares_preprocessing_and_executor(tmp_path, capsys):
    from roiroa.cli import main

    index = tmp_path / "index.json"
    index.write_text('{"0": ["n0", "a"], "1": ["n1", "b"]}')
    argv = ["config", "--format", "json", "--data", str(tmp_path), "--class-index", str(index)]
    assert main([*argv, "--resize", "256", "--crop", "224", "--executor", "ray", "--address", "auto"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert {k: config["data"][k] for k in ("resize", "crop", "class_index")} == {
        "resize": 256,
        "crop": 224,
        "class_index": str(index),
    }
    assert config["executor"] == "ray" and config["ray_address"] == "auto"


def test_a_run_decodes_only_the_images_it_uses(tmp_path):
    from roiroa.data.imagenet import LabelledFiles
    from roiroa.evaluate.prepare import load_splits
    from roiroa.evaluate.validate import config_from_dict

    rows = ["file,label"]
    for i in range(40):
        write_image(tmp_path / f"{i}.png", 20, 24, i)
        rows.append(f"{i}.png,{i % 4 * 100}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = {"source": str(tmp_path), "labels": str(tmp_path / "labels.csv"), "resize": 18, "crop": 16}
    config = config_from_dict({"data": data | {"test_fraction": 0.5, "max_test": 8, "n_fit": 4}})
    splits = load_splits(config)
    assert isinstance(splits.train_source, LabelledFiles) and len(splits.train_source) == 20
    assert splits.test.images.shape == (8, 3, 16, 16) and splits.fit.images.shape == (4, 3, 16, 16)
    assert set(splits.test.labels.tolist()) == {0, 100, 200, 300} and splits.test.num_classes == 301
    assert splits.train.images.shape == (20, 3, 16, 16)  # decoded when training asks for it
    whole = load_dataset(str(tmp_path), str(tmp_path / "labels.csv"), resize=18, crop=16)
    at = splits.test.index[0]
    assert torch.equal(splits.test.images[0], whole.images[at])
