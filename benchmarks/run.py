"""Time the explorer's work: limit simulation, training steps and whole comparisons.

    make bench            # or: .venv/bin/python benchmarks/run.py [--out FILE]

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

from resnet_limits.config import LimitSettings, RunConfig, estimate_training_bytes
from resnet_limits.experiment import Comparison, LimitCache
from resnet_limits.limits import large_dim_problem, simulate_limit
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import coupled_embeddings, paper_tanh
from resnet_limits.training import training_steps


def _timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def bench_comparisons(results: list) -> None:
    cache = LimitCache()
    for L, M, D in ((16, 64, 64), (16, 128, 64), (64, 256, 256), (50, 400, 100)):
        cached_before = len(cache)
        seconds, _ = _timed(lambda: Comparison(RunConfig(L=L, M=M, D=D), cache=cache).run())
        results.append({"name": "comparison, paper-tanh, K=15", "L": L, "M": M, "D": D,
                        "limits_computed": len(cache) - cached_before, "seconds": round(seconds, 3)})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "results.json"))
    args = parser.parse_args()
    results: list = []
    bench_comparisons(results)
    bench_limits(results)
    bench_training_step(results)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
               "devices": [str(d) for d in jax.devices()]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
