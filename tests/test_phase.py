"""Diagnostics under a rule, the regimes of the phase diagram, and learning-rate transfer."""

import math

import jax
import numpy as np
import pytest

from resnet_limits import parametrization as pz
from resnet_limits import phase, transfer
from resnet_limits.config import ConfigError
from resnet_limits.sweeps.fits import fit_slope
from resnet_limits.tasks import coupled_embeddings, get_task
from resnet_limits.models import MLUResNet
from resnet_limits.training import train

# Residual scales of the lazy-limit test, at a shape where alpha sqrt(D / (L M)) <= 1/2, so the
# initial fluctuation stays small at every alpha.
LAZY_ALPHAS = (2.0, 4.0, 8.0, 16.0)
LAZY_SHAPE = (16, 1024, 16)
# Measured in float32 on paper-tanh after 5 steps: the block-linear distance fell with slope
# -1.58, units moved with slope -0.98, and the Taylor distance grew with slope +0.16.
BLOCK_LINEAR_SLOPE_BAND = (-2.5, -1.0)
UNIT_MOVEMENT_SLOPE_BAND = (-1.2, -0.8)

# The measured regimes of the default phase diagram and the drift of the optimal learning rate
# over n = 4 to 64 are checked on part 6 of the course, which computes both at their defaults
# (tests/test_phase_apps.py::test_part_six_executes).


# -- diagnostics ----------------------------------------------------------------------------------


def test_diagnose_losses_match_default_model():
    task = get_task("paper-tanh")
    L, M, D, steps = 4, 8, 12, 3
    with jax.enable_x64(True):
        key_embed, key_units = jax.random.split(jax.random.key(0))
        w_embed, w_unembed = coupled_embeddings(key_embed, task, D, np.float64)
        model = MLUResNet(w_embed, w_unembed, depth=L, width=M, key=key_units, activation="tanh")
        expected = train(model, task.x_DinxN, task.y_DoutxN, steps=steps, learning_rate=1.0,
                         loss_scale=task.loss_scale)
        row, = phase.diagnose([(pz.RULES["mlu"], 1.0)], task, L, M, D, steps=steps, dtype="float64",
                              linearised=False)

    assert row["loss_initial"] == pytest.approx(expected.loss_K[0], rel=1e-12)
    assert row["loss_final"] == pytest.approx(expected.loss_K[-1], rel=1e-12)
    assert row["diverged_at"] is None
    assert row["output_movement"] == pytest.approx(
        np.sqrt(np.mean((expected.f_KxDoutxN[-1] - expected.f_KxDoutxN[0]) ** 2)), rel=1e-10)


@pytest.fixture(scope="module")
def lazy_runs():
    """Rows of MLU at every alpha of LAZY_ALPHAS, then one run of alpha = 1 at a learning rate that diverges."""
    runs = [(pz.mlu(alpha), 1.0) for alpha in LAZY_ALPHAS] + [(pz.RULES["mlu"], 1e4)]
    return phase.diagnose(runs, "paper-tanh", *LAZY_SHAPE, steps=5)


@pytest.fixture(scope="module")
def lazy_rows(lazy_runs):
    return lazy_runs[: len(LAZY_ALPHAS)]


def test_diagnose_reports_divergence(lazy_runs):
    diverged = lazy_runs[-1]

    assert all(row["diverged_at"] is None for row in lazy_runs[:-1])
    assert diverged["diverged_at"] is not None
    assert math.isnan(diverged["loss_final"])
    assert math.isnan(diverged["unit_movement"])


def test_large_alpha_approaches_block_linear_model(lazy_rows):
    slope = fit_slope(LAZY_ALPHAS, [row["relative_block_linear_distance"] for row in lazy_rows])

    low, high = BLOCK_LINEAR_SLOPE_BAND
    assert low <= slope.slope <= high, slope


def test_large_alpha_units_move_as_one_over_alpha(lazy_rows):
    slope = fit_slope(LAZY_ALPHAS, [row["unit_movement"] for row in lazy_rows])

    low, high = UNIT_MOVEMENT_SLOPE_BAND
    assert low <= slope.slope <= high, slope


def test_large_alpha_keeps_taylor_distance(lazy_rows):
    # Later blocks see the O(1) change of the stream, so the Taylor expansion in all weights
    # keeps an O(1) second-order term however large alpha is.
    slope = fit_slope(LAZY_ALPHAS, [row["relative_linear_distance"] for row in lazy_rows])

    assert slope.slope > -0.5, slope


# -- regimes --------------------------------------------------------------------------------------


def test_classify_criteria_in_order():
    def rows(**columns):
        base = {name: 1.0 for name in phase.DIAGNOSTIC_COLUMNS}
        result = []
        for n in (8, 16, 32):
            row = {**base, "L": n, "M": n, "D": n, "diverged_at": None}
            for name, exponent in columns.items():
                row[name] = float(n) ** exponent
            result.append(row)
        return result

    path = (1, 1, 1)
    assert phase.classify(rows(), path)[0] == "maximal local updates"
    assert phase.classify(rows(output_movement=0.5, initial_fluctuation=1.0), path)[0] == "unstable"
    assert phase.classify(rows(initial_fluctuation=0.5, output_movement=-1.0), path)[0] == "noise-dominated"
    assert phase.classify(rows(output_movement=-0.5, relative_block_linear_distance=-1.0), path)[0] == "degenerate"
    assert phase.classify(rows(relative_block_linear_distance=-0.5), path)[0] == "lazy"
    assert phase.classify(rows(relative_block_linear_distance=-0.2), path)[0] == "maximal local updates"
    diverged = rows()
    diverged[-1]["diverged_at"] = 2
    regime, reason, _ = phase.classify(diverged, path)
    assert (regime, reason) == ("unstable", "diverged at L=32 M=32 D=32")


