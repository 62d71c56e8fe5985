"""The MLU Transformer against a literal NumPy reference, its per-head update scale, training and its limit."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import nbformat
import pytest
from flax import nnx
from nbclient import NotebookClient

import reference_transformer
from resnet_limits import cli, limits, metrics
from resnet_limits.config import ConfigError, LimitSettings, RunConfig, jax_dtype
from resnet_limits.experiment import Comparison, LimitCache
from resnet_limits.limits.transformer import estimate_transformer_limit, simulate_transformer_limit
from resnet_limits.models import MLUTransformer
from resnet_limits.tasks import coupled_embeddings, get_task
from resnet_limits.training import mean_squared_loss, train, training_steps
from resnet_limits_widgets import TransformerExplorerApp

jax_dtype("float64")

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]

RTOL = 1e-10
ATOL = 1e-12


def make_weights(L, H, M, D, key_dim, value_dim, seed=0):
    """Return float64 weights drawn with NumPy, every entry N(0, D)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "w_query": (L, H, key_dim, D),
        "w_key": (L, H, key_dim, D),
        "w_value": (L, H, value_dim, D),
        "w_output": (L, H, D, value_dim),
        "u": (L, D, M),
        "v": (L, D, M),
    }
    return {name: np.sqrt(D) * rng.standard_normal(shape) for name, shape in shapes.items()}


def make_embeddings(task, D, seed=0):
    rng = np.random.default_rng(1000 + seed)
    w_embed = task.embedding_std * rng.standard_normal((D, task.d_in))
    w_unembed = task.unembedding_std * rng.standard_normal((D, task.d_out))
    return w_embed, w_unembed


def build_model(w_embed, w_unembed, weights, *, alpha=1.0, activation="tanh"):
    L, H, key_dim, D = weights["w_query"].shape
    return MLUTransformer(
        jnp.asarray(w_embed, jnp.float64),
        jnp.asarray(w_unembed, jnp.float64),
        depth=L,
        heads=H,
        width=weights["u"].shape[2],
        key_dim=key_dim,
        value_dim=weights["w_value"].shape[2],
        alpha=alpha,
        activation=activation,
        weights={name: jnp.asarray(array, jnp.float64) for name, array in weights.items()},
    )


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_attention_block_matches_reference(alpha):
    # With V = 0 the perceptron block adds nothing, so H_1 - H_0 is the attention block alone.
    task = get_task("seq-tanh")
    L, H, M, D = 1, 3, 2, 6
    weights = make_weights(L, H, M, D, key_dim=2, value_dim=3)
    weights["v"] = np.zeros_like(weights["v"])
    w_embed, w_unembed = make_embeddings(task, D)
    model = build_model(w_embed, w_unembed, weights, alpha=alpha)

    f, h = model(jnp.asarray(task.x_DinxN))
    _, streams = reference_transformer.forward(
        weights, w_embed, w_unembed, task.x_DinxN, alpha=alpha, activation="tanh"
    )
    attention_only = reference_transformer.attention_block(
        streams[0], *(weights[name][0] for name in ("w_query", "w_key", "w_value", "w_output")),
        depth=L, alpha=alpha,
    )

    assert np.max(np.abs(attention_only - streams[0])) > 1e-2
    np.testing.assert_allclose(np.asarray(h), attention_only, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 2), (2, 3, 4, 5), (3, 4, 2, 8)], ids=lambda s: "L{}-H{}-M{}-D{}".format(*s)
)
@pytest.mark.parametrize(("key_dim", "value_dim"), [(1, 1), (2, 3)])
def test_forward_matches_reference(shape, key_dim, value_dim):
    task = get_task("seq-tanh")
    L, H, M, D = shape
    weights = make_weights(L, H, M, D, key_dim, value_dim, seed=L + H)
    w_embed, w_unembed = make_embeddings(task, D)
    model = build_model(w_embed, w_unembed, weights)

    f, h = model(jnp.asarray(task.x_DinxN))
    f_reference, streams = reference_transformer.forward(
        weights, w_embed, w_unembed, task.x_DinxN, alpha=1.0, activation="tanh"
    )

    assert f.shape == (task.d_out, task.num_samples, task.num_tokens)
    np.testing.assert_allclose(np.asarray(h), streams[-1], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(f), f_reference, rtol=RTOL, atol=ATOL)


