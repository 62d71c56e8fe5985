"""Sweep grids, the resumable result store, and the sweep runner here and on a Dask cluster."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jax

from resnet_limits import group_training, limits, metrics
from resnet_limits.config import ConfigError, LimitSettings, MemoryBudgetError, check_memory
from resnet_limits.experiment import Comparison, LimitCache
from resnet_limits.sweeps import (
    ResultStore,
    StoreBusyError,
    StoreMismatchError,
    SweepSpec,
    SweepStopped,
    TaskSettings,
    log_integers,
    parse_axis,
    run_sweep,
)
from resnet_limits.sweeps.grid import Configuration
from resnet_limits.sweeps.store import COLUMNS
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import coupled_embeddings, get_task
from resnet_limits.training import Trajectory, train

# Tiny limits: these tests check bookkeeping, not accuracy. D >= 10 = r keeps the fixed-D Mean ODE
# at one compiled shape.
LIMIT_KWARGS = dict(limit_tol=1.0, limit_start=LimitSettings(4, 256), mean_ode=LimitSettings(4, 64))
SETTINGS = (TaskSettings(K=2),)
DEPTHS, WIDTHS, DIMS, SEEDS = (2,), (2, 4), (12, 16), (0, 1)
CLI_AXES = ["-L", "2", "-M", "2,4", "-D", "12,16", "--seeds", "2", "-K", "2", "--limit-tol", "1",
            "--limit-depth", "4", "--limit-particles", "256", "--mean-ode-depth", "4", "--mean-ode-particles", "64"]


def small_spec(**kwargs) -> SweepSpec:
    arguments = dict(depths=DEPTHS, widths=WIDTHS, dims=DIMS, seeds=SEEDS, settings=SETTINGS, **LIMIT_KWARGS)
    arguments.update(kwargs)
    return SweepSpec.product(
        arguments.pop("depths"), arguments.pop("widths"), arguments.pop("dims"), arguments.pop("seeds"), **arguments
    )


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the frame without wall times, sorted, for exact comparison."""
    return frame.drop(columns=["wall_seconds"]).sort_values(["config_id", "step"], ignore_index=True)


