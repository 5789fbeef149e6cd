"""CUDA code paths (marker ``cuda``; skipped without a GPU; ``make gpu-check`` runs them).

Each compares the GPU result with an independent reference: the exact (official-statement) path, a float64 CPU
computation, or the same model without the GPU-only branch.
"""

from __future__ import annotations

import pytest
import timm
import torch

import favit_probsparse.models  # noqa: F401  (registers the models)
from favit_probsparse.attention import (
    ProbSparseAttention,
    full_attention,
    probsparse_attention,
    probsparse_counts,
    sample_key_index,
    sparsity_measure,
)
from favit_probsparse.attention import probsparse as pp
from favit_probsparse.attention.fusion import reset_sampling

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEV = "cuda"


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 matmuls in full float32, so that tolerances mean what they say."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _qkv(b, h, l, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, l, d, generator=g, dtype=dtype).to(DEV) for _ in range(3)]


def _outputs_and_grads(q, k, v, **kwargs):
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    out = probsparse_attention(qq, kk, vv, **kwargs)
    w = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    (out * w).sum().backward()
    return out.detach(), qq.grad, kk.grad, vv.grad


@pytest.mark.parametrize(("causal", "with_mask"), [(False, False), (True, False), (False, True)])
def test_fast_equals_exact_on_cuda(causal, with_mask):
    q, k, v = _qkv(2, 4, 200, 32)
    n, _ = probsparse_counts(200, 200, 5)
    idx = sample_key_index(200, 200, n, generator=torch.Generator().manual_seed(1)).to(DEV)
    mask = (torch.arange(200, device=DEV) % 7 != 3).view(1, 1, 1, 200) if with_mask else None
    kw = dict(causal=causal, index=idx, attn_mask=mask)
    for a, b in zip(
        _outputs_and_grads(q, k, v, impl="exact", **kw), _outputs_and_grads(q, k, v, impl="fast", **kw)
    ):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


def test_fast_on_cuda_equals_fast_on_cpu_float64():
    q, k, v = _qkv(1, 2, 96, 16, dtype=torch.float64)
    n, _ = probsparse_counts(96, 96, 5)
    idx = sample_key_index(96, 96, n, generator=torch.Generator().manual_seed(2))
    gpu = _outputs_and_grads(q, k, v, causal=True, index=idx.to(DEV))
    cpu = _outputs_and_grads(q.cpu(), k.cpu(), v.cpu(), causal=True, index=idx)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("ratio", [0, 10**6])  # both sides of _DENSE_MEASURE_MAX_RATIO: gather, then dense
def test_measure_dispatch_both_sides_on_cuda(ratio, monkeypatch):
    monkeypatch.setattr(pp, "_DENSE_MEASURE_MAX_RATIO", ratio)
    q, k, _ = _qkv(2, 3, 300, 16, dtype=torch.float64)
    idx = sample_key_index(300, 300, 30, generator=torch.Generator().manual_seed(3))
    assert pp._measure_path(q, 300, 30) == ("dense" if ratio else "gather")
    got = sparsity_measure(q, k, idx.to(DEV))
    ref = sparsity_measure(q.cpu(), k.cpu(), idx, path="sddmm")  # the CPU path, tested against a naive loop
    torch.testing.assert_close(got.cpu(), ref, atol=1e-10, rtol=0)


def test_sddmm_measure_on_cuda_when_supported():
    # not used on CUDA by default; this records whether cuSPARSE's batched SDDMM would be an option
    q, k, _ = _qkv(2, 3, 128, 16)
    idx = sample_key_index(128, 128, 25, generator=torch.Generator().manual_seed(4))
    try:
        got = sparsity_measure(q, k, idx.to(DEV), path="sddmm")
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"sampled_addmm on CUDA: {str(e).splitlines()[0]}")
    torch.testing.assert_close(got, sparsity_measure(q, k, idx.to(DEV), path="dense"), atol=1e-4, rtol=1e-4)