def test_step_is_scaled_gradient_per_group():
    """One update is -eta L H D / alpha^2 times the gradient for heads, -eta L M D / alpha^2 for units."""
    task = get_task("seq-tanh")
    L, H, M, D = 2, 3, 5, 4
    alpha, learning_rate = 1.5, 0.2
    weights = make_weights(L, H, M, D, key_dim=2, value_dim=2, seed=7)
    w_embed, w_unembed = make_embeddings(task, D)
    model = build_model(w_embed, w_unembed, weights, alpha=alpha)
    x = jnp.asarray(task.x_DinxN)
    y = jnp.asarray(task.y_DoutxN)

    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)

    def loss_of(trainable):
        f, _ = nnx.merge(graphdef, trainable, frozen)(x)
        return mean_squared_loss(f, y, task.loss_scale)

    grads = jax.jit(jax.grad(loss_of))(params)
    for _ in training_steps(model, x, y, steps=1, learning_rate=learning_rate, loss_scale=task.loss_scale):
        pass

    for name, width in (("w_query", H), ("w_key", H), ("w_value", H), ("w_output", H), ("u", M), ("v", M)):
        raw_step = learning_rate * L * width * D / alpha**2
        change = np.asarray(getattr(model, name)[...]) - weights[name]
        expected = -raw_step * np.asarray(grads[name][...])
        assert np.max(np.abs(expected)) > 1e-4, name
        np.testing.assert_allclose(change, expected, rtol=1e-9, atol=1e-12 * D, err_msg=name)


def _update_rms(heads, seed):
    """Return the RMS change of each weight group after one step of seq-tanh at L = 8, D = 8, M = H."""
    task = get_task("seq-tanh")
    w_embed, w_unembed = coupled_embeddings(jax.random.key(seed), task, 8, jnp.float64)
    model = MLUTransformer(w_embed, w_unembed, depth=8, heads=heads, width=heads, key=jax.random.key(100 + seed))
    before = {name: np.asarray(array) for name, array in model.weights().items()}
    for _ in training_steps(
        model, task.x_DinxN, task.y_DoutxN, steps=1, learning_rate=task.learning_rate, loss_scale=task.loss_scale
    ):
        pass
    return {
        name: np.sqrt(np.mean((np.asarray(array) - before[name]) ** 2)) for name, array in model.weights().items()
    }


def test_head_update_independent_of_heads():
    # Coordinate check: under the raw step eta L H D / alpha^2 every weight of a head moves by
    # an O(1) amount that converges as H grows. A step independent of H would shrink the change
    # like 1/H, a factor 16 from H = 4 to 64. Mean over 3 seeds, measured: the largest ratio
    # over H = 4, 16, 64 is 1.9 (w_query, where H = 4 still carries the sqrt(D / (L H))
    # fluctuation), and H = 16 against H = 64 differ by at most 1.15.
    changes = {heads: [_update_rms(heads, seed) for seed in range(3)] for heads in (4, 16, 64)}
    for name in ("w_query", "w_key", "w_value", "w_output", "u", "v"):
        per_heads = [np.mean([change[name] for change in changes[heads]]) for heads in (4, 16, 64)]
        assert min(per_heads) > 1e-2, (name, per_heads)
        assert max(per_heads) / min(per_heads) < 2.5, (name, per_heads)
        assert max(per_heads[1:]) / min(per_heads[1:]) < 1.35, (name, per_heads)


def test_training_reduces_loss():
    task = get_task("seq-tanh")
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, 16)
    model = MLUTransformer(w_embed, w_unembed, depth=4, heads=16, width=16, key=jax.random.key(1))
    trajectory = train(
        model, task.x_DinxN, task.y_DoutxN, steps=task.steps, learning_rate=task.learning_rate,
        loss_scale=task.loss_scale,
    )
    assert trajectory.diverged_at is None
    assert trajectory.h_KxDxN.shape == (task.steps + 1, 16, task.num_samples, task.num_tokens)
    assert trajectory.loss_K[-1] < 0.8 * trajectory.loss_K[0]


