"""Cross-term analysis of a (trained) Informer: per self-attention layer and head, the four maps token-token,
token-pos, pos-token, pos-pos and the bias remainder that sum exactly to the attention logits.

How the layer input is split into content ``x`` and position ``p`` (``docs/posenc.md`` §2.1):

* ``injected``: the model injects positions into this layer's logits (``pos_inject="layers"|"both"``): ``x`` is the
  layer input, ``p`` the encoding table. Only the layer's selected terms (``pos_terms``) are active; the logits
  the layer actually computes are ``Σ active terms + bias remainder``.
* ``input (exact)``: the first layer of a model that adds an absolute encoding at the input: ``x`` = value +
  temporal embedding, ``p`` = the table (eval mode: no dropout), so ``x + p`` is the layer input exactly.
* ``mean decomposition``: deeper layers of such a model: ``p_t`` = mean over the batch of windows of the layer
  input at position t (minus the grand mean), ``x`` = the rest (exact, but ``p`` is then a learned/propagated
  position signal, not the table).

Layers whose encoding is rotary or a logit bias have no additive decomposition and are skipped; with no encoding
at all every logit is token-token. ProbSparse layers are analysed on their full logit matrix (the operator then uses only the
top-u query rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from favit_probsparse.models.informer import AttentionLayer, DataEmbedding, Informer
from favit_probsparse.posenc import select_term_qk

from .cross_terms import TERMS, cross_terms, mean_decomposition, term_metrics, toeplitz_fit

__all__ = ["LayerTerms", "informer_cross_terms", "self_attention_layers"]


@dataclass
class LayerTerms:
    name: str
    mode: str
    active: tuple[str, ...]
    maps: dict[str, Tensor]  # batch-mean, row-centred maps [H, T, T] per term (+ "logits")
    metrics: dict[str, dict[str, Tensor]]  # term -> metric -> [H]
    p2p_toeplitz_r2: Tensor  # [H]
    max_abs_sum_error: float  # max |Σ terms − logits| (should be ~1e-6 in fp32)
    extra: dict = field(default_factory=dict)


def self_attention_layers(model: Informer) -> list[tuple[str, AttentionLayer, DataEmbedding, bool]]:
    """(name, layer, embedding, causal) for every self-attention layer, in forward order."""
    out = [
        (f"encoder.{i}", el.attention, model.enc_embedding, False)
        for i, el in enumerate(model.encoder.attn_layers)
    ]
    out += [
        (f"decoder.{i}.self", dl.self_attention, model.dec_embedding, True)
        for i, dl in enumerate(model.decoder.layers)
    ]
    return out


def _row_centre(t: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return t - t.mean(-1, keepdim=True)
    m = mask.to(t.dtype)
    mean = (t * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)
    return (t - mean) * m


def _split_input(
    layer, emb, h: Tensor, raw: tuple, first: bool
) -> tuple[Tensor, Tensor, str, tuple[str, ...]]:
    """The layer input ``h`` as token part x + position part p: (x, p, how it was split, the active terms)."""
    pe = emb.position_embedding
    length = h.shape[1]
    if pe.kind == "none":
        return h, torch.zeros_like(h[:1]), "no position encoding", ("c2c",)
    if layer.pos_terms is not None:
        return h, pe.table(length)[None].to(h.dtype), "injected", tuple(layer.pos_terms)
    if "position" in emb.parts and first:  # the first layer sees the embeddings: the split is exact
        xin, mark = raw
        x = emb.value_embedding(xin)
        if mark is not None and "temporal" in emb.parts:
            x = x + emb.temporal_embedding(mark)
        return x, pe.table(length)[None].to(h.dtype), "input (exact)", TERMS
    p = mean_decomposition(h)["pos"]
    return h - p, p, "mean decomposition", TERMS


def _use_injected_logits(layer, h: Tensor, terms: dict[str, Tensor], active: tuple[str, ...]) -> None:
    """A layer that injects position into q/k itself: its real logits, the inactive terms zeroed, the rest bias."""
    length = h.shape[1]
    qx = layer.query_projection(h).view(h.shape[0], length, layer.n_heads, -1).transpose(1, 2)
    kx = layer.key_projection(h).view(h.shape[0], length, layer.n_heads, -1).transpose(1, 2)
    qp, kp = layer.position_qk(length, length)
    q2, k2 = select_term_qk(qx, kx, qp, kp, active)
    logits = (q2 @ k2.mT) / q2.shape[-1] ** 0.5
    for t in TERMS:
        if t not in active:
            terms[t] = torch.zeros_like(terms[t])
    terms["logits"] = logits
    terms["bias"] = logits - sum(terms[t] for t in TERMS)


@torch.no_grad()
def informer_cross_terms(
    model: Informer, x_enc: Tensor, x_mark_enc: Tensor | None, x_dec: Tensor, x_mark_dec: Tensor | None
) -> list[LayerTerms]:
    """Run one batch through ``model`` (eval mode) and decompose every self-attention layer's logits."""
    was_training = model.training
    model.eval()
    layers = self_attention_layers(model)
    inputs: dict[str, Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, args, n=name: inputs.__setitem__(n, args[0].detach()))
        for name, layer, _, _ in layers
    ]
    try:
        model(x_enc, x_mark_enc, x_dec, x_mark_dec)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    raw = {"encoder": (x_enc, x_mark_enc), "decoder": (x_dec, x_mark_dec)}
    first_seen: set[str] = set()
    results = []
    for name, layer, emb, causal in layers:
        h = inputs[name]
        side = name.split(".")[0]
        first = side not in first_seen
        first_seen.add(side)
        length = h.shape[1]
        if emb.position_embedding.kind in ("rotary", "bias"):
            continue  # no additive decomposition of rotated / biased logits
        x, p, mode, active = _split_input(layer, emb, h, raw[side], first)
        wq, bq = layer.query_projection.weight, layer.query_projection.bias
        wk, bk = layer.key_projection.weight, layer.key_projection.bias
        terms = cross_terms(x, p, wq, wk, bq, bk, n_heads=layer.n_heads)
        recon = None if layer.pos_terms is not None else (x + p - h).abs().max().item()
        if mode == "injected":
            _use_injected_logits(layer, h, terms, active)
        mask = torch.ones(length, length, dtype=torch.bool, device=h.device).tril() if causal else None
        names = (*active, "bias")
        metrics = term_metrics(terms, mask=mask, names=names)
        err = (sum(terms[t] for t in (*TERMS, "bias")) - terms["logits"]).abs().max().item()
        maps = {t: _row_centre(terms[t], mask).mean(0) for t in (*TERMS, "bias", "logits")}
        _, r2 = toeplitz_fit(terms["p2p"].mean(0))
        if "p2p" not in active:
            r2 = torch.full_like(r2, float("nan"))  # no pos-pos term in this layer
        results.append(
            LayerTerms(
                name,
                mode,
                tuple(active),
                maps,
                metrics,
                r2,
                err,
                {"input_reconstruction_error": recon, "length": length},
            )
        )
    return results
