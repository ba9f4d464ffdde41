"""Incremental inference for occlusion: forward only the part of the network that a window changes.

Occluding one h x w window of x changes each feature map only inside a box: a conv of kernel k, stride s and
padding p whose input changes in rows [a, b) changes its output rows [ceil((a + p - k + 1) / s),
floor((b - 1 + p) / s) + 1), clamped to its map; pointwise operations keep the box; a residual addition takes the
union of its inputs' boxes. So each node is computed only on its box (one size for all windows, shifted inward
at the map's borders), from its input gathered around that box: the clean activations (computed once per image,
zero-padded at the real borders only) with the input's crop pasted in. Once a conv's box covers most of its map
(``FULL_FRACTION``), its crop is pasted into the clean maps and the rest of the network runs on whole maps
(Nakandala et al., "Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations",
SIGMOD 2019, whose exact part this is). A copy of the model is traced with torch.fx; its conv + batch-norm pairs
are folded (``torch.fx.experimental.optimization.fuse``), it runs channels-last, and its ReLUs and residual
additions act in place. Its outputs equal the model's own to float rounding (tests/test_incremental.py, windows
at every border; the occlusion maps equal Captum's).

Written here rather than taken from a library: no maintained PyTorch package implements it. Measured on the
2-core development CPU (shared with other jobs): MobileNetV1 x0.25 at 224x224 with 16-pixel windows at stride 8
saves 58% of the multiply-accumulates (the boxes go through every stride down to the 14 x 14 stage), and occlusion
maps are 5.7x and 6.7x (two runs) faster than Captum's ``Occlusion`` at its fastest setting, maps equal to 7e-6
relative (whole images, BN-folded: 1.7x):
``PYTHONPATH=src python benchmarks/imagenet.py --images 1 --repeats 2 --skip-ray``.
ResNet-20 on CIFAR-10 saves 34% (its first stage and the strided conv after it; the option-A shortcut's strided
slicing gets whole maps): ``python benchmarks/estimators.py``.

Supported in the cropped part: ``nn.Conv2d`` of any kernel, stride, zero padding and groups (depthwise
included), undilated; and pointwise operations (activations, eval-mode batch norm, arithmetic with scalars,
per-channel constants or other cropped maps of the same size). Any other operation gets full maps. For a model
that torch.fx cannot trace, or where the crops would save too little (``MIN_SAVED_FRACTION``),
:func:`incremental_model` returns None and the caller forwards whole images.
"""

from __future__ import annotations

import copy
import operator
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from roiroa.models.normalize import checked_channels
from roiroa.utils import model_device

# oneDNN's native layout: on the 2-core development CPU a 16-channel 3x3 conv of 32x32 maps ran
# 3-5x faster channels-last than NCHW with zero padding.
LAYOUT = torch.channels_last

# Below this share of saved multiply-accumulates the crops' own costs (tracing, gathering, pasting)
# outweigh the saving: the MNIST CNN (10%: one conv before its pooling) runs as fast on whole
# images, ResNet-20 on CIFAR-10 (30%: its first stage) runs 1.5-1.7x faster incrementally
# (benchmarks/estimators.py).
MIN_SAVED_FRACTION = 0.2

# A conv whose box covers more than this share of its map computes whole maps instead. MobileNetV1 x0.25, 224x224,
# 16-pixel windows at stride 8, CPU seconds per image on one thread: 0.3: 0.58, 0.5: 0.49, 0.7: 0.46, 0.9: 0.46,
# 1.0 (crop every conv): 0.51. Crops of most of a map cost about what whole maps do, plus the gathering.
FULL_FRACTION = 0.7

# Modules, functions and methods that act on each position separately (in eval mode).
POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.BatchNorm2d,
)  # fmt: skip
# Activation modules with an ``inplace`` switch, turned on in a traced copy where that is safe.
IN_PLACE_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.SiLU)
POINTWISE_FUNCTIONS: frozenset[Any] = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.relu, torch.sigmoid, torch.tanh, torch.clamp,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardtanh, F.hardswish,
    F.hardsigmoid, F.softplus, checked_channels, operator.iadd,
})  # fmt: skip
POINTWISE_METHODS = frozenset({
    "add", "sub", "mul", "div", "neg", "relu", "sigmoid", "tanh", "clamp", "add_", "sub_", "mul_", "div_",
    "relu_", "clamp_", "contiguous",
})  # fmt: skip


