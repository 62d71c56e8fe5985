"""Measure the depth constant of the error laws: the Euler bias of the limit at depth L.

A network of depth L is an Euler scheme in s with L steps, so its distance to the L -> infinity
limit has a term c / L. This script simulates the large-D limit of paper-tanh with L' depth
points and many particles, compares with a fine reference, and fits c from err * L'.

    python benchmarks/depth_constant.py
"""

from __future__ import annotations

import json
import sys

import numpy as np

from resnet_limits import metrics
from resnet_limits.config import LimitSettings
from resnet_limits.limits import large_dim_problem, simulate_limit
from resnet_limits.tasks import paper_tanh


def main() -> None:
    task = paper_tanh()
    problem = large_dim_problem(task)
    kwargs = dict(steps=task.steps, learning_rate=task.learning_rate, alpha=1.0,
                  activation=task.activation, dtype="float64")
    total_particles = 2**20
    reference = simulate_limit(problem, task, LimitSettings(256, total_particles // 256), **kwargs)
    rows = []
    for depth in (2, 4, 8, 16):
        coarse = simulate_limit(problem, task, LimitSettings(depth, total_particles // depth, seed=1), **kwargs)
        # With h = B a and B^T B / D = I, the RMS over D coordinates is the per-sample norm of a.
        embedding = float(np.sqrt(np.mean(np.sum((coarse.h_KxDxN[-1] - reference.h_KxDxN[-1]) ** 2, axis=0))))
        output = metrics.output_error(coarse.f_KxDoutxN[-1], reference.f_KxDoutxN[-1])
        rows.append({"L": depth, "embedding_error": embedding, "output_error": output,
                     "embedding_constant": embedding * depth, "output_constant": output * depth})
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