def test_learning_rate_multiplier_per_group():
    task = get_task("seq-tanh")
    weights = make_weights(3, 4, 6, 5, key_dim=2, value_dim=2)
    model = build_model(*make_embeddings(task, 5), weights, alpha=2.0)
    multipliers = model.learning_rate_multiplier()
    for name in ("w_query", "w_key", "w_value", "w_output"):
        assert multipliers[name] == pytest.approx(3 * 4 * 5 / 4.0, rel=1e-12)
    for name in ("u", "v"):
        assert multipliers[name] == pytest.approx(3 * 6 * 5 / 4.0, rel=1e-12)


def test_drawn_weights_have_variance_dim():
    task = get_task("seq-tanh")
    D = 40
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, D, jnp.float64)
    model = MLUTransformer(w_embed, w_unembed, depth=3, heads=50, width=50, key_dim=3, value_dim=2,
                           key=jax.random.key(2))
    assert model.shape == (3, D, 50, 50)
    assert (model.key_dim, model.value_dim) == (3, 2)
    # At least 6000 entries per group: the sample variance is within 10 % with a wide margin.
    for name, array in model.weights().items():
        assert np.var(np.asarray(array)) / D == pytest.approx(1.0, rel=0.1), name


def test_weights_wrong_shape():
    task = get_task("seq-tanh")
    weights = make_weights(2, 3, 4, 5, key_dim=2, value_dim=2)
    weights["w_key"] = weights["w_key"][:, :, :1]
    with pytest.raises(ValueError, match=r"weights\['w_key'\] has shape \(2, 3, 1, 5\); expected \(2, 3, 2, 5\)"):
        build_model(*make_embeddings(task, 5), weights)


def test_weights_missing():
    task = get_task("seq-tanh")
    weights = make_weights(2, 3, 4, 5, key_dim=2, value_dim=2)
    del weights["w_output"]
    with pytest.raises(ValueError, match="missing w_output"):
        build_model(*make_embeddings(task, 5), weights)


def test_rejects_inputs_without_tokens():
    task = get_task("paper-tanh")
    model = MLUTransformer(jnp.ones((4, 5)), jnp.ones((4, 5)), depth=1, heads=2, width=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"inputs of shape \(d_in, N, T\)"):
        model(jnp.asarray(task.x_DinxN))


def test_sequence_task_shapes():
    task = get_task("seq-tanh")
    assert task.x_DinxN.shape == (3, 4, 4)
    assert task.y_DoutxN.shape == (3, 4, 4)
    assert (task.d_in, task.d_out, task.num_samples, task.num_tokens, task.span_dim) == (3, 3, 4, 4, 6)
    assert get_task("paper-tanh").num_tokens is None


# -- the limit ------------------------------------------------------------------------------------


def _limit_kwargs(task, steps):
    return dict(steps=steps, learning_rate=task.learning_rate, alpha=1.0, activation="tanh", key_dim=2, value_dim=2)


def test_limit_starts_at_rest():
    # Antithetic heads (W_O, -W_O) and units (v, -v) cancel the drift, so a(1) = a(0) at step 0.
    task = get_task("seq-tanh")
    problem = limits.large_dim_problem(task)
    trajectory = simulate_transformer_limit(problem, task, LimitSettings(4, 64), dtype="float64", **_limit_kwargs(task, 0))
    a0_KxNxT = np.einsum("ki,int->knt", problem.input_KxDin, task.x_DinxN)
    np.testing.assert_allclose(trajectory.h_KxDxN[0], a0_KxNxT, atol=1e-13)
    np.testing.assert_allclose(
        trajectory.f_KxDoutxN[0], np.einsum("ko,knt->ont", problem.readout_KxDout, a0_KxNxT), atol=1e-13
    )


