"""The four segments of a pair of masks RoI and RoA."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from roiroa.results import SEGMENT_NAMES


@dataclass(frozen=True)
class Segments:
    """RoI and RoA masks and the segments they define; all (N, H, W) bool.

    S_IA = RoI and RoA (critical and vulnerable); S_I = RoI minus RoA (critical, safe);
    S_A = RoA minus RoI (vulnerable, not needed: the one to neutralize); S_0 = the rest.
    """

    roi: torch.Tensor
    roa: torch.Tensor

    @property
    def s_ia(self) -> torch.Tensor:
        return self.roi & self.roa

    @property
    def s_i(self) -> torch.Tensor:
        return self.roi & ~self.roa

    @property
    def s_a(self) -> torch.Tensor:
        return self.roa & ~self.roi

    @property
    def s_0(self) -> torch.Tensor:
        return ~self.roi & ~self.roa

    def labels(self) -> torch.Tensor:
        """(N, H, W) uint8: 0 = S_0, 1 = S_I, 2 = S_A, 3 = S_IA (bit 0 is RoI, bit 1 is RoA)."""
        return self.roi.to(torch.uint8) + 2 * self.roa.to(torch.uint8)

    def fractions(self) -> dict[str, torch.Tensor]:
        """Each segment's share of the positions, per image: name -> (N,)."""
        lab = self.labels().flatten(1)
        return {name: (lab == v).double().mean(1) for v, name in enumerate(SEGMENT_NAMES)}
