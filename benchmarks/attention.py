"""Benchmark: ProbSparse attention vs SDPA full attention (forward + backward time, peak memory, roofline floor).

The benchmark lives in the package (:mod:`favit_probsparse.benchmarks.attention`, so that ``favit-ps reproduce
attention`` runs it from an installed package); this script is its command line in the checkout:

    python benchmarks/attention.py                       # CPU: B=1, H=8, D=64
    python benchmarks/attention.py --device cuda         # GPU: B=32, H=8, D=64
    python benchmarks/attention.py --markdown results/attention-benchmark.table.md
    python benchmarks/attention.py --help                # every option
"""

from favit_probsparse.benchmarks.attention import build_parser, main  # noqa: F401  (build_parser: gpu_check)

if __name__ == "__main__":
    raise SystemExit(main())
