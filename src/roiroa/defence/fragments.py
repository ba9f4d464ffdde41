"""Per-input segregation: find anomalous fragments of the input itself and neutralize them (ODDR-style).

Fragmentation -> features -> isolation -> RoA minus RoI -> fill:

1. the image is cut into k x k fragments with a stride (:func:`roiroa.geometry.grid_regions`);
2. each fragment gets features (:data:`FEATURES`): pixel statistics ('mean', 'std'), high-frequency
   energy ('highfreq', mean |Laplacian|), the gradient saliency of the predicted class ('gradient'),
   and the response to a small probe attack ('probe', the probe PGD's accumulated gradient); the last two
   are divided by their image mean, so they measure concentration, not scale;
3. anomalous fragments are isolated by an ``IsolationForest`` or ``DBSCAN`` (scikit-learn) fitted on the
   fragments of clean fitting images ('clean') or on the input's own fragments ('self'), or by thresholding
   the probe response, a RoA estimator ('roa');
4. the flagged region (union of flagged fragments) minus the RoI is neutralized (``keep_roi=False`` is the
   ablation without the RoA-minus-RoI rule); the RoI is the clean fitting set's mean importance map
   ('global', cannot be moved by a patch) or the input's own saliency for its predicted class ('input');
5. the fill is any fill of :mod:`roiroa.defence.fills` ('mean', 'blur', 'lowrank' as in ODDR).

:class:`FragmentDetector` is a mask scope (registered as 'fragments'): ``Neutralized(model, detector, fill)`` is
f o N. The detector's decisions are hard; in the backward pass they are constants (BPDA with a zero derivative
for the mask). ``penalty(x)`` is a differentiable surrogate of the anomaly score (the squared z-score of the
pixel features, above its clean quantile) that an adaptive patch can minimise to keep its fragments inliers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from roiroa.attacks.gradient import LinfPGD
from roiroa.defence.scopes import SCOPES, FitData
from roiroa.errors import InputError
from roiroa.geometry import grid_regions
from roiroa.maps.recorder import record_attack
from roiroa.maps.saliency import Saliency
from roiroa.maps.vulnerability import unit_mean
from roiroa.models.predict import predict
from roiroa.regions.thresholds import top_q_mask
from roiroa.validation import check_choice, check_images, check_number

FEATURES = ("mean", "std", "highfreq", "gradient", "probe")
PIXEL_FEATURES = ("mean", "std", "highfreq")  # the differentiable ones, used by the surrogate penalty
METHODS = ("iforest", "dbscan", "roa")
FIT_ON = ("clean", "self")
ROI_SOURCES = ("global", "input")


def laplacian_energy(x: torch.Tensor) -> torch.Tensor:
    """|4-neighbour Laplacian| of x: (N, C, H, W), mean over channels (replicate padding) -> (N, H, W)."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    lap = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c)
    return lap.abs().mean(1)


