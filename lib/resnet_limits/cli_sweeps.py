"""The ``sweep``, ``fit`` and ``shape`` commands of ``resnet-limits``: parsers and implementations."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fractions
import json
import math
import os
import signal
import sys
import threading

from resnet_limits import bounds
from resnet_limits.config import (
    ACTIVATIONS,
    DEFAULT_MEMORY_BUDGET_BYTES,
    DTYPES,
    ConfigError,
    LimitSettings,
    check_positive_float,
    check_positive_int,
)
from resnet_limits.tasks import TASKS

DEFAULT_BUDGETS = "1e4,1e5,1e6"  # the parameter budgets of a --path sweep
# The terminal control sequence that erases the rest of a progress line rewritten in place.
CLEAR_TO_END = "\x1b[K"
# The maximum number of seeds per shape of one sweep. The store writes one file per configuration.
MAX_SEED_COUNT = 10_000
# The figure registry of resnet_limits.reproduce, repeated here so building the parser imports no pandas.
FIGURE_NAMES = ("tanh-error-vs-D", "tanh-error-vs-M", "tanh-error-vs-P", "linear-error-vs-D", "linear-error-vs-M")
AXIS_HELP = "a list such as 1,4,16, or log:START:STOP:COUNT for COUNT log-spaced distinct integers"


MEMORY_BUDGET_HELP = ("memory budget in GiB: the largest estimate accepted for one group of runs, and the most that "
                      "groups running at the same time may use together (default %(default)s)")
# Largest budget of the shape command. 1e15 float32 weights take 4 PB, beyond any machine that the
# bound is meant to guide, and larger budgets give shapes of integers with hundreds of digits.
MAX_SHAPE_BUDGET = 1e15
JOBS_HELP = ("groups of runs computed at the same time in this process, each in a thread (default: the number of "
             "CPU cores it may use); ignored with --scheduler")

def add_sweep_commands(commands) -> None:
    """Add the sweep, fit and shape subcommands to ``commands`` (an argparse subparsers object)."""
    sweep = commands.add_parser(
        "sweep",
        help="train a grid of shapes and seeds against both limits, into a resumable Parquet store",
        description="Train every (L, M, D) of the grid for every seed and task setting, compare each run with "
                    "the extrapolated large-D limit and the fixed-D Mean ODE, and write one Parquet part per "
                    "run into --out. Rerunning the same command skips the runs already stored. "
                    f"Axes are {AXIS_HELP}; log:1:2000:20 gives 1, 2, 3, 4, 6, 9, ..., 1355, 2000.",
    )
    sweep.add_argument("--task", default="paper-tanh", choices=sorted(TASKS), help="task (default: paper-tanh); a sequence task such as seq-tanh sweeps Transformers "
                            "with H = M heads per layer and d_k = d_v = 2")
    sweep.add_argument("--depth", "-L", default=None, help=f"depths L: {AXIS_HELP}")
    sweep.add_argument("--width", "-M", default=None, help=f"widths M (and heads H = M for a sequence task): {AXIS_HELP}")
    sweep.add_argument("--dim", "-D", default=None, help=f"embedding dimensions D: {AXIS_HELP}")
    sweep.add_argument("--path", default=None,
                       help="instead of -L, -M and -D: the D exponent c of the path D = P^c (e.g. 1/3), with "
                            "L and M splitting the rest of each budget as the embedding bound prefers")
    sweep.add_argument("--budgets", default=None,
                       help=f"parameter budgets P of --path, separated by commas (default {DEFAULT_BUDGETS})")
    sweep.add_argument("--seeds", type=int, default=1, help="number of seeds, 0 to N-1 (default 1)")
    sweep.add_argument("--steps", "-K", type=int, default=None, help="gradient steps K (default: the task's, 15)")
    sweep.add_argument("--lr", default=None,
                       help="learning rates eta, separated by commas (default: the task's, 1 for paper-tanh)")
    sweep.add_argument("--alpha", default=None, help="residual scales alpha, separated by commas (default 1)")
    sweep.add_argument("--activation", choices=ACTIVATIONS, default=None, help="unit activation (default: the task's)")
    sweep.add_argument("--dtype", choices=DTYPES, default="float32", help="floating-point type (default float32)")
    sweep.add_argument("--out", required=True, type=_directory, help="directory of the result store; created if missing")
    sweep.add_argument("--scheduler", default=None,
                       help="address of a Dask scheduler, e.g. tcp://127.0.0.1:8786 (default: run in this process)")

    from resnet_limits.sweeps.grid import DEFAULT_LIMIT_START, DEFAULT_LIMIT_TOL

    sweep.add_argument("--limit-tol", type=float, default=DEFAULT_LIMIT_TOL,
                       help="tolerance of the extrapolated large-D limit: largest estimate of the RMS error of its "
                            f"outputs f_k (default {DEFAULT_LIMIT_TOL})")
    sweep.add_argument("--limit-depth", type=int, default=DEFAULT_LIMIT_START.depth_points,
                       help=f"first depth points L' of the large-D extrapolation (default {DEFAULT_LIMIT_START.depth_points})")
    sweep.add_argument("--limit-particles", type=int, default=DEFAULT_LIMIT_START.particles,
                       help=f"first particles M' of the large-D extrapolation (default {DEFAULT_LIMIT_START.particles})")
    sweep.add_argument("--mean-ode-depth", type=int, default=LimitSettings.depth_points,
                       help=f"depth points L' of the fixed-D Mean ODE (default {LimitSettings.depth_points})")
    sweep.add_argument("--mean-ode-particles", type=int, default=LimitSettings.particles,
                       help=f"particles M' per depth point of the fixed-D Mean ODE (default {LimitSettings.particles})")
    sweep.add_argument("--memory-budget", type=float, default=DEFAULT_MEMORY_BUDGET_BYTES / 2**30,
                       help=MEMORY_BUDGET_HELP)
    sweep.add_argument("--jobs", "-j", type=int, default=None, help=JOBS_HELP)
    sweep.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    fit = commands.add_parser(
        "fit",
        help="fit the error laws and per-axis slopes to a sweep's results",
        description="Fit error^2 = a^2 W^2 + b^2 / D (+ c^2 / L^2 with --depth-term) at one step, where W is "
                    "sqrt(D/(L M)) for the embedding error and D/(L M) for the output error, with 95 % "
                    "intervals from the Jacobian; and the slope of log error against log L, M and D with the "
                    "other two fixed, with 95 % intervals.",
    )
    fit.add_argument("directory", type=_directory, help="result store of a sweep (its --out)")
    fit.add_argument("--reference", choices=("limit", "mean_ode"), default="limit",
                     help="errors against the large-D limit (default) or the fixed-D Mean ODE")
    fit.add_argument("--step", type=int, default=None, help="step k to fit (default: the last step K of completed runs)")
    fit.add_argument("--depth-term", action="store_true", help="fit the 1/L term too")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of tables")

    shape = commands.add_parser(
        "shape",
        help="print the shape (L, M, D) that the error bound prefers for a parameter budget",
        description="Print L, M and D with L M D about the budget on the bound's optimal path (exponents 1/6, "
                    "1/2, 1/3 for the embedding law, 1/5, 2/5, 2/5 for the output law), or on D = P^c with "
                    "--path c, and the bound's terms there.",
    )
    shape.add_argument("--budget", "-P", type=float, required=True, help="parameter budget P = L M D, e.g. 1e6")
    shape.add_argument("--law", choices=("embedding", "output"), default="embedding", help="error law (default embedding)")
    shape.add_argument("--path", default=None, help="D exponent c of a path D = P^c, e.g. 1/3 (default: the optimal one)")
    shape.add_argument("--json", action="store_true", help="print one JSON object")

    reproduce = commands.add_parser(
        "reproduce",
        help="recompute the figures of the paper's sweeps: PNG, SVG, Vega-Lite spec and Parquet data",
        description="Run the sweeps behind the named figures into OUT/sweeps (resumable like any sweep) and write "
                    "each figure as NAME.png, NAME.svg, NAME.vl.json and its data as NAME.parquet. The full grid "
                    "is L = 50, M and D over log:1:2000:20, 5 seeds; its largest shapes need --memory-budget 8.",
    )
    reproduce.add_argument("names", nargs="+", metavar="NAME", help="figure names, or all: " + ", ".join(FIGURE_NAMES))
    reproduce.add_argument("--out", required=True, type=_directory, help="directory for the figures and their sweeps")
    reproduce.add_argument("--quick", action="store_true",
                           help="M and D over log:1:64:4 and 2 seeds in place of the full grid")
    reproduce.add_argument("--scheduler", default=None, help="address of a Dask scheduler (default: run here)")
    reproduce.add_argument("--memory-budget", type=float, default=DEFAULT_MEMORY_BUDGET_BYTES / 2**30,
                           help=MEMORY_BUDGET_HELP)
    reproduce.add_argument("--jobs", "-j", type=int, default=None, help=JOBS_HELP)


def _directory(text: str) -> str:
    """Return a directory argument unchanged; reject an empty one, which would name the working directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"invalid directory {text!r}; give a path such as runs/sweep")
    return text


