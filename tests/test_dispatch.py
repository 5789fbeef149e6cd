"""``attention.dispatch``: every kernel against a float64 reference (forward and gradients, fp32 and bf16), dropout,
and the choice from a measured table (nearest row, unknown machine or shape -> SDPA, forcing)."""

from __future__ import annotations

import json

import pytest
import torch

from favit_probsparse.attention import dispatch

# FaSA-like: (batch, heads, queries, keys, head width): the global branch (c=4), a window branch (c=14, 49 keys),
# the hierarchical fusion's few keys, stage 4 (c=28)
SHAPES = [(2, 1, 50, 49, 4), (2, 3, 37, 49, 14), (1, 2, 30, 5, 14), (2, 2, 9, 11, 28)]
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _inputs(b, h, n, k, c, dtype):
    g = torch.Generator().manual_seed(0)
    # q as FaSA hands it over: a strided head view of a wider projection; k/v halves of one tensor
    proj = torch.randn(b, n, h * c + 3, generator=g, dtype=torch.float64)
    kv = torch.randn(b, h, k, 2 * c, generator=g, dtype=torch.float64)
    grad = torch.randn(b, h, n, c, generator=g, dtype=torch.float64)
    return proj, kv, grad


def _split(proj, kv, h, c):
    q = proj[:, :, 3:].unflatten(2, (h, c)).transpose(1, 2)
    k, v = kv.chunk(2, dim=-1)
    return q, k, v


def _reference(proj, kv, grad, h, c, scale):
    proj, kv = proj.clone().requires_grad_(), kv.clone().requires_grad_()
    q, k, v = _split(proj, kv, h, c)
    out = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
    out.backward(grad)
    return out.detach(), proj.grad, kv.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kernel", list(dispatch.KERNELS))
@pytest.mark.parametrize("shape", SHAPES, ids=[f"c{s[-1]}-K{s[3]}" for s in SHAPES])
def test_kernel_matches_float64(kernel, dtype, shape):
    b, h, n, _, c = shape
    scale = c**-0.5
    proj64, kv64, grad64 = _inputs(*shape, dtype)
    ref, ref_dproj, ref_dkv = _reference(proj64, kv64, grad64, h, c, scale)
    proj = proj64.to(dtype).requires_grad_()
    kv = kv64.to(dtype).requires_grad_()
    with dispatch.use_kernel(kernel):
        out = dispatch.attend(*_split(proj, kv, h, c), scale, training=True)
    out.backward(grad64.to(dtype))
    assert out.dtype == dtype and out.shape == (b, h, n, c)
    tol = TOL[dtype]
    for got, want in ((out, ref), (proj.grad, ref_dproj), (kv.grad, ref_dkv)):
        err = (got.double() - want).abs().max().item()
        assert err <= tol * max(1.0, want.abs().max().item()), err
    assert proj.grad[:, :, :3].abs().max() == 0  # the columns q does not view get no gradient


@pytest.mark.parametrize("kernel", list(dispatch.KERNELS))
def test_dropout_only_in_training(kernel):
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 400, 8), torch.randn(2, 1, 64, 8)
    v = torch.ones(2, 1, 64, 8)  # each output is the sum of the (dropped, rescaled) weights of its row
    with dispatch.use_kernel(kernel):
        plain = dispatch.attend(q, k, v, 0.3, dropout_p=0.5, training=False)
        dropped = dispatch.attend(q, k, v, 0.3, dropout_p=0.5, training=True)
    torch.testing.assert_close(plain, torch.ones_like(plain))
    assert (dropped - 1).abs().max() > 0.1  # rows lose weights ...
    assert abs(dropped.mean().item() - 1.0) < 0.05  # ... but keep their expectation (inverted dropout)


def _table(tmp_path, rows, machine="cpu-test"):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"tables": [{"machine": {"class": machine}, "rows": rows}]}))
    return str(path)


def _row(best, head_dim=14, queries=3136, keys=49, dtype="float32", training=True):
    return dict(best=best, head_dim=head_dim, queries=queries, keys=keys, dtype=dtype, training=training)


@pytest.fixture
def fake_table(tmp_path, monkeypatch):
    """Point the dispatch at a table for a fake machine class and clear its caches."""

    def use(rows, machine="cpu-test"):
        path, read = _table(tmp_path, rows, machine), dispatch.load_table.__wrapped__
        monkeypatch.setattr(dispatch, "load_table", lambda p=None: read(path))
        monkeypatch.setattr(dispatch, "machine_class", lambda device="cpu", index=0: "cpu-test")
        monkeypatch.setattr(dispatch, "_CHOICES", {})
        monkeypatch.delenv("FAVIT_ATTENTION_KERNEL", raising=False)

    return use


