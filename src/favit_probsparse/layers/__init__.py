"""Small building blocks shared by the models (task-agnostic)."""

from favit_probsparse.layers.dropout import (
    BitsDropout,
    bits_dropout,
    build_dropout,
    effective_p,
    swap_dropout,
)

__all__ = ["BitsDropout", "bits_dropout", "build_dropout", "effective_p", "swap_dropout"]
