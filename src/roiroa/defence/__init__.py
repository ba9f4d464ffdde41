"""The neutralization defence: N(x) = x (1 - M) + v M, and f o N as a torch.nn.Module."""

from roiroa.defence.neutralizer import (
    FILLS,
    GlobalMask,
    Neutralizer,
    fill_value,
    neutralize,
    random_mask_like,
)

__all__ = ["FILLS", "GlobalMask", "Neutralizer", "fill_value", "neutralize", "random_mask_like"]