def _parse_floats(text: str | None, name: str, option: str) -> list[float | None]:
    if text is None:
        return [None]
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"invalid {name} {part!r}; set {option} to numbers separated by commas") from None
        value = check_positive_float(name, value, option)
        if value in values:
            raise ConfigError(f"invalid {option} {text!r}: {value:g} given more than once; give each value once")
        values.append(value)
    return values


def _parse_fraction(text: str, option: str) -> float:
    try:
        value = float(fractions.Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"invalid exponent {text!r}; set {option} to a number from 0 to 1, such as 1/3") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"exponent {text} is outside [0, 1]; set {option} to a number from 0 to 1, such as 1/3")
    return value


def _sweep_spec(args):
    from resnet_limits.sweeps import paths
    from resnet_limits.sweeps.grid import SweepSpec, TaskSettings, parse_axis

    check_positive_int("seed count", args.seeds, "--seeds")
    if args.seeds > MAX_SEED_COUNT:
        raise ConfigError(f"seed count must be at most {MAX_SEED_COUNT}, got {args.seeds}; set --seeds to a smaller "
                          "count, or run several sweeps into separate stores")
    settings = [
        TaskSettings(task=args.task, K=args.steps, learning_rate=lr, alpha=alpha, activation=args.activation,
                     dtype=args.dtype)
        for lr in _parse_floats(args.lr, "learning rate", "--lr")
        for alpha in _parse_floats(args.alpha, "alpha", "--alpha")
    ]
    tol = check_positive_float("limit tolerance", args.limit_tol, "--limit-tol", example=2e-3)
    limit_kwargs = dict(
        settings=tuple(settings),
        limit_tol=tol,
        limit_start=LimitSettings(args.limit_depth, args.limit_particles).validate(),
        mean_ode=LimitSettings(args.mean_ode_depth, args.mean_ode_particles).validate(),
    )
    seeds = range(args.seeds)
    if args.budgets is not None and args.path is None:
        raise ConfigError("--budgets sets the budgets of a --path sweep; add --path, such as --path 1/3, "
                          "or drop --budgets")
    if args.path is not None:
        if any(axis is not None for axis in (args.depth, args.width, args.dim)):
            raise ConfigError("--path sets L, M and D from the budgets; drop -L, -M and -D or drop --path")
        budgets = [check_positive_float("budget", value, "--budgets", example=1e6)
                   for value in _parse_floats(args.budgets or DEFAULT_BUDGETS, "budget", "--budgets")]
        return paths.path_spec(_parse_fraction(args.path, "--path"), budgets, seeds, **limit_kwargs)
    missing = [option for option, axis in (("-L", args.depth), ("-M", args.width), ("-D", args.dim)) if axis is None]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; give every axis ({AXIS_HELP}) or --path")
    return SweepSpec.product(
        parse_axis(args.depth, "L", "--depth"),
        parse_axis(args.width, "M", "--width"),
        parse_axis(args.dim, "D", "--dim"),
        seeds,
        **limit_kwargs,
    )


