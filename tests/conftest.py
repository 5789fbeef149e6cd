"""Shared test setup."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test process: `pytest -n 2` already uses both cores of the target machine, and
    small models on an oversubscribed CPU run many times slower with OpenMP barriers than single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