def _is_local_constant(value: Any) -> bool:
    """True for a number, or a tensor that broadcasts over positions without varying along them."""
    if not isinstance(value, torch.Tensor):
        return isinstance(value, (int, float, bool)) or value is None
    return value.numel() == 1 or (value.dim() >= 3 and value.shape[-1] == 1 and value.shape[-2] == 1)


@dataclass(frozen=True, eq=False)
class Box:
    """Where a cropped node's values may change, for every window position, in that node's own coordinates.

    size: (h, w), the same for every window. rows: (T,) int64, the box's first row for a window whose top
    row is t (T = H - h_window + 1); cols: (L,) its first column for each left column. A node's own box lies
    on its map and holds every position the window changes; a conv's read region may reach into the padding.
    """

    size: tuple[int, int]
    rows: torch.Tensor
    cols: torch.Tensor

    def same(self, other: Box) -> bool:
        """True if both boxes lie at the same place for every window."""
        return self.size == other.size and torch.equal(self.rows, other.rows) and torch.equal(self.cols, other.cols)


@dataclass(frozen=True, eq=False)
class NodePlan:
    """How one graph node is computed for a batch of windows.

    mode: 'const' (the same for every window: parameters, buffers), 'crop' (only on ``box``, of a map of
    ``map_size`` (H', W')) or 'full' (whole maps).
    """

    mode: str
    box: Box | None = None
    map_size: tuple[int, int] = (0, 0)


@dataclass(frozen=True, eq=False)
class ConvRead:
    """The input region a cropped conv gathers (its starts may be < 0: zero padding; it holds the input's own
    box), and the rows and columns of it the conv uses: stride * (output box - 1) + kernel."""

    region: Box
    used: tuple[int, int]


