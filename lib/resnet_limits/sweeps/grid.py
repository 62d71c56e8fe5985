"""Sweep grids: shapes (L, M, D) times seeds times task settings, and their groups.

A ``SweepSpec`` lists shapes, seeds and task settings. Its configurations are their product, one
training run each. Configurations that share a shape and task settings form a ``Group``, which
one call of a group trainer trains over all its seeds. Each configuration has a stable id, a
SHA-256 hash of its settings as canonical JSON, which names its part in the result store.

A sequence task (``seq-tanh``) makes every configuration a Transformer (``RunConfig.arch``
"transformer"). Its width axis M sets the heads per layer and the perceptron width together,
H = M, as the Transformer explorer does, and d_k = d_v = 2 (the RunConfig defaults). The shape
(L, M, D) and the configuration ids then keep the form of a ResNet sweep.

Axis syntax (``parse_axis``): ``1,4,16`` is a list, ``log:1:2000:20`` is 20 log-spaced distinct
integers from 1 to 2000 (``log_integers``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math

from resnet_limits.config import ConfigError, LimitSettings, RunConfig, check_positive_int
from resnet_limits.tasks import TASKS, get_task

# Tolerance of the extrapolated large-D limit: an estimate of the RMS error of its outputs f_k,
# at the worst step. It is below the smallest output errors of the paper's grid (about 0.01).
DEFAULT_LIMIT_TOL = 2e-3
# Coarsest L' and M' of the large-D extrapolation before the tolerance search grows them.
DEFAULT_LIMIT_START = LimitSettings(depth_points=32, particles=1024)


def log_integers(start: int, stop: int, count: int) -> list[int]:
    """Return ``count`` distinct integers from ``start`` to ``stop``, about evenly spaced in log.

    Rounding a log-spaced grid repeats small integers, so a repeated value is raised to one more
    than its predecessor, and the tail is re-spaced in log from there.
    Raises ConfigError when fewer than ``count`` integers lie in [start, stop].
    """
    check_positive_int("start", start, "the first value of a log: axis")
    check_positive_int("count", count, "the count of a log: axis")
    if stop < start:
        raise ConfigError(f"log axis from {start} to {stop} is empty; give the smaller value first")
    if stop - start + 1 < count:
        raise ConfigError(
            f"only {stop - start + 1} integers lie from {start} to {stop}, fewer than the {count} requested; "
            "lower the count or widen the range"
        )
    if count == 1:
        return [int(start)]
    values = [int(start)]
    for index in range(1, count):
        remaining = count - index
        # The rest of the grid spaced in log from the last value to ``stop``.
        candidate = round(math.exp(math.log(values[-1]) + (math.log(stop) - math.log(values[-1])) / remaining))
        values.append(max(values[-1] + 1, min(candidate, stop - remaining + 1)))
    return values


def parse_axis(text: str, name: str, option: str) -> list[int]:
    """Parse an axis of positive integers: ``a,b,c`` or ``log:START:STOP:COUNT``."""
    text = text.strip()
    if text.startswith("log:"):
        parts = text.split(":")
        if len(parts) != 4:
            raise ConfigError(f"invalid {name} axis {text!r}; write log:START:STOP:COUNT, e.g. log:1:2000:20")
        try:
            start, stop, count = (int(part) for part in parts[1:])
        except ValueError:
            raise ConfigError(
                f"invalid {name} axis {text!r}; START, STOP and COUNT of {option} log:START:STOP:COUNT "
                "must be integers"
            ) from None
        return log_integers(start, stop, count)
    if not text:
        raise ConfigError(f"{name} axis is empty; set {option} to at least one integer")
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"invalid {name} axis {text!r}; set {option} to integers separated by commas (1,4,16) or "
            "log:START:STOP:COUNT, with no empty entries"
        ) from None
    for value in values:
        check_positive_int(name, value, option)
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ConfigError(
            f"invalid {name} axis {text!r}: {', '.join(map(str, repeated))} given more than once; "
            f"list each value of {option} once"
        )
    return sorted(values)


@dataclasses.dataclass(frozen=True, order=True)
class TaskSettings:
    """The settings of a configuration other than its shape and seed; None takes the task's default."""

    task: str = "paper-tanh"
    K: int | None = None
    learning_rate: float | None = None
    alpha: float | None = None
    activation: str | None = None
    dtype: str = "float32"

    def resolved(self) -> TaskSettings:
        """Return a copy with the task defaults filled in, validated as RunConfig validates them."""
        config = self.run_config(1, 1, 1, 0)
        return TaskSettings(
            config.task, config.K, config.learning_rate, config.alpha, config.activation, config.dtype
        )

    def run_config(self, L: int, M: int, D: int, seed: int) -> RunConfig:
        """Return the resolved RunConfig of one configuration with these settings.

        A sequence task gives a Transformer with H = M heads per layer.
        """
        if self.task in TASKS and get_task(self.task).num_tokens is not None:
            transformer = {"arch": "transformer", "H": M}
        else:
            transformer = {}
        return RunConfig(
            task=self.task,
            L=L,
            M=M,
            D=D,
            K=self.K,
            learning_rate=self.learning_rate,
            alpha=self.alpha,
            activation=self.activation,
            seed=seed,
            dtype=self.dtype,
            **transformer,
        ).resolved()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One training run of a sweep: task settings, shape and seed."""

    settings: TaskSettings
    L: int
    M: int
    D: int
    seed: int

    def to_dict(self) -> dict:
        return {**self.settings.to_dict(), "L": self.L, "M": self.M, "D": self.D, "seed": self.seed}

    @property
    def config_id(self) -> str:
        """The first 20 hex digits of the SHA-256 of the configuration as canonical JSON."""
        return stable_hash(self.to_dict())


@dataclasses.dataclass(frozen=True)
class Group:
    """Configurations that differ only in their seed; one trainer call runs them all."""

    settings: TaskSettings
    L: int
    M: int
    D: int
    seeds: tuple[int, ...]

    def configurations(self) -> list[Configuration]:
        return [Configuration(self.settings, self.L, self.M, self.D, seed) for seed in self.seeds]

    def run_config(self) -> RunConfig:
        """Return the RunConfig of the group with the seed of its first configuration."""
        return self.settings.run_config(self.L, self.M, self.D, self.seeds[0])


def stable_hash(data: dict) -> str:
    """Return the first 20 hex digits of the SHA-256 of ``data`` as canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A sweep: shapes x seeds x task settings, and the settings of the two limits.

    The large-D limit is the Richardson-extrapolated estimate of
    ``limits.extrapolation.estimate_limit``, started at ``limit_start`` and refined until its error
    estimate is below ``limit_tol`` (one extrapolation at ``limit_start`` when ``limit_tol`` is
    None). The fixed-D Mean ODE is one plain particle simulation, ``limits.simulate_limit``, with
    ``mean_ode`` (by default the LimitSettings defaults, 64 depth points x 4096 particles).
    """

    shapes: tuple[tuple[int, int, int], ...]  # (L, M, D) triples
    seeds: tuple[int, ...]
    settings: tuple[TaskSettings, ...] = (TaskSettings(),)
    limit_tol: float | None = DEFAULT_LIMIT_TOL
    limit_start: LimitSettings = DEFAULT_LIMIT_START
    mean_ode: LimitSettings = LimitSettings()

    @classmethod
    def product(cls, depths, widths, dims, seeds, settings=(TaskSettings(),), **kwargs) -> SweepSpec:
        """Return the spec of every (L, M, D) in depths x widths x dims."""
        shapes = tuple(itertools.product(depths, widths, dims))
        return cls(shapes=shapes, seeds=tuple(seeds), settings=tuple(settings), **kwargs).validated()

    def validated(self) -> SweepSpec:
        """Return a copy with sorted, distinct, resolved entries; raise ConfigError on a bad one."""
        if not self.shapes:
            raise ConfigError("the sweep has no shapes; give at least one value for each of L, M and D")
        if not self.seeds:
            raise ConfigError("the sweep has no seeds; set the seed count to 1 or more")
        if not self.settings:
            raise ConfigError("the sweep has no task settings; give at least one")
        shapes = []
        for shape in self.shapes:
            L, M, D = (int(value) for value in shape)
            for name, value, option in (("L", L, "--depth"), ("M", M, "--width"), ("D", D, "--dim")):
                check_positive_int(name, value, option)
            shapes.append((L, M, D))
        settings = sorted({entry.resolved() for entry in self.settings})
        for seed in self.seeds:
            TaskSettings().run_config(1, 1, 1, seed)  # validates the seed
        if self.limit_tol is not None and not (math.isfinite(self.limit_tol) and self.limit_tol > 0):
            raise ConfigError(f"limit tolerance must be positive, got {self.limit_tol}; set --limit-tol to e.g. 2e-3")
        self.limit_start.validate()
        self.mean_ode.validate()
        return dataclasses.replace(
            self,
            shapes=tuple(sorted(set(shapes))),
            seeds=tuple(sorted({int(seed) for seed in self.seeds})),
            settings=tuple(settings),
        )

    def groups(self) -> list[Group]:
        """Return the groups, ordered by task settings, then D, then L and M."""
        ordered = sorted(self.shapes, key=lambda shape: (shape[2], shape[0], shape[1]))
        return [
            Group(settings, L, M, D, self.seeds) for settings in self.settings for (L, M, D) in ordered
        ]

    def configurations(self) -> list[Configuration]:
        return [configuration for group in self.groups() for configuration in group.configurations()]

    def limit_dict(self) -> dict:
        """Return the limit settings, which must agree for a store to be resumed."""
        return {
            "limit_tol": self.limit_tol,
            "limit_start": dataclasses.asdict(self.limit_start),
            "mean_ode": dataclasses.asdict(self.mean_ode),
        }

    def to_dict(self) -> dict:
        """Return the spec as plain JSON-ready data."""
        return {
            "shapes": [list(shape) for shape in self.shapes],
            "seeds": list(self.seeds),
            "settings": [entry.to_dict() for entry in self.settings],
            **self.limit_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SweepSpec:
        return cls(
            shapes=tuple(tuple(shape) for shape in data["shapes"]),
            seeds=tuple(data["seeds"]),
            settings=tuple(TaskSettings(**entry) for entry in data["settings"]),
            limit_tol=data["limit_tol"],
            limit_start=LimitSettings(**data["limit_start"]),
            mean_ode=LimitSettings(**data["mean_ode"]),
        ).validated()

    def covers(self, other: SweepSpec) -> bool:
        """Return True when every configuration of ``other`` is one of this spec's, under the same limits."""
        if self.limit_dict() != other.limit_dict():
            return False
        mine = {configuration.config_id for configuration in self.configurations()}
        return all(configuration.config_id in mine for configuration in other.configurations())

