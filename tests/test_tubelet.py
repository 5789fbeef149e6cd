"""Tubelet embeddings against naive references: explicit loops over tubelets and channels in float64, the report
repository's per-channel loops (rebuilt here from its description, with our weights copied in), identities
between the embeddings, and GMACs against hand counts."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from favit_probsparse.layers import (
    ChannelMerged,
    PatchEmbed3d,
    S3DTubeletEmbedding,
    TubeletEmbedding,
    TubeletEmbeddingDNN,
    TubeletEmbeddingOverlapping,
    build_tubelet_embed,
    compare_embeddings,
    embedding_stats,
    merge_channels,
    stats_markdown,
)


def _video(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _positions(grid):
    """Token index n → (it, ih, iw), row-major over (T', H', W')."""
    return list(itertools.product(*(range(g) for g in grid)))


def test_linear_tubelets_against_a_loop():
    t, h, w = 2, 4, 2
    emb = TubeletEmbedding(in_chans=2, embed_dim=5, tubelet_size=(t, h, w)).double()
    x = _video(2, 2, 4, 8, 4)
    y, grid = emb(x)
    assert grid == (2, 2, 2) and y.shape == (2, 2, 8, 5)
    W, b = emb.proj.weight, emb.proj.bias
    for bi, c in itertools.product(range(2), range(2)):
        for n, (it, ih, iw) in enumerate(_positions(grid)):
            cube = x[bi, c, it * t : (it + 1) * t, ih * h : (ih + 1) * h, iw * w : (iw + 1) * w]
            torch.testing.assert_close(y[bi, c, n], W @ cube.reshape(-1) + b)


@pytest.mark.parametrize("overlap,pad", [((1, 2, 3), True), ((0, 2, 2), False), ((0, 0, 0), True)])
def test_overlapping_tubelets_against_a_loop(overlap, pad):
    tub, C, D = (2, 2, 2), 2, 3
    emb = TubeletEmbeddingOverlapping(C, D, tubelet_size=tub, overlap=overlap, pad=pad).double()
    x = _video(1, C, 4, 6, 4)
    y, grid = emb(x)
    k = [a + o for a, o in zip(tub, overlap)]
    before = [o // 2 if pad else 0 for o in overlap]
    after = [o - o // 2 if pad else 0 for o in overlap]
    # zero padding built by hand: before = floor(overlap / 2), after = the rest
    xp = torch.zeros(1, C, *(n + a + b for n, a, b in zip(x.shape[2:], before, after)), dtype=x.dtype)
    xp[:, :, before[0] : before[0] + 4, before[1] : before[1] + 6, before[2] : before[2] + 4] = x
    expect_grid = tuple((n - kk) // s + 1 for n, kk, s in zip(xp.shape[2:], k, tub))
    assert grid == expect_grid
    if pad:
        assert grid == (2, 3, 2)  # ⌊T/t⌋×⌊H/h⌋×⌊W/w⌋, as the non-overlapping embeddings
    W, b = emb.proj.weight, emb.proj.bias  # [C*D, 1, kt, kh, kw]: channel c owns rows c*D .. c*D+D-1
    for c in range(C):
        for n, pos in enumerate(_positions(grid)):
            lo = [p * s for p, s in zip(pos, tub)]
            win = xp[0, c, lo[0] : lo[0] + k[0], lo[1] : lo[1] + k[1], lo[2] : lo[2] + k[2]]
            for d in range(D):
                torch.testing.assert_close(y[0, c, n, d], (W[c * D + d, 0] * win).sum() + b[c * D + d])


def test_linear_equals_overlapping_conv_with_stride_equal_to_kernel():
    tub, C, D = (2, 4, 4), 3, 6
    lin = TubeletEmbedding(C, D, tub).double()
    conv = TubeletEmbeddingOverlapping(C, D, tub, overlap=0).double()
    with torch.no_grad():  # the shared linear map, copied into each channel's kernel bank
        conv.proj.weight.copy_(
            lin.proj.weight.view(1, D, 1, *tub).expand(C, -1, -1, -1, -1, -1).flatten(0, 1)
        )
        conv.proj.bias.copy_(lin.proj.bias.repeat(C))
    x = _video(2, C, 4, 8, 12)
    (a, ga), (b, gb) = lin(x), conv(x)
    assert ga == gb == (2, 2, 3)
    torch.testing.assert_close(a, b)


def test_patch_embed_against_a_loop_and_as_summed_channels():
    tub, C, D = (2, 2, 4), 3, 4
    pe = PatchEmbed3d(C, D, tub).double()
    x = _video(1, C, 4, 4, 8)
    y, grid = pe(x)
    assert grid == (2, 2, 2) and y.shape == (1, 8, D)
    for n, (it, ih, iw) in enumerate(_positions(grid)):
        cube = x[0, :, it * 2 : it * 2 + 2, ih * 2 : ih * 2 + 2, iw * 4 : iw * 4 + 4]
        torch.testing.assert_close(y[0, n], pe.proj.weight.flatten(1) @ cube.reshape(-1) + pe.proj.bias)
    # channel-mixing conv = per-channel kernel banks summed over channels (the merge ChannelMerged does)
    sep = ChannelMerged(TubeletEmbeddingOverlapping(C, D, tub, overlap=0)).double()
    with torch.no_grad():
        sep.embed.proj.weight.copy_(pe.proj.weight.transpose(0, 1).reshape(C * D, 1, *tub))
        sep.embed.proj.bias.copy_(torch.cat([pe.proj.bias, torch.zeros((C - 1) * D, dtype=x.dtype)]))
    torch.testing.assert_close(sep(x)[0], y)
    pe_norm = PatchEmbed3d(C, D, tub, norm_layer=nn.LayerNorm).double()
    pe_norm.proj.load_state_dict(pe.proj.state_dict())
    torch.testing.assert_close(pe_norm(x)[0], F.layer_norm(y, (D,)))


def _report_cnn(emb: TubeletEmbeddingDNN, c: int) -> nn.Sequential:
    """Channel c's CNN as the report repository writes it (a separate nn.Sequential), with emb's weights."""
    h1, h2 = emb.conv1.out_channels // emb.in_chans, emb.conv2.out_channels // emb.in_chans
    seq = nn.Sequential(
        nn.Conv3d(1, h1, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(h1, h2, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d((1, 1, 1)),
        nn.Flatten(),
        nn.Linear(h2, emb.embed_dim),
    ).double()
    with torch.no_grad():
        seq[0].weight.copy_(emb.conv1.weight[c * h1 : (c + 1) * h1])
        seq[0].bias.copy_(emb.conv1.bias[c * h1 : (c + 1) * h1])
        seq[2].weight.copy_(emb.conv2.weight[c * h2 : (c + 1) * h2])
        seq[2].bias.copy_(emb.conv2.bias[c * h2 : (c + 1) * h2])
        seq[6].weight.copy_(emb.proj.weight[c])
        seq[6].bias.copy_(emb.proj.bias[c])
    return seq


def test_dnn_tubelets_against_one_cnn_per_channel_and_tubelet():
    tub, C, D = (2, 2, 2), 2, 5
    emb = TubeletEmbeddingDNN(C, D, tub).double()
    x = _video(2, C, 4, 4, 2)
    y, grid = emb(x)
    assert grid == (2, 2, 1) and y.shape == (2, C, 4, D)
    for c in range(C):
        cnn = _report_cnn(emb, c)
        for n, (it, ih, iw) in enumerate(_positions(grid)):
            cube = x[:, c : c + 1, it * 2 : it * 2 + 2, ih * 2 : ih * 2 + 2, iw * 2 : iw * 2 + 2]
            torch.testing.assert_close(
                y[:, c, n], cnn(cube)
            )  # each tubelet alone: zero padding at its border


def _s3d(C=2, D=4, weights=None):
    torch.manual_seed(0)
    return S3DTubeletEmbedding(C, D, weights=weights)


def test_s3d_matches_the_report_loop_and_keeps_channels_apart():
    emb = _s3d()
    # random running statistics, so that eval-mode batch norm is not the identity
    for m in emb.backbone.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 2, 8, 32, 32)
    y, grid = emb(x)
    assert grid == (2, 2, 2) and y.shape == (1, 2, 8, 4)  # T/4, H/16, W/16
    for c in range(2):  # the repository's loop: each channel repeated to RGB, run alone, its own Linear
        with torch.no_grad():
            f = emb.backbone(x[:, c : c + 1].repeat(1, 3, 1, 1, 1))
        f = f.permute(0, 2, 3, 4, 1).reshape(1, -1, 528)
        torch.testing.assert_close(y[:, c], f @ emb.proj.weight[c].T + emb.proj.bias[c], rtol=1e-4, atol=1e-5)
    x2 = x.clone()
    x2[:, 1] = torch.randn_like(x2[:, 1])
    y2, _ = emb(x2)
    assert torch.equal(y2[:, 0], y[:, 0])
    assert not torch.allclose(y2[:, 1], y[:, 1])


def test_s3d_backbone_is_frozen():
    emb = _s3d()
    assert all(not p.requires_grad for p in emb.backbone.parameters())
    bn_before = {k: v.clone() for k, v in emb.backbone.state_dict().items() if "running" in k}
    emb.train()
    assert emb.training and emb.proj.training and not emb.backbone.training
    assert not any(m.training for m in emb.backbone.modules())
    y, _ = emb(torch.randn(2, 2, 8, 32, 32))
    y.square().sum().backward()
    assert all(p.grad is None for p in emb.backbone.parameters())
    assert emb.proj.weight.grad is not None and emb.proj.weight.grad.abs().sum() > 0
    for k, v in bn_before.items():  # a training-mode forward did not update the running statistics
        assert torch.equal(emb.backbone.state_dict()[k], v), k


def test_s3d_weights_file(tmp_path):
    with pytest.raises(TypeError):
        S3DTubeletEmbedding(3, 8)  # no silent random weights: weights=None must be asked for
    with pytest.raises(
        FileNotFoundError, match=r"^S3D weights file not found: .*missing\.pth .*weights=None"
    ):
        S3DTubeletEmbedding(3, 8, weights=tmp_path / "missing.pth")
    donor = _s3d().backbone
    with torch.no_grad():
        donor[0][0][0].weight.normal_()
    path = tmp_path / "s3d.pth"
    torch.save(
        {f"features.{k}": v for k, v in donor.state_dict().items()} | {"classifier.1.bias": torch.zeros(4)},
        path,
    )
    emb = S3DTubeletEmbedding(2, 4, weights=path)
    for k, v in donor.state_dict().items():
        assert torch.equal(emb.backbone.state_dict()[k], v), k
    bad = tmp_path / "other.pth"
    torch.save(nn.Linear(2, 2).state_dict(), bad)
    with pytest.raises(ValueError, match=r"does not fit torchvision's S3D features\[:12\]: \d+ missing keys"):
        S3DTubeletEmbedding(2, 4, weights=bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a loadable state dict"):
        S3DTubeletEmbedding(2, 4, weights=junk)
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="holds a Tensor, not a state dict"):
        S3DTubeletEmbedding(2, 4, weights=tensor_file)


@pytest.mark.parametrize("kind", ["linear", "dnn", "patch"])
def test_non_divisible_clip_is_a_one_line_error(kind):
    emb = build_tubelet_embed(kind, 3, 8, tubelet_size=(2, 4, 4))
    with pytest.raises(
        ValueError, match=r"clip T×H×W = 3×8×10 is not divisible by the tubelet 2×4×4 \(T=3"
    ) as e:
        emb(torch.zeros(1, 3, 3, 8, 10))
    assert "W=10 % 4 = 2" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["linear", "overlap", "dnn", "patch", "s3d"])
def test_rank_and_channel_errors(kind):
    emb = build_tubelet_embed(kind, 3, 8, **({"weights": None} if kind == "s3d" else {}))
    with pytest.raises(ValueError, match=r"expected a video \[B, C, T, H, W\], got a 4-D tensor"):
        emb(torch.zeros(3, 8, 16, 16))
    with pytest.raises(ValueError, match=r"expected 3 channels .*got 1 in \(1, 1, 8, 16, 16\)"):
        emb(torch.zeros(1, 1, 8, 16, 16))


def test_other_errors():
    with pytest.raises(ValueError, match=r"smaller than the kernel 2×6×6"):
        TubeletEmbeddingOverlapping(1, 4, (2, 4, 4), overlap=(0, 2, 2))(torch.zeros(1, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="unknown tubelet embedding 'tube'"):
        build_tubelet_embed("tube")
    with pytest.raises(ValueError, match=r"tubelet_size must be one positive int or three"):
        TubeletEmbedding(3, 8, (2, 4))
    with pytest.raises(ValueError, match=r"merge_channels expects \[B, C, N, D\]"):
        merge_channels(torch.zeros(2, 3, 4))


def test_merged_kinds_all_give_tokens_of_the_model_width():
    x = torch.randn(2, 3, 4, 16, 16)
    for kind in ["linear", "overlap", "dnn", "patch"]:
        y, grid = build_tubelet_embed(kind, 3, 8, merge=True, norm_layer=nn.LayerNorm)(x)
        assert y.shape == (2, 32, 8) and grid == (2, 4, 4), kind
    sep, _ = build_tubelet_embed("linear", 3, 8)(x)
    torch.testing.assert_close(merge_channels(sep), sep[:, 0] + sep[:, 1] + sep[:, 2])


def test_gmacs_and_params_against_hand_counts():
    C, T, H, W, D, (t, h, w) = 3, 8, 64, 64, 16, (2, 4, 4)
    n = (T // t) * (H // h) * (W // w)
    s = embedding_stats(TubeletEmbedding(C, D, (t, h, w)), (C, T, H, W))
    assert s["gmacs"] * 1e9 == pytest.approx(C * n * t * h * w * D, abs=0.5)
    assert s["params"] == s["trainable_params"] == t * h * w * D + D
    assert s["grid"] == (4, 16, 16) and s["tokens"] == (C, n, D)
    s = embedding_stats(PatchEmbed3d(C, D, (t, h, w)), (C, T, H, W))
    assert s["gmacs"] * 1e9 == pytest.approx(n * C * t * h * w * D, abs=0.5) and s["tokens"] == (n, D)
    # per voxel and channel: 8·27 (conv 1→8) + 16·8·27 (conv 8→16); per tubelet and channel: 16·D
    s = embedding_stats(TubeletEmbeddingDNN(C, D, (t, h, w)), (C, T, H, W))
    assert s["gmacs"] * 1e9 == pytest.approx(C * T * H * W * (8 * 27 + 16 * 8 * 27) + C * n * 16 * D, abs=0.5)
    s = embedding_stats(_s3d(C, D), (C, 16, 64, 64))
    assert s["trainable_params"] == C * (528 * D + D) and s["params"] > 3_000_000


def test_the_counting_method_reproduces_torchvisions_s3d_cost():
    """The meta-device FLOP count gives torchvision's published cost of the whole S3D (its ``_ops``)."""
    from torchvision.models.video import S3D_Weights, s3d

    class Whole(nn.Module):  # embedding_stats wants (tokens, grid)
        def __init__(self):
            super().__init__()
            self.m = s3d()

        def forward(self, x):
            return self.m(x), (1, 1, 1)

    s = embedding_stats(Whole(), (3, 16, 224, 224))
    assert s["gmacs"] == pytest.approx(S3D_Weights.KINETICS400_V1.meta["_ops"], abs=1e-3)
    assert s["params"] == S3D_Weights.KINETICS400_V1.meta["num_params"]


def test_stats_markdown():
    rows = [
        {"name": "linear", "input": (3, 8, 64, 64)}
        | embedding_stats(TubeletEmbedding(3, 16), (3, 8, 64, 64)),
        {"name": "patch"} | embedding_stats(PatchEmbed3d(3, 16), (3, 8, 64, 64)),
    ]
    lines = stats_markdown(rows).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| Embedding |")
    assert lines[2] == "| linear | 3×8×64×64 | 528 | 528 | 0.002 | 4×16×16 | [3, 1024, 16] |"
    assert lines[3].startswith("| patch | – | 1,552 |")


def test_compare_embeddings_rows():
    rows = compare_embeddings([(8, 64, 64), (4, 32, 32)], in_chans=3, embed_dim=16, kinds=["linear", "patch"])
    assert [(r["name"].split()[0], r["input"]) for r in rows] == [
        ("linear", (3, 8, 64, 64)),
        ("linear", (3, 4, 32, 32)),
        ("patch", (3, 8, 64, 64)),
        ("patch", (3, 4, 32, 32)),
    ]
    assert rows[1]["gmacs"] * 1e9 == pytest.approx(3 * (2 * 8 * 8) * 32 * 16, abs=0.5)
