"""The worker process's protocol: requests in, JSON messages out, equal to a run in this process."""

import asyncio
import dataclasses
import io
import json
import math
import re
import time

import numpy as np
import pandas as pd
import pytest

from resnet_limits.config import LimitSettings, RunConfig
from resnet_limits.experiment import Comparison, LimitCache
from resnet_limits.worker import CallFailed, ComparisonWorker, from_json_value, resolve_function, serve

CONFIG = RunConfig(L=4, M=8, D=8, K=3)
SETTINGS = LimitSettings(depth_points=4, particles=96)


def _request(kind: str, run_id: int, **fields) -> str:
    return json.dumps({"type": kind, "id": run_id, **fields}) + "\n"


def _run_request(run_id: int, config: RunConfig = CONFIG) -> str:
    return _request(
        "run",
        run_id,
        config=dataclasses.asdict(config),
        limit_settings=dataclasses.asdict(SETTINGS),
        memory_budget_bytes=2**30,
    )


def test_serve_orders_runs_and_early_cancel():
    requests = io.StringIO(
        _run_request(1)
        + _request("cancel", 2)
        + _run_request(2)
        + _run_request(3, dataclasses.replace(CONFIG, learning_rate=-1.0))
    )
    output = io.StringIO()

    serve(requests, output)

    messages = [json.loads(line) for line in output.getvalue().splitlines()]
    assert messages[0] == {"type": "ready"}
    finals = [(m["type"], m["id"]) for m in messages if m["type"] != "progress" and "id" in m]
    assert finals == [("finished", 1), ("cancelled", 2), ("failed", 3)]
    assert "learning_rate must be positive and finite, got -1.0" in messages[-1]["error"]

    reference = Comparison(CONFIG, SETTINGS, cache=None).run()
    progress = [m for m in messages if m["type"] == "progress"]
    assert [m["row"] for m in progress if m["row"] is not None] == reference.rows
    assert [m["done"] for m in progress] == list(range(1, progress[0]["total"] + 1))
    finished = next(m for m in messages if m["type"] == "finished")
    assert finished["state"]["status"] == "completed"
    assert finished["state"]["diverged_at"] is None
    assert set(finished["state"]["limit_error_estimate"]) == {"large-D", "fixed-D"}


def test_worker_ends_with_its_input():
    worker = ComparisonWorker()

    async def run():
        run_id = worker.submit(CONFIG, SETTINGS)
        return [message async for message in worker.messages(run_id)]

    messages = asyncio.run(run())

    assert messages[-1]["type"] == "finished"
    assert worker.ready
    reference = Comparison(CONFIG, SETTINGS, cache=None).run()
    assert [m["row"] for m in messages if m.get("row") is not None] == reference.rows

    process = worker._process
    process.stdin.close()  # as when the parent exits
    assert process.wait(timeout=10) == 0


def test_limit_cache_directory_reloads(tmp_path):
    first = Comparison(CONFIG, SETTINGS, cache=LimitCache(directory=tmp_path)).run()
    assert len(list(tmp_path.glob("limit-*.npz"))) == 2

    # A new cache on the same directory, as in a restarted worker, computes no limit.
    cache = LimitCache(directory=tmp_path)
    second = Comparison(CONFIG, SETTINGS, cache=cache)
    events = list(second.events())

    assert [event.stage for event in events] == ["training"] * (CONFIG.K + 1)
    assert second.rows == first.rows
    assert second.to_dict()["limit_error_estimate"] == first.to_dict()["limit_error_estimate"]
    assert list(tmp_path.glob("*.tmp")) == []


def test_serve_sends_a_snapshot_equal_to_one_computed_here():
    from resnet_limits.coordinates import coordinate_snapshot, snapshot_from_json

    step = 2
    request = _run_request(1)
    request = json.dumps(dict(json.loads(request), type="snapshot", step=step)) + "\n"
    output = io.StringIO()

    serve(io.StringIO(request), output, LimitCache())

    messages = [json.loads(line) for line in output.getvalue().splitlines()]
    assert [m["type"] for m in messages if m["type"] != "progress"] == ["ready", "snapshot", "finished"]
    rows = [m["row"] for m in messages if m["type"] == "progress" and m["row"] is not None]
    assert [row["step"] for row in rows] == list(range(step + 1))
    snapshot = snapshot_from_json(next(m for m in messages if m["type"] == "snapshot")["snapshot"])

    reference = coordinate_snapshot(CONFIG, SETTINGS, step=step, cache=None)
    assert snapshot.step == reference.step == step
    np.testing.assert_allclose(snapshot.network.forward_SxDxN, reference.network.forward_SxDxN, rtol=1e-6)
    np.testing.assert_allclose(snapshot.network.backward_SxDxN, reference.network.backward_SxDxN, rtol=1e-6)
    assert set(snapshot.limits) == set(reference.limits) == {"large-D", "fixed-D"}
    for kind, limit in reference.limits.items():
        np.testing.assert_allclose(snapshot.limits[kind].basis_DxK, limit.basis_DxK, rtol=1e-6)
        np.testing.assert_allclose(
            snapshot.limits[kind].streams.forward_SxDxN, limit.streams.forward_SxDxN, rtol=1e-5, atol=1e-6
        )