@pytest.mark.parametrize("shape", [(4, 8, 16), (16, 64, 32)])
def test_phase_cell_at_origin_is_mlu(shape):
    cell = phase.phase_cell_rule(0.0, 0.0).values(*shape)

    assert cell == pytest.approx(pz.RULES["mlu"].values(*shape), rel=1e-12)


def test_phase_cell_on_lazy_line_is_mlu_alpha():
    L, M, D = 8, 8, 8  # n = 8 on the diagonal path
    cell = phase.phase_cell_rule(0.5, -1.0).values(L, M, D)

    assert cell == pytest.approx(pz.mlu(math.sqrt(8)).values(L, M, D), rel=1e-12)


@pytest.mark.parametrize("settings,message", [
    (dict(scales=[16]), "at least two distinct sizes"),
    (dict(path=[1, 1]), "three exponents"),
    (dict(path=[0, 0, 0]), "not all 0"),
    (dict(rules=["mup"]), "unknown parametrisation 'mup'"),
    (dict(residual_exponents=[]), "residual_exponents must be a non-empty list"),
    (dict(seeds=[]), "at least one seed"),
    (dict(learning_rate=-1.0), "learning_rate must be positive"),
])
def test_phase_diagram_rejects_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        phase.phase_diagram(**settings)


# -- learning-rate transfer -----------------------------------------------------------------------


def test_optimal_learning_rate_parabola():
    rates = [0.25, 0.5, 1.0, 2.0, 4.0]
    losses = [(math.log(rate) - math.log(1.5)) ** 2 for rate in rates]

    best = transfer.optimal_learning_rate(rates, losses)

    assert best["learning_rate"] == pytest.approx(1.5, rel=1e-9)
    assert best["grid_learning_rate"] == 2.0
    assert not best["at_edge"]


def test_optimal_learning_rate_edges():
    assert transfer.optimal_learning_rate([1.0, 2.0, 4.0], [0.3, 0.2, 0.1])["at_edge"]
    next_to_divergence = transfer.optimal_learning_rate([1.0, 2.0, 4.0], [0.3, 0.2, math.nan])
    assert next_to_divergence["learning_rate"] == 2.0
    assert not next_to_divergence["at_edge"]
    assert math.isnan(transfer.optimal_learning_rate([1.0, 2.0], [math.nan, math.nan])["learning_rate"])


def test_transfer_rejects_short_grid():
    with pytest.raises(ConfigError, match="at least 3 positive finite values"):
        transfer.learning_rate_sweep(learning_rates=[0.1, 1.0])


# -- command line ---------------------------------------------------------------------------------


def test_cli_defaults_match_library():
    from resnet_limits import cli_phase

    assert cli_phase.PHASE_SCALES == ",".join(str(n) for n in phase.DEFAULT_SCALES)
    assert [float(v) for v in cli_phase.PHASE_RESIDUAL_EXPONENTS.split(",")] == list(phase.DEFAULT_RESIDUAL_EXPONENTS)
    assert [float(v) for v in cli_phase.PHASE_RATE_EXPONENTS.split(",")] == list(phase.DEFAULT_RATE_EXPONENTS)
    assert cli_phase.TRANSFER_SCALES == ",".join(str(n) for n in transfer.DEFAULT_SCALES)


def test_cli_phase_passes_settings(capsys, monkeypatch):
    import json

    import pandas as pd

    from resnet_limits import cli

    calls = []

    def fake_phase_diagram(**kwargs):
        calls.append(kwargs)
        cells = pd.DataFrame([{"residual_exponent": 0.0, "rate_exponent": -1.0, "regime": "lazy", "reason": "r",
                               "unit_movement_exponent": math.nan}])
        points = pd.DataFrame([{"rule": "mlu", "residual_exponent": 0.0, "rate_exponent": 0.0}])
        return {"cells": cells, "points": points, "criteria": ["c"], "path": kwargs["path"], "scales": kwargs["scales"]}

    monkeypatch.setattr(phase, "phase_diagram", fake_phase_diagram)
    code = cli.main(["phase", "--n", "12,24", "--gamma", "0", "--lambda=-1", "--seeds", "2", "--path", "1,0.5,1",
                     "--json"])

    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert calls == [{
        "task": "paper-tanh", "scales": [12, 24], "path": [1.0, 0.5, 1.0], "residual_exponents": [0.0],
        "rate_exponents": [-1.0], "steps": 5, "learning_rate": None, "seeds": [0, 1], "progress": None,
    }]
    assert result["cells"][0]["unit_movement_exponent"] is None  # NaN is written as null
    assert result["path"] == [1.0, 0.5, 1.0]


@pytest.mark.parametrize("argv,message", [
    (["phase", "--n", "12"], "at least two distinct sizes"),
    (["phase", "--path", "1,x,1"], "invalid --path"),
    (["transfer", "--lr-min", "1", "--lr-max", "0.5"], "--lr-max must exceed --lr-min"),
    (["transfer", "--rules", "mup"], "unknown parametrisation 'mup'"),
])
def test_cli_rejects_bad_settings(argv, message, capsys):
    from resnet_limits import cli

    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
