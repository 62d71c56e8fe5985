"""Parametrisation rules: the table, the MLU mapping onto the default model, and coordinate checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_limits import parametrization as pz
from resnet_limits.config import ConfigError
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import coupled_embeddings, get_task
from resnet_limits.training import train

# Under MLU every coordinate size stays within this band across a 16x range of sizes: a fitted
# log-log slope of at most SLOPE_BAND in absolute value, and a largest-to-smallest ratio of at most
# RATIO_BAND. The standard parametrisation must leave it.
SLOPE_BAND = 0.25
RATIO_BAND = 2.0
CHECK_SCALES = (16, 32, 64, 128, 256)
CHECK_STEPS = 3


def default_model(task, L, M, D, seed=0):
    """The network that experiment.Comparison trains for this shape and seed."""
    key_embed, key_units = jax.random.split(jax.random.key(seed))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, D, jnp.float32)
    return MLUResNet(w_embed, w_unembed, depth=L, width=M, key=key_units, alpha=1.0, activation=task.activation)


# -- the table -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 8, 16), (16, 64, 64)])
def test_rule_values_at_two_sizes(shape):
    L, M, D = shape
    mlu = pz.RULES["mlu"].values(L, M, D)
    assert mlu == pytest.approx({
        "input_multiplier": 1 / D,
        "residual_multiplier": 1 / (L * M),
        "output_multiplier": 1 / D,
        "u_variance": D,
        "v_variance": D,
        "u_learning_rate": L * M * D,
        "v_learning_rate": L * M * D,
    }, rel=1e-15)

    standard = pz.RULES["standard"].values(L, M, D)
    assert standard == pytest.approx({
        "input_multiplier": 1.0,
        "residual_multiplier": 1.0,
        "output_multiplier": 1 / math.sqrt(D),
        "u_variance": 1 / D,
        "v_variance": 1 / M,
        "u_learning_rate": 1.0,
        "v_learning_rate": 1.0,
    }, rel=1e-15)


@pytest.mark.parametrize("shape", [(4, 8, 16), (16, 64, 32)])
def test_published_rules_at_two_sizes(shape):
    L, M, D = shape
    general = pz.RULES["general-alpha"].values(L, M, D)
    assert general == pytest.approx({
        "input_multiplier": 1 / D,
        "residual_multiplier": 4 / (L * M),
        "output_multiplier": 1 / D,
        "u_variance": D,
        "v_variance": D,
        "u_learning_rate": L * M * D / 16,
        "v_learning_rate": L * M * D / 16,
    }, rel=1e-15)

    completep = pz.RULES["completep"].values(L, M, D)
    assert completep == pytest.approx({
        "input_multiplier": 1.0,
        "residual_multiplier": 1 / L,
        "output_multiplier": 1 / D,
        "u_variance": 1 / D,
        "v_variance": 1 / M,
        "u_learning_rate": L,
        "v_learning_rate": L,
    }, rel=1e-15)

    depth_mup = pz.RULES["depth-mup"].values(L, M, D)
    assert depth_mup == pytest.approx({
        "input_multiplier": 1.0,
        "residual_multiplier": 1 / math.sqrt(L),
        "output_multiplier": 1 / D,
        "u_variance": 1 / D,
        "v_variance": 1 / M,
        "u_learning_rate": 1.0,
        "v_learning_rate": 1.0,
    }, rel=1e-15)


# MLU coordinates (residual scale, U rate, V rate, U variance, output) of every rule at a shape,
# from the formulas of the module docstring worked by hand.
@pytest.mark.parametrize("shape", [(4, 8, 16), (16, 64, 32)])
def test_mlu_coordinates_at_two_sizes(shape):
    L, M, D = shape
    expected = {
        "mlu": (1.0, 1.0, 1.0),
        "general-alpha": (4.0, 1 / 16, 1 / 16),
        "completep": (math.sqrt(M / D), D / M, 1.0),
        "depth-mup": (math.sqrt(L * M / D), D / (L * M), 1 / L),
        "standard": (L * math.sqrt(M / D), D / (L * M), 1 / L),
    }
    for name, (residual_scale, u_rate, v_rate) in expected.items():
        coordinates = {key: value.value(L, M, D) for key, value in pz.RULES[name].mlu_coordinates().items()}
        assert coordinates["residual_scale"] == pytest.approx(residual_scale, rel=1e-12), name
        assert coordinates["u_rate"] == pytest.approx(u_rate, rel=1e-12), name
        assert coordinates["v_rate"] == pytest.approx(v_rate, rel=1e-12), name
        assert coordinates["u_variance"] == pytest.approx(1.0, rel=1e-12), name
        output = math.sqrt(D) if name == "standard" else 1.0
        assert coordinates["output"] == pytest.approx(output, rel=1e-12), name


def test_phase_points_on_diagonal():
    points = {name: rule.phase_point((1, 1, 1)) for name, rule in pz.RULES.items()}

    assert (points["mlu"]["residual_exponent"], points["mlu"]["rate_exponent"]) == (0.0, 0.0)
    assert (points["completep"]["residual_exponent"], points["completep"]["rate_exponent"]) == (0.0, 0.0)
    assert (points["depth-mup"]["residual_exponent"], points["depth-mup"]["rate_exponent"]) == (0.5, -1.0)
    assert (points["standard"]["residual_exponent"], points["standard"]["rate_exponent"]) == (1.0, -1.0)
    assert points["depth-mup"]["on_plane"]
    assert not points["standard"]["on_plane"]
    assert points["standard"]["off_plane"] == "readout m_out D grows as n^0.5"


def test_rule_overview_rows():
    rows = {row["rule"]: row for row in pz.rule_overview()}

    assert list(rows) == list(pz.RULES)
    assert rows["completep"]["residual_multiplier"] == "L^-1"
    assert rows["depth-mup"]["residual_multiplier"] == "L^-0.5"
    assert (rows["depth-mup"]["gamma"], rows["depth-mup"]["lambda"]) == (0.5, -1.0)
    assert rows["standard"]["off_plane"] == "readout m_out D grows as n^0.5"


def test_completep_off_plane_when_width_outgrows_dim():
    point = pz.RULES["completep"].phase_point((0, 1, 0.5))

    assert point["residual_exponent"] == pytest.approx(0.25)
    assert not point["on_plane"]
    assert "U rate n^-0.5 but V rate n^0" in point["off_plane"]


@pytest.mark.parametrize("name", ["completep", "depth-mup", "standard"])
def test_gauge_conversion_trains_identically(name):
    task = get_task("paper-tanh")
    rule = pz.RULES[name]
    converted = rule.in_mlu_gauge()
    assert converted.values(3, 5, 7)["input_multiplier"] == pytest.approx(1 / 7)
    with jax.enable_x64(True):
        original = list(pz.general_training(rule, task, 3, 5, 7, steps=3, learning_rate=0.01, dtype="float64"))
        gauged = list(pz.general_training(converted, task, 3, 5, 7, steps=3, learning_rate=0.01, dtype="float64"))

    np.testing.assert_allclose([r.loss for r in gauged], [r.loss for r in original], rtol=1e-10)
    np.testing.assert_allclose(gauged[-1].h_SxDxN, original[-1].h_SxDxN, rtol=1e-9, atol=1e-12)


def test_general_alpha_at_one_is_mlu():
    rule = pz.general_alpha(1.0)

    assert rule.mlu_alpha() == 1.0  # so train_under_rule trains the default MLUResNet
    for shape in [(4, 8, 16), (16, 64, 32)]:
        assert rule.values(*shape) == pz.RULES["mlu"].values(*shape)


def test_mlu_alpha_scales_residual_and_rate():
    values = pz.mlu(2.0).values(4, 8, 16)
    assert values["residual_multiplier"] == pytest.approx(2.0 / 32, rel=1e-15)
    assert values["u_learning_rate"] == pytest.approx(4 * 8 * 16 / 4.0, rel=1e-15)


def test_mlu_form_detected():
    assert pz.RULES["mlu"].mlu_alpha() == 1.0
    assert pz.mlu(0.5).mlu_alpha() == 0.5
    assert pz.STANDARD.mlu_alpha() is None


def test_rule_table_rows():
    rows = pz.rule_table()
    assert len(rows) == len(pz.RULES) * len(pz.SCALING_FIELDS)
    residual = next(row for row in rows if row["rule"] == "mlu" and row["quantity"] == "residual_multiplier")
    assert (residual["exponent_L"], residual["exponent_M"], residual["exponent_D"]) == (-1.0, -1.0, 0.0)
    assert residual["formula"] == "L^-1 M^-1"


def test_unknown_rule_rejected():
    with pytest.raises(ConfigError, match="unknown parametrisation 'mup'; choose one of: completep, depth-mup, "
                       "general-alpha, mlu, standard"):
        pz.get_rule("mup")


def test_standard_rule_has_no_mlu_model():
    task = get_task("paper-tanh")
    with pytest.raises(ConfigError, match="not of the MLU form"):
        pz.build_mlu_model(pz.STANDARD, task, 4, 8, 16)


# -- training under a rule -------------------------------------------------------------------------


def test_mlu_rule_trains_default_model_exactly():
    task = get_task("paper-tanh")
    L, M, D, steps = 16, 64, 64, 4

    expected = train(default_model(task, L, M, D), task.x_DinxN, task.y_DoutxN, steps=steps,
                     learning_rate=task.learning_rate, loss_scale=task.loss_scale)
    trajectory = pz.train_under_rule(pz.RULES["mlu"], task, L, M, D, steps=steps,
                                     learning_rate=task.learning_rate)

    np.testing.assert_array_equal(trajectory.loss_K, expected.loss_K)
    np.testing.assert_array_equal(trajectory.h_KxDxN, expected.h_KxDxN)


def test_general_training_matches_mlu_model():
    task = get_task("paper-tanh")
    L, M, D, steps = 8, 16, 12, 3
    with jax.enable_x64(True):
        key_embed, key_units = jax.random.split(jax.random.key(0))
        w_embed, w_unembed = coupled_embeddings(key_embed, task, D, jnp.float64)
        model = MLUResNet(w_embed, w_unembed, depth=L, width=M, key=key_units, activation="tanh")
        expected = train(model, task.x_DinxN, task.y_DoutxN, steps=steps, learning_rate=1.0,
                         loss_scale=task.loss_scale)
        records = list(pz.general_training(pz.RULES["mlu"], task, L, M, D, steps=steps, learning_rate=1.0,
                                           dtype="float64"))

    np.testing.assert_allclose([r.loss for r in records], expected.loss_K, rtol=1e-12)
    np.testing.assert_allclose(np.array([r.h_SxDxN[-1] for r in records]), expected.h_KxDxN, rtol=1e-10, atol=1e-12)


def test_general_forward_matches_numpy_under_standard_rule():
    task = get_task("paper-tanh")
    L, M, D = 3, 5, 7
    record = next(pz.general_training(pz.STANDARD, task, L, M, D, steps=1, learning_rate=0.1, dtype="float64"))

    key_embed, key_units = jax.random.split(jax.random.key(0))
    w_embed, w_unembed = (np.asarray(w, np.float64) for w in coupled_embeddings(key_embed, task, D, jnp.float32))
    key_u, key_v = jax.random.split(key_units)
    u = np.asarray(jax.random.normal(key_u, (L, D, M), jnp.float32), np.float64) / math.sqrt(D)
    v = np.asarray(jax.random.normal(key_v, (L, D, M), jnp.float32), np.float64) / math.sqrt(M)
    h = w_embed @ task.x_DinxN
    for layer in range(L):
        h = h + v[layer] @ np.tanh(u[layer].T @ h)
    f = w_unembed.T @ h / math.sqrt(D)
    loss = task.loss_scale / (2 * task.num_samples) * np.sum((f - task.y_DoutxN) ** 2)

    np.testing.assert_allclose(record.h_SxDxN[-1], h, rtol=1e-6)
    assert record.loss == pytest.approx(loss, rel=1e-6)


# -- coordinate checks ------------------------------------------------------------------------------


def test_coordinate_check_records():
    records = pz.coordinate_check("mlu", pz.scaled_sizes([4, 8]), steps=2)

    assert [(r["L"], r["step"]) for r in records] == [(4, 0), (4, 1), (4, 2), (8, 0), (8, 1), (8, 2)]
    for row in records:
        assert row["rule"] == "mlu"
        assert row["finite"]
        if row["step"] == 0:
            assert row["stream_update_rms"] is None
        else:
            assert row["stream_update_rms"] > 0
            assert row["u_update_rms"] > 0


def test_coordinate_check_rejects_empty_sizes():
    with pytest.raises(ConfigError, match="at least one shape"):
        pz.coordinate_check("mlu", [])


@pytest.fixture(scope="module")
def checks():
    sizes = pz.scaled_sizes(CHECK_SCALES)
    return {name: pz.coordinate_check(name, sizes, steps=CHECK_STEPS) for name in ("mlu", "standard")}


@pytest.mark.slow
@pytest.mark.parametrize("column,step", [("stream_rms", 0), ("stream_rms", CHECK_STEPS), ("stream_update_rms", CHECK_STEPS)])
def test_mlu_coordinates_stay_in_band(checks, column, step):
    records = checks["mlu"]
    values = [row[column] for row in records if row["step"] == step]

    slope = pz.coordinate_slope(records, column, step=step)

    assert abs(slope.slope) <= SLOPE_BAND, slope
    assert max(values) / min(values) <= RATIO_BAND, values


@pytest.mark.slow
@pytest.mark.parametrize("column,step", [("stream_rms", 0), ("stream_rms", CHECK_STEPS), ("stream_update_rms", CHECK_STEPS)])
def test_standard_coordinates_leave_band(checks, column, step):
    slope = pz.coordinate_slope(checks["standard"], column, step=step)

    assert abs(slope.slope) > SLOPE_BAND, slope
    assert slope.ci_low > SLOPE_BAND, slope  # they grow
