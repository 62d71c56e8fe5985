"""Time training steps against the memory-traffic floor, and train_group against plain NumPy.

    .venv/bin/python benchmarks/training_speed.py floor [--shape L M D]
    .venv/bin/python benchmarks/training_speed.py numpy --shape L M D [--seeds S]

``floor`` measures the copy bandwidth of the machine (``np.copyto`` of a 256 MiB array, one
thread, read and write bytes counted) and the time per gradient step of ``paper-tanh`` at one
shape (default L = 50, M = D = 1000) for: the library's ``training._gradient_step``, the factored
step and the direct step of ``group_training``. The floor is the time to read U and V twice and
write them once, 6 L D M floats, at that bandwidth.

``numpy`` trains ``S`` seeds (default 3) of one shape for the task's K = 15 steps with
``numpy_baseline.train``, one seed after another, and with ``train_group``, and prints both wall
times. The NumPy time excludes drawing the weights; the library time includes it, because
``train_group`` draws the weights inside its compiled call. The library time is given for a
first call (with compilation) and for a second call.

Each measurement is printed as one JSON line; ``run.py`` calls both sections.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import numpy_baseline
from resnet_limits import group_training
from resnet_limits.config import RunConfig
from resnet_limits.models import MLUResNet, initial_units
from resnet_limits.tasks import coupled_embeddings, paper_tanh
from resnet_limits.training import training_steps

FLOOR_SHAPE = (50, 1000, 1000)


def copy_bandwidth_bytes_per_second(num_bytes: int = 2**28, repeats: int = 5) -> float:
    """Return read plus written bytes per second of the best of ``repeats`` ``np.copyto`` calls."""
    source = np.ones(num_bytes // 4, np.float32)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * num_bytes / best


def _library_step_seconds(L: int, M: int, D: int, steps: int = 3) -> float:
    """Return seconds per step of ``training.training_steps`` after its first (compiling) step."""
    task = paper_tanh()
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, D)
    model = MLUResNet(w_embed, w_unembed, depth=L, width=M, key=jax.random.key(1))
    records = training_steps(model, task.x_DinxN, task.y_DoutxN, steps=steps, learning_rate=1.0,
                             loss_scale=task.loss_scale)
    next(records)
    start = time.perf_counter()
    count = sum(1 for _ in records)
    return (time.perf_counter() - start) / count


def _group_step_seconds(L: int, M: int, D: int, fold_period: int, steps: int = 15) -> float:
    """Return seconds per step of ``group_training``'s steps with the weights already drawn.

    ``fold_period`` > 1 times the factored step with room for ``steps`` updates (no fold);
    1 times the direct update. The best of two calls after a compiling call.
    """
    task = paper_tanh()
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, D)
    h0_NxD = (w_embed @ jnp.asarray(task.x_DinxN, jnp.float32)).T
    problem = group_training._Problem(
        h0_NxD, w_unembed, jnp.asarray(task.y_DoutxN.T, jnp.float32), jnp.float32(task.loss_scale),
        jnp.float32(1.0), jnp.float32(1.0),
    )
    factored = fold_period > 1
    rows = steps * task.num_samples if factored else 0
    run = jax.jit(
        lambda units, problem: group_training._run_steps(units, problem, steps, factored, "tanh"),
        donate_argnums=0,
    )
    best = float("inf")
    for _ in range(3):
        u_LxDxM, v_LxDxM = initial_units(jax.random.key(1), L, D, M, 1.0 / D)
        # Separate buffers: Units.plain shares one array of zeros between the factors.
        units = jax.block_until_ready(jax.tree.map(jnp.copy, group_training.Units.plain(u_LxDxM, v_LxDxM, rows)))
        start = time.perf_counter()
        jax.block_until_ready(run(units, problem))
        best = min(best, time.perf_counter() - start)
        del units
    return best / steps


def bench_traffic_floor(results: list, shape=FLOOR_SHAPE) -> None:
    L, M, D = shape
    bandwidth = copy_bandwidth_bytes_per_second()
    floor = 6 * L * D * M * 4 / bandwidth
    row = {"name": "gradient step against the traffic floor, paper-tanh, N=10, float32",
           "L": L, "M": M, "D": D, "copy_bandwidth_GB_per_s": round(bandwidth / 1e9, 1),
           "floor_seconds": round(floor, 4)}
    for label, seconds in (
        ("training._gradient_step", _library_step_seconds(L, M, D)),
        ("group_training factored step", _group_step_seconds(L, M, D, fold_period=15)),
        ("group_training direct step", _group_step_seconds(L, M, D, fold_period=1)),
    ):
        row[f"{label}: seconds"] = round(seconds, 4)
        row[f"{label}: ratio to floor"] = round(seconds / floor, 2)
    results.append(row)
    print(json.dumps(row), flush=True)


def bench_numpy_comparison(results: list, shape, num_seeds: int = 3) -> None:
    L, M, D = shape
    task = paper_tanh()
    config = RunConfig(L=L, M=M, D=D).resolved()
    seeds = list(range(num_seeds))

    networks = [numpy_baseline.initial_network(task, config, seed) for seed in seeds]
    start = time.perf_counter()
    for network in networks:
        numpy_baseline.train(
            network["u"], network["v"], network["w_embed"], network["w_unembed"], task.x_DinxN,
            task.y_DoutxN, steps=config.K, learning_rate=config.learning_rate, alpha=config.alpha,
            activation=config.activation, loss_scale=task.loss_scale,
        )
    numpy_seconds = time.perf_counter() - start
    del networks

    start = time.perf_counter()
    group_training.train_group(task, config, seeds)
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    group_training.train_group(task, config, seeds)
    second_seconds = time.perf_counter() - start

    plan = group_training.plan_group(config, task.num_samples, task.d_out, num_seeds)
    row = {"name": "train_group against NumPy, paper-tanh, K=15, float32", "L": L, "M": M, "D": D,
           "seeds": num_seeds, "fold_period": plan.fold_period, "seeds_per_map": plan.seeds_per_map,
           "numpy_seconds": round(numpy_seconds, 3), "train_group_first_call_seconds": round(first_seconds, 3),
           "train_group_second_call_seconds": round(second_seconds, 3),
           "speedup_second_call": round(numpy_seconds / second_seconds, 1),
           "speedup_first_call": round(numpy_seconds / first_seconds, 1)}
    results.append(row)
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=("floor", "numpy"))
    parser.add_argument("--shape", type=int, nargs=3, metavar=("L", "M", "D"), default=FLOOR_SHAPE,
                        help="depth L, width M and dimension D of the network")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds of the NumPy comparison")
    args = parser.parse_args()
    if args.section == "floor":
        bench_traffic_floor([], tuple(args.shape))
    else:
        bench_numpy_comparison([], tuple(args.shape), args.seeds)


if __name__ == "__main__":
    main()
