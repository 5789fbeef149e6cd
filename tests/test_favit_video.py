"""Video FaViT: the four attentions, inflation of 2-D weights, timm plumbing, errors.

The references are the 2-D FaViT: a single-frame model must be the 2-D model run on every frame, and a
centre-inflated FaSA model must see a static clip as the 2-D model sees the image.
"""

from __future__ import annotations

import pytest
import timm
import torch

import favit_probsparse.models  # noqa: F401  (registers the models)
from favit_probsparse.models.favit_video import ATTENTIONS, VideoFaViT, inflate_state_dict

TINY = dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), mlp_ratios=(4, 4, 4, 4), num_classes=5)


def _favit_2d(fusion="max"):
    torch.manual_seed(0)
    m = timm.create_model("favit_b0", img_size=32, fusion=fusion, **TINY).eval()
    with torch.no_grad():  # not the init: every weight and bias matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_every_attention_runs_and_trains(attention):
    m = timm.create_model("favit_video_tiny", attention=attention, num_frames=4, img_size=32, num_classes=3)
    x = torch.randn(2, 3, 4, 32, 32)
    out = m(x)
    assert out.shape == (2, 3)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_frame_model_is_the_2d_model_on_every_frame():
    m2 = _favit_2d()
    m3 = VideoFaViT(num_frames=3, img_size=32, attention="frame", fusion="max", **TINY).eval()
    m3.load_state_dict(inflate_state_dict(m2.state_dict(), m3))
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        frames = torch.stack(
            [m2.forward_head(m2.forward_features(x[:, :, t]), pre_logits=True) for t in range(3)]
        )
        torch.testing.assert_close(m3.forward_head(m3.forward_features(x), pre_logits=True), frames.mean(0))


@pytest.mark.parametrize("temporal_window", [1, 2, 4])
def test_centre_inflated_fasa_sees_a_static_clip_as_the_2d_model_sees_the_image(temporal_window):
    """Centre inflation: every 3-D kernel is the 2-D one at the centre time slice; a static clip repeats each
    key ``T`` times (the softmax is unchanged) and max fusion over copies is the 2-D max."""
    m2 = _favit_2d("max")
    m3 = VideoFaViT(num_frames=4, img_size=32, fusion="max", temporal_window=temporal_window, **TINY).eval()
    sd = inflate_state_dict(m2.state_dict(), m3, mode="centre")
    assert set(m3.state_dict()) - set(sd) == {"stages.0.time_embed"}  # every other tensor inflated
    sd["stages.0.time_embed"] = torch.zeros(1, 4, 1, 16)  # no frame-dependent term
    m3.load_state_dict(sd)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            m3(img.unsqueeze(2).expand(-1, -1, 4, -1, -1)), m2(img), rtol=1e-4, atol=1e-5
        )


def test_divided_attention_tells_the_order_of_the_frames_only_with_its_time_embedding():
    """A clip and the same clip reversed in time: ``divided`` has no other source of frame order."""
    x = torch.randn(2, 3, 4, 32, 32)
    for pos, differs in ((False, False), (True, True)):
        torch.manual_seed(0)
        m = VideoFaViT(num_frames=4, img_size=32, attention="divided", temporal_pos_embed=pos, **TINY).eval()
        with torch.no_grad():
            assert (not torch.allclose(m(x), m(x.flip(2)), atol=1e-6)) == differs


def test_inflation_modes_and_official_keys():
    m2 = _favit_2d()
    m3 = VideoFaViT(num_frames=4, img_size=32, tubelet_time=2, **TINY)
    w2 = m2.state_dict()["stages.0.downsample.proj.weight"]  # [16, 3, 7, 7]
    rep = inflate_state_dict(m2.state_dict(), m3, mode="repeat")["stages.0.downsample.proj.weight"]
    assert rep.shape == (16, 3, 2, 7, 7)
    torch.testing.assert_close(rep.sum(2), w2)  # a static clip gives the 2-D response
    cen = inflate_state_dict(m2.state_dict(), m3, mode="centre")["stages.0.downsample.proj.weight"]
    assert torch.equal(cen[:, :, 1], w2) and not cen[:, :, 0].any()
    official = {k.replace("stages.0.downsample.", "patch_embed1."): v for k, v in m2.state_dict().items()}
    assert torch.equal(
        inflate_state_dict(official, m3)["stages.0.downsample.proj.weight"][:, :, 1], w2
    )  # the official layout is renamed first
    with pytest.raises(ValueError, match="inflation mode"):
        inflate_state_dict(m2.state_dict(), m3, mode="stretch")


def test_features_only_and_registry():
    assert {"favit_video_tiny", "favit_video_b0", "favit_video_b1"} <= set(timm.list_models("favit_video_*"))
    m = timm.create_model(
        "favit_video_tiny", features_only=True, num_frames=4, img_size=64, temporal_strides=(2, 1, 1)
    )
    feats = m(torch.randn(1, 3, 4, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (1, 16, 4, 16, 16),
        (1, 32, 2, 8, 8),
        (1, 64, 2, 4, 4),
        (1, 128, 2, 2, 2),
    ]


@pytest.mark.parametrize("embed", ["patch", "linear", "overlap", "dnn"])
def test_tubelet_embeddings_as_stem(embed):
    m = timm.create_model(
        "favit_video_tiny", embed=embed, tubelet_time=2, num_frames=4, img_size=32, num_classes=2
    )
    assert m(torch.randn(1, 3, 4, 32, 32)).shape == (1, 2)


def test_errors_are_one_line():
    with pytest.raises(ValueError, match="single-frame baseline: it needs tubelet_time=1"):
        VideoFaViT(attention="frame", tubelet_time=2, **TINY)
    with pytest.raises(ValueError, match="and no temporal_pos_embed"):
        VideoFaViT(attention="frame", temporal_pos_embed=True, **TINY)
    with pytest.raises(ValueError, match="built for 4 token frames, the clip gives 6"):
        VideoFaViT(num_frames=4, img_size=32, **TINY)(torch.randn(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="unknown attention 'axial'"):
        VideoFaViT(attention="axial", **TINY)
    with pytest.raises(ValueError, match="unknown fusion 'avg'"):
        VideoFaViT(fusion="avg", **TINY)
    m = VideoFaViT(num_frames=4, img_size=32, tubelet_time=2, temporal_strides=(2, 1, 1), **TINY)
    with pytest.raises(ValueError, match=r"expects clips \[B, 3, T, H, W\], got shape \[1, 3, 32, 32\]"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="needs at least 4 frames"):
        m(torch.randn(1, 3, 2, 32, 32))
