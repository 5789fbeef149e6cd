"""favit-probsparse: factorized (FaViT) and ProbSparse (Informer) attention for vision and time series."""

__version__ = "0.1.0"
