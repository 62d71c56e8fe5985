"""The worker process's protocol: requests in, JSON messages out, equal to a run in this process."""

import asyncio
import dataclasses
import io
import json

import numpy as np

from resnet_limits.config import LimitSettings, RunConfig
from resnet_limits.experiment import Comparison, LimitCache
from resnet_limits.worker import ComparisonWorker, serve

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
