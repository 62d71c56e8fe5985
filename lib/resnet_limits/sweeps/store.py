"""A resumable on-disk store of sweep results: one Parquet part per finished configuration.

Layout of a store directory:

    manifest.json             the SweepSpec (JSON) that the store was made for
    parts/<config_id>.parquet all steps of one configuration, one row per step
    limits/<hash>.npz         large-D limit trajectories, NumPy archives without pickle
    .lock                     held by the one process that writes to the store

Every file is written to a temporary file in its own directory and moved into place with
``os.replace``, so a reader or a restarted sweep finds either the whole file or none of it.
A process killed during such a write leaves its temporary file behind, and the next writer
removes it once it holds the lock. A configuration whose part exists is finished, whatever its status.
A part or limit that cannot be read, or a part whose rows are not its configuration's (damaged
or replaced after it was written), is renamed with the suffix ``.unreadable`` by the next sweep,
which computes it again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from resnet_limits.config import ConfigError
from resnet_limits.files import write_atomically
from resnet_limits.sweeps.grid import SweepSpec, stable_hash
from resnet_limits.training import Trajectory

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTS = "parts"
LIMITS = "limits"
LOCK = ".lock"
# Names of the temporary files of write_atomically: ".<final name>.<random>.tmp".
TEMPORARY_PATTERN = ".*.tmp"
UNREADABLE_SUFFIX = ".unreadable"
# The columns that every part has, whatever version of the store wrote it.
PART_KEY_COLUMNS = ("config_id", "step", "status")

# Columns of every part, in order. A failed configuration has one row with a missing step.
COLUMNS = (
    "config_id",
    "task",
    "K",
    "learning_rate",
    "alpha",
    "activation",
    "dtype",
    "L",
    "M",
    "D",
    "seed",
    "P",
    "step",
    "loss",
    "embedding_error_mean_ode",
    "embedding_error_limit",
    "output_error_mean_ode",
    "output_error_limit",
    "status",
    "diverged_at",
    "wall_seconds",
    "limit_error_estimate",
    "message",
)

_DTYPES = {
    "K": "int64",
    "L": "int64",
    "M": "int64",
    "D": "int64",
    "seed": "int64",
    "P": "int64",
    "step": "Int64",
    "diverged_at": "Int64",
    "learning_rate": "float64",
    "alpha": "float64",
    "loss": "float64",
    "embedding_error_mean_ode": "float64",
    "embedding_error_limit": "float64",
    "output_error_mean_ode": "float64",
    "output_error_limit": "float64",
    "wall_seconds": "float64",
    "limit_error_estimate": "float64",
}


class StoreMismatchError(ConfigError):
    """A store made for a sweep spec that the requested spec does not cover."""


class StoreBusyError(ConfigError):
    """A store that another process is writing to."""


def rows_to_frame(rows: list[dict]) -> pd.DataFrame:
    """Return ``rows`` as a frame with the store's columns and column types."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype(_DTYPES)



def _check_part(path: Path) -> None:
    """Raise ValueError or OSError unless ``path`` is a Parquet part of the configuration its name gives."""
    missing = [name for name in PART_KEY_COLUMNS if name not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"columns {', '.join(missing)} are missing")
    ids = set(pq.read_table(path, columns=["config_id"]).column("config_id").to_pylist())
    if ids != {path.stem}:
        raise ValueError(f"its rows belong to configuration {', '.join(sorted(map(str, ids))) or 'none'}, "
                         f"not {path.stem}")


def _read_part(path: Path) -> pd.DataFrame:
    try:
        _check_part(path)
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot read {path} ({error}); run the sweep command again, which sets the file aside and "
            "computes its configuration anew"
        ) from None


def _set_aside(path: Path, error: Exception, next_step: str) -> Path:
    """Rename an unreadable store file with UNREADABLE_SUFFIX, log why, and return its new path."""
    aside = path.with_name(path.name + UNREADABLE_SUFFIX)
    os.replace(path, aside)
    logger.warning("cannot read %s (%s); renamed it to %s and %s", path, error, aside.name, next_step)
    return aside


