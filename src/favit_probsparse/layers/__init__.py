"""Small building blocks shared by the models (task-agnostic)."""

from favit_probsparse.layers.dropout import (
    BitsDropout,
    bits_dropout,
    build_dropout,
    effective_p,
    swap_dropout,
)
from favit_probsparse.layers.tubelet import (
    TUBELET_EMBEDS,
    ChannelLinear,
    ChannelMerged,
    PatchEmbed3d,
    S3DTubeletEmbedding,
    TubeletEmbedding,
    TubeletEmbeddingDNN,
    TubeletEmbeddingOverlapping,
    build_tubelet_embed,
    compare_embeddings,
    embedding_stats,
    load_s3d_features,
    merge_channels,
    stats_markdown,
)

__all__ = [
    "TUBELET_EMBEDS",
    "BitsDropout",
    "ChannelLinear",
    "ChannelMerged",
    "PatchEmbed3d",
    "S3DTubeletEmbedding",
    "TubeletEmbedding",
    "TubeletEmbeddingDNN",
    "TubeletEmbeddingOverlapping",
    "bits_dropout",
    "build_dropout",
    "build_tubelet_embed",
    "compare_embeddings",
    "effective_p",
    "embedding_stats",
    "load_s3d_features",
    "merge_channels",
    "stats_markdown",
    "swap_dropout",
]
