"""float32 rounding bounds shared by the numeric tests.

Logits summed in another order (batch size, memory layout, kernel) differ by a random walk of per-term roundings,
~sqrt(A) * EPS32 times the terms' scale, A = the terms summed along a logit's path (the fan-ins): MnistCNN
9 + 144 + 1568 + 64 = 1785, TinyRGBNet 27 + 512 = 539. The scale is max|logit|, or 1 where the logits cancel to
less (TinyRGBNet: |z| ~ 0.2 from terms of O(1)); measured: 1-3 * EPS32 * that. Gradients sum the same products
transposed: ~sqrt(A) * EPS32 * max|grad|.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps
MNIST_TERMS, RGB_TERMS = 1785, 539


def logit_rounding(z_max: float, terms: int) -> float:
    """max|dz| of logits (|z| <= z_max) summed over `terms` terms in another order."""
    return math.sqrt(terms) * EPS32 * max(1.0, z_max)


def drop_rounding(z_max: float, terms: int, classes: int) -> float:
    """A softmax-probability drop p_y(x) - p_y(x'): each probability moves by <= max|dz| / 2 (dp_y = p_y (dz_y -
    sum_k p_k dz_k) <= 2 p_y (1 - p_y) max|dz|), and rounds by itself (exp, a sum of `classes`, a division: classes
    + 2 ulps of <= 1/2, EPS32 / 2 each), as does the difference."""
    return logit_rounding(z_max, terms) + (classes + 3) * EPS32