def test_limit_orthogonal_embeddings_match_large_dim():
    # Embeddings with orthogonal columns of squared norm D s^2 have G = diag(s_E^2, s_U^2)
    # exactly, so their fixed-D limit is the large-D limit written in another basis. The two
    # simulations draw different particles, so f agrees to the Monte Carlo error, measured at
    # 0.005 (RMS) with these seeds at step 5, against an RMS change of f of 0.29 over the steps.
    task = get_task("seq-tanh")
    D = 12
    orthonormal_DxR, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((D, task.span_dim)))
    w_embed = np.sqrt(D) * task.embedding_std * orthonormal_DxR[:, : task.d_in]
    w_unembed = np.sqrt(D) * task.unembedding_std * orthonormal_DxR[:, task.d_in :]
    fixed_problem, _ = limits.fixed_dim_problem(w_embed, w_unembed)
    settings = LimitSettings(4, 2048)
    kwargs = _limit_kwargs(task, 5)
    fixed = simulate_transformer_limit(fixed_problem, task, settings, **kwargs)
    large = simulate_transformer_limit(limits.large_dim_problem(task), task, settings, **kwargs)

    motion = metrics.output_error(large.f_KxDoutxN[-1], large.f_KxDoutxN[0])
    assert motion > 0.2
    assert metrics.output_error(fixed.f_KxDoutxN[-1], large.f_KxDoutxN[-1]) < 0.05 * motion


def _worst_rms(a_KxDoutxNxT, b_KxDoutxNxT):
    """Return the RMS over the entries of a - b at the worst step."""
    return np.max(np.sqrt(np.mean(np.square(a_KxDoutxNxT - b_KxDoutxNxT), axis=(1, 2, 3))))


def test_limit_estimate_covers_finer_simulation():
    # The plain simulation with L' = 32 and M' = 2048 is the reference: it differs from one with
    # L' = 16, M' = 4096 and other particles by 0.0016, a twentieth of the coarse estimates'
    # errors. The coarse settings L' = 2, M' = 64 are those of the comparison tests, which then
    # share compiled code. Measured over particle seeds 0 to 5 (K = 5, float32): error estimates
    # 0.022 to 0.038, mostly Monte Carlo, and actual errors 0.68 to 1.39 times the estimate,
    # 1.01 times on average.
    task = get_task("seq-tanh")
    problem = limits.large_dim_problem(task)
    kwargs = _limit_kwargs(task, 5)
    fine = simulate_transformer_limit(problem, task, LimitSettings(32, 2048), **kwargs)
    ratios = []
    for seed in range(6):
        estimate = estimate_transformer_limit(problem, task, LimitSettings(2, 64, seed), **kwargs)
        actual = _worst_rms(estimate.trajectory.f_KxDoutxN, fine.f_KxDoutxN)
        assert estimate.depth_points == (2, 4, 8)
        assert estimate.monte_carlo_error > estimate.depth_error > 0, seed
        assert estimate.error_estimate < 0.08, seed
        assert actual < 2 * estimate.error_estimate, (seed, actual, estimate.error_estimate)
        ratios.append(actual / estimate.error_estimate)
    assert 0.5 < np.mean(ratios) < 1.5, ratios


def test_comparison_caches_transformer_limits(tmp_path):
    config = RunConfig(task="seq-tanh", arch="transformer", L=2, H=4, M=4, D=8, K=2)
    first = Comparison(config, LimitSettings(2, 64), cache=LimitCache(directory=tmp_path)).run()
    assert set(first.limit_estimates) == {limits.FIXED_DIM, limits.LARGE_DIM}
    assert len(list(tmp_path.glob("limit-*.npz"))) == 2
    for estimate in first.limit_estimates.values():
        assert estimate.depth_points == (2, 4, 8)
        assert 0 < estimate.error_estimate < 1

    # A new in-memory cache on the same directory reads both limits back from disk.
    second = Comparison(config, LimitSettings(2, 64), cache=LimitCache(directory=tmp_path)).run()
    for kind, estimate in first.limit_estimates.items():
        np.testing.assert_array_equal(second.limit_estimates[kind].trajectory.f_KxDoutxN, estimate.trajectory.f_KxDoutxN)
        assert second.limit_estimates[kind].error_estimate == estimate.error_estimate
    assert second.rows == first.rows


