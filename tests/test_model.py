"""The Flax MLU ResNet and its gradient descent against the literal NumPy reference, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import reference
from resnet_limits.config import jax_dtype
from resnet_limits.models import MLUResNet, activation_function
from resnet_limits.tasks import get_task
from resnet_limits.training import mean_squared_loss, train, training_steps

jax_dtype("float64")

# Both implementations compute the same float64 operations in a different order, so after a
# few steps they agree to rounding: relative 1e-10, and absolute 1e-12 for entries near zero.
RTOL = 1e-10
ATOL = 1e-12

# (L, M, D) shapes. D = 3 is below the span dimension r = 10 of paper-tanh.
SHAPES = [(1, 1, 1), (3, 5, 4), (4, 7, 12), (2, 16, 3)]
CASES = [
    ("paper-tanh", "tanh"),
    ("paper-linear", "identity"),
]


def make_problem(task_name, L, M, D, seed=0):
    """Return the task and float64 embeddings and units drawn with NumPy (entries N(0, s^2), N(0, D))."""
    task = get_task(task_name)
    rng = np.random.default_rng(seed)
    w_embed = task.embedding_std * rng.standard_normal((D, task.d_in))
    w_unembed = task.unembedding_std * rng.standard_normal((D, task.d_out))
    u = np.sqrt(D) * rng.standard_normal((L, D, M))
    v = np.sqrt(D) * rng.standard_normal((L, D, M))
    return task, w_embed, w_unembed, u, v


def build_model(w_embed, w_unembed, u, v, *, alpha, activation):
    L, D, M = u.shape
    return MLUResNet(
        jnp.asarray(w_embed, jnp.float64),
        jnp.asarray(w_unembed, jnp.float64),
        depth=L,
        width=M,
        alpha=alpha,
        activation=activation,
        units=(jnp.asarray(u, jnp.float64), jnp.asarray(v, jnp.float64)),
    )


@pytest.mark.parametrize("alpha", [1.0, 2.5])
@pytest.mark.parametrize(("task_name", "activation"), CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}-M{}-D{}".format(*s))
def test_training_matches_reference(shape, task_name, activation, alpha):
    L, M, D = shape
    steps = 4
    learning_rate = 0.5
    task, w_embed, w_unembed, u, v = make_problem(task_name, L, M, D)

    model = build_model(w_embed, w_unembed, u, v, alpha=alpha, activation=activation)
    trajectory = train(
        model, task.x_DinxN, task.y_DoutxN, steps=steps, learning_rate=learning_rate, loss_scale=task.loss_scale
    )
    losses, outputs, last_streams, (u_final, v_final) = reference.train(
        u, v, w_embed, w_unembed, task.x_DinxN, task.y_DoutxN,
        steps=steps, learning_rate=learning_rate, loss_scale=task.loss_scale, alpha=alpha, activation=activation,
    )

    assert trajectory.diverged_at is None
    assert trajectory.num_steps == steps
    np.testing.assert_allclose(trajectory.loss_K, losses, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(trajectory.f_KxDoutxN, outputs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(trajectory.h_KxDxN, last_streams, rtol=RTOL, atol=ATOL)
    # The model holds the parameters of step K, which the reference reaches after K updates.
    np.testing.assert_allclose(np.asarray(model.u[...]), u_final, rtol=RTOL, atol=ATOL * D)
    np.testing.assert_allclose(np.asarray(model.v[...]), v_final, rtol=RTOL, atol=ATOL * D)


def test_training_moves_output():
    """Guards the equivalence test against a trivial pass: four steps change f and lower the loss."""
    task, w_embed, w_unembed, u, v = make_problem("paper-tanh", 3, 5, 4)
    model = build_model(w_embed, w_unembed, u, v, alpha=1.0, activation="tanh")
    trajectory = train(model, task.x_DinxN, task.y_DoutxN, steps=4, learning_rate=0.5, loss_scale=task.loss_scale)
    change = np.max(np.abs(trajectory.f_KxDoutxN[-1] - trajectory.f_KxDoutxN[0]))
    assert change > 1e-2
    assert trajectory.loss_K[-1] < trajectory.loss_K[0]


@pytest.mark.parametrize(("alpha", "activation"), [(1.0, "tanh"), (0.5, "identity"), (3.0, "tanh")])
def test_step_is_scaled_gradient(alpha, activation):
    """One update equals -eta L M D / alpha^2 times the autodiff gradient of J."""
    L, M, D = 3, 6, 5
    learning_rate = 0.3
    task, w_embed, w_unembed, u, v = make_problem("paper-tanh", L, M, D, seed=3)
    model = build_model(w_embed, w_unembed, u, v, alpha=alpha, activation=activation)
    x = jnp.asarray(task.x_DinxN)
    y = jnp.asarray(task.y_DoutxN)

    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)

    def loss_of(trainable):
        f_DoutxN, _ = nnx.merge(graphdef, trainable, frozen)(x)
        return mean_squared_loss(f_DoutxN, y, task.loss_scale)

    grads = jax.jit(jax.grad(loss_of))(params)
    for _ in training_steps(model, x, y, steps=1, learning_rate=learning_rate, loss_scale=task.loss_scale):
        pass

    raw_step = learning_rate * L * M * D / alpha**2
    for name, before in (("u", u), ("v", v)):
        change = np.asarray(getattr(model, name)[...]) - before
        expected = -raw_step * np.asarray(grads[name][...])
        assert np.max(np.abs(expected)) > 1e-3, name
        np.testing.assert_allclose(change, expected, rtol=1e-9, atol=1e-12 * np.max(np.abs(before)), err_msg=name)


def test_learning_rate_multiplier():
    task, w_embed, w_unembed, u, v = make_problem("paper-tanh", 3, 6, 5)
    model = build_model(w_embed, w_unembed, u, v, alpha=2.0, activation="tanh")
    assert model.learning_rate_multiplier() == pytest.approx(3 * 6 * 5 / 4.0, rel=1e-12)


def test_params_stacked_by_depth():
    L, M, D = 5, 7, 3
    task = get_task("paper-tanh")
    model = MLUResNet(
        jnp.ones((D, task.d_in)), jnp.ones((D, task.d_out)), depth=L, width=M, key=jax.random.key(0)
    )
    assert model.u.shape == (L, D, M)
    assert model.v.shape == (L, D, M)
    assert model.shape == (L, D, M)


def test_units_used_as_given():
    task, w_embed, w_unembed, u, v = make_problem("paper-tanh", 2, 3, 4)
    model = build_model(w_embed, w_unembed, u, v, alpha=1.0, activation="tanh")
    np.testing.assert_array_equal(np.asarray(model.u[...]), u)
    np.testing.assert_array_equal(np.asarray(model.v[...]), v)


def test_units_wrong_shape():
    task, w_embed, w_unembed, u, v = make_problem("paper-tanh", 2, 3, 4)
    with pytest.raises(ValueError, match=r"expected \(2, 4, 3\)"):
        MLUResNet(
            jnp.asarray(w_embed), jnp.asarray(w_unembed), depth=2, width=3,
            units=(jnp.asarray(u[:, :, :2]), jnp.asarray(v[:, :, :2])),
        )


def test_model_needs_key_or_units():
    with pytest.raises(ValueError, match="key"):
        MLUResNet(jnp.ones((4, 5)), jnp.ones((4, 5)), depth=2, width=3)


def test_drawn_units_have_variance_dim():
    """Units from ``key`` have entries N(0, D), independent between U and V."""
    L, M, D = 4, 200, 50
    model = MLUResNet(
        jnp.ones((D, 5), jnp.float64), jnp.ones((D, 5), jnp.float64), depth=L, width=M, key=jax.random.key(1)
    )
    u = np.asarray(model.u[...])
    v = np.asarray(model.v[...])
    # 40000 entries: the sample variance has relative standard deviation sqrt(2 / 40000) = 0.7 %,
    # so 4 % is more than five standard deviations.
    assert np.var(u) / D == pytest.approx(1.0, rel=0.04)
    assert np.var(v) / D == pytest.approx(1.0, rel=0.04)
    assert abs(np.mean(u)) / np.sqrt(D) < 0.03
    assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.03


@pytest.mark.parametrize("name", ["relu", "Tanh", ""])
def test_unknown_activation(name):
    with pytest.raises(ValueError, match="identity, tanh"):
        activation_function(name)
    with pytest.raises(ValueError, match=f"unknown activation {name!r}"):
        MLUResNet(jnp.ones((4, 5)), jnp.ones((4, 5)), depth=2, width=3, key=jax.random.key(0), activation=name)