def test_snapshot_json_round_trip_keeps_float32_values():
    from resnet_limits.coordinates import coordinate_snapshot, snapshot_from_json, snapshot_to_json

    snapshot = coordinate_snapshot(CONFIG, SETTINGS, step=1, cache=None)
    decoded = snapshot_from_json(json.loads(json.dumps(snapshot_to_json(snapshot))))

    assert decoded.step == 1
    assert decoded.network.forward_SxDxN.dtype == np.float32
    np.testing.assert_array_equal(decoded.network.forward_SxDxN, snapshot.network.forward_SxDxN.astype(np.float32))
    np.testing.assert_array_equal(decoded.network.depth_s, snapshot.network.depth_s.astype(np.float32))
    assert decoded.network.loss == snapshot.network.loss


def _calls(requests: str, functions: dict) -> list[dict]:
    """Serve ``requests`` with calls resolved from ``functions`` and return the messages."""
    output = io.StringIO()
    serve(io.StringIO(requests), output, resolve=functions.__getitem__)
    return [json.loads(line) for line in output.getvalue().splitlines()][1:]


def test_call_returns_the_value_and_its_tables():
    def table(*, n: int):
        frame = pd.DataFrame({"n": np.arange(n), "half": np.arange(n) / 2, "name": ["a"] * n})
        return {"frame": frame, "total": np.float32(0.25), "gap": float("nan"), "shape": np.ones((2, 1))}

    messages = _calls(_request("call", 1, function="table", kwargs={"n": 3}), {"table": table})

    assert [m["type"] for m in messages] == ["result", "finished"]
    value = from_json_value(messages[0]["value"])
    pd.testing.assert_frame_equal(
        value["frame"], pd.DataFrame({"n": [0, 1, 2], "half": [0.0, 0.5, 1.0], "name": ["a", "a", "a"]})
    )
    assert value["total"] == 0.25
    assert math.isnan(value["gap"])
    assert value["shape"] == [[1.0], [1.0]]


def test_call_reports_progress_failure_and_cancel():
    def count(*, n: int, progress):
        for done in range(1, n + 1):
            progress("counting", done, n)
        if n > 2:
            raise ValueError(f"n must be at most 2, got {n}")
        return n

    messages = _calls(
        _request("call", 1, function="count", kwargs={"n": 2})
        + _request("call", 2, function="count", kwargs={"n": 3})
        + _request("cancel", 3)
        + _request("call", 3, function="count", kwargs={"n": 1}),
        {"count": count},
    )

    assert [(m["type"], m["id"], m.get("done")) for m in messages] == [
        ("progress", 1, 1), ("progress", 1, 2), ("result", 1, None), ("finished", 1, None),
        ("progress", 2, 1), ("progress", 2, 2), ("progress", 2, 3), ("failed", 2, None),
        ("cancelled", 3, None),
    ]
    assert messages[7]["error"] == "ValueError: n must be at most 2, got 3"
    assert messages[7]["kind"] == "ValueError"


def test_call_stops_after_cancel():
    import threading

    started = threading.Event()
    steps = []

    def wait(*, progress):
        for done in range(1000):
            steps.append(done)
            started.set()
            progress("waiting", done, 1000)
            time.sleep(0.01)

    class Requests:
        def __iter__(self):
            yield _request("call", 1, function="wait", kwargs={})
            started.wait(5)
            yield _request("cancel", 1)

    output = io.StringIO()
    serve(Requests(), output, resolve={"wait": wait}.__getitem__)

    messages = [json.loads(line) for line in output.getvalue().splitlines()]
    assert messages[-1] == {"type": "cancelled", "id": 1, "state": None}
    assert len(steps) < 1000


@pytest.mark.parametrize(
    "name, reason",
    [
        ("os:system", "name a function as 'resnet_limits.module:function'"),
        ("resnet_limits.lessons:budget_table", "not a function marked with @worker_function"),
        ("resnet_limits.nowhere:f", "No module named 'resnet_limits.nowhere'"),
        ("resnet_limits.lessons:__class__.x", "name a function as"),
    ],
)
def test_resolve_accepts_only_marked_library_functions(name, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        resolve_function(name)


def test_worker_process_calls_a_library_function():
    from resnet_limits.lessons import optimal_rates

    async def call_twice(worker):
        value = await worker.call("resnet_limits.lessons:optimal_rates")
        with pytest.raises(CallFailed) as failure:
            await worker.call("resnet_limits.lessons:optimal_rates", {"unknown": 1})
        return value, failure.value

    worker = ComparisonWorker()
    try:
        value, failure = asyncio.run(call_twice(worker))
    finally:
        worker.kill()

    pd.testing.assert_frame_equal(value, optimal_rates())
    assert failure.kind == "TypeError"
    assert "unknown" in str(failure)