def start_cli_sweep(out, *, stderr) -> subprocess.Popen:
    """Start ``resnet-limits sweep`` over ``CLI_AXES`` into ``out`` as a subprocess."""
    executable = Path(sys.executable).with_name("resnet-limits")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "resnet_limits.cli"]
    return subprocess.Popen([*command, "sweep", *CLI_AXES, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def wait_for_first_part(store: ResultStore, process: subprocess.Popen, seconds: float = 120) -> None:
    """Wait until the store has a part, the process has ended, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while not store.finished_ids() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-process run of ``small_spec``: its frame and its summary."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_sweep(small_spec(), out)
    return ResultStore(out).load(), summary


# -- grid -------------------------------------------------------------------------------------


def test_log_integers_paper_grid():
    values = log_integers(1, 2000, 20)
    assert values == [1, 2, 3, 4, 6, 9, 13, 19, 28, 41, 60, 89, 131, 193, 285, 421, 622, 918, 1355, 2000]


def test_log_integers_dense_range():
    assert log_integers(1, 5, 5) == [1, 2, 3, 4, 5]
    assert log_integers(7, 7, 1) == [7]


def test_log_integers_too_many():
    with pytest.raises(ConfigError, match="only 5 integers"):
        log_integers(1, 5, 6)


def test_parse_axis_forms():
    assert parse_axis("16,1,4", "M", "--width") == [1, 4, 16]
    assert parse_axis("log:1:2000:20", "D", "--dim") == log_integers(1, 2000, 20)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "axis is empty"),
        ("1,x", "integers separated by commas"),
        ("1,,2", "no empty entries"),
        ("4,", "no empty entries"),
        ("0,4", "set --dim to 1 or more"),
        ("4,16,4", "4 given more than once"),
        ("log:1:10", "log:START:STOP:COUNT"),
        ("log:a:10:3", "must be integers"),
    ],
)
def test_parse_axis_invalid(text, reason):
    with pytest.raises(ConfigError, match=re.escape(reason)):
        parse_axis(text, "D", "--dim")


def test_spec_groups_and_configurations():
    spec = small_spec()
    groups = spec.groups()
    assert len(groups) == len(DEPTHS) * len(WIDTHS) * len(DIMS)
    assert all(group.seeds == SEEDS for group in groups)
    assert len(spec.configurations()) == len(groups) * len(SEEDS)
    assert len({c.config_id for c in spec.configurations()}) == len(spec.configurations())


def test_config_id_stable_literal():
    configuration = Configuration(TaskSettings(K=2).resolved(), 2, 4, 12, 1)
    expected = {"task": "paper-tanh", "K": 2, "learning_rate": 1.0, "alpha": 1.0, "activation": "tanh",
                "dtype": "float32", "L": 2, "M": 4, "D": 12, "seed": 1}
    assert configuration.to_dict() == expected
    # The id names the configuration's part on disk, so it must not change between versions.
    assert configuration.config_id == "90872fef3768305f954d"


def test_spec_json_round_trip():
    spec = small_spec()
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_covers_superset_only():
    spec = small_spec()
    assert small_spec(seeds=(0, 1, 2)).covers(spec)
    assert not small_spec(seeds=(0,)).covers(spec)
    assert not small_spec(limit_tol=0.5).covers(spec)


# -- store ------------------------------------------------------------------------------------


def test_store_rejects_other_spec(tmp_path):
    ResultStore(tmp_path).open(small_spec())
    with pytest.raises(StoreMismatchError, match="different sweep"):
        ResultStore(tmp_path).open(small_spec(widths=(3,)))


def test_store_accepts_superset(tmp_path):
    ResultStore(tmp_path).open(small_spec())
    wider = small_spec(widths=(*WIDTHS, 16))
    assert ResultStore(tmp_path).open(wider) == wider
    assert ResultStore(tmp_path).spec() == wider


def test_store_rejects_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a sweep")
    with pytest.raises(StoreMismatchError, match="without manifest.json"):
        ResultStore(tmp_path).open(small_spec())


def test_store_writes_no_temporary_files(reference, tmp_path):
    frame, _ = reference
    store = ResultStore(tmp_path)
    store.open(small_spec())
    store.write_part("abc", frame.head(3))
    assert sorted(path.name for path in store.parts_dir.iterdir()) == ["abc.parquet"]
    assert store.finished_ids() == {"abc"}


def test_writer_removes_leftover_temporaries(tmp_path):
    store = ResultStore(tmp_path)
    store.open(small_spec())
    leftovers = [store.parts_dir / ".abc.parquet.q5imc7qn.tmp", tmp_path / "limits" / ".def.npz.x1y2z3.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    foreign_file = store.parts_dir / "notes.tmp"  # not a name that write_atomically makes
    foreign_file.write_text("not a temporary file")

    with store.writing():
        assert not [path for path in leftovers if path.exists()]
    assert foreign_file.exists()


def test_second_writer_rejected(tmp_path):
    with ResultStore(tmp_path).writing():
        with pytest.raises(StoreBusyError, match=f"another process is running a sweep into {tmp_path}"):
            run_sweep(small_spec(), tmp_path, trainer=lambda *arguments: pytest.fail("trained while busy"))
    assert os.listdir(tmp_path) == []  # no manifest was written, so the lock file went too


def test_rejected_sweep_leaves_directory_unchanged(tmp_path):
    (tmp_path / "notes.txt").write_text("not a sweep")
    with pytest.raises(StoreMismatchError, match="without manifest.json"):
        run_sweep(small_spec(), tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]


# -- runner -----------------------------------------------------------------------------------


def test_sweep_rows_and_columns(reference):
    frame, summary = reference
    spec = small_spec()
    assert summary.computed == len(spec.configurations())
    assert summary.failed == summary.diverged == summary.skipped == 0
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == len(spec.configurations()) * 3  # steps 0, 1, 2
    assert set(frame["status"]) == {"completed"}
    assert (frame["P"] == frame["L"] * frame["M"] * frame["D"]).all()
    for column in ("loss", "embedding_error_limit", "embedding_error_mean_ode", "output_error_limit",
                   "output_error_mean_ode"):
        assert np.isfinite(frame[column]).all(), column


def test_sweep_matches_comparison(reference):
    """The sweep's default trainer builds and trains the network that Comparison does."""
    frame, _ = reference
    config = TaskSettings(K=2).run_config(2, 4, 16, 1)
    comparison = Comparison(config, LimitSettings(4, 96), cache=LimitCache()).run()
    rows = frame[(frame["M"] == 4) & (frame["D"] == 16) & (frame["seed"] == 1)].sort_values("step")
    # The sweep's default trainer equals Comparison's training up to float32 rounding.
    np.testing.assert_allclose(rows["loss"].to_numpy(), [row["loss"] for row in comparison.rows], rtol=1e-5)

    # The sweep's fixed-D reference is one simulation of the Mean ODE (LimitSettings(4, 64)).
    task = get_task(config.task)
    key_embed, key_units = jax.random.split(jax.random.key(1))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, 16)
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
    mean_ode = limits.simulate_limit(
        problem, task, LimitSettings(4, 64), steps=2, learning_rate=1.0, alpha=1.0, activation="tanh", dtype="float32"
    )
    network = train(
        MLUResNet(w_embed, w_unembed, depth=2, width=4, key=key_units),
        task.x_DinxN, task.y_DoutxN, steps=2, learning_rate=1.0, loss_scale=task.loss_scale,
    )
    mean_ode_h = limits.to_stream(mean_ode.h_KxDxN, basis_DxK)
    expected = [metrics.embedding_error(network.h_KxDxN[k], mean_ode_h[k]) for k in range(3)]
    np.testing.assert_allclose(rows["embedding_error_mean_ode"].to_numpy(), expected, rtol=1e-4)


def test_resume_after_injected_stop(reference, tmp_path):
    """A sweep stopped after two groups and rerun trains only the rest, with identical rows."""
    trained_seeds = []

    def stopping_trainer(task, config, seeds):
        if len(trained_seeds) == 2 * len(SEEDS):
            raise KeyboardInterrupt  # not an Exception, so it stops the sweep as Ctrl-C would
        trained_seeds.extend(seeds)
        return group_training.train_group(task, config, seeds)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(small_spec(), tmp_path, trainer=stopping_trainer, jobs=1)
    assert len(ResultStore(tmp_path).finished_ids()) == 2 * len(SEEDS)

    def counting_trainer(task, config, seeds):
        trained_seeds.extend(seeds)
        return group_training.train_group(task, config, seeds)

    trained_seeds.clear()
    summary = run_sweep(small_spec(), tmp_path, trainer=counting_trainer)
    total = len(small_spec().configurations())
    assert summary.skipped == 2 * len(SEEDS)
    assert len(trained_seeds) == total - 2 * len(SEEDS)
    pd.testing.assert_frame_equal(comparable(ResultStore(tmp_path).load()), comparable(reference[0]), check_exact=True)


@pytest.mark.slow
def test_resume_after_sigkill(reference, tmp_path):
    """A sweep process killed with SIGKILL mid-way and rerun ends with the rows of an uninterrupted one."""
    process = start_cli_sweep(tmp_path, stderr=subprocess.DEVNULL)
    store = ResultStore(tmp_path)
    try:
        wait_for_first_part(store, process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    finished_at_kill = len(store.finished_ids())
    total = len(small_spec().configurations())
    assert 0 < finished_at_kill < total

    summary = run_sweep(small_spec(), tmp_path)
    assert summary.skipped == finished_at_kill
    assert summary.computed == total - finished_at_kill
    assert not [name for name in os.listdir(store.parts_dir) if not name.endswith(".parquet")]
    pd.testing.assert_frame_equal(comparable(store.load()), comparable(reference[0]), check_exact=True)


def test_rerun_computes_nothing(reference, tmp_path):
    run_sweep(small_spec(widths=(2,), dims=(12,)), tmp_path)
    calls = []
    summary = run_sweep(small_spec(widths=(2,), dims=(12,)), tmp_path,
                        trainer=lambda *arguments: calls.append(arguments))
    assert calls == []
    assert summary.computed == 0
    assert summary.skipped == len(SEEDS)


def test_unreadable_part_computed_again(reference, tmp_path):
    spec = small_spec(widths=(2,), dims=(12,))
    run_sweep(spec, tmp_path)
    store = ResultStore(tmp_path)
    damaged = sorted(store.parts_dir.glob("*.parquet"))[0]
    damaged.write_text("not a Parquet file")
    with pytest.raises(ConfigError, match=re.escape(f"cannot read {damaged}")):
        store.load()

    summary = run_sweep(spec, tmp_path)
    assert summary.computed == 1
    assert (store.parts_dir / (damaged.name + ".unreadable")).read_text() == "not a Parquet file"
    expected = reference[0][reference[0]["M"].eq(2) & reference[0]["D"].eq(12)]
    pd.testing.assert_frame_equal(comparable(store.load()), comparable(expected), check_exact=True)


def test_foreign_part_computed_again(reference, tmp_path):
    spec = small_spec(widths=(2,), dims=(12,))
    run_sweep(spec, tmp_path)
    store = ResultStore(tmp_path)
    first, second = sorted(store.parts_dir.glob("*.parquet"))
    second.write_bytes(first.read_bytes())  # valid Parquet, but the rows of another configuration
    with pytest.raises(ConfigError, match=f"belong to configuration {first.stem}, not {second.stem}"):
        store.load()

    summary = run_sweep(spec, tmp_path)
    assert summary.computed == 1
    expected = reference[0][reference[0]["M"].eq(2) & reference[0]["D"].eq(12)]
    pd.testing.assert_frame_equal(comparable(store.load()), comparable(expected), check_exact=True)


def test_damaged_limit_computed_again(reference, tmp_path):
    spec = small_spec(widths=(2,), dims=(12,), seeds=(0,))
    run_sweep(spec, tmp_path)
    store = ResultStore(tmp_path)
    (limit,) = (tmp_path / "limits").glob("*.npz")
    limit.write_bytes(limit.read_bytes()[:500])
    for part in store.parts_dir.glob("*.parquet"):
        part.unlink()

    summary = run_sweep(spec, tmp_path)
    assert summary.computed == 1
    assert (tmp_path / "limits" / (limit.name + ".unreadable")).exists()
    assert limit.exists()
    expected = reference[0][reference[0]["M"].eq(2) & reference[0]["D"].eq(12) & reference[0]["seed"].eq(0)]
    pd.testing.assert_frame_equal(comparable(store.load()), comparable(expected), check_exact=True)


def test_missing_store_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ResultStore(tmp_path / "nowhere").spec()


def test_invalid_manifest_named(tmp_path):
    run_sweep(small_spec(widths=(2,), dims=(12,), seeds=(0,)), tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ConfigError, match="manifest.json is not a valid manifest"):
        ResultStore(tmp_path).spec()


def test_failed_group_recorded(tmp_path):
    def failing_trainer(task, config, seeds):
        if config.M == 4:
            raise FloatingPointError("injected failure")
        return group_training.train_group(task, config, seeds)

    summary = run_sweep(small_spec(widths=(2, 4), dims=(12,)), tmp_path, trainer=failing_trainer)
    assert summary.failed == len(SEEDS)
    frame = ResultStore(tmp_path).load()
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == len(SEEDS)
    assert (failed["M"] == 4).all()
    assert failed["step"].isna().all()
    assert (failed["message"] == "FloatingPointError: injected failure").all()
    assert (frame[frame["M"] == 2]["status"] == "completed").all()

    rerun = run_sweep(small_spec(widths=(2, 4), dims=(12,)), tmp_path)
    assert rerun.computed == len(SEEDS)
    assert rerun.skipped == len(SEEDS)
    frame = ResultStore(tmp_path).load()
    assert set(frame["status"]) == {"completed"}
    assert ResultStore(tmp_path).failed_ids() == set()


def test_diverged_run_recorded(tmp_path):
    def diverging_trainer(task, config, seeds):
        trajectories = group_training.train_group(task, config, seeds)
        first = trajectories[0]
        # Keep steps 0 and 1, as training does when step 2 diverges.
        trajectories[0] = Trajectory(first.loss_K[:2], first.f_KxDoutxN[:2], first.h_KxDxN[:2], diverged_at=2)
        return trajectories

    summary = run_sweep(small_spec(widths=(2,), dims=(12,)), tmp_path, trainer=diverging_trainer)
    assert summary.diverged == 1
    frame = ResultStore(tmp_path).load()
    diverged = frame[frame["seed"] == 0]
    assert list(diverged["step"]) == [0, 1]
    assert set(diverged["status"]) == {"diverged"}
    assert set(diverged["diverged_at"]) == {2}
    assert len(frame[frame["seed"] == 1]) == 3


def test_memory_budget_checked_first(tmp_path):
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        run_sweep(small_spec(), tmp_path, memory_budget_bytes=1000)
    assert ResultStore(tmp_path).finished_ids() == set()


def test_trainer_memory_checked_first(tmp_path):
    # Training L = 50, M = D = 1000 needs about 1.2e9 bytes by the general estimate and about
    # 1.9e9 by the group trainer's plan (9 L D M floats per seed), which the sweep checks too.
    spec = small_spec(depths=(50,), widths=(1000,), dims=(1000,))
    with pytest.raises(MemoryBudgetError, match="seeds of shape L=50, M=1000, D=1000"):
        run_sweep(spec, tmp_path, memory_budget_bytes=1_500_000_000)
    assert not (tmp_path / "manifest.json").exists()


def test_progress_reports(tmp_path):
    reports = []
    run_sweep(small_spec(widths=(2,), dims=(12, 16)), tmp_path, on_progress=reports.append)
    assert [report.done for report in reports] == [0, 0, 2, 4]
    assert re.fullmatch(r"sweep 0/4 configurations  \d+ s elapsed  large-D limit of paper-tanh \(1 of 1\)",
                        reports[1].line())
    assert reports[-1].total == 4
    assert reports[-1].seconds_left == 0
    assert reports[-1].line().startswith("sweep 4/4 configurations")
    assert reports[-1].stage == ""


def test_progress_skips_stored_limit(tmp_path):
    run_sweep(small_spec(widths=(2,), dims=(12,)), tmp_path)
    reports = []
    run_sweep(small_spec(widths=(2,), dims=(12, 16)), tmp_path, on_progress=reports.append)
    assert [report.done for report in reports] == [2, 4]
    assert all(report.stage == "" for report in reports)


@pytest.mark.slow
def test_dask_cluster_matches_in_process(reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                       dashboard_address=None)
    try:
        summary = run_sweep(small_spec(), tmp_path, scheduler=cluster.scheduler_address)
    finally:
        cluster.close()
    assert summary.computed == len(small_spec().configurations())
    pd.testing.assert_frame_equal(comparable(ResultStore(tmp_path).load()), comparable(reference[0]), check_exact=True)


def test_real_divergence_recorded(reference, tmp_path):
    """At eta = 1e6 the network and the large-D limit both diverge; the sweep records it and goes on."""
    spec = small_spec(widths=(2,), dims=(12,), seeds=(0,), settings=(TaskSettings(K=3, learning_rate=1e6),))
    start = time.perf_counter()
    summary = run_sweep(spec, tmp_path)
    # The tolerance search stops at the divergence instead of growing L' and M' to their maximum.
    assert time.perf_counter() - start < 60
    assert summary.diverged == 1
    frame = ResultStore(tmp_path).load()
    assert set(frame["status"]) == {"diverged"}
    assert len(frame) == frame["diverged_at"].iloc[0]
    assert list(frame["step"]) == list(range(len(frame)))


def test_stop_request_ends_after_group(reference, tmp_path):
    groups_done = []

    def counting_trainer(task, config, seeds):
        groups_done.append(config.M)
        return group_training.train_group(task, config, seeds)

    with pytest.raises(SweepStopped):
        run_sweep(small_spec(), tmp_path, trainer=counting_trainer, should_stop=lambda: len(groups_done) == 2, jobs=1)

    assert len(groups_done) == 2
    assert len(ResultStore(tmp_path).finished_ids()) == 2 * len(SEEDS)


class ConcurrencyCounter:
    """A group trainer that records how many groups it trained at the same time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.groups = 0

    def __call__(self, task, config, seeds):
        with self.lock:
            self.running += 1
            self.groups += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(0.2)  # long enough for a second thread to start its group meanwhile
            return group_training.train_group(task, config, seeds)
        finally:
            with self.lock:
                self.running -= 1


def group_estimate() -> int:
    """Return the memory estimate that the sweep gives every group of ``small_spec``."""
    spec = small_spec()
    task = get_task("paper-tanh")
    estimates = {check_memory(group.run_config(), task.num_samples, spec.mean_ode, task.span_dim)
                 for group in spec.groups()}
    assert len(estimates) == 1  # the Mean ODE's estimate, the same for every group
    return estimates.pop()


def test_threads_give_rows_of_one_job(reference, tmp_path):
    run_sweep(small_spec(), tmp_path, jobs=1)
    pd.testing.assert_frame_equal(comparable(ResultStore(tmp_path).load()), comparable(reference[0]),
                                  check_exact=True)


@pytest.mark.parametrize(("budget_groups", "max_running"), [(2.0, 2), (1.5, 1)])
def test_threads_stay_within_memory_budget(reference, tmp_path, budget_groups, max_running):
    counter = ConcurrencyCounter()
    budget = int(budget_groups * group_estimate())
    summary = run_sweep(small_spec(), tmp_path, trainer=counter, jobs=2, memory_budget_bytes=budget)
    assert summary.computed == len(small_spec().configurations())
    assert counter.max_running == max_running


def test_stop_request_with_threads(reference, tmp_path):
    """With two threads, a stop request lets both running groups finish and starts no other."""
    counter = ConcurrencyCounter()
    with pytest.raises(SweepStopped):
        run_sweep(small_spec(), tmp_path, trainer=counter, jobs=2, should_stop=lambda: counter.groups >= 1)
    assert counter.groups == 2
    assert len(ResultStore(tmp_path).finished_ids()) == 2 * len(SEEDS)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_invalid(tmp_path, jobs):
    with pytest.raises(ConfigError, match=f"jobs must be a whole number of 1 or more, got {jobs!r}"):
        run_sweep(small_spec(), tmp_path, jobs=jobs)
    assert not tmp_path.joinpath("manifest.json").exists()


@pytest.mark.slow
def test_sigint_stops_sweep_cleanly(tmp_path):
    """The first SIGINT lets the running group finish, keeps every part and exits with status 130."""
    process = start_cli_sweep(tmp_path, stderr=subprocess.PIPE)
    store = ResultStore(tmp_path)
    try:
        wait_for_first_part(store, process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()

    assert process.returncode == 130, err
    assert "stopping after the configurations in progress" in err
    assert "rerun the same command to resume" in err
    finished = len(store.finished_ids())
    assert 0 < finished < len(small_spec().configurations())