@pytest.mark.slow
def test_network_gap_to_limit_shrinks_with_heads():
    # At fixed L and D a network is the fixed-D limit plus a fluctuation of size
    # sqrt(D / (L H)) + sqrt(D / (L M)), with M = H here. The limit uses L' = L, so both share
    # the Euler step in depth and only the fluctuation is left. Mean embedding errors at step 5
    # over 3 seeds, measured: 0.85, 0.39, 0.15 at H = 4, 16, 64, a fitted slope of -0.62 (H = 4
    # is above the asymptotic law). The limit's own Monte Carlo error, from two particle seeds,
    # was 0.007.
    task = get_task("seq-tanh")
    L, D, steps = 4, 8, 5
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, D)
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
    limit = simulate_transformer_limit(problem, task, LimitSettings(L, 8192), **_limit_kwargs(task, steps))
    limit_h = limits.to_stream(limit.h_KxDxN, basis_DxK)[steps]

    head_counts = (4, 16, 64)
    gaps = []
    for heads in head_counts:
        per_seed = []
        for seed in range(3):
            model = MLUTransformer(w_embed, w_unembed, depth=L, heads=heads, width=heads, key=jax.random.key(100 + seed))
            trajectory = train(
                model, task.x_DinxN, task.y_DoutxN, steps=steps, learning_rate=task.learning_rate,
                loss_scale=task.loss_scale,
            )
            assert trajectory.diverged_at is None
            per_seed.append(metrics.embedding_error(trajectory.h_KxDxN[steps], limit_h))
        gaps.append(np.mean(per_seed))

    slope = np.polyfit(np.log(head_counts), np.log(gaps), 1)[0]
    assert -0.75 < slope < -0.35, (slope, gaps)


@pytest.mark.slow
def test_network_gap_to_limit_shrinks_with_depth():
    # At H = M = 256 and D = 8 the bound's L-dependent terms are 1/L and sqrt(D / (L H)) +
    # sqrt(D / (L M)), so the gap to the L, H, M -> infinity limit falls with a log-slope in L
    # from -1 (depth term dominant) to -1/2 (fluctuation dominant). The reference is the
    # fixed-D limit simulated with L' = 32 and M' = 2048, whose Euler and Monte Carlo errors were
    # measured below 1e-3. Embedding seed 0 has the largest depth term of seeds 0 to 2, so over
    # L = 1, 2, 4 the depth term dominates and the band excludes a pure fluctuation. Mean errors
    # at step 5 over 3 network seeds, measured: slopes -0.74 (embedding) and -0.92 (output)
    # with network seeds 0 to 2, -0.75 and -0.89 with seeds 3 to 5. Embedding seeds 1 and 2,
    # with a smaller depth term, gave -0.56 and -0.51 (embedding), -0.64 and -0.74 (output).
    task = get_task("seq-tanh")
    D, heads, steps = 8, 256, 5
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, D)
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
    limit = simulate_transformer_limit(problem, task, LimitSettings(32, 2048), **_limit_kwargs(task, steps))
    limit_h = limits.to_stream(limit.h_KxDxN, basis_DxK)[steps]
    limit_f = limit.f_KxDoutxN[steps]

    depths = (1, 2, 4)
    embedding_gaps, output_gaps = [], []
    for depth in depths:
        embedding, output = [], []
        for seed in range(3):
            model = MLUTransformer(w_embed, w_unembed, depth=depth, heads=heads, width=heads, key=jax.random.key(100 + seed))
            trajectory = train(
                model, task.x_DinxN, task.y_DoutxN, steps=steps, learning_rate=task.learning_rate,
                loss_scale=task.loss_scale,
            )
            assert trajectory.diverged_at is None
            embedding.append(metrics.embedding_error(trajectory.h_KxDxN[steps], limit_h))
            output.append(metrics.output_error(trajectory.f_KxDoutxN[steps], limit_f))
        embedding_gaps.append(np.mean(embedding))
        output_gaps.append(np.mean(output))

    embedding_slope = np.polyfit(np.log(depths), np.log(embedding_gaps), 1)[0]
    output_slope = np.polyfit(np.log(depths), np.log(output_gaps), 1)[0]
    assert -1.1 < embedding_slope < -0.6, (embedding_slope, embedding_gaps)
    assert -1.1 < output_slope < -0.6, (output_slope, output_gaps)


