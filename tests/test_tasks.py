"""Tasks and coupled embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_limits.config import jax_dtype
from resnet_limits.tasks import coupled_embeddings, get_task, paper_linear, paper_tanh

jax_dtype("float64")


@pytest.mark.parametrize("task_name", ["paper-tanh", "paper-linear"])
@pytest.mark.parametrize(("small", "large"), [(1, 7), (10, 64), (50, 150), (64, 65)])
def test_embeddings_share_leading_rows(task_name, small, large):
    task = get_task(task_name)
    key = jax.random.key(7)
    w_embed_small, w_unembed_small = coupled_embeddings(key, task, small, jnp.float64)
    w_embed_large, w_unembed_large = coupled_embeddings(key, task, large, jnp.float64)
    assert w_embed_small.shape == (small, task.d_in)
    assert w_unembed_small.shape == (small, task.d_out)
    assert w_embed_large.shape == (large, task.d_in)
    np.testing.assert_array_equal(np.asarray(w_embed_large[:small]), np.asarray(w_embed_small))
    np.testing.assert_array_equal(np.asarray(w_unembed_large[:small]), np.asarray(w_unembed_small))


def test_embeddings_same_in_float32_and_float64():
    task = paper_tanh()
    key = jax.random.key(3)
    w_embed_32, w_unembed_32 = coupled_embeddings(key, task, 100, jnp.float32)
    w_embed_64, w_unembed_64 = coupled_embeddings(key, task, 100, jnp.float64)
    assert w_embed_64.dtype == jnp.float64
    # Both scale the same float32 draws, so they differ by float32 rounding only.
    np.testing.assert_allclose(np.asarray(w_embed_64), np.asarray(w_embed_32), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w_unembed_64), np.asarray(w_unembed_32), rtol=1e-6)


def test_embeddings_differ_between_keys():
    task = paper_tanh()
    w_embed_a, w_unembed_a = coupled_embeddings(jax.random.key(0), task, 80, jnp.float64)
    w_embed_b, w_unembed_b = coupled_embeddings(jax.random.key(1), task, 80, jnp.float64)
    # Independent Gaussian draws: no entry pair should coincide.
    assert np.all(np.asarray(w_embed_a) != np.asarray(w_embed_b))
    assert np.all(np.asarray(w_unembed_a) != np.asarray(w_unembed_b))


def test_embed_and_unembed_independent():
    """Columns of W_E and W_U come from different columns of the root matrix."""
    task = paper_linear()  # s_E = s_U = 1, so equal draws would give equal matrices
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, 200, jnp.float64)
    assert not np.allclose(np.asarray(w_embed), np.asarray(w_unembed))


@pytest.mark.parametrize("task_name", ["paper-tanh", "paper-linear"])
def test_embedding_gram_at_large_dim(task_name):
    """At large D, E^T E / D with E = [W_E, W_U] is close to diag(s_E^2 I, s_U^2 I)."""
    task = get_task(task_name)
    dim = 20000
    w_embed, w_unembed = coupled_embeddings(jax.random.key(11), task, dim, jnp.float64)
    w_embed = np.asarray(w_embed)
    w_unembed = np.asarray(w_unembed)

    # Each sample variance pools D d entries, relative standard deviation sqrt(2 / (D d)) < 0.5 %,
    # so 3 % is more than six standard deviations.
    assert np.var(w_embed) == pytest.approx(task.embedding_std**2, rel=0.03)
    assert np.var(w_unembed) == pytest.approx(task.unembedding_std**2, rel=0.03)
    assert abs(np.mean(w_embed)) < 0.03 * task.embedding_std
    assert abs(np.mean(w_unembed)) < 0.03 * task.unembedding_std

    # Normalised Gram entries: 1 on the diagonal, off-diagonal standard deviation 1/sqrt(D) = 0.007.
    scaled = np.concatenate([w_embed / task.embedding_std, w_unembed / task.unembedding_std], axis=1)
    gram = scaled.T @ scaled / dim
    np.testing.assert_allclose(np.diag(gram), 1.0, atol=0.05)
    off_diagonal = gram - np.diag(np.diag(gram))
    assert np.max(np.abs(off_diagonal)) < 0.05


def test_paper_tanh_settings():
    task = paper_tanh()
    assert task.name == "paper-tanh"
    assert (task.d_in, task.d_out, task.num_samples) == (5, 5, 10)
    assert task.span_dim == 10
    assert task.embedding_std**2 == pytest.approx(1 / 5, rel=1e-12)
    assert task.unembedding_std**2 == pytest.approx(5, rel=1e-12)
    assert task.loss_scale == pytest.approx(1 / 5, rel=1e-12)
    assert task.activation == "tanh"
    assert task.learning_rate == 1.0
    assert task.steps == 15
    assert task.alpha == 1.0


def test_paper_tanh_data():
    """Inputs and targets are standard Gaussian, fixed by the data seed."""
    task = paper_tanh(data_seed=0)
    again = paper_tanh(data_seed=0)
    other = paper_tanh(data_seed=1)
    assert task.x_DinxN.shape == (5, 10)
    assert task.y_DoutxN.shape == (5, 10)
    np.testing.assert_array_equal(task.x_DinxN, again.x_DinxN)
    np.testing.assert_array_equal(task.y_DoutxN, again.y_DoutxN)
    assert not np.allclose(task.x_DinxN, other.x_DinxN)
    assert not np.allclose(task.x_DinxN, task.y_DoutxN)
    # 50 standard Gaussian entries: the sample variance lies in [0.4, 1.8] with probability 0.9996.
    assert 0.4 < np.var(task.x_DinxN) < 1.8
    assert 0.4 < np.var(task.y_DoutxN) < 1.8


def test_paper_linear_settings():
    task = paper_linear()
    assert task.name == "paper-linear"
    assert (task.d_in, task.d_out, task.num_samples) == (3, 3, 1)
    assert task.embedding_std == 1.0
    assert task.unembedding_std == 1.0
    assert task.loss_scale == 1.0
    assert task.activation == "identity"
    assert task.learning_rate == 0.1
    assert task.steps == 15
    assert task.alpha == 1.0


def test_paper_linear_data():
    task = paper_linear()
    np.testing.assert_array_equal(task.x_DinxN, [[0.48000164], [-0.13361224], [0.62589632]])
    np.testing.assert_array_equal(task.y_DoutxN, [[0.62789524], [0.26597976], [-0.05539644]])
    # ||x||^2 = 0.64, so the large-D limit's first output is 2 eta ||x||^2 y = 0.128 y.
    assert np.sum(task.x_DinxN**2) == pytest.approx(0.64, abs=1e-7)


def test_paper_linear_ignores_data_seed():
    np.testing.assert_array_equal(paper_linear(5).x_DinxN, paper_linear(0).x_DinxN)


@pytest.mark.parametrize("name", ["paper", "Paper-Tanh", "tanh", ""])
def test_unknown_task(name):
    with pytest.raises(ValueError, match=f"unknown task {name!r}; choose one of: paper-linear, paper-tanh"):
        get_task(name)