def pool(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Mean of maps (N, H, W) over each region (R, H, W) bool -> (N, R)."""
    flat = regions.flatten(1).to(maps.dtype)
    return maps.flatten(1) @ flat.T / flat.sum(1)


def pixel_features(x: torch.Tensor, regions: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """The differentiable pixel features ('mean', 'std', 'highfreq' among ``names``) of x: (N, C, H, W) -> (N, R, F)."""
    cols = []
    gray = x.mean(1)
    if "mean" in names:
        cols.append(pool(gray, regions))
    if "std" in names:
        mean_sq = pool((x**2).mean(1), regions)
        cols.append((mean_sq - pool(gray, regions) ** 2).clamp(min=0.0).add(1e-8).sqrt())
    if "highfreq" in names:
        cols.append(pool(laplacian_energy(x), regions))
    return torch.stack(cols, dim=-1) if cols else x.new_zeros(len(x), len(regions), 0)


@SCOPES.register("fragments")
@dataclass(kw_only=True)
class FragmentDetector:
    """Flags anomalous fragments of each input; a mask scope (``fit`` on clean images, then ``masks``).

    Args:
        window, stride: fragments are window x window with this stride. Default 4, 2.
        features: a subset of :data:`FEATURES`. Default all.
        method: 'iforest', 'dbscan' or 'roa' (threshold of the probe response). Default 'iforest'.
        fit_on: 'clean' (fit on the clean fitting images' fragments) or 'self' (each input's own fragments).
        contamination: the share of clean fragments flagged (sets the threshold of 'iforest'/'roa' and the
            DBSCAN radius for 'clean'; IsolationForest's contamination for 'self'). Default 0.01.
        n_estimators: trees of the Isolation Forest. Default 100.
        min_samples: DBSCAN's min_samples. Default 10.
        probe_eps, probe_steps: the probe attack (L-infinity PGD, no random start). Default 0.1, 3.
        keep_roi: never block the RoI (the RoA-minus-RoI rule). Default True.
        roi_source: 'global' or 'input' (see the module docstring). Default 'global'.
        q_roi: the RoI's share of positions. Default 0.2.
        seed: seeds the Isolation Forest. batch_size: images per gradient pass.

    Attributes (after ``fit``): scaler_, threshold_, roi_ (H, W) bool (global RoI), n_fragments_.
    """

    window: int = 4
    stride: int = 2
    features: tuple[str, ...] = FEATURES
    method: str = "iforest"
    fit_on: str = "clean"
    contamination: float = 0.01
    n_estimators: int = 100
    min_samples: int = 10
    probe_eps: float = 0.1
    probe_steps: int = 3
    keep_roi: bool = True
    roi_source: str = "global"
    q_roi: float = 0.2
    seed: int = 0
    batch_size: int = 128
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "FragmentDetector"
        check_number(owner, "window", self.window, low=1, integer=True)
        check_number(owner, "stride", self.stride, low=1, high=self.window, integer=True)
        if not self.features or any(f not in FEATURES for f in self.features):
            raise InputError(f"FragmentDetector features must be a non-empty subset of {', '.join(FEATURES)}.")
        check_choice(owner, "method", self.method, METHODS)
        check_choice(owner, "fit_on", self.fit_on, FIT_ON)
        check_choice(owner, "roi_source", self.roi_source, ROI_SOURCES)
        check_number(owner, "contamination", self.contamination, low=0.0, low_open=True, high=0.5)
        check_number(owner, "q_roi", self.q_roi, low=0.0, low_open=True, high=1.0)
        check_number(owner, "probe_eps", self.probe_eps, low=0.0, low_open=True, high=1.0)
        check_number(owner, "probe_steps", self.probe_steps, low=1, integer=True)
        if self.method == "roa" and "probe" not in self.features:
            raise InputError("FragmentDetector method 'roa' thresholds the 'probe' feature: add it to features.")

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-able dict."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if not k.startswith("_")}

    # -- features -------------------------------------------------------------------------------------------
    def regions(self, height: int, width: int) -> torch.Tensor:
        """The fragments (R, H, W) bool."""
        return grid_regions(height, width, self.window, self.stride)

    def fragment_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Features (N, R, F) of the fragments of x: (N, C, H, W) in [0, 1] (columns in ``features`` order)."""
        regions = self.regions(x.shape[2], x.shape[3]).to(x.device)
        x = x.detach()
        pixel = pixel_features(x, regions, PIXEL_FEATURES).unbind(-1)
        cols = dict(zip(PIXEL_FEATURES, pixel, strict=True))
        if "gradient" in self.features or "probe" in self.features:
            y_pred = predict(model, x, self.batch_size)
            if "gradient" in self.features:
                saliency = Saliency(reduce="l2", batch_size=self.batch_size)
                cols["gradient"] = pool(unit_mean(saliency(model, x, y_pred)), regions)
            if "probe" in self.features:
                probe = LinfPGD(
                    eps=self.probe_eps, steps=self.probe_steps, random_start=False, batch_size=self.batch_size
                )
                trace = record_attack(probe, model, x, y_pred, self.batch_size)
                cols["probe"] = pool(unit_mean(trace.gradient), regions)
        return torch.stack([cols[n] for n in self.features], dim=-1)

    # -- fit ------------------------------------------------------------------------------------------------
    def fit(self, data: FitData) -> FragmentDetector:
        """Fit on the clean fitting images (and, for the global RoI, their importance maps); returns self."""
        from sklearn.cluster import DBSCAN  # scikit-learn is imported by the fragment defences only
        from sklearn.ensemble import IsolationForest
        from sklearn.neighbors import NearestNeighbors
        from sklearn.preprocessing import StandardScaler

        model, x_fit = data.model, data.images
        if model is None or x_fit is None:
            raise InputError("FragmentDetector is fitted on clean images: give FitData the model and the images.")
        check_images(x_fit, "x_fit")
        feats = self.fragment_features(model, x_fit)
        flat = feats.reshape(-1, feats.shape[-1]).double().cpu().numpy()
        s: dict[str, Any] = {"scaler": StandardScaler().fit(flat)}
        z = s["scaler"].transform(flat)
        if self.method == "iforest" and self.fit_on == "clean":
            s["model"] = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(z)
            s["threshold"] = float(np.quantile(s["model"].score_samples(z), self.contamination))
        elif self.method == "dbscan":
            # The radius: the (1 - contamination) quantile of the distance to the min_samples-th neighbour.
            sub = z[np.random.default_rng(self.seed).permutation(len(z))[:20000]]
            dist, _ = NearestNeighbors(n_neighbors=self.min_samples).fit(sub).kneighbors(sub)
            s["eps"] = float(max(np.quantile(dist[:, -1], 1 - self.contamination), 1e-6))
            if self.fit_on == "clean":
                db = DBSCAN(eps=s["eps"], min_samples=self.min_samples).fit(sub)
                s["core"] = NearestNeighbors(n_neighbors=1).fit(sub[db.core_sample_indices_])
        elif self.method == "roa":
            s["threshold"] = float(
                np.quantile(feats[..., self.features.index("probe")].cpu().numpy(), 1 - self.contamination)
            )
        # the surrogate: squared z-score of the pixel features, and its clean quantile
        pix = [i for i, n in enumerate(self.features) if n in PIXEL_FEATURES]
        s["pixel_columns"] = pix
        if pix:
            score = (z[:, pix] ** 2).sum(1)
            s["surrogate_threshold"] = float(np.quantile(score, 1 - self.contamination))
        if self.keep_roi and self.roi_source == "global":
            s["roi"] = top_q_mask(unit_mean(data.importance).mean(0, keepdim=True), self.q_roi)[0].cpu()
        s["image_shape"] = tuple(x_fit.shape[1:])
        self._state = s
        return self

    @property
    def fitted(self) -> bool:
        return bool(self._state)

    @property
    def roi_(self) -> torch.Tensor:
        """(H, W) bool, the global RoI of the clean fitting images (kept with roi_source 'global')."""
        self._check_fitted()
        if "roi" not in self._state:
            raise InputError("this FragmentDetector keeps no global RoI (keep_roi=False or roi_source='input').")
        return self._state["roi"]

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise InputError("FragmentDetector is not fitted yet: call fit(FitData(model, x_fit, y_fit, K)) first.")

    # -- detect ---------------------------------------------------------------------------------------------
    def flagged_fragments(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(N, R) bool: the anomalous fragments of x: (N, C, H, W) in [0, 1]."""
        from sklearn.cluster import DBSCAN
        from sklearn.ensemble import IsolationForest

        self._check_fitted()
        if tuple(x.shape[1:]) != self._state["image_shape"]:
            raise InputError(
                f"FragmentDetector was fitted on images {self._state['image_shape']}; got {tuple(x.shape[1:])}."
            )
        feats = self.fragment_features(model, x)
        n, r, f = feats.shape
        if self.method == "roa":
            return feats[..., self.features.index("probe")] > self._state["threshold"]
        z = self._state["scaler"].transform(feats.reshape(-1, f).double().cpu().numpy())
        if self.fit_on == "clean" and self.method == "iforest":
            out = self._state["model"].score_samples(z) < self._state["threshold"]
        elif self.fit_on == "clean":  # dbscan: an outlier is farther than eps from every clean core sample
            dist, _ = self._state["core"].kneighbors(z)
            out = dist[:, 0] > self._state["eps"]
        else:
            zi = z.reshape(n, r, f)
            out = np.zeros((n, r), dtype=bool)
            for i in range(n):
                if self.method == "iforest":
                    forest = IsolationForest(
                        n_estimators=self.n_estimators, contamination=self.contamination, random_state=self.seed
                    )
                    out[i] = forest.fit_predict(zi[i]) == -1
                else:
                    out[i] = DBSCAN(eps=self._state["eps"], min_samples=self.min_samples).fit(zi[i]).labels_ == -1
        return torch.from_numpy(np.asarray(out).reshape(n, r)).to(x.device)

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool: the positions to neutralize in x: (N, C, H, W) (flagged fragments minus the RoI)."""
        regions = self.regions(x.shape[2], x.shape[3]).to(x.device)
        flagged = (self.flagged_fragments(model, x.detach()).float() @ regions.flatten(1).float()) > 0
        mask = flagged.view(len(x), *x.shape[2:])
        if self.keep_roi:
            if self.roi_source == "global":
                roi = self.roi_.to(x.device)[None]
            else:
                y_pred = predict(model, x, self.batch_size)
                roi = top_q_mask(Saliency(batch_size=self.batch_size)(model, x.detach(), y_pred), self.q_roi)
            mask = mask & ~roi
        return mask

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) differentiable anomaly surrogate: the summed excess of each fragment's squared z-score of the
        pixel features over its clean (1 - contamination) quantile (0 for inlier-looking images)."""
        self._check_fitted()
        pix = self._state["pixel_columns"]
        if not pix:
            return x.new_zeros(len(x))
        names = [self.features[i] for i in pix]
        feats = pixel_features(x, self.regions(x.shape[2], x.shape[3]).to(x.device), names)
        scaler = self._state["scaler"]
        mu = torch.as_tensor(scaler.mean_[pix], dtype=x.dtype, device=x.device)
        sd = torch.as_tensor(scaler.scale_[pix], dtype=x.dtype, device=x.device)
        score = (((feats - mu) / sd) ** 2).sum(-1)
        return (score - self._state["surrogate_threshold"]).clamp(min=0.0).sum(1)
