"""Model definitions. Importing this package registers the FaViT and video FaViT variants with timm
(``timm.create_model("favit_b0", fusion="probsparse", num_classes=100)``)."""

from . import favit, favit_video
from .favit import FaViT, checkpoint_filter_fn
from .favit_video import VideoFaViT

__all__ = ["FaViT", "VideoFaViT", "checkpoint_filter_fn", "favit", "favit_video"]
