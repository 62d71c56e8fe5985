"""The reproduce command writes every figure, its Vega-Lite spec and its data, through a tiny grid."""

import json

import pandas as pd
import pytest

from resnet_limits import cli_sweeps, reproduce
from resnet_limits.cli import main
from resnet_limits.config import ConfigError, LimitSettings

# Runs the code path of PAPER_GRID, with shapes and limits small enough for a test.
TINY_GRID = reproduce.Grid(depth=2, widths=(2, 4), dims=(6, 8), seeds=(0,), steps=2, limit_tol=1.0,
                           limit_start=LimitSettings(4, 256), mean_ode=LimitSettings(4, 64))


@pytest.mark.slow
def test_reproduce_writes_every_figure(tmp_path):
    written = reproduce.reproduce(["all"], tmp_path, grid=TINY_GRID)
    assert len(written) == 4 * len(reproduce.FIGURES)
    for name, figure in reproduce.FIGURES.items():
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG")
        assert (tmp_path / f"{name}.svg").read_text().lstrip().startswith("<svg")
        spec = json.loads((tmp_path / f"{name}.vl.json").read_text())
        assert spec["title"] == figure.title
        data = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert set(data["error"]) == {"embedding", "output"}
        assert len(data) == 2 * 2 * 2  # 2 widths x 2 dims x 2 error kinds
        assert (data["seeds"] == 1).all()
        assert len(spec["data"]["values"]) == len(data)
    assert sorted(path.name for path in (tmp_path / "sweeps").iterdir()) == ["paper-linear", "paper-tanh"]


def test_figure_data_series_limited():
    figure = reproduce.FIGURES["tanh-error-vs-D"]
    rows = [
        {"L": 50, "M": M, "D": D, "P": 50 * M * D, "seed": 0, "K": 15, "step": 15, "status": "completed",
         "embedding_error_limit": 1.0 / D, "output_error_limit": 2.0 / D}
        for M in range(1, 11)
        for D in (1, 10)
    ]
    data = reproduce.figure_data(figure, pd.DataFrame(rows))
    # Indices round(i * 9 / 4) of the ten sorted widths: 0, 2, 4 (4.5 rounds to even), 7, 9.
    assert sorted(data["M"].unique()) == [1, 3, 5, 8, 10]
    output = data[(data["error"] == "output") & (data["D"] == 10)]
    assert (output["mean_error"] == 0.2).all()


def test_unknown_figure_rejected():
    with pytest.raises(ConfigError, match="unknown figure 'fig9'"):
        reproduce.resolve_names(["fig9"])


def test_cli_names_match_registry():
    assert cli_sweeps.FIGURE_NAMES == tuple(reproduce.FIGURES)


def test_cli_unknown_figure_exits_2(capsys, tmp_path):
    status = main(["reproduce", "fig9", "--out", str(tmp_path)])
    assert status == 2
    assert "unknown figure" in capsys.readouterr().err
