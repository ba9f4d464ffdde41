"""Segregation (partitions), isolation (thresholds), the four segments, and their statistics."""

from roiroa.geometry import grid_regions, label_regions, regions_to_pixels, slic_labels, window_starts
from roiroa.regions.segments import SEGMENT_NAMES, Segments
from roiroa.regions.spatial import moran_permutation_test, moran_z, morans_i
from roiroa.regions.statistics import (
    bootstrap_ci,
    dice,
    iou,
    pairwise_iou,
    pearson,
    pointing_game,
    relevance_mass,
    share_inside,
    shuffle_positions,
    spearman,
    summarize,
)
from roiroa.regions.thresholds import THRESHOLD_METHODS, isolate, otsu_mask, top_q_mask

__all__ = [
    "grid_regions",
    "regions_to_pixels",
    "window_starts",
    "Segments",
    "SEGMENT_NAMES",
    "iou",
    "dice",
    "pearson",
    "spearman",
    "summarize",
    "share_inside",
    "pointing_game",
    "relevance_mass",
    "pairwise_iou",
    "shuffle_positions",
    "bootstrap_ci",
    "morans_i",
    "moran_z",
    "moran_permutation_test",
    "isolate",
    "top_q_mask",
    "otsu_mask",
    "THRESHOLD_METHODS",
    "slic_labels",
    "label_regions",
]
