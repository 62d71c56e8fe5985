"""The ``resnet-limits`` command: train a network against its limits, simulate a limit alone, or run,
fit and plan sweeps (``cli_sweeps``)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time

from resnet_limits import __version__, cli_phase, cli_sweeps
from resnet_limits.config import (
    ACTIVATIONS,
    ARCHITECTURES,
    DEFAULT_MEMORY_BUDGET_BYTES,
    DTYPES,
    TRANSFORMER_LIMIT_SETTINGS,
    ConfigError,
    MemoryBudgetError,
    LimitSettings,
    RunConfig,
    check_memory,
    check_positive_float,
    check_positive_int,
    default_limit_settings,
    format_gib,
)
from resnet_limits.limits.extrapolation import ToleranceNotReached, check_particles, estimate_limit
from resnet_limits.limits.transformer import estimate_transformer_limit
from resnet_limits.tasks import TASKS, get_task
from resnet_limits.training import Trajectory

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_TOLERANCE = 4


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=None, choices=sorted(TASKS),
                        help="task (default: paper-tanh, or seq-tanh with --arch transformer)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="resnet",
                        help="network: perceptron blocks (resnet), or attention and perceptron blocks on token "
                             "sequences (transformer) (default resnet)")
    parser.add_argument("--key-dim", type=int, default=None,
                        help=f"key-query dimension d_k of every head, with --arch transformer (default {RunConfig.key_dim})")
    parser.add_argument("--value-dim", type=int, default=None,
                        help=f"value dimension d_v of every head, with --arch transformer (default {RunConfig.value_dim})")
    parser.add_argument("--steps", "-K", type=int, default=None, help="gradient steps K (default: the task's, 15)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate eta (default: the task's, 1 for paper-tanh, 0.1 for paper-linear); "
                             "the raw step is eta L M D / alpha^2")
    parser.add_argument("--alpha", type=float, default=None, help="residual scale alpha (default 1, the MLU regime)")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=None, help="unit activation (default: the task's)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the embeddings and unit weights, 0 to 2^32 - 1 (default 0); "
                             "the large-D limit does not depend on it")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="floating-point type (default float32)")
    parser.add_argument("--limit-depth", type=int, default=None,
                        help=f"depth points L' of the limit simulator (default {LimitSettings.depth_points}, "
                             f"{TRANSFORMER_LIMIT_SETTINGS.depth_points} with --arch transformer)")
    parser.add_argument("--limit-particles", type=int, default=None,
                        help=f"particles M' per depth point, even (default {LimitSettings.particles}, "
                             f"{TRANSFORMER_LIMIT_SETTINGS.particles} with --arch transformer)")
    parser.add_argument("--memory-budget", type=float, default=DEFAULT_MEMORY_BUDGET_BYTES / 2**30,
                        help="largest memory estimate accepted, in GiB (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-limits",
        description="Train MLU ResNets and compare them with their fixed-D Mean ODE and large-D limits.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a network and report its errors against both limits")
    train.add_argument("--depth", "-L", type=int, default=16, help="depth L, number of blocks (default 16)")
    train.add_argument("--width", "-M", type=int, default=64, help="hidden width M, units per block (default 64)")
    train.add_argument("--dim", "-D", type=int, default=64, help="embedding dimension D (default 64)")
    train.add_argument("--heads", type=int, default=None,
                       help=f"attention heads H per layer, with --arch transformer (default {RunConfig.H})")
    _add_common(train)

    limit = commands.add_parser(
        "limit",
        help="simulate the large-D limit, or the fixed-D Mean ODE with --dim, extrapolated in depth",
        description="Simulate the limit with L', 2 L' and 4 L' depth points (L' = --limit-depth) in two "
                    "replicas and extrapolate to infinite depth; the result comes with an estimate of its "
                    "error from depth and from the Monte Carlo average.",
    )
    limit.add_argument("--dim", "-D", type=int, default=None,
                       help="simulate the fixed-D Mean ODE of the embeddings of this D and --seed")
    limit.add_argument("--tol", type=float, default=None,
                       help="largest accepted estimate of the RMS error of the outputs f_k; grows the depth "
                            "points or the particles, whichever error part is larger, until it is met "
                            "(default: one extrapolation at --limit-depth and --limit-particles)")
    _add_common(limit)
    cli_sweeps.add_sweep_commands(commands)
    cli_phase.add_phase_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sweep_commands = {
        "sweep": cli_sweeps.run_sweep_command,
        "fit": cli_sweeps.run_fit_command,
        "shape": cli_sweeps.run_shape_command,
        "reproduce": cli_sweeps.run_reproduce_command,
        "phase": cli_phase.run_phase_command,
        "transfer": cli_phase.run_transfer_command,
    }
    try:
        if args.command in sweep_commands:
            return sweep_commands[args.command](args)
        defaults = default_limit_settings(args.arch)
        limit_settings = LimitSettings(
            defaults.depth_points if args.limit_depth is None else args.limit_depth,
            defaults.particles if args.limit_particles is None else args.limit_particles,
        )
        if isinstance(limit_settings.particles, int):
            # The levels' rule first: it names the smallest count that works, where the checks of
            # validate() would each suggest a count that the next check rejects.
            check_particles(limit_settings, get_task(_task_name(args)).span_dim)
        limit_settings = limit_settings.validate()
        budget_gib = check_positive_float("memory budget", args.memory_budget, "--memory-budget", example=2)
        budget = int(budget_gib * 2**30)
        if args.command == "train":
            return _train(args, limit_settings, budget)
        return _limit(args, limit_settings, budget)
    except ConfigError as error:
        print(f"resnet-limits: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of standard output stopped early (as `| head` does); nothing is left to report.
        sys.stderr.close()
        return 0
    except OSError as error:
        # A path that cannot be used: --out is a file, a read-only or missing directory.
        where = f" {error.filename}" if error.filename else ""
        print(f"resnet-limits: error: cannot write{where}: {error.strerror or error}; "
              "give --out a directory that can be created and written", file=sys.stderr)
        return 2


class _ProgressLine:
    """A one-line progress report on standard error, rewritten in place."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.interactive = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.stage = None

    def update(self, stage: str, done: int, total: int, unit: str = "steps") -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        line = f"{stage:<18} {done:>4}/{total} {unit}  {elapsed:6.1f} s"
        if self.interactive:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif stage != self.stage or done == total:
            # In a log file, one line per stage and one at the end.
            print(line, file=sys.stderr, flush=True)
        self.stage = stage

    def close(self) -> None:
        if self.enabled and self.interactive:
            print(file=sys.stderr, flush=True)


