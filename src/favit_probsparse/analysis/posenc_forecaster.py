"""``InformerForecaster`` with the position-encoding / ΔV ablation switches of :class:`Informer`.

The forecasting LightningModule lists the Informer arguments it forwards; the ablation switches added to the model
for seed Tables 2-6 (``pos_kwargs``, ``embed_parts``, ``pos_inject``, ``pos_terms``, ``delta_v``,
``delta_v_layers``, ``deep_mlp``) are passed here. Everything else (training protocol, metrics, RNG handling) is the
parent's. Every row of the posenc ablation uses this class, so all rows build their models the same way.
"""

from __future__ import annotations

import inspect

from favit_probsparse.models.informer import Informer
from favit_probsparse.training.forecast import InformerForecaster

__all__ = ["PosencInformerForecaster"]


class PosencInformerForecaster(InformerForecaster):
    """:class:`InformerForecaster` + Informer's position-encoding ablation arguments (see :class:`Informer`)."""

    def __init__(
        self,
        *args,
        pos_kwargs: dict | None = None,
        embed_parts: str = "all",
        pos_inject: str = "input",
        pos_terms: str = "all",
        delta_v: bool | dict = False,
        delta_v_layers: str = "self",
        deep_mlp: bool = False,
        max_len: int = 5000,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        hp = dict(self.hparams)
        names = set(inspect.signature(Informer).parameters)
        model_args = {k: v for k, v in hp.items() if k in names}
        self.model = Informer(**model_args)