def test_choice_follows_the_nearest_row(fake_table):
    fake_table(
        [
            _row("bmm", queries=3136),
            _row("math", queries=196),
            _row("flash", queries=3136, training=False),
            _row("bmm_fp32", queries=3136, dtype="bfloat16"),
        ]
    )
    q, k = torch.empty(1, 1, 3000, 14), torch.empty(1, 1, 49, 14)
    assert dispatch.choose_kernel(q, k, training=True) == "bmm"
    assert dispatch.choose_kernel(q[:, :, :200], k, training=True) == "math"
    assert dispatch.choose_kernel(q, k, training=False) == "flash"
    assert dispatch.choose_kernel(q.bfloat16(), k.bfloat16(), training=True) == "bmm_fp32"
    assert dispatch.choose_kernel(q.half(), k.half(), training=True) == "sdpa"  # no float16 rows
    far = torch.empty(1, 1, 3000, 256)  # head width 256: 4+ octaves from every row
    assert dispatch.choose_kernel(far, torch.empty(1, 1, 49, 256), training=True) == "sdpa"
    with dispatch.use_kernel("math"):
        assert dispatch.choose_kernel(q, k, training=True) == "math"
    assert dispatch.choose_kernel(q, k, training=True) == "bmm"


def test_other_machines_and_broken_tables_get_sdpa(fake_table, tmp_path):
    read = dispatch.load_table.__wrapped__
    fake_table([_row("bmm")], machine="cpu-amx")  # measured elsewhere: not applied here
    q, k = torch.empty(1, 1, 3136, 14), torch.empty(1, 1, 49, 14)
    assert dispatch.choose_kernel(q, k, training=True) == "sdpa"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert read(str(broken)) == {}
    assert read(str(tmp_path / "missing.json")) == {}


def test_forcing_names_bad_kernels(monkeypatch):
    with pytest.raises(ValueError, match="attention kernel 'fastest'"), dispatch.use_kernel("fastest"):
        pass
    monkeypatch.setenv("FAVIT_ATTENTION_KERNEL", "nope")
    with pytest.raises(ValueError, match="FAVIT_ATTENTION_KERNEL='nope'"):
        dispatch.choose_kernel(torch.empty(1, 1, 4, 4), torch.empty(1, 1, 4, 4), training=False)
    monkeypatch.setenv("FAVIT_ATTENTION_KERNEL", "math")
    assert dispatch.choose_kernel(torch.empty(1, 1, 4, 4), torch.empty(1, 1, 4, 4), training=False) == "math"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "cpu-amx"),
        ({"avx2", "avx512f", "avx512_bf16"}, "cpu-avx512_bf16"),
        ({"avx2", "avx512f"}, "cpu-avx512"),
        ({"avx2", "fma"}, "cpu-avx2"),
    ],
)
def test_machine_class_separates_bf16_capable_cpus(monkeypatch, flags, expected):
    monkeypatch.setattr(dispatch, "cpu_flags", lambda: flags)
    assert dispatch.machine_class.__wrapped__("cpu") == expected


def test_packaged_table_is_consistent():
    """The committed table: each machine names its hardware, flags, torch and date; each row's choice is its
    fastest kernel, or SDPA where none beats it by more than the table's margin."""
    data = json.loads(dispatch.TABLE_PATH.read_text())
    assert data["tables"]
    for t in data["tables"]:
        m = t["machine"]
        assert m["class"] and m["bf16"] and t["torch"] and t["date"] and t["command"]
        if m["class"].startswith("cpu-"):
            assert m["cpu"] and "flags" in m
        for r in t["rows"]:
            fastest = min(r["ms"], key=r["ms"].get)
            assert r["best"] in dispatch.KERNELS and r["best"] in (fastest, "sdpa")
            if r["best"] == "sdpa":
                assert r["ms"]["sdpa"] <= r["ms"][fastest] * t["sdpa_margin"]
            else:
                assert r["ms"]["sdpa"] > r["ms"][fastest] * t["sdpa_margin"]
            assert r["dtype"] in ("float32", "bfloat16") and isinstance(r["training"], bool)


def test_a_backend_that_refuses_the_inputs_falls_back_to_sdpa(monkeypatch):
    def refuses(*args):
        raise RuntimeError("No available kernel. Aborting execution.")

    def broken(*args):
        raise RuntimeError("something else")

    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5)
    monkeypatch.setitem(dispatch.KERNELS, "flash", refuses)
    with dispatch.use_kernel("flash"):
        torch.testing.assert_close(dispatch.attend(q, k, v, 0.5), want)
    monkeypatch.setitem(dispatch.KERNELS, "flash", broken)
    with dispatch.use_kernel("flash"), pytest.raises(RuntimeError, match="something else"):
        dispatch.attend(q, k, v, 0.5)  # other errors are not hidden