def _task_name(args) -> str:
    """Return the task of the options: --task, or the default task of --arch."""
    if args.task is not None:
        return args.task
    return "seq-tanh" if args.arch == "transformer" else "paper-tanh"


def _run_config(args, *, L: int, M: int, D: int) -> RunConfig:
    """Return the RunConfig of the options shared by both commands, with the given shape.

    ``--heads`` exists only on ``train``; the ``limit`` command takes the default H, which its
    limit does not depend on.
    """
    arch = args.arch
    transformer_options = {"--heads": getattr(args, "heads", None), "--key-dim": args.key_dim,
                           "--value-dim": args.value_dim}
    given_options = [option for option, value in transformer_options.items() if value is not None]
    if given_options and arch != "transformer":
        options = ", ".join(given_options)
        raise ConfigError(
            f"{options} set{'s' if len(given_options) == 1 else ''} the attention heads, which arch {arch!r} does not have; "
            f"add --arch transformer, or drop {options}"
        )
    return RunConfig(
        task=_task_name(args),
        L=L,
        M=M,
        D=D,
        K=args.steps,
        learning_rate=args.lr,
        alpha=args.alpha,
        activation=args.activation,
        seed=args.seed,
        dtype=args.dtype,
        arch=arch,
        H=RunConfig.H if getattr(args, "heads", None) is None else args.heads,
        key_dim=RunConfig.key_dim if args.key_dim is None else args.key_dim,
        value_dim=RunConfig.value_dim if args.value_dim is None else args.value_dim,
    )


def _train(args, limit_settings: LimitSettings, budget: int) -> int:
    from resnet_limits.experiment import Comparison

    config = _run_config(args, L=args.depth, M=args.width, D=args.dim)
    comparison = Comparison(config, limit_settings, memory_budget_bytes=budget)
    progress = _ProgressLine(enabled=not args.json or sys.stderr.isatty())
    try:
        for event in comparison.events():
            progress.update(event.stage, *event.within_stage())
    except KeyboardInterrupt:
        progress.close()
        print("resnet-limits: interrupted; printing the steps computed so far", file=sys.stderr)
    else:
        progress.close()

    result = comparison.to_dict()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_train_table(result)
    return _exit_status(result["status"], result["diverged_at_step"])


