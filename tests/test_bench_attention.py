"""The ProbSparse benchmark's parts table: it runs, its parts add up to the floor's FLOPs, and its compiled
measure computes the same measure (no timing is asserted)."""

import pytest
import torch

from favit_probsparse.attention import probsparse_counts, sample_key_index
from favit_probsparse.benchmarks import attention as bench


@pytest.mark.parametrize("l", [48, 336, 1440, 5760])
def test_parts_add_up_to_the_floor_flops(l):
    flops, _ = bench.probsparse_work(2, 8, l, 64, 4)
    assert bench.part_flops("measure", 2, 8, l, 64) + bench.part_flops("matmuls", 2, 8, l, 64) == flops


def test_gathered_measure_matches_a_naive_loop():
    l, d = 40, 8
    n, _ = probsparse_counts(l, l, 5)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, l, d, generator=g, dtype=torch.float64) for _ in range(2))
    index = sample_key_index(l, l, n, generator=g)
    got = bench._gathered_measure(q, k, index, l)
    for h in range(2):
        for i in range(l):
            s = torch.stack([q[0, h, i] @ k[0, h, j] for j in index[i]])
            assert got[0, h, i].item() == pytest.approx((s.max() - s.sum() / l).item(), abs=1e-12)


def test_parts_table_rows(tmp_path, capsys):
    out = tmp_path / "table.md"
    argv = [
        "--lengths",
        "48",
        "--methods",
        "fast",
        "--parts",
        "--no-memory",
        "--repeats",
        "1",
        "--warmup",
        "0",
    ]
    assert bench.main([*argv, "--markdown", str(out)]) == 0
    text = out.read_text()
    for part in ("measure", "matmuls", "rest"):
        assert f"| 48 | {part} |" in text
    assert "measure-compiled" not in text


def test_parts_need_the_fast_path(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--lengths", "48", "--methods", "sdpa", "--parts"])
    assert "keep 'fast'" in capsys.readouterr().err
