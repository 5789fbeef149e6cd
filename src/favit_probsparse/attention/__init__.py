"""Attention operators: ProbSparse (exact and fast) and full attention, layout [B, H, L, D].

Cross-window fusion operators for FaViT live in :mod:`favit_probsparse.attention.fusion`; ΔV attention in
:mod:`favit_probsparse.attention.delta_v`.
"""

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
    "FullAttention",
    "ProbSparseAttention",
    "build_attention",
    "full_attention",
    "probsparse_attention",
    "probsparse_counts",
    "sample_key_index",
    "sparsity_measure",
]
