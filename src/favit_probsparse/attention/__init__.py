"""Attention operators (layout [B, H, L, D]); they know nothing of tasks.

* :mod:`.probsparse`: ProbSparse attention (exact official path and fast path) and full attention.
* :mod:`.fusion`: FaViT cross-window fusion operators (``official``, ``max``, ``mean``, ``conv1x1``, ``linear``,
  ``probsparse``, ``hierarchical``).
* :mod:`.delta_v`: ΔV (tangential-space) attention.
* :mod:`.dispatch`: :func:`attend`, softmax attention through the kernel a measured table names fastest.
"""

from .delta_v import DeltaVAttention, delta_v_attention, ema_kernel, momentum_ema, temporal_difference
from .dispatch import attend
from .fusion import FUSIONS, CrossWindowFusion, build_fusion
from .probsparse import (
    ATTENTIONS,
    FullAttention,
    ProbSparseAttention,
    build_attention,
    full_attention,
    probsparse_attention,
    probsparse_counts,
    sample_key_index,
    sparsity_measure,
)

__all__ = [
    "ATTENTIONS",
    "FUSIONS",
    "CrossWindowFusion",
    "DeltaVAttention",
    "FullAttention",
    "ProbSparseAttention",
    "attend",
    "build_attention",
    "build_fusion",
    "delta_v_attention",
    "ema_kernel",
    "full_attention",
    "momentum_ema",
    "probsparse_attention",
    "probsparse_counts",
    "sample_key_index",
    "sparsity_measure",
    "temporal_difference",
]
