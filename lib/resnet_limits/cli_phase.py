"""The ``phase`` and ``transfer`` commands of ``resnet-limits``: parsers and implementations."""

from __future__ import annotations

import json
import math
import sys

from resnet_limits.config import ConfigError

# The defaults of resnet_limits.phase and resnet_limits.transfer, repeated so that building the
# parser imports no JAX; tests/test_phase_apps.py checks that they agree.
PHASE_SCALES = "12,24,48"
PHASE_RESIDUAL_EXPONENTS = "-0.25,0,0.25,0.5,0.75,1"
PHASE_RATE_EXPONENTS = "-1.5,-1,-0.5,0,0.5"
TRANSFER_SCALES = "4,8,16,32,64"
VECTOR_TASKS = ("paper-linear", "paper-tanh")
REGIME_CODES = {
    "maximal local updates": "M",
    "lazy": "L",
    "noise-dominated": "N",
    "unstable": "U",
    "degenerate": "D",
}


def add_phase_commands(commands) -> None:
    """Add the phase and transfer subcommands to ``commands`` (an argparse subparsers object)."""
    phase = commands.add_parser(
        "phase",
        help="measure the regime of every residual-scale and learning-rate exponent on a scaling path",
        description="Train MLU-type networks with residual scale alpha = n^gamma and raw learning rate "
                    "eta n^lambda L M D at the sizes n of a path, with every rule of the parametrisation table, "
                    "and print the measured regime of every cell and rule: M maximal local updates, L lazy, "
                    "N noise-dominated, U unstable, D degenerate.",
    )
    phase.add_argument("--task", default="paper-tanh", choices=VECTOR_TASKS, help="task (default: paper-tanh)")
    phase.add_argument("--n", default=PHASE_SCALES, help=f"sizes n, separated by commas (default {PHASE_SCALES})")
    phase.add_argument("--path", default="1,1,1",
                       help="exponents p_L,p_M,p_D of the path L = n^p_L, M = n^p_M, D = n^p_D (default 1,1,1)")
    phase.add_argument("--gamma", default=PHASE_RESIDUAL_EXPONENTS,
                       help=f"residual-scale exponents (default {PHASE_RESIDUAL_EXPONENTS}); write "
                            "--gamma=-1,0 when the list starts with a minus sign")
    phase.add_argument("--lambda", dest="rate_exponents", default=PHASE_RATE_EXPONENTS,
                       help=f"learning-rate exponents (default {PHASE_RATE_EXPONENTS}); write "
                            "--lambda=-1,0 when the list starts with a minus sign")
    phase.add_argument("--steps", "-K", type=int, default=5, help="gradient steps K (default 5)")
    phase.add_argument("--lr", type=float, default=None, help="base learning rate eta (default: the task's)")
    phase.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 averaged per size (default 3)")
    phase.add_argument("--json", action="store_true", help="print one JSON object instead of tables")

    transfer = commands.add_parser(
        "transfer",
        help="find the optimal learning rate of each size for each rule",
        description="Train every rule at every size n of a path over a log grid of base learning rates, and "
                    "print the optimal learning rate of each size and how far it moves over the sizes.",
    )
    transfer.add_argument("--task", default="paper-tanh", choices=VECTOR_TASKS, help="task (default: paper-tanh)")
    transfer.add_argument("--rules", default="mlu,standard", help="rules, separated by commas (default mlu,standard)")
    transfer.add_argument("--n", default=TRANSFER_SCALES, help=f"sizes n, separated by commas (default {TRANSFER_SCALES})")
    transfer.add_argument("--path", default="1,1,1", help="exponents p_L,p_M,p_D of the path (default 1,1,1)")
    transfer.add_argument("--lr-min", type=float, default=2.0**-12, help="smallest learning rate (default 2^-12)")
    transfer.add_argument("--lr-max", type=float, default=2.0**4, help="largest learning rate (default 16)")
    transfer.add_argument("--per-octave", type=int, default=2, help="learning rates per factor 2 (default 2)")
    transfer.add_argument("--steps", "-K", type=int, default=10, help="gradient steps K (default 10)")
    transfer.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 averaged per size (default 3)")
    transfer.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def _numbers(text: str, option: str, kind=float) -> list:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"invalid {option} {text!r}; write numbers separated by commas, such as 1,1,1") from None


def _seeds(count: int) -> list[int]:
    if count < 1:
        raise ConfigError(f"seeds must be 1 or more, got {count}; set --seeds")
    return list(range(count))


def _progress(stage: str, done: int, total: int) -> None:
    print(f"\r{stage}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def _records(frame) -> list[dict]:
    """Return the rows of a DataFrame as JSON-ready dicts, with NaN as None."""
    rows = frame.to_dict(orient="records")
    return [{key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in row.items()}
            for row in rows]


def run_phase_command(args) -> int:
    from resnet_limits.phase import phase_diagram

    result = phase_diagram(
        task=args.task,
        scales=_numbers(args.n, "--n", int),
        path=_numbers(args.path, "--path"),
        residual_exponents=_numbers(args.gamma, "--gamma"),
        rate_exponents=_numbers(args.rate_exponents, "--lambda"),
        steps=args.steps,
        learning_rate=args.lr,
        seeds=_seeds(args.seeds),
        progress=None if args.json else _progress,
    )
    if args.json:
        print(json.dumps({
            "cells": _records(result["cells"]),
            "points": _records(result["points"]),
            "criteria": result["criteria"],
            "path": result["path"],
            "scales": result["scales"],
        }))
        return 0
    cells = result["cells"]
    table = cells.assign(code=cells["regime"].map(REGIME_CODES)).pivot(
        index="rate_exponent", columns="residual_exponent", values="code"
    )
    print("regime per cell (rows: lambda, columns: gamma):")
    print(table.iloc[::-1].to_string())
    print("\nrules:")
    print(result["points"][["rule", "residual_exponent", "rate_exponent", "on_plane", "regime", "reason"]]
          .to_string(index=False))
    print("\n" + "\n".join(f"{REGIME_CODES[name]} = {name}" for name in REGIME_CODES))
    return 0


def run_transfer_command(args) -> int:
    from resnet_limits.transfer import default_learning_rates, learning_rate_sweep

    for name, value in (("--lr-min", args.lr_min), ("--lr-max", args.lr_max)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number, got {value}")
    if args.lr_max <= args.lr_min or args.per_octave < 1:
        raise ConfigError("--lr-max must exceed --lr-min and --per-octave must be 1 or more")
    result = learning_rate_sweep(
        task=args.task,
        rules=[name.strip() for name in args.rules.split(",") if name.strip()],
        scales=_numbers(args.n, "--n", int),
        path=_numbers(args.path, "--path"),
        learning_rates=default_learning_rates(args.lr_min, args.lr_max, args.per_octave),
        steps=args.steps,
        seeds=_seeds(args.seeds),
        progress=None if args.json else _progress,
    )
    if args.json:
        print(json.dumps({"optima": _records(result["optima"]), "drift": _records(result["drift"])}))
        return 0
    print(result["optima"].to_string(index=False))
    print()
    print(result["drift"].to_string(index=False))
    return 0