@pytest.mark.slow
def test_fixed_dim_limit_approaches_large_dim_limit():
    # The fixed-D limit differs from the large-D limit through G - E[G] = O(1/sqrt(D)). Both are
    # simulated with the same particles (L' = 8, M' = 512), so their Euler and Monte Carlo
    # errors mostly cancel in the gap. Mean gaps at step 5 over embedding seeds 0 to 4, measured
    # at D = 8, 32, 128, 512: embedding 0.47, 0.20, 0.10, 0.053 (slope -0.52) and output 0.25,
    # 0.13, 0.079, 0.033 (slope -0.48). Single seeds over D = 8 to 2048 gave slopes from -0.37
    # to -0.69, and the mean of seeds 0 to 2 alone -0.44 and -0.47. Particle seeds 1 and 2 gave
    # -0.52, -0.46 and -0.52, -0.48. With L' = 4, M' = 32 the Monte Carlo floor flattened the
    # slopes to -0.36 and -0.32.
    task = get_task("seq-tanh")
    steps = 5
    settings = LimitSettings(8, 512)
    kwargs = _limit_kwargs(task, steps)
    large = simulate_transformer_limit(limits.large_dim_problem(task), task, settings, **kwargs)

    dims = (8, 32, 128, 512)
    embedding_gaps, output_gaps = [], []
    for dim in dims:
        embedding, output = [], []
        for seed in range(5):
            w_embed, w_unembed = coupled_embeddings(jax.random.key(seed), task, dim)
            problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
            fixed = simulate_transformer_limit(problem, task, settings, **kwargs)
            fixed_h = limits.to_stream(fixed.h_KxDxN, basis_DxK)[steps]
            large_h = limits.to_stream(large.h_KxDxN, limits.large_dim_basis(task, w_embed, w_unembed))[steps]
            embedding.append(metrics.embedding_error(fixed_h, large_h))
            output.append(metrics.output_error(fixed.f_KxDoutxN[steps], large.f_KxDoutxN[steps]))
        embedding_gaps.append(np.mean(embedding))
        output_gaps.append(np.mean(output))

    embedding_slope = np.polyfit(np.log(dims), np.log(embedding_gaps), 1)[0]
    output_slope = np.polyfit(np.log(dims), np.log(output_gaps), 1)[0]
    assert -0.65 < embedding_slope < -0.38, (embedding_slope, embedding_gaps)
    assert -0.65 < output_slope < -0.35, (output_slope, output_gaps)


# -- configuration, comparison and command line ---------------------------------------------------


def test_config_rejects_task_of_other_arch():
    with pytest.raises(ConfigError, match="set --arch transformer"):
        RunConfig(task="seq-tanh").resolved()
    with pytest.raises(ConfigError, match="choose a sequence task: seq-tanh"):
        RunConfig(task="paper-tanh", arch="transformer").resolved()
    with pytest.raises(ConfigError, match="unknown arch 'gpt'"):
        RunConfig(task="seq-tanh", arch="gpt").resolved()
    with pytest.raises(ConfigError, match="set --heads to 1 or more"):
        RunConfig(task="seq-tanh", arch="transformer", H=0).resolved()


def test_comparison_runs_transformer():
    config = RunConfig(task="seq-tanh", arch="transformer", L=2, H=4, M=4, D=8, K=2)
    comparison = Comparison(config, LimitSettings(2, 64), cache=None).run()
    result = comparison.to_dict()

    assert isinstance(comparison.model, MLUTransformer)
    assert result["status"] == "completed"
    assert result["arch"] == "transformer"
    assert result["shape"] == {"L": 2, "M": 4, "D": 8, "H": 4, "key_dim": 2, "value_dim": 2}
    assert len(result["steps"]) == 3
    # At step 0 both limits are at rest, so a network differs from them by its own fluctuation.
    for column in ("embedding_error_mean_ode", "embedding_error_limit", "output_error_mean_ode"):
        assert 0 < result["steps"][0][column] < 10, column


def test_cli_trains_transformer(capsys):
    status = cli.main(
        ["train", "--arch", "transformer", "--heads", "4", "-L", "2", "-M", "4", "-D", "8", "-K", "2",
         "--limit-depth", "2", "--limit-particles", "64", "--json"]
    )
    result = json.loads(capsys.readouterr().out)
    assert status == 0
    assert result["task"] == "seq-tanh"
    assert result["shape"]["H"] == 4
    assert len(result["steps"]) == 3


def test_cli_limit_transformer_has_error_estimate(capsys):
    status = cli.main(
        ["limit", "--arch", "transformer", "-K", "2", "--limit-depth", "2", "--limit-particles", "64", "--json"]
    )
    result = json.loads(capsys.readouterr().out)
    assert status == 0
    assert (result["arch"], result["kind"]) == ("transformer", limits.LARGE_DIM)
    assert result["depth_points"] == [2, 4, 8]
    assert 0 < result["error_estimate"] < 0.2
    assert len(result["steps"]) == 3


