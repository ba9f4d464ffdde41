"""The shared gradient loop of every L-infinity and L2 attack (as in Foolbox 3).

Every attack has one signature, ``attack(model, x, y, mask=None) -> x_adv``. Nothing else is asked of an
attack: where its gradients act (the vulnerability map of an L-infinity attack) is recorded from the outside by
:mod:`roiroa.maps.recorder`, so an attack from ART, torchattacks or Foolbox gives the same kind of RoA. The loop
follows ART's ``ProjectedGradientDescent`` step for step (gradient, mask, normalize, step, clip to [0, 1],
project onto the eps-ball), so both give the same images from the same start.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from roiroa.attacks.losses import check_loss, loss_and_gradient
from roiroa.errors import InputError
from roiroa.registry import Registry
from roiroa.utils import batch_slices, model_device, progress
from roiroa.validation import check_bool, check_images, check_labels, check_mask, check_model_output, check_number

Norm = Literal["linf", "l2", "l1"]


def loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. x: (N, C, H, W) -> (N, C, H, W).

    The sum (not the mean) keeps each image's gradient independent of the batch size. The
    model's parameter gradients are left untouched.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample of t: (N, ...) -> (N, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def normalize_step(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: sign(grad) for linf, grad / ||grad||_2 for l2 (0 stays 0),
    and for l1 sign(grad) at the one coordinate of largest |grad| (ART's sparse L1 step)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l1":
        flat = grad.flatten(1)
        onehot = torch.zeros_like(flat).scatter_(1, flat.abs().argmax(1, keepdim=True), 1.0)
        return (onehot * flat.sign()).view_as(grad)
    n = _flat_norm(grad)
    return grad / torch.where(n == 0, torch.ones_like(n), n)


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project each perturbation of delta: (N, C, H, W) onto the eps-ball of ``norm``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    # l2 and l1: rescale onto the ball (for l1 as ART's default, suboptimal=True, does).
    n = _flat_norm(delta) if norm == "l2" else delta.flatten(1).abs().sum(1).view(-1, 1, 1, 1)
    return delta * torch.where(n > eps, eps / torch.where(n == 0, torch.ones_like(n), n), torch.ones_like(n))


def random_start(x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """A uniform random point of the eps-ball around 0, shaped like x (torch's global generator)."""
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    d = x[0].numel()
    if norm == "l1":  # as ART's random_sphere(norm=1): gaps of sorted uniforms, random signs
        u = torch.rand(len(x), d, device=x.device, dtype=x.dtype).sort(1).values
        gaps = u - torch.cat([torch.zeros_like(u[:, :1]), u[:, :-1]], 1)
        signs = torch.randint(0, 2, gaps.shape, device=x.device).to(x.dtype) * 2 - 1
        return (eps * gaps * signs).view_as(x)
    direction = torch.randn_like(x)
    radius = eps * torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return direction / _flat_norm(direction) * radius


ChunkAttack = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def run_in_chunks(
    attack_chunk: ChunkAttack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    batch_size: int,
    desc: str,
) -> torch.Tensor:
    """Check the inputs, then call ``attack_chunk(model, x, y, mask) -> x_adv`` on chunks of ``batch_size``
    images on the model's device; x_adv (N, C, H, W) is returned on x's device. Every attack's ``__call__``.

    Args:
        x: (N, C, H, W) in [0, 1]; y: (N,) int64; mask: optional (N or 1, 1, H, W) in {0, 1}.
    """
    check_images(x)
    check_labels(y, len(x))
    if mask is not None:
        check_mask(mask, x)
    check_model_output(model, x, y)
    device = model_device(model)
    outs = []
    slices = batch_slices(len(x), batch_size)
    for s in progress(slices, desc, unit="images", sizes=[s.stop - s.start for s in slices]):
        m = None if mask is None else (mask if len(mask) == 1 else mask[s]).to(device, x.dtype)
        outs.append(attack_chunk(model, x[s].to(device), y[s].to(device), m))
    return torch.cat(outs).to(x.device)


class AttackCalls:
    """What every attack class shares: ``attack(model, x, y, mask)`` runs ``_attack_chunk`` on chunks of
    ``batch_size`` images, and ``params()`` gives the dataclass fields with the attack's name and norm.
    Subclasses are dataclasses with the class constants ``name`` and ``norm``, a ``batch_size`` field and
    ``_attack_chunk(model, x, y, mask) -> x_adv``."""

    name: ClassVar[str]
    norm: ClassVar[Norm]

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-able dict with the keys 'attack' and 'norm'."""
        return {"attack": self.name, "norm": self.norm, **asdict(self)}  # type: ignore[call-overload]

    batch_size: int

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attack ``model`` (in eval mode, left unchanged) on x in chunks of ``batch_size``.

        Args:
            model: logits (N, K) from (N, C, H, W).
            x: (N, C, H, W) in [0, 1], any device; chunks go to the model's device.
            y: (N,) int64 true labels (the attack raises their loss).
            mask: optional (N or 1, 1, H, W) in {0, 1}: where the perturbation may act.

        Returns:
            x_adv: (N, C, H, W) in [0, 1] on x's device.
        """
        return run_in_chunks(self._attack_chunk, model, x, y, mask, self.batch_size, self.name)

    def _attack_chunk(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError


class GradientAttack(AttackCalls):
    """Base of the gradient attacks; concrete attacks are dataclasses that set the hyperparameters.

    Subclasses define the fields ``eps``, ``steps``, ``random_start``, ``restarts``, ``batch_size``, ``loss``
    ('ce', 'margin' or 'dlr') and ``best_iterate`` (fields or class constants), the class constant ``norm``, and
    ``step_size_value()``. With ``best_iterate`` an image keeps the first iterate that fooled the attacked
    model (checked on the logits of every step's forward pass), else the last iterate.
    """

    name: ClassVar[str]
    norm: ClassVar[Norm]
    eps: float
    steps: int
    random_start: bool
    restarts: int
    batch_size: int
    loss: str = "ce"  # a subclass without these fields raises the cross-entropy and keeps the last iterate
    best_iterate: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_number(owner, "eps", self.eps, low=0.0, low_open=True, high=1.0 if self.norm == "linf" else None)
        check_number(owner, "steps", self.steps, low=1, integer=True)
        check_number(owner, "restarts", self.restarts, low=1, integer=True)
        check_number(owner, "batch_size", self.batch_size, low=1, integer=True)
        check_number(owner, "step_size", self.step_size_value(), low=0.0, low_open=True)
        check_bool(owner, "random_start", self.random_start)
        check_bool(owner, "best_iterate", self.best_iterate)
        check_loss(owner, self.loss)

    def step_size_value(self) -> float:
        """The absolute step size used at every step."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-able dict, with the resolved step size and norm."""
        resolved = {
            "steps": self.steps,
            "step_size": self.step_size_value(),
            "random_start": self.random_start,
            "restarts": self.restarts,
        }
        return {"attack": self.name, "norm": self.norm, **asdict(self), **resolved}  # type: ignore[call-overload]

    def _attack_chunk(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Best of the restarts: the first restart's result, replaced by a later one that succeeds."""
        best = self._one_start(model, x, y, mask)
        for _ in range(self.restarts - 1):
            fooled = _fooled(model, best, y)
            x_adv = self._one_start(model, x, y, mask)
            take = ~fooled & _fooled(model, x_adv, y)
            best = torch.where(take.view(-1, 1, 1, 1), x_adv, best)
        return best

    def _one_start(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        keep: Callable[[torch.Tensor], torch.Tensor] = (lambda t: t) if mask is None else (lambda t: t * mask)
        x_adv = x.clone()
        if self.random_start:
            x_adv = (x + keep(random_start(x, self.eps, self.norm))).clamp(0.0, 1.0)
        step = self.step_size_value()
        best, found = x_adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            logits, _, grad = loss_and_gradient(model, x_adv, y, self.loss)
            if self.best_iterate:  # the iterate this forward pass saw, kept where it first fooled the model
                new = (logits.argmax(1) != y) & ~found
                best, found = torch.where(new.view(-1, 1, 1, 1), x_adv, best), found | new
            x_adv = (x_adv + step * normalize_step(keep(grad), self.norm)).clamp(0.0, 1.0)
            x_adv = x + project(x_adv - x, self.eps, self.norm)
        if self.best_iterate:
            x_adv = torch.where(found.view(-1, 1, 1, 1), best, x_adv)
        return x_adv.detach()


@torch.no_grad()
def _fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the model does not predict y on x."""
    return model(x).argmax(dim=1) != y


@runtime_checkable
class Attack(Protocol):
    """What every registered attack offers (gradient, optimisation and score-based alike).

    ``norm`` names the budget's norm ('linf', 'l2', 'l1'); vulnerability maps read it to choose
    between the perturbation and the gradient reading.
    """

    @property
    def norm(self) -> Any:
        """'linf', 'l2' or 'l1' (a class attribute in the implementations)."""
        ...

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_adv: (N, C, H, W) in [0, 1]; ``mask`` (N or 1, 1, H, W) in {0, 1} restricts where it acts."""
        ...


def attack_params(attack: Attack) -> dict[str, Any]:
    """The attack's hyperparameters as a JSON-able dict (its ``params()``; for a user's attack without one,
    its dataclass fields or its repr), with the keys 'attack' and 'norm'."""
    if callable(getattr(attack, "params", None)):
        return dict(attack.params())  # type: ignore[attr-defined]
    if is_dataclass(attack) and not isinstance(attack, type):
        fields = asdict(attack)
    else:  # its attributes (a repr could hold a memory address, which would never match a cached result)
        fields = {k: v for k, v in sorted(vars(attack).items()) if not k.startswith("_")}
    return {"attack": type(attack).__name__, "norm": attack.norm, **fields}


ATTACKS: Registry[Attack] = Registry("attack")
register_attack = ATTACKS.register


def create_attack(name: str, **kwargs: Any) -> Attack:
    """A configured attack by registered name, e.g. ``create_attack('pgd-linf', eps=0.1)``."""
    return ATTACKS.create(name, **kwargs)


def resolve_attack(spec: Attack | str | dict[str, Any]) -> Attack:
    """An attack from an instance, a registered name, or a dict {'name': ..., hyperparameters...}."""
    if isinstance(spec, str):
        return create_attack(spec)
    if isinstance(spec, dict):
        if "name" not in spec:
            raise InputError(f"an attack given as a table needs a 'name'; got {spec!r}.")
        return create_attack(spec["name"], **{k: v for k, v in spec.items() if k not in ("name", "label")})
    if not isinstance(spec, Attack):
        raise InputError(f"expected an attack (instance, name or table); got {type(spec).__name__}.")
    return spec


def attack_parameters(name: str) -> list[str]:
    """The hyperparameter names the attack registered as ``name`` accepts."""
    return list(inspect.signature(ATTACKS.get(name)).parameters)


def list_attacks(pattern: str = "*") -> list[str]:
    """Registered attack names matching ``pattern``."""
    return ATTACKS.names(pattern)