class ResultStore:
    """The result directory of one sweep."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def parts_dir(self) -> Path:
        return self.path / PARTS

    def open(self, spec: SweepSpec) -> SweepSpec:
        """Create the store for ``spec``, or check that an existing one can be resumed with it.

        A spec can resume a store when it has the same limit settings and every configuration of
        the store's spec. The manifest then records the new spec.
        Raises StoreMismatchError otherwise.
        """
        spec = spec.validated()
        manifest = self.path / MANIFEST
        if manifest.exists():
            previous = self.spec()
            if not spec.covers(previous):
                raise StoreMismatchError(
                    f"the store {self.path} was made for a different sweep (its limit settings, shapes, seeds or "
                    "task settings are not all in the new one); choose a new --out directory, or repeat the "
                    f"sweep recorded in {manifest}"
                )
        elif self.path.exists() and any(entry.name != LOCK for entry in self.path.iterdir()):
            raise StoreMismatchError(
                f"{self.path} is a non-empty directory without {MANIFEST}; choose an empty or new --out directory"
            )
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        (self.path / LIMITS).mkdir(exist_ok=True)
        text = json.dumps({"format": 1, "spec": spec.to_dict()}, indent=1)
        write_atomically(manifest, lambda temporary: Path(temporary).write_text(text))
        return spec

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's write lock, after removing the temporary files of killed writers.

        Creates the directory when it is missing, and removes it again (and the lock file) when
        the block leaves no manifest, so a rejected sweep leaves nothing behind. Raises
        StoreBusyError when another process holds the lock: two sweeps writing to one store
        would compute the same configurations twice.
        """
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.path))
        if self.path.is_symlink() and not self.path.exists():
            raise FileNotFoundError(errno.ENOENT, "it is a link to a missing path", str(self.path))
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusyError(
                    f"another process is running a sweep into {self.path}; wait for it to finish (its "
                    "finished configurations are then skipped here), or choose another --out directory"
                ) from None
            try:
                for directory in (self.parts_dir, self.path / LIMITS):
                    for temporary in directory.glob(TEMPORARY_PATTERN):
                        temporary.unlink(missing_ok=True)
                yield
            finally:
                if not (self.path / MANIFEST).exists():
                    lock.unlink(missing_ok=True)
                    if created:
                        self.path.rmdir()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def spec(self) -> SweepSpec:
        """Return the spec recorded in the manifest."""
        manifest = self.path / MANIFEST
        if not self.path.exists():
            raise ConfigError(f"{self.path} does not exist; pass the --out directory of a sweep")
        if not manifest.exists():
            raise ConfigError(f"{self.path} has no {MANIFEST}; pass the --out directory of a sweep")
        try:
            return SweepSpec.from_dict(json.loads(manifest.read_text())["spec"])
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(
                f"{manifest} is not a valid manifest ({type(error).__name__}: {error}); restore it from a copy, "
                "or run the sweep into a new --out directory"
            ) from None

    def part_path(self, config_id: str) -> Path:
        return self.parts_dir / f"{config_id}.parquet"

    def finished_ids(self) -> set[str]:
        """Return the ids of the configurations that have a part."""
        if not self.parts_dir.exists():
            return set()
        return {path.stem for path in self.parts_dir.glob("*.parquet")}

    def failed_ids(self) -> set[str]:
        """Return the ids of the configurations whose part records a failure."""
        frame = self.load()
        return set(frame.loc[frame["status"] == "failed", "config_id"])

    def set_aside_unreadable_parts(self) -> list[Path]:
        """Rename every part that is not a readable part of its configuration; return the new paths.

        Their configurations then count as not finished. Call it while holding the lock.
        """
        moved = []
        for path in sorted(self.parts_dir.glob("*.parquet")) if self.parts_dir.exists() else []:
            try:
                _check_part(path)
            except (OSError, ValueError) as error:
                moved.append(_set_aside(path, error, "computing its configuration again"))
        return moved

    def write_part(self, config_id: str, frame: pd.DataFrame) -> Path:
        """Write the rows of one configuration atomically and return the part's path."""
        path = self.part_path(config_id)
        write_atomically(path, lambda temporary: frame.to_parquet(temporary, index=False))
        return path

    def load(self) -> pd.DataFrame:
        """Return every part as one frame, sorted by configuration and step."""
        paths = sorted(self.parts_dir.glob("*.parquet")) if self.parts_dir.exists() else []
        if not paths:
            return rows_to_frame([])
        frame = pd.concat([_read_part(path) for path in paths], ignore_index=True)
        return frame.sort_values(["config_id", "step"], ignore_index=True)

    # -- large-D limit trajectories -----------------------------------------------------------

    def limit_path(self, key: dict) -> Path:
        return self.path / LIMITS / f"{stable_hash(key)}.npz"

    def load_limit(self, key: dict) -> tuple[Trajectory, float] | None:
        """Return a stored limit trajectory and its error estimate, or None.

        A damaged archive is renamed with UNREADABLE_SUFFIX and gives None. Call it while holding the lock.
        """
        path = self.limit_path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                diverged_at = int(archive["diverged_at"])
                trajectory = Trajectory(
                    loss_K=archive["loss_K"],
                    f_KxDoutxN=archive["f_KxDoutxN"],
                    h_KxDxN=archive["h_KxDxN"],
                    diverged_at=None if diverged_at < 0 else diverged_at,
                )
                return trajectory, float(archive["error_estimate"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            # A damaged archive is set aside, so the caller computes the limit again.
            _set_aside(path, error, "computing the limit again")
            return None

    def save_limit(self, key: dict, trajectory: Trajectory, error_estimate: float) -> None:
        path = self.limit_path(key)
        diverged_at = -1 if trajectory.diverged_at is None else trajectory.diverged_at

        def write(temporary):
            with open(temporary, "wb") as file:
                np.savez(
                    file,
                    loss_K=trajectory.loss_K,
                    f_KxDoutxN=trajectory.f_KxDoutxN,
                    h_KxDxN=trajectory.h_KxDxN,
                    diverged_at=np.int64(diverged_at),
                    error_estimate=np.float64(error_estimate),
                )

        write_atomically(path, write)
