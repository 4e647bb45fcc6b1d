"""Grid search (paper step 1) and the single-dimension comparison, end to end on digits."""
import csv

import pytest

from effnets.cli import main
from effnets.errors import ConfigError
from effnets.scaling.search import REDUCED_GRID, REDUCED_TOL, grid


def test_reduced_grid_satisfies_constraint():
    cands = grid(**REDUCED_GRID, tol=REDUCED_TOL)
    assert len(cands) == 11
    assert all(abs(c.product / 2 - 1) <= REDUCED_TOL for c in cands)
    labels = {(c.alpha, c.beta, c.gamma) for c in cands}
    assert {(1.2, 1.1, 1.15), (2.0, 1.0, 1.0), (1.0, 1.41, 1.0), (1.0, 1.0, 1.41)} <= labels


def test_grid_errors():
    with pytest.raises(ConfigError, match="no grid triple"):
        grid((1.0,), (1.0,), (1.0,))
    with pytest.raises(ConfigError, match=">= 1"):
        grid((0.5,), (1.0,), (2.0,), tol=1)


def test_search_runs_and_picks_a_valid_triple(tmp_path, capsys):
    out = tmp_path / "search"
    rc = main(["scale-search", "efficientnet_b0", "--data", "digits", "--budget-epochs", "0.5",
               "--alphas", "1.2,2", "--betas", "1.1,1", "--gammas", "1.15,1", "--tol", "0.05",
               "--workers", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "best: alpha=" in text
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert {(float(r["alpha"]), float(r["beta"]), float(r["gamma"])) for r in rows} == {(1.2, 1.1, 1.15), (2.0, 1.0, 1.0)}
    for r in rows:
        assert abs(float(r["product"]) / 2 - 1) <= 0.05
        assert 0 <= float(r["top1"]) <= 100 and int(r["macs"]) > 0
    assert int(next(r for r in rows if r["alpha"] == "2.0")["resolution"]) == 32  # gamma 1: proxy size
    assert int(next(r for r in rows if r["alpha"] == "1.2")["resolution"]) == 36  # 32 * 1.15 -> 36
    assert (out / "search.png").stat().st_size > 1000


@pytest.mark.slow
def test_compare_runs(tmp_path):
    out = tmp_path / "cmp"
    assert main(["scale-compare", "--budget-epochs", "0.5", "--phis", "1", "--workers", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["label"] for r in rows] == ["base", "width_phi1", "depth_phi1", "resolution_phi1", "compound_phi1"]
    assert (out / "compare.png").exists()
