"""`favit-ps reproduce GRID` fetches the data its runs use before they start: the forecasting grids' ETT files."""

from __future__ import annotations

import pytest

from favit_probsparse.data import ett as ett_mod
from favit_probsparse.data.ett import ett_path

ETTH1 = ett_path("ETTh1")


@pytest.mark.skipif(not ETTH1.exists(), reason=f"real data not present at {ETTH1}")
@pytest.mark.parametrize(
    "grid", ["ett_posenc", "quick_forecast"]
)  # quick_forecast: the main job's forecasting half
def test_reproduce_fetches_ett_for_a_forecasting_grid(tmp_path, monkeypatch, grid):
    """The grid does not set ETTDataModule's download option; the reproduction downloads a missing file anyway,
    from the pinned upstream commit (a file:// mirror of it here), into the data root where the runs look."""
    from favit_probsparse.experiments import reproduce

    payload = ETTH1.read_bytes()
    mirror = tmp_path / "mirror" / ett_mod.UPSTREAM_COMMIT / "ETT-small"
    mirror.mkdir(parents=True)
    (mirror / "ETTh1.csv").write_bytes(payload)
    monkeypatch.setattr(
        ett_mod, "UPSTREAM_URL", (tmp_path / "mirror").as_uri() + "/{commit}/ETT-small/{name}.csv"
    )
    monkeypatch.setenv("FAVIT_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert reproduce.prepare_grid_data(reproduce._grid_file(grid)) >= 1
    assert ett_path("ETTh1").read_bytes() == payload
    assert ett_path("ETTh1") == tmp_path / "data" / "ETT" / "ETTh1.csv"