# -- the app --------------------------------------------------------------------------------------


def test_app_runs_transformer():
    app = TransformerExplorerApp(auto_run=False, compilation_cache=False, use_worker=False)
    app.steps.value = 2
    app.width.value = 4

    config = app.config()
    assert (config.arch, config.task, config.H, config.M) == ("transformer", "seq-tanh", 4, 4)
    outcome = app.run_blocking()
    assert outcome.status == "completed"
    assert isinstance(app.comparison.model, MLUTransformer)
    assert [row["step"] for row in app.comparison.rows] == [0, 1, 2]


def test_app_query_string_names_heads():
    app = TransformerExplorerApp(query_string="?L=8&H=1000&D=32&M=64", auto_run=False, compilation_cache=False,
                                 use_worker=False)
    assert (app.depth.value, app.width.value, app.dim.value) == (8, 1024, 32)  # H wins over M
    assert "H=1000 is not one of the slider&#x27;s sizes; using H=1024" in app.url_message.value
    assert "H=1024" in app.query_string()
    assert "M=" not in app.query_string()


def test_app_query_string_accepts_width_as_m():
    app = TransformerExplorerApp(query_string="?L=8&M=64&D=32", auto_run=False, compilation_cache=False,
                                 use_worker=False)
    assert app.width.value == 64
    assert app.url_message.value == ""
    assert "H=64" in app.query_string()


@pytest.mark.slow
def test_notebook_executes_and_slider_reruns():
    notebook = nbformat.read(REPOSITORY / "notebooks" / "transformer.ipynb", as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            """outcome = await app.wait()
assert outcome.status == "completed", outcome
assert app.comparison.config.arch == "transformer"
app.width.value = 8
outcome = await app.wait()
assert outcome.status == "completed", outcome
assert app.comparison.config.H == app.comparison.config.M == 8
app.close()"""
        )
    )
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPOSITORY / "notebooks")}}
    )
    client.execute()


# -- bound, parameter count and optimal shape -----------------------------------------------------


def test_transformer_bound_terms_and_parameters():
    from resnet_limits import bounds

    terms = bounds.transformer_bound_terms(4, 16, 64, 8)
    assert terms == pytest.approx(
        {"depth": 0.25, "attention": np.sqrt(8 / 64), "width": np.sqrt(8 / 256), "embedding": 1 / np.sqrt(8)}
    )
    # 4 layers of 16 heads (rows of W_Q, W_K: 2 d_k = 4; W_V, W_O: 2 d_v = 6 vectors of length 8,
    # halved) and 64 units (u and v, halved).
    assert bounds.transformer_num_parameters(4, 16, 64, 8, key_dim=2, value_dim=3) == 4 * 8 * (64 + 16 * 5)
    config = RunConfig(task="seq-tanh", arch="transformer", L=4, H=16, M=64, D=8, key_dim=2, value_dim=3)
    assert config.num_parameters == 4 * 8 * (64 + 16 * 5)
    assert RunConfig(L=4, M=64, D=8).num_parameters == 4 * 64 * 8

    # With H = M the attention term doubles the width term: the predicted error is the ResNet's
    # law with the width constant times sqrt(2) and the bound with it times 2.
    for law in (bounds.EMBEDDING_LAW, bounds.OUTPUT_LAW):
        doubled = bounds.ErrorLaw(law.name, law.terms, (law.constants[0], np.sqrt(2) * law.constants[1], law.constants[2]))
        assert bounds.transformer_predict(law, 4, 32, 32, 8) == pytest.approx(float(doubled.predict(4, 32, 8)))
        summed = bounds.ErrorLaw(law.name, law.terms, (law.constants[0], 2 * law.constants[1], law.constants[2]))
        assert bounds.transformer_bound(law, 4, 32, 32, 8) == pytest.approx(float(summed.bound(4, 32, 8)))