@contextlib.contextmanager
def stop_on_interrupt():
    """Turn the first Ctrl-C into a request to stop after the running group; a second one stops at once.

    Yields the function that returns whether a stop was requested. A KeyboardInterrupt raised
    inside XLA's callbacks was sometimes ignored, or crashed the process on exit, so the first
    SIGINT only sets a flag that the sweep reads between groups.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signal handlers need the main thread
        yield requested.is_set
        return

    def handle(signum, frame):
        if requested.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        requested.set()
        print("\nresnet-limits: stopping after the configurations in progress; press Ctrl-C again to stop at once",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _jobs(args) -> int | None:
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be 1 or more, got {args.jobs}; leave it out to use every CPU core")
    return args.jobs


def _interrupted(out) -> int:
    """Report a second Ctrl-C and return its exit status; exit at once if sweep threads still compute."""
    from resnet_limits.sweeps.runner import SWEEP_THREAD_PREFIX

    print(f"resnet-limits: interrupted; rerun the same command to resume from {out}", file=sys.stderr, flush=True)
    if any(thread.name.startswith(SWEEP_THREAD_PREFIX) and thread.is_alive() for thread in threading.enumerate()):
        # Every finished part is on disk. A group in a thread cannot be stopped, only abandoned.
        sys.stdout.flush()
        os._exit(130)
    return 130


def run_sweep_command(args) -> int:
    from resnet_limits.sweeps import run_sweep

    spec = _sweep_spec(args)
    budget = int(check_positive_float("memory budget", args.memory_budget, "--memory-budget", example=2) * 2**30)
    interactive = sys.stderr.isatty()

    def report(progress) -> None:
        if interactive:
            print(f"\r{progress.line()}{CLEAR_TO_END}", end="", file=sys.stderr, flush=True)
        else:
            print(progress.line(), file=sys.stderr, flush=True)

    try:
        with stop_on_interrupt() as should_stop:
            summary = run_sweep(spec, args.out, scheduler=args.scheduler, on_progress=report,
                                memory_budget_bytes=budget, should_stop=should_stop, jobs=_jobs(args))
    except KeyboardInterrupt:
        if interactive:
            print(file=sys.stderr)
        return _interrupted(args.out)
    except OSError as error:
        if args.scheduler is None:
            raise
        raise ConfigError(f"could not reach the Dask scheduler {args.scheduler!r}: {error}; check --scheduler") from None
    if interactive:
        print(file=sys.stderr)

    if args.json:
        print(json.dumps({"out": str(args.out), **dataclasses.asdict(summary)}, indent=1))
    elif summary.computed == 0:
        print(f"nothing to compute: all {summary.total} configurations are already in {args.out}")
    else:
        noun = "configuration" if summary.computed == 1 else "configurations"
        print(f"computed {summary.computed} {noun} in {summary.seconds:.1f} s, skipped {summary.skipped} "
              f"already in {args.out} ({summary.total} in all); {summary.failed} failed, {summary.diverged} diverged")
    return 0


def run_fit_command(args) -> int:
    from resnet_limits.sweeps import ResultStore, fits

    store = ResultStore(args.directory)
    store.spec()  # raises ConfigError when the directory is not a sweep
    runs = store.load()
    if args.step is not None:
        steps = runs["step"].dropna()
        last = int(steps.max()) if len(steps) else 0
        if not 0 <= args.step <= last:
            raise ConfigError(f"--step must be a recorded step, 0 to {last}, got {args.step}; "
                              f"omit --step to fit the last step")
    frame = fits.select_step(runs, args.step)
    result = {"directory": str(args.directory), "reference": args.reference, "step": args.step,
              "num_rows": len(frame), "laws": {}, "slopes": {}}
    for kind in ("embedding", "output"):
        column = fits.error_column(kind, args.reference)
        try:
            fit = fits.fit_error_law(frame, column, fits.law_named(kind), include_depth=args.depth_term)
            result["laws"][kind] = fit.to_dict()
        except ConfigError as error:
            result["laws"][kind] = {"error": str(error)}
        slopes = fits.axis_slopes(frame, column)
        result["slopes"][kind] = [] if slopes.empty else json.loads(slopes.to_json(orient="records"))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_fit(result)
    return 0


# The name of each --reference in the table.
REFERENCE_NAMES = {"limit": "large-D limit", "mean_ode": "fixed-D Mean ODE"}


def _interval(low, high) -> str:
    if low is None or high is None:
        return "-"
    return f"[{low:.3g}, {high:.3g}]"


def _print_fit(result: dict) -> None:
    step = "last step K" if result["step"] is None else f"step {result['step']}"
    reference = REFERENCE_NAMES[result["reference"]]
    print(f"{result['directory']}: {result['num_rows']} runs at {step}, errors against the {reference}")
    for kind in ("embedding", "output"):
        law = result["laws"][kind]
        print(f"\n{kind} error")
        if "error" in law:
            print(f"  no law fit: {law['error']}")
        else:
            print(f"  {'term':<16} {'constant':>10}  95 % interval   ({law['num_points']} points, "
                  f"residual std of log error {law['residual_std_log']:.3g})")
            for entry in law["constants"]:
                print(f"  {entry['formula']:<16} {entry['value']:>10.4g}  {_interval(entry['ci_low'], entry['ci_high'])}")
        slopes = result["slopes"][kind]
        if slopes:
            print(f"  {'axis':<4} {'fixed':<22} {'slope':>8}  95 % interval   points")
            for row in slopes:
                fixed = " ".join(f"{name}={row[name]:g}" for name in ("L", "M", "D") if name != row["axis"])
                print(f"  {row['axis']:<4} {fixed:<22} {row['slope']:>8.3f}  "
                      f"{_interval(row['ci_low'], row['ci_high']):<16} {row['num_points']}")


def run_shape_command(args) -> int:
    from resnet_limits.sweeps import fits, paths

    budget = args.budget
    if not math.isfinite(budget) or budget < 1:
        raise ConfigError(f"parameter budget must be a finite number >= 1, got {budget}; set --budget, e.g. 1e6")
    if budget > MAX_SHAPE_BUDGET:
        raise ConfigError(f"parameter budget must be at most {MAX_SHAPE_BUDGET:.0e}, got {budget:g}; "
                          "set --budget, e.g. 1e9")
    law = fits.law_named(args.law)
    if args.path is None:
        exponents = bounds.optimal_exponents(law.terms)
        shape = bounds.optimal_shape(budget, law)
    else:
        dim_exponent = _parse_fraction(args.path, "--path")
        exponents = paths.path_exponents(dim_exponent, law)
        shape = paths.path_shapes(dim_exponent, [budget], law)[0]
    terms = [
        {"term": term.name, "formula": term.formula, "value": float(term.value(shape.L, shape.M, shape.D)),
         "constant": constant, "weighted": float(constant * term.value(shape.L, shape.M, shape.D))}
        for term, constant in zip(law.terms, law.constants)
    ]
    result = {
        "law": law.name,
        "budget": budget,
        "shape": {"L": shape.L, "M": shape.M, "D": shape.D},
        "num_parameters": shape.num_parameters,
        # Rounded: the linear programs leave about 1e-12 of slack (0.199999999999 for 1/5).
        "exponents": {"L": round(exponents.depth, 9), "M": round(exponents.width, 9), "D": round(exponents.dim, 9)},
        "rate": round(exponents.rate, 9),
        "terms": terms,
        "bound": shape.bound,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    exps = ", ".join(_fraction_text(value) for value in (exponents.depth, exponents.width, exponents.dim))
    budget_text = f"{budget:.0f}" if float(budget).is_integer() else f"{budget:g}"
    print(f"{law.name} law, budget P = {budget_text}: L={shape.L} M={shape.M} D={shape.D} (P = {shape.num_parameters})")
    if abs(exponents.rate) < 1e-9:  # the linear programs leave about 1e-12 of slack
        trend = "does not decay with P (rate 0)"
    elif exponents.rate > 0:
        trend = f"decays as P^(-{_fraction_text(exponents.rate)})"
    else:
        trend = f"grows as P^({_fraction_text(-exponents.rate)})"
    print(f"exponents of P for L, M, D: {exps}; the bound {trend}")
    for term in terms:
        print(f"  {term['formula']:<16} = {term['value']:<10.4g} x {term['constant']:<5g} = {term['weighted']:.4g}")
    print(f"  bound (sum)      = {shape.bound:.4g}")
    return 0


def _fraction_text(value: float) -> str:
    """Return ``value`` as a fraction with a small denominator when it is one, else as a decimal."""
    fraction = fractions.Fraction(value).limit_denominator(24)
    if abs(float(fraction) - value) < 1e-9:
        return str(fraction)
    return f"{value:.4g}"


def run_reproduce_command(args) -> int:
    from resnet_limits import reproduce

    names = reproduce.resolve_names(args.names)
    budget = int(check_positive_float("memory budget", args.memory_budget, "--memory-budget", example=5) * 2**30)
    interactive = sys.stderr.isatty()

    def report(progress) -> None:
        if interactive:
            print(f"\r{progress.line()}{CLEAR_TO_END}", end="", file=sys.stderr, flush=True)
        else:
            print(progress.line(), file=sys.stderr, flush=True)

    grid = reproduce.QUICK_GRID if args.quick else reproduce.PAPER_GRID
    try:
        with stop_on_interrupt() as should_stop:
            written = reproduce.reproduce(names, args.out, grid=grid, scheduler=args.scheduler, on_progress=report,
                                          memory_budget_bytes=budget, should_stop=should_stop, jobs=_jobs(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return _interrupted(args.out)
    if interactive:
        print(file=sys.stderr)
    for path in written:
        print(path)
    return 0