def test_fully_masked_row_is_zero_on_cuda():
    # SDPA's CUDA kernels must give the documented 0 (not NaN) for a query that may attend to nothing
    q, k, v = _qkv(1, 2, 16, 8)
    keep = torch.ones(1, 1, 16, 16, dtype=torch.bool, device=DEV)
    keep[..., 5, :] = False
    for out in (
        full_attention(q, k, v, attn_mask=keep),
        probsparse_attention(q, k, v, factor=1000, attn_mask=keep),
        probsparse_attention(q, k, v, factor=1000, attn_mask=keep, impl="exact"),
    ):
        assert bool(torch.isfinite(out).all())
        assert float(out[:, :, 5].abs().max()) == 0.0


def test_bf16_fast_finite_and_close_on_cuda():
    q, k, v = _qkv(2, 4, 256, 64)
    idx = sample_key_index(
        256, 256, probsparse_counts(256, 256, 5)[0], generator=torch.Generator().manual_seed(5)
    )
    ref = probsparse_attention(q, k, v, index=idx.to(DEV), factor=1000)  # all active: no selection ties
    out = probsparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), index=idx.to(DEV), factor=1000)
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_module_seeded_generator_on_cuda():
    q, k, v = _qkv(1, 2, 120, 16)
    a = ProbSparseAttention(seed=7)(q, k, v)
    b = ProbSparseAttention(seed=7)(q, k, v)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_sampled_fusion_draws_the_same_samples_on_cuda_and_cpu():
    from favit_probsparse.attention.fusion import build_fusion

    cpu, gpu = (build_fusion("probsparse", 8, 7, 16, seed=5) for _ in range(2))
    gpu.to(DEV)
    for _ in range(3):  # the counter-based stream is integer arithmetic: the same bits on every device
        assert torch.equal(cpu._sample(1000, 40), gpu._sample(1000, 40).cpu())


def _favit_b0(pad):
    torch.manual_seed(0)
    model = timm.create_model("favit_b0", num_classes=10).to(DEV)
    for m in model.modules():
        if hasattr(m, "sdpa_pad"):
            m.sdpa_pad = (
                pad  # instance attribute: "auto" pads on CUDA (head dims 4, 14, 28, ... -> multiple of 8)
            )
    return model


def test_favit_sdpa_head_dim_padding_on_cuda():
    # the padded SDPA call (CUDA-only by default) gives the logits and gradients of the unpadded call
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(DEV)
    results = []
    for pad in ("auto", False):
        model = _favit_b0(pad).train()
        torch.manual_seed(1)  # same drop-path/dropout draws (zero rates by default, kept for safety)
        logits = model(x)
        logits.square().mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logits.detach(), grads))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ga, gb, atol=1e-4, rtol=1e-3)


def test_favit_cuda_logits_equal_cpu_float64():
    model = _favit_b0("auto").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gpu = model(x.to(DEV)).cpu()
        cpu = model.cpu().double()(x.double())
    torch.testing.assert_close(gpu.double(), cpu, atol=1e-3, rtol=1e-3)


def test_favit_bf16_autocast_on_cuda_close_to_float32():
    model = _favit_b0("auto").eval()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(DEV)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("fusion", ["official", "probsparse"])
def test_favit_torch_compile_bf16_on_cuda_matches_eager(fusion):
    # The released FaViT gave wrong output under torch.compile in bf16 on a GPU; ours must not. Reference: the
    # eager float32 model. The compiled bf16 model must be as close to it as eager bf16 is (rounding only), and
    # compiled float32 must equal eager float32 up to kernel reordering.
    torch.manual_seed(0)
    model = timm.create_model("favit_b0", fusion=fusion, num_classes=10).to(DEV).eval()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(DEV)
    compiled = torch.compile(model)

    def run(m):  # every call draws the same ProbSparse samples: the stream restarts
        reset_sampling(model)
        return m(x).float()

    with torch.no_grad():
        ref = run(model)
        out32 = run(compiled)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            eager16 = run(model)
            comp16 = run(compiled)
    torch.testing.assert_close(out32, ref, atol=1e-4, rtol=1e-4)
    assert bool(torch.isfinite(comp16).all())
    err_eager = (eager16 - ref).abs().max().item()
    err_comp = (comp16 - ref).abs().max().item()
    assert err_comp <= 2 * err_eager + 1e-2, (err_comp, err_eager)
