"""The GPU paths (skipped without CUDA; benchmarks/gpu_check.sh runs them on a GPU machine): each stage on
``cuda`` gives the CPU's results to float rounding, and a whole run on ``device = 'cuda'`` completes with
its tensors on the GPU."""

from __future__ import annotations

import pytest
import torch

import roiroa
from roiroa.attacks import LinfPGD
from roiroa.maps import GradCAM, Occlusion, Saliency
from roiroa.models import create_model
from roiroa.models.normalize import NORMALIZATIONS, Normalized
from test_engine import SMALL, squares, train_two_squares

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return Normalized(create_model("mobilenet_v1_025"), *NORMALIZATIONS["imagenet"]).eval()


def on(device, *tensors):
    return [t.to(device) for t in tensors]


def test_occlusion_on_the_gpu_equals_the_cpu(mobilenet):
    x, y = torch.rand(2, 3, 224, 224), torch.tensor([1, 2])
    occlusion = Occlusion(window=16, stride=8, baseline=0.0)
    cpu = occlusion(mobilenet, x, y)
    gpu = occlusion(mobilenet.to("cuda"), *on("cuda", x, y))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * float(cpu.abs().max()))


def test_gradient_maps_and_pgd_stay_on_the_gpu(mobilenet):
    model = mobilenet.to("cuda")
    x, y = on("cuda", torch.rand(4, 3, 224, 224), torch.tensor([1, 2, 3, 4]))
    for estimator in (Saliency(), GradCAM()):
        assert estimator(model, x, y).device.type == "cuda"
    x_adv = LinfPGD(eps=4 / 255, steps=3)(model, x, y)
    assert x_adv.device.type == "cuda" and float((x_adv - x).abs().max()) <= 4 / 255 + 1e-6


def test_a_whole_run_on_cuda_matches_the_cpu_run():
    model = train_two_squares()
    x, y = squares(48, seed=2)
    runs = {}
    for device in ("cpu", "cuda"):
        experiment = roiroa.Experiment(model=model.eval(), data=(x, y), config=SMALL | {"device": device}, cache=False)
        runs[device] = experiment.run().results
    assert runs["cuda"]["model"]["test_accuracy"] == runs["cpu"]["model"]["test_accuracy"]
    assert runs["cuda"]["dataset"] == runs["cpu"]["dataset"]