def test_transformer_optimal_shape_exponents():
    from resnet_limits import bounds

    # Along the optimal path L, H and D grow as P^(1/6), P^(1/2), P^(1/3) for the embedding law.
    budgets = np.logspace(6, 14, 5)
    shapes = [bounds.transformer_optimal_shape(budget, key_dim=2, value_dim=2) for budget in budgets]
    for shape, budget in zip(shapes, budgets):
        assert shape.H == shape.M
        assert shape.num_parameters == pytest.approx(budget, rel=0.3)
    for name, exponent in (("L", 1 / 6), ("H", 1 / 2), ("D", 1 / 3)):
        slope = np.polyfit(np.log(budgets), np.log([getattr(shape, name) for shape in shapes]), 1)[0]
        assert slope == pytest.approx(exponent, abs=0.03), name
    with pytest.raises(ValueError, match=r"parameter budget must be a finite number >= 5"):
        bounds.transformer_optimal_shape(4)


def test_comparison_reports_transformer_bound(capsys):
    status = cli.main(
        ["train", "--arch", "transformer", "--heads", "4", "-L", "2", "-M", "4", "-D", "8", "-K", "2",
         "--limit-depth", "2", "--limit-particles", "64"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert f"P={2 * 8 * (4 + 4 * 4)}" in out
    assert f"sqrt(D/(L H)) = {np.sqrt(8 / 8):.4g}" in out
    assert "optimal shape of the embedding law at this P (M = H)" in out
    assert "limits' own output error" in out


def test_app_summary_shows_transformer_bound():
    app = TransformerExplorerApp(auto_run=False, compilation_cache=False, use_worker=False)
    app.depth.value, app.width.value, app.dim.value = 4, 16, 16
    summary = app.summary.value
    assert f"= {4 * 16 * (16 + 16 * 4):,}</b>" in summary
    assert "sqrt(D/(L H))" in summary
    assert "H=M=" in summary


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["train", "--heads", "8"], "--heads"),
        (["train", "--key-dim", "3", "--value-dim", "3"], "--key-dim, --value-dim"),
        (["limit", "--value-dim", "3"], "--value-dim"),
    ],
)
def test_cli_rejects_head_options_without_transformer(capsys, argv, options):
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert f"error: {options} set" in err
    assert f"add --arch transformer, or drop {options}" in err


# -- sweeps ---------------------------------------------------------------------------------------


def test_sweep_trains_transformers_and_resumes(tmp_path):
    from resnet_limits.sweeps import ResultStore, SweepSpec, TaskSettings, run_sweep
    from resnet_limits.sweeps.runner import train_group

    # The width axis sets H = M. Settings as in test_comparison_runs_transformer, which then
    # shares compiled code with this test.
    spec = SweepSpec.product(
        (1, 2), (4,), (8,), (0,), settings=(TaskSettings("seq-tanh", K=2),), limit_tol=None,
        limit_start=LimitSettings(2, 64), mean_ode=LimitSettings(2, 64),
    )
    trained = []

    def stopping_trainer(task, config, seeds):
        if trained:
            raise KeyboardInterrupt  # stops the sweep after its first group, as Ctrl-C would
        trained.append(config)
        return train_group(task, config, seeds)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, trainer=stopping_trainer, jobs=1)
    assert len(ResultStore(tmp_path).finished_ids()) == 1
    assert (trained[0].arch, trained[0].H, trained[0].M) == ("transformer", 4, 4)

    summary = run_sweep(spec, tmp_path)
    assert (summary.skipped, summary.computed) == (1, 1)
    frame = ResultStore(tmp_path).load()
    assert sorted(set(frame["L"])) == [1, 2]
    assert set(frame["status"]) == {"completed"}
    assert set(frame["P"]) == {L * 8 * (4 + 4 * 4) for L in (1, 2)}

    # The rows of L = 2 are those of a Comparison with the same config and large-D limit.
    config = RunConfig(task="seq-tanh", arch="transformer", L=2, H=4, M=4, D=8, K=2)
    comparison = Comparison(config, LimitSettings(2, 64), cache=None).run()
    rows = frame[frame["L"] == 2].sort_values("step")
    np.testing.assert_allclose(rows["loss"], [row["loss"] for row in comparison.rows], rtol=1e-6)
    np.testing.assert_allclose(
        rows["embedding_error_limit"], [row["embedding_error_limit"] for row in comparison.rows], rtol=1e-5
    )