def _limit(args, limit_settings: LimitSettings, budget: int) -> int:
    import jax

    from resnet_limits import limits
    from resnet_limits.config import jax_dtype
    from resnet_limits.tasks import coupled_embeddings, get_task

    # The command trains no network, so L = M = 1 makes its memory check count the simulator alone.
    base = _run_config(args, L=1, M=1, D=1 if args.dim is None else args.dim).resolved()
    task = get_task(base.task)
    if args.dim is None:
        problem = limits.large_dim_problem(task)
    else:
        check_positive_int("D", args.dim, "--dim")
        key_embed, _ = jax.random.split(jax.random.key(base.seed))
        w_embed, w_unembed = coupled_embeddings(key_embed, task, base.D, jax_dtype(base.dtype))
        problem, _ = limits.fixed_dim_problem(w_embed, w_unembed)
    tol = None if args.tol is None else check_positive_float("tol", args.tol, "--tol", example=1e-3)

    progress = _ProgressLine(enabled=not args.json or sys.stderr.isatty())
    finished_levels: list[tuple[int, Trajectory]] = []

    def check_simulator_memory(settings: LimitSettings) -> None:
        needed = check_memory(base, task.num_samples, settings, task.span_dim, math.inf, num_tokens=task.num_tokens)
        if needed > budget:
            raise MemoryBudgetError(
                f"the limit simulator with L' = {settings.depth_points} and M' = {settings.particles} needs "
                f"about {format_gib(needed)}, over the memory budget of {format_gib(budget)}; "
                "raise --memory-budget, or lower --limit-depth, --limit-particles or the accuracy asked by --tol"
            )

    attempts = []  # the settings of every attempt started

    def start_attempt(attempt: int, settings: LimitSettings) -> None:
        check_simulator_memory(settings)
        attempts.append(settings)
        progress.update(f"{problem.kind} L'={settings.depth_points} M'={settings.particles}", attempt,
                        attempt + 1, unit="attempts")

    def finish_level(depth_points: int, trajectory: Trajectory) -> None:
        finished_levels.append((depth_points, trajectory))

    estimate = None
    status = "completed"
    try:
        if base.arch == "transformer":
            estimate_function = functools.partial(
                estimate_transformer_limit, key_dim=base.key_dim, value_dim=base.value_dim
            )
        else:
            estimate_function = estimate_limit
        estimate = estimate_function(
            problem,
            task,
            limit_settings,
            tol=tol,
            steps=base.K,
            learning_rate=base.learning_rate,
            alpha=base.alpha,
            activation=base.activation,
            dtype=base.dtype,
            on_level=start_attempt,
            on_level_done=finish_level,
            memory_check=check_simulator_memory,
        )
        trajectory = estimate.trajectory
        if attempts:
            last = attempts[-1]
            progress.update(f"{problem.kind} L'={last.depth_points} M'={last.particles}", len(attempts),
                            len(attempts), unit="attempts")
    except ToleranceNotReached as error:
        print(f"\nresnet-limits: {error}", file=sys.stderr)
        status = "tolerance not reached"
        estimate = error.best
        trajectory = estimate.trajectory
    except KeyboardInterrupt:
        print("\nresnet-limits: interrupted; printing the finest level simulated so far", file=sys.stderr)
        status = "interrupted"
        trajectory = finished_levels[-1][1] if finished_levels else None
    progress.close()

    diverged_at = None if trajectory is None else trajectory.diverged_at
    if diverged_at is not None:
        status = "diverged"
    steps = []
    if trajectory is not None:
        for step, (loss, f_DoutxN) in enumerate(zip(trajectory.loss_K, trajectory.f_KxDoutxN)):
            steps.append({"step": step, "loss": float(loss), "output": f_DoutxN.astype(float).tolist()})

    result = {
        "kind": problem.kind,
        "arch": base.arch,
        "task": task.name,
        "dim": args.dim,
        "seed": base.seed if args.dim is not None else None,
        "settings": {
            "K": base.K,
            "learning_rate": base.learning_rate,
            "alpha": base.alpha,
            "activation": base.activation,
            "dtype": base.dtype,
            "limit_depth_points": limit_settings.depth_points,
            "limit_particles": limit_settings.particles,
            "tol": tol,
        },
        "status": status,
        "diverged_at_step": diverged_at,
        "error_estimate": None if estimate is None else estimate.error_estimate,
        "relative_error_estimate": None if estimate is None else estimate.relative_error_estimate,
        "depth_points": list(estimate.depth_points) if estimate is not None else [d for d, _ in finished_levels],
        "particles": estimate.particles if estimate is not None else None,
        "steps": steps,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_limit_table(result)
    return _exit_status(status, diverged_at)


def _exit_status(status: str, diverged_at: int | None) -> int:
    if status == "tolerance not reached":
        return EXIT_TOLERANCE
    if status == "diverged":
        print(f"resnet-limits: the run diverged at step {diverged_at} (loss not finite, or over 1e6 times the larger of its initial value and the loss of a zero output); "
              "lower --lr, or raise --alpha (the raw step is eta L M D / alpha^2)", file=sys.stderr)
        return EXIT_DIVERGED
    if status == "interrupted":
        return EXIT_INTERRUPTED
    return 0


def _format(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.6g}"


def _print_train_table(result: dict) -> None:
    shape, bound = result["shape"], result["bound"]
    heads = f" H={shape['H']} d_k={shape['key_dim']} d_v={shape['value_dim']}" if "H" in shape else ""
    print(f"task {result['task']}  L={shape['L']} M={shape['M']} D={shape['D']}{heads}  "
          f"P={result['num_parameters']}  status {result['status']}")
    attention = f"sqrt(D/(L H)) = {bound['attention']:.4g}, " if "attention" in bound else ""
    print(f"bound terms: 1/L = {bound['depth']:.4g}, {attention}sqrt(D/(L M)) = {bound['width']:.4g}, "
          f"1/sqrt(D) = {bound['embedding']:.4g}")
    if "attention" in bound:
        predicted = result["predicted_error"]
        print(f"error laws predict: embedding {predicted['embedding']:.3g}, output {predicted['output']:.3g} "
              "(constants fitted for ResNets)")
    for law, optimal in (result.get("optimal_shape") or {}).items():
        print(f"optimal shape of the {law} law at this P (M = H): L={optimal['L']} H={optimal['H']} "
              f"D={optimal['D']} (bound {optimal['bound']:.3g})")
    estimates = result.get("limit_error_estimate") or {}
    if estimates:
        parts = ", ".join(f"{kind} {summary['relative_error_estimate']:.1e}" for kind, summary in sorted(estimates.items()))
        print(f"limits' own output error, relative to the targets (estimated): {parts}")
    print(f"{'step':>4} {'loss':>11} {'emb.err ODE':>12} {'emb.err lim':>12} {'out.err ODE':>12} {'out.err lim':>12}")
    for row in result["steps"]:
        print(f"{row['step']:>4} {_format(row['loss']):>11} {_format(row['embedding_error_mean_ode']):>12} "
              f"{_format(row['embedding_error_limit']):>12} {_format(row['output_error_mean_ode']):>12} "
              f"{_format(row['output_error_limit']):>12}")


def _print_limit_table(result: dict) -> None:
    where = "" if result["dim"] is None else f" D={result['dim']} seed={result['seed']}"
    print(f"{result['kind']} limit of {result['task']}{where}  status {result['status']}")
    levels = ", ".join(str(depth) for depth in result["depth_points"])
    print(f"depth points L': {levels}; particles M': {result['particles']}; "
          f"estimated RMS error of f: {_format(result['error_estimate'])} "
          f"(relative to y: {_format(result['relative_error_estimate'])})")
    sequence = result.get("arch") == "transformer"
    print(f"{'step':>4} {'loss':>11}  output (first sample{', first token' if sequence else ''})")
    for row in result["steps"]:
        first = [column[0][0] if sequence else column[0] for column in row["output"]]
        print(f"{row['step']:>4} {_format(row['loss']):>11}  " + " ".join(f"{v:+.4f}" for v in first))


if __name__ == "__main__":
    sys.exit(main())
