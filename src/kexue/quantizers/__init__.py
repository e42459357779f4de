"""Quantisers: vectors -> discrete codes.

* :class:`FSQ` - finite scalar quantisation (bounded rounding, implicit grid codebook), with the paper's
  :func:`recommended_levels`.
* :class:`VectorQuantizer` - nearest-neighbour VQ with STE or rotation-trick gradients (``grad=``), plain /
  SimVQ (``codebook="linear"``) / diagonal codebooks, EMA, k-means init, cosine lookup, dead-code reset.
* :func:`rotation_trick`, :func:`straight_through` - the gradient estimators on their own.
* :func:`code_usage`, :class:`UsageStats` - utilisation, perplexity and dead codes.

Posts: kexue.fm/archives/9826 (FSQ, 2023-10-31), kexue.fm/archives/10489 (rotation trick, 2024-10-24),
kexue.fm/archives/10519 (SimVQ, 2024-11-06).
"""

from kexue.quantizers.fsq import APPENDIX_LEVELS, FSQ, RECOMMENDED_LEVELS, recommended_levels
from kexue.quantizers.rotation import rotation_matrix, rotation_trick, straight_through
from kexue.quantizers.stats import UsageStats, UsageTracker, code_counts, code_usage, usage_from_counts
from kexue.quantizers.vq import LossBreakdown, VectorQuantizer, VQOutput, kmeans, nearest_codes

__all__ = [
    "APPENDIX_LEVELS",
    "FSQ",
    "RECOMMENDED_LEVELS",
    "LossBreakdown",
    "UsageStats",
    "UsageTracker",
    "VQOutput",
    "VectorQuantizer",
    "code_counts",
    "code_usage",
    "kmeans",
    "nearest_codes",
    "recommended_levels",
    "rotation_matrix",
    "rotation_trick",
    "straight_through",
    "usage_from_counts",
]
