"""``favit-ps analyze fusion``: the indices behind the pictures, each against a naive loop or a hand computation.

* window → token map: a hand-written reflection (and the official ReflectionPad2d + Unfold where it runs);
* which candidates each fusion's keys read: per-channel argmax over windows (``max``), the Informer sparsity
  measure and top-k in float64 Python loops (``probsparse``), per-window point sparsity (``hierarchical``);
* a query's attention pulled back to the candidates: dot products and softmax by hand;
* capture: the hooks leave the forward unchanged and slice the same queries the fusion receives;
* one end-to-end CLI run on a tiny FaViT trained for 2 steps on a toy ImageFolder.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import timm
import torch
from torch import nn

import favit_probsparse.models  # noqa: F401  (registers FaViT with timm)
from favit_probsparse.analysis.fusion_maps import (
    BranchRecord,
    analyze_model,
    capture_fusions,
    query_attention,
    query_tokens,
    reset_sampling,
    source_weights,
    to_token_map,
    token_boxes,
    window_pixel_index,
)
from favit_probsparse.attention.fusion import build_fusion
from favit_probsparse.models.favit import window_candidates
from favit_probsparse.training.checkpoint import CheckpointError


def _mirror(i: int, n: int) -> int:
    """Position ``i`` of an axis of length ``n`` extended by mirroring (… n-2, n-1, n-2, … 0, 1, …), by hand."""
    if n == 1:
        return 0
    seq = list(range(n)) + list(range(n - 2, 0, -1))  # one period of the mirrored axis
    return seq[i % len(seq)]


@pytest.mark.parametrize(
    ("H", "W", "d"), [(14, 14, 1), (32, 32, 1), (16, 12, 1), (32, 32, 8), (16, 16, 4), (8, 8, 2), (4, 4, 1)]
)
def test_window_pixel_index_matches_hand_reflection(H, W, d):
    ws, span = 7, d * 6 + 1
    nh, nw = math.ceil(H / span), math.ceil(W / span)
    got = window_pixel_index(H, W, ws, d)
    assert got.shape == (ws * ws, nh * nw)
    for wy in range(nh):
        for wx in range(nw):
            for ky in range(ws):
                for kx in range(ws):
                    r, c = _mirror(wy * span + ky * d, H), _mirror(wx * span + kx * d, W)
                    assert got[ky * ws + kx, wy * nw + wx] == r * W + c


def test_window_pixel_index_matches_official_pad_unfold():
    # the official code: ReflectionPad2d (right/bottom) + nn.Unfold(7, dilation, stride=span), where it runs
    H = W = 32
    for d in (1, 2):
        span = 6 * d + 1
        pad = (-H) % span
        idx = torch.arange(H * W, dtype=torch.float64).reshape(1, 1, H, W)
        padded = nn.ReflectionPad2d((0, pad, 0, pad))(idx)
        cols = nn.Unfold(7, dilation=d, stride=span)(padded)[0]  # [P, L]
        assert torch.equal(window_pixel_index(H, W, 7, d), cols.long())


def test_to_token_map_and_query_tokens_by_hand():
    pix = window_pixel_index(8, 8, 7, 1)  # 2×2 windows over an 8×8 map, padded by reflection
    w = torch.zeros(49, 4)
    w[0, 3] = 1.0  # window (1, 1), position (0, 0) -> token (7, 7)
    w[48, 3] = 2.0  # window (1, 1), position (6, 6) -> padded (13, 13) -> mirror (1, 1)
    w[8, 0] = 0.5  # window (0, 0), position (1, 1) -> token (1, 1)
    m = to_token_map(w, pix, (8, 8))
    assert m[7, 7] == 1.0 and m[1, 1] == 2.5 and m.sum() == 3.5
    assert query_tokens((8, 8), [(0.0, 0.0), (0.5, 0.99), (0.3, 0.6)]) == [0, 4 * 8 + 7, 2 * 8 + 4]
    # an 8×16 map over a 64×64 image: tokens are 8 px tall, 4 px wide; token (2, 3) = flat 35
    boxes = token_boxes((8, 16), (64, 64))
    assert boxes.shape == (128, 4) and boxes[35].tolist() == [16.0, 12.0, 24.0, 16.0]
    assert boxes[-1].tolist() == [56.0, 60.0, 64.0, 64.0]


def _standalone(name: str, cand: torch.Tensor, q: torch.Tensor, **kw) -> BranchRecord:
    """Run one fusion operator the way the capture hooks do (candidate leaf → keys with their graph)."""
    fz = build_fusion(name, cand.shape[-1], 7, cand.shape[3], **kw)
    leaf = cand.detach().requires_grad_(True)
    with torch.enable_grad():
        keys = fz(leaf, q if fz.needs_query else None)
    rec = BranchRecord(0, 0, 0, type(fz).__name__, 1, 7, (14, 14), attn=None)
    rec.cand, rec.keys, rec.q = leaf, keys, q
    return rec


def test_max_sources_are_per_channel_argmax_over_windows():
    g = torch.Generator().manual_seed(0)
    cand, q = torch.randn(2, 2, 49, 4, 6, generator=g), torch.randn(2, 2, 20, 6, generator=g)
    w = source_weights(_standalone("max", cand, q))
    for b in range(2):
        for h in range(2):
            for p in range(49):
                wins = [0] * 4
                for j in range(6):
                    col = [float(cand[b, h, p, l, j]) for l in range(4)]
                    wins[col.index(max(col))] += 1
                assert w[b, h, p].tolist() == pytest.approx([n / 6 for n in wins])


def _naive_probsparse(cand, q, u, n_keep):
    """Informer's M(q, K) = max − mean over all candidates, top-u queries, mean score, top n_keep: float64 loops."""
    P, L, _ = cand.shape
    flat = [[float(v) for v in cand[p, l]] for p in range(P) for l in range(L)]  # index p·L + l
    qs = [[float(v) for v in row] for row in q]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    sparsity = []
    for n, qn in enumerate(qs):
        s = [dot(qn, k) for k in flat]
        sparsity.append((max(s) - sum(s) / len(s), n))
    top_q = [n for _, n in sorted(sparsity, reverse=True)[:u]]
    score = [sum(dot(qs[n], k) for n in top_q) / u for k in flat]
    keep = sorted(range(len(flat)), key=lambda m: -score[m])[:n_keep]
    return {(m // L, m % L) for m in keep}


def test_probsparse_sources_are_naive_topk_of_sparsity_scores():
    g = torch.Generator().manual_seed(1)
    B, h, L, c, N = 2, 2, 4, 6, 30
    cand, q = torch.randn(B, h, 49, L, c, generator=g), torch.randn(B, h, N, c, generator=g)
    # sample_factor large enough that the sparsity measure sees every candidate (no random sample to replay);
    # u = 5·ceil(ln 30) = 20 < N queries, so the query selection is exercised
    rec = _standalone("probsparse", cand, q, sample_factor=100)
    w = source_weights(rec)
    u = 5 * math.ceil(math.log(N))
    for b in range(B):
        for hh in range(h):
            got = {tuple(t) for t in torch.nonzero(w[b, hh] > 0).tolist()}
            assert got == _naive_probsparse(cand[b, hh], q[b, hh], u, 49)
            assert torch.all(w[b, hh][w[b, hh] > 0] == 1.0)  # each kept candidate is copied, all channels


def test_hierarchical_sources_are_naive_per_window_top_points():
    g = torch.Generator().manual_seed(2)
    cand = torch.randn(1, 2, 49, 3, 5, generator=g)
    rec = _standalone("hierarchical", cand, None, topk=4, sample_ratio=1.0)  # every point is a reference
    w = source_weights(rec)
    for hh in range(2):
        for l in range(3):
            pts = [[float(v) for v in cand[0, hh, p, l]] for p in range(49)]
            m = []
            for i, a in enumerate(pts):
                s = [sum(x * y for x, y in zip(a, b)) for b in pts]
                m.append((max(s) - sum(s) / 49, i))
            naive = {i for _, i in sorted(m, reverse=True)[:4]}
            assert {p for p in range(49) if w[0, hh, p, l] > 0} == naive


def _tiny(fusion: str, **kw) -> nn.Module:
    return timm.create_model(
        "favit_b0_cifar",
        num_classes=5,
        fusion=fusion,
        img_size=64,
        stem_stride=2,
        depths=[1, 1, 1, 1],
        embed_dims=[16, 32, 64, 128],
        **kw,
    ).eval()


@pytest.mark.parametrize("fusion", ["official", "max", "conv1x1", "probsparse", "hierarchical"])
def test_capture_keeps_forward_and_queries(fusion):
    torch.manual_seed(0)
    model = _tiny(fusion)
    x = torch.randn(2, 3, 64, 64)
    reset_sampling(model)
    with torch.no_grad():
        ref = model(x)
    reset_sampling(model)
    with capture_fusions(model, 0) as recs, torch.enable_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # 64² with the stride-2 stem gives 25/9/4/1 windows on the dilation-1 branches
    assert [(r.stage, r.dilation, r.num_windows) for r in recs] == [
        (0, 1, 25),
        (0, 8, 1),
        (1, 1, 9),
        (1, 4, 1),
        (2, 1, 4),
        (2, 2, 1),
        (3, 1, 1),
    ]
    for r in recs:
        assert r.feat_hw == (32 // 2**r.stage,) * 2
        if r.fusion_q is not None:  # the fusion received queries: the same as those sliced from FaSA's input
            assert torch.equal(r.fusion_q, r.q)
    if fusion == "official":
        # adaptive average of the window-major (L·c) axis down to c: bins of exactly L entries, so every
        # (window, channel) entry is read once with weight 1/L, and each candidate's read weight is 1/L
        for r in recs[:5:2]:
            w = source_weights(r)
            torch.testing.assert_close(w, torch.full_like(w, 1 / r.num_windows))


def test_query_attention_is_softmax_over_kept_candidates_by_hand():
    torch.manual_seed(0)
    model = _tiny("probsparse", fusion_kwargs={"sample_factor": 100})
    model.requires_grad_(False)
    x = torch.randn(1, 3, 64, 64)
    with capture_fusions(model, 0) as recs, torch.enable_grad():
        model(x)
    rec = recs[2]  # stage 2, dilation 1: 9 windows, 441 candidates -> 49 keys
    attn, i, n = rec.attn, rec.branch, 37
    a_map = query_attention(rec, [n])[0, :, 0]  # [h, P, L]
    flat = rec.cand.detach().flatten(2, 3)  # [B,h,P·L,c], index p·L + l
    for hh in range(attn.num_heads):
        kept = torch.nonzero(source_weights(rec)[0, hh].flatten() > 0).flatten().tolist()
        keys = [attn.single_heads[i](attn.fcs[i](flat[0, hh, m])).chunk(2)[0] for m in kept]
        logits = [float((rec.q[0, hh, n].double() * k.double()).sum()) * attn.scales[i + 1] for k in keys]
        z = sum(math.exp(v) for v in logits)
        expect = torch.zeros(flat.shape[2], dtype=torch.float64)
        for m, v in zip(kept, logits):
            expect[m] = math.exp(v) / z
        torch.testing.assert_close(a_map[hh].flatten().double(), expect, atol=1e-5, rtol=1e-4)


def test_analyze_fusion_cli_end_to_end(tmp_path):
    """A tiny FaViT trained 2 steps by Lightning on a toy ImageFolder; the CLI draws and writes the indices."""
    import lightning as L

    from favit_probsparse.analysis.cli import load_classifier, main
    from favit_probsparse.data.vision import ImageClassificationDataModule, write_toy_image_folder
    from favit_probsparse.training.classification import ImageClassifier

    root = write_toy_image_folder(
        tmp_path / "toy", num_classes=3, train_per_class=4, test_per_class=2, size=32
    )
    dm = ImageClassificationDataModule(
        "imagefolder", str(root), img_size=32, batch_size=4, num_workers=0, auto_augment=None, re_prob=0.0,
        color_jitter=None, train_crop="pad_crop", normalization="cifar10", download=False,
    )  # fmt: skip
    module = ImageClassifier(
        "favit_b0_cifar",
        {"fusion": "probsparse", "img_size": 32, "stem_stride": 1, "depths": [1, 1, 1, 1],
         "embed_dims": [16, 32, 64, 128]},
        warmup_epochs=0, mixup_alpha=0.0, cutmix_alpha=0.0,
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "maps"
    argv = ["fusion", "--ckpt", str(ckpt), "--images", "2", "--queries", "0.5", "0.5", "--dpi", "30"]
    assert main([*argv, "--out", str(out)]) == 0
    for f in ("sources.png", "windows.png", "attention.png"):
        assert (out / f).stat().st_size > 1000
    rep = json.loads((out / "fusion_maps.json").read_text())
    (c,) = rep["checkpoints"]
    assert c["fusion"] == "probsparse" and c["image_indices"] == [0, 5] and len(c["labels"]) == 2
    b = c["branches"][0]  # stage 1 at 32² with the stride-1 stem: 32×32 map, 25 windows, 49 kept per head
    assert (b["feat_hw"], b["num_windows"], b["num_keys"]) == ([32, 32], 25, 49)
    # the JSON's kept tokens are the support of the read weights recomputed here from the same checkpoint
    ref_module, _ = load_classifier(ckpt)
    dm.setup("test")
    x = torch.stack([dm.val_set[i][0] for i in c["image_indices"]])
    s = analyze_model(ref_module._eval_model(), x)[0]
    kept = {
        tuple(divmod(t, 32)) for t in torch.nonzero(s["weight_map"][1, 0].flatten() > 0).flatten().tolist()
    }
    assert {tuple(t) for t in b["kept_tokens"][1][0]} == kept
    assert len(kept) <= 49
    # distinct tokens read = the kept tokens counted by hand; the Markdown table states them per branch
    counts = [len(h) for img in b["kept_tokens"] for h in img]
    assert [v for img in b["tokens_read"] for v in img] == counts
    md = (out / "fusion_maps.md").read_text()
    assert (
        f"| 32×32 | 25 | 49 | {min(counts)} / {sum(counts) / len(counts):.1f} / {max(counts)} | 1024 |" in md
    )
    with pytest.raises(CheckpointError, match=r"nope\.ckpt: no such file"):
        main(["fusion", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(out)])


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    from favit_probsparse.analysis.cli import main

    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        main(["fusion", "--ckpt", str(plain)])
    unsafe = tmp_path / "unsafe.ckpt"
    # any class outside torch's weights-only allow-list
    torch.save({"state_dict": {}, "hyper_parameters": {"x": argparse.Namespace(a=1)}}, unsafe)
    with pytest.raises(CheckpointError, match="outside the weights-only allow-list"):
        main(["fusion", "--ckpt", str(unsafe)])
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"seq_len": 96}}, other)
    with pytest.raises(CheckpointError, match="written by an incompatible version"):
        main(["fusion", "--ckpt", str(other)])


def test_window_candidates_layout_is_what_the_index_assumes():
    # guards the one model function the index map reuses: a constant channel comes back as the token index
    H = W = 14
    x = torch.arange(H * W, dtype=torch.float64).reshape(1, 1, H, W).repeat(1, 2, 1, 1)
    cand = window_candidates(x, 2, 7, 1)  # 2 heads of 1 channel
    assert torch.equal(cand[0, 0, :, :, 0], cand[0, 1, :, :, 0])
    assert cand[0, 0, 7 * 2 + 3, 1, 0] == 2 * W + 7 + 3  # window (0, 1), position (2, 3)
