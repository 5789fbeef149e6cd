"""Model definitions. Importing this package registers the FaViT variants with timm
(``timm.create_model("favit_b0", fusion="probsparse", num_classes=100)``)."""

from . import favit
from .favit import FaViT, checkpoint_filter_fn

__all__ = ["FaViT", "checkpoint_filter_fn", "favit"]