@dataclass
class CleanPass:
    """What :meth:`IncrementalModel.clean` keeps of the clean forward pass of N images.

    padded: the clean value of every cropped node read around its box, zero-padded by its margins
        (top, bottom, left, right) and stored channels-last as a plain tensor, (N, H'+t+b, W'+l+r, C).
    maps: the clean value (N, H', W', C) of every cropped node pasted into full maps.
    output: the model's output on the clean images, (N, K).
    """

    padded: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor]
    output: torch.Tensor


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """(rows, cols) of zero padding on each side of an undilated conv the engine can crop, else None."""
    if conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":  # stride 1 (PyTorch's rule); odd kernels pad evenly
        kh, kw = conv.kernel_size  # type: ignore[misc]
        return ((kh - 1) // 2, (kw - 1) // 2) if kh % 2 == 1 and kw % 2 == 1 else None
    return conv.padding  # type: ignore[return-value]


def _conv_axis(
    starts: torch.Tensor, size: int, n_out: int, kernel: int, stride: int, pad: int
) -> tuple[torch.Tensor, int, torch.Tensor, int, int]:
    """Along one axis, for an input box [a, a + size) at each a in ``starts`` (T,): the conv's output box
    (starts (T,), size), the input region it gathers (starts (T,) >= -pad, size) and the length of it the conv
    uses. The region holds the input box, but where the kernel is shorter than the stride (a 1x1 conv of stride 2)
    it may begin after the box's first rows, which no output reads.

    Input rows [a, b) change output rows [ceil((a + pad - k + 1) / s), floor((b - 1 + pad) / s) + 1) clamped to
    [0, n_out); one box size for all windows (the largest), shifted inward at the map's borders, holds them.
    """
    first = torch.div(starts + pad - kernel + stride, stride, rounding_mode="floor").clamp(min=0)
    end = (torch.div(starts + size - 1 + pad, stride, rounding_mode="floor") + 1).clamp(max=n_out)
    out_size = max(1, min(n_out, int((end - first).max())))
    out = first.clamp(max=n_out - out_size)
    read, used = stride * out - pad, stride * (out_size - 1) + kernel
    return out, out_size, read, max(used, int((starts + size - read).max())), used


def _union(boxes: list[Box], map_size: tuple[int, int]) -> Box:
    """The smallest box of one size that holds each of ``boxes`` (on one map) for every window."""
    if all(b.same(boxes[0]) for b in boxes):
        return boxes[0]
    axes = []
    for axis in (0, 1):
        starts = torch.stack([b.rows if axis == 0 else b.cols for b in boxes])
        ends = starts + torch.tensor([b.size[axis] for b in boxes], device=starts.device)[:, None]
        first, last = starts.min(0).values, ends.max(0).values
        size = min(map_size[axis], int((last - first).max()))
        axes.append((first.clamp(max=map_size[axis] - size), size))
    return Box((axes[0][1], axes[1][1]), axes[0][0], axes[1][0])


class IncrementalModel:
    """A traced, conv-BN-folded copy of a model that forwards images changed inside one box each.

    Build it with :func:`incremental_model`. ``clean(x)`` runs the clean images once;
    ``forward(clean, image, top, left, patch)`` returns the model's output on the images
    ``x[image]`` with the box ``[top, top+h) x [left, left+w)`` replaced by ``patch``.
    """

    def __init__(self, graph_module: fx.GraphModule, image_shape: tuple[int, int, int], box: tuple[int, int]) -> None:
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        self.image_shape = image_shape
        self.box = box
        self.plans: dict[str, NodePlan] = {}
        self.reads: dict[str, ConvRead] = {}  # what each cropped conv gathers of its input
        self.margins: dict[str, tuple[int, int, int, int]] = {}  # zero padding of the clean maps read around boxes
        self.pasted: set[str] = set()  # cropped nodes whose full maps a later node reads
        self.macs = 0.0  # multiply-accumulates per image of the convs and linears, whole
        self.macs_saved = 0.0  # of which the crops save
        self._plan(torch.zeros(1, *image_shape, device=model_device(graph_module)))

    @property
    def cropped_nodes(self) -> int:
        """How many graph nodes are computed on crops (0 means nothing is gained)."""
        return sum(plan.mode == "crop" for plan in self.plans.values()) - 1  # minus the input

    def _call(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "get_attr":
            value: Any = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        raise ValueError(f"unexpected fx node {node.op}")

    def _run_full(self, x: torch.Tensor, keep: CleanPass | None = None) -> dict[str, Any]:
        """Every node's value on whole images x: (N, C, H, W).

        With ``keep``, also stores there copies of the clean maps of the cropped nodes as they are computed
        (before any in-place operation of a later node).
        """
        env: dict[str, Any] = {}
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node.name] = x
            elif node.op == "output":
                env[node.name] = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            else:
                args = fx.node.map_arg(node.args, lambda n: env[n.name])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
                env[node.name] = self._call(node, args, kwargs)  # type: ignore[arg-type]
            if keep is not None and node.name in self.margins:
                value, (t, b, left, r) = env[node.name], self.margins[node.name]
                padded = value.new_zeros(len(value), value.shape[2] + t + b, value.shape[3] + left + r, value.shape[1])
                padded[:, t : t + value.shape[2], left : left + value.shape[3]] = value.permute(0, 2, 3, 1)
                keep.padded[node.name] = padded
            if keep is not None and node.name in self.pasted:
                keep.maps[node.name] = env[node.name].permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)
        return env

    def _plan(self, example: torch.Tensor) -> None:
        """Decide, from one traced run, which nodes are cropped and where their boxes lie."""
        (_, height, width), (bh, bw) = self.image_shape, self.box
        env = self._run_full(example)
        for node in self.gm.graph.nodes:
            inputs = node.all_input_nodes
            if node.op == "placeholder":
                device = example.device  # the boxes' tables live with the model
                rows, cols = torch.arange(height - bh + 1, device=device), torch.arange(width - bw + 1, device=device)
                self.plans[node.name] = NodePlan("crop", Box(self.box, rows, cols), (height, width))
                continue
            if node.op == "get_attr" or (
                node.op != "output" and all(self.plans[i.name].mode == "const" for i in inputs)
            ):
                self.plans[node.name] = NodePlan("const")
                continue
            cropped = [n for n in inputs if self.plans[n.name].mode == "crop"]
            plan = NodePlan("full")
            if cropped and node.op != "output":
                plan = self._crop_plan(node, cropped, env) or plan
            if plan.mode == "full":
                self.pasted.update(n.name for n in cropped)  # their crops go into full maps
            self.plans[node.name] = plan
            self._count_macs(node, plan, env[node.name])

    def _count_macs(self, node: fx.Node, plan: NodePlan, value: Any) -> None:
        """Add the multiply-accumulates of a conv or linear node, whole and as planned, per image."""
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            whole = value[0].numel() * module.weight[0].numel()
            if plan.mode == "crop" and plan.box is not None:
                share = plan.box.size[0] * plan.box.size[1] / (plan.map_size[0] * plan.map_size[1])
                self.macs_saved += whole * (1 - share)
            self.macs += whole
        elif isinstance(module, nn.Linear):
            self.macs += value[0].numel() * module.in_features

    @property
    def saved_fraction(self) -> float:
        """The share of the conv and linear multiply-accumulates of a forward pass that the crops save."""
        return self.macs_saved / self.macs if self.macs else 0.0

    def _crop_plan(self, node: fx.Node, cropped: list[fx.Node], env: dict[str, Any]) -> NodePlan | None:
        """The crop plan of a node with cropped inputs, or None if it must see full maps."""
        value = env[node.name]
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            return None
        map_size = (int(value.shape[2]), int(value.shape[3]))
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            return self._conv_plan(module, node, map_size)
        pointwise = (
            (module is not None and isinstance(module, POINTWISE_MODULES) and not module.training)
            or (node.op == "call_function" and node.target in POINTWISE_FUNCTIONS)
            or (node.op == "call_method" and node.target in POINTWISE_METHODS)
        )
        if not pointwise or any(self.plans[n.name].map_size != map_size for n in cropped):
            return None
        others = [n for n in node.all_input_nodes if n not in cropped]
        if any(self.plans[n.name].mode != "const" or not _is_local_constant(env[n.name]) for n in others):
            return None
        box = _union([self.plans[n.name].box for n in cropped], map_size)  # type: ignore[misc]
        for n in cropped:
            self._read(n.name, box)
        return NodePlan("crop", box, map_size)

    def _conv_plan(self, conv: nn.Conv2d, node: fx.Node, map_size: tuple[int, int]) -> NodePlan | None:
        """The crop plan of a conv whose input is cropped, or None where its box covers most of its map."""
        padding = _conv_padding(conv)
        if padding is None or len(node.all_input_nodes) != 1 or node.args[0] is not node.all_input_nodes[0]:
            return None
        source = self.plans[node.all_input_nodes[0].name]
        assert source.box is not None
        axes = [
            _conv_axis(starts, source.box.size[a], map_size[a], conv.kernel_size[a], conv.stride[a], padding[a])  # type: ignore[misc]
            for a, starts in enumerate((source.box.rows, source.box.cols))
        ]
        (out_r, h, read_r, read_h, used_h), (out_c, w, read_c, read_w, used_w) = axes
        if h * w > FULL_FRACTION * map_size[0] * map_size[1]:
            return None  # whole maps cost less than crops of most of the map and pasting them
        region = Box((read_h, read_w), read_r, read_c)
        self.reads[node.name] = ConvRead(region, (used_h, used_w))
        self._read(node.all_input_nodes[0].name, region)
        return NodePlan("crop", Box((h, w), out_r, out_c), map_size)

    def _read(self, name: str, region: Box) -> None:
        """Note that a node is read on ``region``: its clean maps are kept, padded far enough for it."""
        plan = self.plans[name]
        assert plan.box is not None
        if region.same(plan.box):
            return
        (height, width), (h, w) = plan.map_size, region.size
        need = (
            -int(region.rows.min()),
            int(region.rows.max()) + h - height,
            -int(region.cols.min()),
            int(region.cols.max()) + w - width,
        )
        old = self.margins.get(name, (0, 0, 0, 0))
        self.margins[name] = tuple(max(a, b, 0) for a, b in zip(old, need, strict=True))  # type: ignore[assignment]

    @torch.no_grad()
    def clean(self, x: torch.Tensor) -> CleanPass:
        """The clean pass of x: (N, C, H, W): every cropped node's value, padded, and the output."""
        keep = CleanPass({}, {}, torch.empty(0))
        env = self._run_full(x.contiguous(memory_format=LAYOUT), keep)
        keep.output = env["output"]
        return keep

    @torch.no_grad()
    def forward(
        self, clean: CleanPass, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor, patch: torch.Tensor
    ) -> torch.Tensor:
        """The output on images ``x[image]`` whose box at (top, left) is replaced by ``patch``.

        Args:
            clean: :meth:`clean` of the images x.
            image, top, left: (B,) int64: which image, and the box's top-left pixel (the box on the image).
            patch: (B, C, h, w) the new pixel values inside the box, (h, w) = ``self.box``.

        Returns:
            (B, K), as ``model(x_changed)`` to float rounding.
        """
        batch = _WindowBatch(self, clean, image, top, left)
        for node in self.gm.graph.nodes:
            plan = self.plans[node.name]
            if node.op == "placeholder":
                batch.crops[node.name] = patch.contiguous(memory_format=LAYOUT)
            elif node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: batch.value(n, None))  # type: ignore[return-value]
            elif node.name in self.reads:
                conv, read = self.modules[str(node.target)], self.reads[node.name]
                x_in = batch.value(node.all_input_nodes[0], read.region)
                if read.used != read.region.size:
                    x_in = x_in[:, :, : read.used[0], : read.used[1]]
                batch.crops[node.name] = F.conv2d(x_in, conv.weight, conv.bias, conv.stride, 0, 1, conv.groups)
            else:
                batch.run(node, plan)
        raise ValueError("the traced graph has no output")


