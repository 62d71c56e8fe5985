"""Time the explorer's work: limit simulation, training steps and whole comparisons.

The last sections come from training_speed.py: gradient steps against the memory-traffic floor,
and train_group against a plain NumPy trainer.

    make bench            # or: .venv/bin/python benchmarks/run.py [--out FILE] [--only SECTION ...]

Prints one JSON object per measurement and writes them all to benchmarks/out/results.json.
Timings are wall-clock seconds on whatever machine runs the script; the results page
(benchmarks/README.md) states the machine of the recorded figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from resnet_limits.config import LimitSettings, RunConfig, estimate_training_bytes
from resnet_limits.experiment import Comparison, LimitCache
from resnet_limits.limits import exact_linear_limit, large_dim_problem, simulate_limit
from resnet_limits.limits.extrapolation import estimate_limit
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import coupled_embeddings, paper_linear, paper_tanh
from resnet_limits.training import train, training_steps
from training_speed import bench_numpy_comparison, bench_traffic_floor

# Shapes of the train_group against NumPy comparison, 3 seeds each.
NUMPY_COMPARISON_SHAPES = ((16, 64, 64), (50, 100, 100), (50, 400, 400), (50, 1000, 1000))


def _timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def bench_comparisons(results: list) -> None:
    """Time whole comparisons with the command line's limit settings and with the explorer's."""
    for settings in (LimitSettings(), LimitSettings(32, 2048)):
        cache = LimitCache()
        for L, M, D in ((16, 64, 64), (16, 128, 64), (64, 256, 256), (50, 400, 100)):
            cached_before = len(cache)
            seconds, comparison = _timed(lambda: Comparison(RunConfig(L=L, M=M, D=D), settings, cache=cache).run())
            estimate = comparison.limit_estimates["large-D"].relative_error_estimate
            results.append({"name": "comparison, paper-tanh, K=15", "L": L, "M": M, "D": D,
                            "limit_depth_points": settings.depth_points, "limit_particles": settings.particles,
                            "limits_computed": len(cache) - cached_before, "seconds": round(seconds, 3),
                            "large_dim_relative_error_estimate": float(f"{estimate:.2g}")})
            print(json.dumps(results[-1]), flush=True)


def bench_limits(results: list) -> None:
    task = paper_tanh()
    for settings in (LimitSettings(), LimitSettings(128, 8192), LimitSettings(200, 40000)):
        seconds, _ = _timed(
            lambda: simulate_limit(large_dim_problem(task), task, settings, steps=15, learning_rate=1.0,
                                   alpha=1.0, activation="tanh")
        )
        results.append({"name": "large-D limit, paper-tanh, K=15", "depth_points": settings.depth_points,
                        "particles": settings.particles, "seconds": round(seconds, 3)})
        print(json.dumps(results[-1]), flush=True)


def bench_training_step(results: list) -> None:
    task = paper_tanh()
    for L, M, D in ((16, 64, 64), (50, 400, 100), (50, 1000, 1000)):
        w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, D)
        model = MLUResNet(w_embed, w_unembed, depth=L, width=M, key=jax.random.key(1))
        steps = training_steps(model, task.x_DinxN, task.y_DoutxN, steps=10, learning_rate=1.0,
                               loss_scale=task.loss_scale)
        next(steps)  # compiles
        seconds, count = _timed(lambda: sum(1 for _ in steps))
        results.append({"name": "gradient step, paper-tanh", "L": L, "M": M, "D": D,
                        "seconds_per_step": round(seconds / count, 5),
                        "memory_estimate_MiB": round(estimate_training_bytes(L, M, D, 10, 10, "float32") / 2**20, 1)})
        print(json.dumps(results[-1]), flush=True)


def _max_relative_error(f_TxDoutxN, reference_TxDoutxN, y_DoutxN) -> float:
    steps = min(len(f_TxDoutxN), len(reference_TxDoutxN))
    difference = np.asarray(f_TxDoutxN[:steps], np.float64) - reference_TxDoutxN[:steps]
    per_step = np.sqrt(np.mean(np.square(difference), axis=(1, 2)))
    return float(np.max(per_step) / np.sqrt(np.mean(np.square(y_DoutxN))))


def _finite_network_outputs(task, width: int):
    """Train L = 50, M = D = ``width`` on ``task`` in float32; return its outputs and wall time."""
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, width)
    model = MLUResNet(w_embed, w_unembed, depth=50, width=width, key=jax.random.key(1), activation=task.activation)
    seconds, trajectory = _timed(lambda: train(
        model, task.x_DinxN, task.y_DoutxN, steps=task.steps, learning_rate=task.learning_rate,
        loss_scale=task.loss_scale))
    return trajectory.f_KxDoutxN, seconds


def _paper_reference(task, reference_f, seconds_budget: float) -> dict:
    """Return the largest L = 50, M = D network trained within ``seconds_budget``, with its error."""
    best = None
    width = 64
    while True:
        outputs, seconds = _finite_network_outputs(task, width)
        if best is not None and seconds > seconds_budget:
            return best
        best = {"reference_network": f"L=50, M=D={width}", "seconds": round(seconds, 2),
                "max_relative_error": _max_relative_error(outputs, reference_f, task.y_DoutxN)}
        if seconds > seconds_budget:
            return best
        width *= 2


def bench_limit_accuracy(results: list) -> None:
    linear = paper_linear()
    kwargs = dict(steps=15, learning_rate=0.1, alpha=1.0)
    exact = exact_linear_limit(large_dim_problem(linear), linear, **kwargs).trajectory
    seconds, estimate = _timed(lambda: estimate_limit(
        large_dim_problem(linear), linear, LimitSettings(16, 64), activation="identity", dtype="float64", **kwargs))
    results.append({"name": "paper-linear, K=15: particle simulator against the exact solver",
                    "depth_points": estimate.depth_points, "particles": estimate.particles,
                    "seconds": round(seconds, 2),
                    "max_relative_error": _max_relative_error(estimate.trajectory.f_KxDoutxN, exact.f_KxDoutxN, linear.y_DoutxN),
                    "relative_error_estimate": estimate.relative_error_estimate})
    print(json.dumps(results[-1]), flush=True)
    paper = _paper_reference(linear, exact.f_KxDoutxN, max(seconds, 1.0))
    results.append({"name": "paper-linear, K=15: largest finite network in the same wall time", **paper})
    print(json.dumps(results[-1]), flush=True)

    tanh = paper_tanh()
    kwargs = dict(steps=15, learning_rate=1.0, alpha=1.0, activation="tanh", dtype="float32")
    tolerance = 1e-3
    coarse_seconds, coarse = _timed(lambda: estimate_limit(
        large_dim_problem(tanh), tanh, LimitSettings(32, 1024), tol=tolerance, **kwargs))
    fine_seconds, fine = _timed(lambda: estimate_limit(
        large_dim_problem(tanh), tanh, LimitSettings(32, 1024, seed=7), tol=tolerance / 2, **kwargs))
    self_convergence = _max_relative_error(coarse.trajectory.f_KxDoutxN, fine.trajectory.f_KxDoutxN, tanh.y_DoutxN)
    results.append({"name": "paper-tanh, K=15: self-convergence, tolerance 1e-3 against 5e-4",
                    "seconds_tolerance": round(coarse_seconds, 2), "seconds_half_tolerance": round(fine_seconds, 2),
                    "particles": [coarse.particles, fine.particles], "depth_points": [coarse.depth_points, fine.depth_points],
                    "max_relative_difference": self_convergence,
                    "relative_error_estimates": [coarse.relative_error_estimate, fine.relative_error_estimate]})
    print(json.dumps(results[-1]), flush=True)
    paper = _paper_reference(tanh, fine.trajectory.f_KxDoutxN, max(coarse_seconds, 1.0))
    results.append({"name": "paper-tanh, K=15: largest finite network in the time of the 1e-3 estimate, "
                            "against the 5e-4 estimate", **paper})
    print(json.dumps(results[-1]), flush=True)


def bench_numpy_comparisons(results: list) -> None:
    for shape in NUMPY_COMPARISON_SHAPES:
        bench_numpy_comparison(results, shape)


SECTIONS = {
    "accuracy": bench_limit_accuracy,
    "comparisons": bench_comparisons,
    "limits": bench_limits,
    "steps": bench_training_step,
    "floor": bench_traffic_floor,
    "numpy": bench_numpy_comparisons,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "results.json"))
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=None,
                        help="run only these sections (default: all)")
    args = parser.parse_args()
    results: list = []
    for name, section in SECTIONS.items():
        if args.only is None or name in args.only:
            section(results)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
               "devices": [str(d) for d in jax.devices()]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