def _pixels(shape: tuple[int, ...], image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Flat indices (B*h*w,) into maps.view(-1, C), maps of ``shape`` (N, H', W', C), of rows (B, h) x cols (B, w)
    of maps[image]."""
    hp, wp = shape[1], shape[2]
    return ((image[:, None, None] * hp + rows[:, :, None]) * wp + cols[:, None, :]).flatten()


class _WindowBatch:
    """The node values of one batch of changed images while :meth:`IncrementalModel.forward` runs."""

    def __init__(
        self, engine: IncrementalModel, clean: CleanPass, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor
    ) -> None:
        self.engine, self.clean, self.image, self.top, self.left = engine, clean, image, top, left
        self.crops: dict[str, torch.Tensor] = {}  # values on each cropped node's own box
        self.fulls: dict[str, Any] = {}  # whole maps of full nodes, and of cropped nodes pasted into them
        self.consts: dict[str, Any] = {}
        self.batch = torch.arange(len(image), device=image.device)

    def where(self, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h) rows and (B, w) columns of each window's box."""
        device = self.top.device
        rows = box.rows[self.top][:, None] + torch.arange(box.size[0], device=device)
        cols = box.cols[self.left][:, None] + torch.arange(box.size[1], device=device)
        return rows, cols

    def value(self, node: fx.Node, region: Box | None) -> Any:
        """A node's value: on ``region`` for a cropped consumer, else whole maps (region=None)."""
        plan = self.engine.plans[node.name]
        if plan.mode == "const":
            return self.consts[node.name]
        if plan.mode == "full":
            return self.fulls[node.name]
        if region is None:
            key = f"{node.name}@full"
            if key not in self.fulls:
                self.fulls[key] = self.pasted(node.name)
            return self.fulls[key]
        assert plan.box is not None
        return self.crops[node.name] if region.same(plan.box) else self.gathered(node.name, region)

    def run(self, node: fx.Node, plan: NodePlan) -> None:
        """Compute a const, full or pointwise cropped node from its inputs' values."""
        if plan.mode == "const":
            args = fx.node.map_arg(node.args, lambda n: self.consts[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: self.consts[n.name])
        else:
            args = fx.node.map_arg(node.args, lambda n: self.value(n, plan.box))
            kwargs = fx.node.map_arg(node.kwargs, lambda n: self.value(n, plan.box))
        out = self.engine._call(node, args, kwargs)  # type: ignore[arg-type]
        {"const": self.consts, "crop": self.crops, "full": self.fulls}[plan.mode][node.name] = out

    def gathered(self, name: str, region: Box) -> torch.Tensor:
        """(B, C, h, w) channels-last: the node on ``region``: its clean values, with its crop pasted in."""
        t, _, left, _ = self.engine.margins[name]
        maps = self.clean.padded[name]
        rows, cols = self.where(region)
        out = maps.view(-1, maps.shape[3]).index_select(0, _pixels(maps.shape, self.image, rows + t, cols + left))
        out = out.view(len(self.image), *region.size, -1)
        self.paste(out, name, rows[:, 0], cols[:, 0])
        return out.permute(0, 3, 1, 2)

    def paste(self, out: torch.Tensor, name: str, row0: torch.Tensor, col0: torch.Tensor) -> None:
        """Write the crop of node ``name`` into out: (B, h, w, C), whose [0, 0] is at (row0, col0) (B,) of its map;
        crop rows and columns before that (which a conv with a kernel shorter than its stride never reads) are
        left out."""
        box = self.engine.plans[name].box
        assert box is not None
        rows, cols = self.where(box)
        rows, cols = rows - row0[:, None], cols - col0[:, None]
        crop = self.crops[name].permute(0, 2, 3, 1).reshape(-1, out.shape[3])
        at = _pixels(out.shape, self.batch, rows, cols)
        if bool((rows[:, 0] < 0).any() or (cols[:, 0] < 0).any()):
            inside = ((rows >= 0)[:, :, None] & (cols >= 0)[:, None, :]).flatten()
            at, crop = at[inside], crop[inside]
        out.view(-1, out.shape[3]).index_copy_(0, at, crop)

    def pasted(self, name: str) -> torch.Tensor:
        """The whole maps (B, C, H', W'), channels-last, of a cropped node: its clean maps with the crop pasted in."""
        maps = self.clean.maps[name].index_select(0, self.image)  # (B, H', W', C)
        zero = torch.zeros_like(self.image)
        self.paste(maps, name, zero, zero)
        return maps.permute(0, 3, 1, 2)


def _compute_in_place(graph_module: fx.GraphModule, example: torch.Tensor) -> int:
    """Rewrite ``relu(t)``, ReLU-like modules and ``t + u`` to act in place on t where t is a fresh result (of a conv,
    linear, batch norm or addition) that nothing else reads and u has t's shape; returns how many
    nodes changed. On a CPU the fresh buffers these would allocate cost about as much as the
    operations themselves."""
    ShapeProp(graph_module).propagate(example)
    fresh_modules = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    modules = dict(graph_module.named_modules())

    def fresh_and_private(node: Any) -> bool:
        if not isinstance(node, fx.Node) or len(node.users) != 1:
            return False
        if node.op == "call_module":
            return isinstance(modules[str(node.target)], fresh_modules)
        return node.op == "call_function" and node.target in (operator.add, operator.iadd)

    def shape(node: Any) -> Any:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return (tuple(meta.shape), meta.dtype) if meta is not None else None

    changed = 0
    calls = Counter(str(n.target) for n in graph_module.graph.nodes if n.op == "call_module")
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and node.args and fresh_and_private(node.args[0]) and calls[str(node.target)] == 1:
            module = modules[str(node.target)]
            if isinstance(module, IN_PLACE_MODULES) and not getattr(module, "inplace", True):
                setattr(module, "inplace", True)  # noqa: B010 - a private copy's module, called once: safe in place
                changed += 1
            continue
        if node.op != "call_function" or not node.args or not fresh_and_private(node.args[0]):
            continue
        if node.target in (F.relu, torch.relu) and len(node.args) == 1:
            node.target, node.kwargs = F.relu, {**node.kwargs, "inplace": True}
            changed += 1
        elif node.target is operator.add and len(node.args) == 2 and node.args[1] is not node.args[0]:
            if shape(node.args[1]) is not None and shape(node.args[1]) == shape(node.args[0]):
                node.target = operator.iadd
                changed += 1
    graph_module.recompile()
    return changed


def incremental_model(
    model: nn.Module, image_shape: tuple[int, int, int], box: tuple[int, int]
) -> IncrementalModel | None:
    """An :class:`IncrementalModel` of a copy of ``model`` for images (C, H, W) changed in boxes
    (h, w), or None when torch.fx cannot trace the model or the crops would save less than
    ``MIN_SAVED_FRACTION`` of its multiply-accumulates. ``model`` itself is not changed."""
    graph_module = folded_model(model, image_shape)
    if graph_module is None:
        return None
    try:
        engine = IncrementalModel(graph_module, image_shape, box)
    except Exception:  # noqa: BLE001 - any failure to plan means: forward whole images
        return None
    return engine if engine.saved_fraction >= MIN_SAVED_FRACTION else None


def folded_model(model: nn.Module, image_shape: tuple[int, int, int]) -> fx.GraphModule | None:
    """A traced copy of ``model`` with conv + batch-norm pairs folded (eval mode), channels-last, with ReLUs and
    residual additions in place; it computes the model's outputs to float rounding, faster (on MobileNetV1 the
    batch norms are a third of the memory traffic). None when torch.fx cannot trace the model or the copy
    fails on channels-last images. ``model`` itself is not changed."""
    try:
        graph_module = fx.symbolic_trace(copy.deepcopy(model))
        if not model.training:
            graph_module = fuse(graph_module, inplace=True, no_trace=True)  # type: ignore[assignment]
        graph_module.to(memory_format=LAYOUT)  # type: ignore[call-overload]
        example = torch.zeros(2, *image_shape, device=model_device(model))
        with torch.no_grad():  # a model that breaks channels-last (a view() of its maps) fails here; .forward
            graph_module.forward(example.contiguous(memory_format=LAYOUT))  # does not print fx's traceback
        _compute_in_place(graph_module, example)
    except Exception:  # noqa: BLE001 - any failure to trace means: use the model itself
        return None
    return graph_module


_FOLDED: weakref.WeakKeyDictionary[nn.Module, tuple[Any, fx.GraphModule | None]] = weakref.WeakKeyDictionary()


def cached_folded_model(model: nn.Module, image_shape: tuple[int, int, int]) -> fx.GraphModule | None:
    """:func:`folded_model`, reused while the model's weights, mode and the image shape stay the same."""
    state = _model_state(model, image_shape, (0, 0))
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    folded = folded_model(model, image_shape)
    _FOLDED[model] = (state, folded)
    return folded


# The engines of recent models, so that repeated calls (chunks of a run) trace and plan once.
_ENGINES: weakref.WeakKeyDictionary[nn.Module, tuple[Any, IncrementalModel | None]] = weakref.WeakKeyDictionary()


def _model_state(model: nn.Module, image_shape: tuple[int, int, int], box: tuple[int, int]) -> Any:
    """What a cached engine depends on: shapes, mode, and each weight's storage and in-place version."""
    tensors = [*model.parameters(), *model.buffers()]
    return image_shape, box, model.training, tuple((t.data_ptr(), t._version, str(t.device)) for t in tensors)


def cached_incremental_model(
    model: nn.Module, image_shape: tuple[int, int, int], box: tuple[int, int]
) -> IncrementalModel | None:
    """:func:`incremental_model`, reused while the model's weights, mode and the shapes stay the same.

    A change of the weights through ``.data`` is not seen here; :func:`roiroa.maps.occlusion_drops`
    checks every call's first batch against the model itself and calls :func:`forget_engine` on a
    mismatch.
    """
    state = _model_state(model, image_shape, box)
    cached = _ENGINES.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    engine = incremental_model(model, image_shape, box)
    _ENGINES[model] = (state, engine)
    return engine


def forget_engine(model: nn.Module) -> None:
    """Drop the cached engine of ``model``."""
    _ENGINES.pop(model, None)


def remember_no_engine(model: nn.Module, image_shape: tuple[int, int, int], box: tuple[int, int]) -> None:
    """Cache "no engine" for ``model`` (while its weights, mode and these shapes stay), after its engine failed."""
    _ENGINES[model] = (_model_state(model, image_shape, box), None)
