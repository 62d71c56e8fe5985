"""Run comparisons in a separate Python process that streams its progress back as JSON lines.

An interactive app keeps its kernel free for widget messages, and stops a run at once, by
handing the computation to a worker process:

    worker = ComparisonWorker()
    run = worker.submit(config, limit_settings)
    async for message in worker.messages(run): ...
    await worker.stop(run)  # cancel: the worker stops at its next event, or is killed

The worker is ``python -m resnet_limits.worker``. It reads requests from standard input and
writes messages to standard output, one JSON object per line, and it keeps its limit cache and
its compiled functions between runs. Requests:

    {"type": "run", "id": 3, "config": {RunConfig fields}, "limit_settings": {...},
     "memory_budget_bytes": 1073741824}
    {"type": "snapshot", "id": 4, "step": 5, "config": ..., "limit_settings": ...,
     "memory_budget_bytes": ...}
    {"type": "call", "id": 5, "function": "resnet_limits.lessons:optimal_rates", "kwargs": {}}
    {"type": "cancel", "id": 3}

Messages: ``{"type": "ready"}`` once imports are done, then per run a ``progress`` message after
every event (stage, done, total and the step's row, if any). Each run ends with one of
``finished`` (the final state of the comparison), ``cancelled`` (the same, partial) or
``failed`` (the error as text). A
``snapshot`` request runs the comparison to its step, then sends one ``snapshot`` message with
the streams of the network and both limits (base64 float32 arrays) before ``finished``. A
``call`` request runs one library function marked with ``@worker_function``: its ``progress``
messages carry the stage, done and total that the function reports, then one ``result`` message
holds its return value (``to_json_value``) before ``finished``. The worker's standard error is the parent's, and anything the computation prints goes there too,
so only messages reach the pipe. The worker exits when its standard input closes, which happens
when the parent exits.

Running the computation outside the kernel also avoids a fault seen in Voila kernels
(ipykernel 7.4, jax 0.10.2): the first XLA compilation of a new shape there sometimes waited
without end. The same code in a plain Python process did not, in every run tried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator

from resnet_limits.config import DEFAULT_MEMORY_BUDGET_BYTES, LimitSettings, RunConfig, default_limit_settings

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# Seconds between two looks at the message queue while a run is waiting for the worker.
POLL_SECONDS = 0.02

# Seconds that ``stop`` waits for the worker to confirm a cancel before it kills the process.
CANCEL_GRACE_SECONDS = 0.8

FINAL_MESSAGES = ("finished", "cancelled", "failed")


class WorkerError(RuntimeError):
    """The worker process ended or broke the protocol."""


class Cancelled(Exception):
    """Raised by a call's ``progress`` callback once the parent has cancelled the call."""


class CallFailed(RuntimeError):
    """A function called in the worker raised; ``kind`` is the exception's type name."""

    def __init__(self, text: str, kind: str | None = None):
        super().__init__(text)
        self.kind = kind


# -- functions that the worker may call -------------------------------------------------------

_MARK = "__resnet_limits_worker_function__"


def worker_function(function):
    """Mark a library function as callable in the worker by a ``call`` request.

    The function takes keyword arguments that are JSON values and returns a value that
    ``to_json_value`` accepts. If it has a ``progress`` parameter, the worker passes a callback
    ``progress(stage, done, total)`` that sends a progress message and raises ``Cancelled`` once
    the call is cancelled.
    """
    setattr(function, _MARK, True)
    return function


def resolve_function(name: str):
    """Return the marked function named "module:attribute"; raise ValueError for any other name."""
    module_name, separator, attribute = name.partition(":")
    if not separator or not module_name.startswith("resnet_limits.") or not attribute.isidentifier():
        raise ValueError(
            f"cannot call {name!r}: name a function as 'resnet_limits.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot call {name!r}: {error}") from None
    function = getattr(module, attribute, None)
    if not getattr(function, _MARK, False):
        raise ValueError(
            f"cannot call {name!r}: it is not a function marked with @worker_function"
        )
    return function


def to_json_value(value):
    """Return ``value`` as JSON data: DataFrames tagged as tables, arrays as lists, NumPy scalars as numbers."""
    import numpy as np
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        frame = value.reset_index(drop=True)
        return {
            "__dataframe__": {
                "columns": [str(column) for column in frame.columns],
                "data": [to_json_value(frame[column].to_numpy()) for column in frame.columns],
            }
        }
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, np.ndarray):
        return [to_json_value(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a worker call cannot return a {type(value).__name__}: return JSON values, arrays or DataFrames")


def from_json_value(value):
    """Invert ``to_json_value``: tables become DataFrames again, everything else stays as read."""
    if isinstance(value, dict):
        if set(value) == {"__dataframe__"}:
            import pandas as pd

            table = value["__dataframe__"]
            return pd.DataFrame(dict(zip(table["columns"], table["data"])), columns=table["columns"])
        return {key: from_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json_value(item) for item in value]
    return value


def comparison_state(comparison) -> dict:
    """Return the state of a ``Comparison`` that a worker reports at the end of a run."""

    return {
        "status": comparison.status,
        "diverged_at": comparison.diverged_at,
        "limit_diverged_at": dict(comparison.limit_diverged_at),
        "limit_error_estimate": comparison.limit_error_summaries(),
    }


class ComparisonWorker:
    """A worker process that runs one comparison at a time; started on first use.

    ``compilation_cache_dir`` turns on JAX's persistent compilation cache in the worker, and
    ``limit_cache_dir`` keeps its limit estimates on disk, so a new worker (after a kill) finds
    both again.
    """

    def __init__(
        self,
        *,
        compilation_cache_dir: str | os.PathLike | None = None,
        limit_cache_dir: str | os.PathLike | None = None,
    ):
        self.compilation_cache_dir = compilation_cache_dir
        self.limit_cache_dir = limit_cache_dir
        self._process: subprocess.Popen | None = None
        self._messages: queue.Queue = queue.Queue()
        self._next_id = 0
        self._lock = threading.Lock()
        self.ready = False

    # -- the process --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker process unless it is running."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            command = [sys.executable, "-m", "resnet_limits.worker"]
            if self.compilation_cache_dir is not None:
                command += ["--compilation-cache", str(self.compilation_cache_dir)]
            if self.limit_cache_dir is not None:
                command += ["--limit-cache", str(self.limit_cache_dir)]
            self._messages = queue.Queue()
            self.ready = False
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
            reader = threading.Thread(
                target=_read_messages, args=(self._process, self._messages), daemon=True
            )
            reader.start()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def kill(self) -> None:
        """End the worker process at once; the next run starts a new one."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    close = kill

    def _send(self, request: dict) -> None:
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError, AttributeError) as error:
            raise WorkerError(f"the worker process is not running ({error})") from None

    # -- runs ---------------------------------------------------------------------------------

    def submit(
        self,
        config: RunConfig,
        limit_settings: LimitSettings | None = None,
        *,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    ) -> int:
        """Send a run to the worker (starting it if needed) and return the run's id."""
        self.start()
        self._next_id += 1
        self._send(
            {
                "type": "run",
                "id": self._next_id,
                "config": dataclasses.asdict(config),
                "limit_settings": dataclasses.asdict(limit_settings or default_limit_settings(config.arch)),
                "memory_budget_bytes": memory_budget_bytes,
            }
        )
        return self._next_id

    def submit_snapshot(
        self,
        config: RunConfig,
        limit_settings: LimitSettings | None = None,
        *,
        step: int,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    ) -> int:
        """Send a coordinate snapshot at gradient step ``step`` to the worker and return the run's id.

        The run's messages are those of a comparison up to ``step``, then one ``snapshot`` message
        (``resnet_limits.coordinates.snapshot_to_json``) before the final one.
        """
        self.start()
        self._next_id += 1
        self._send(
            {
                "type": "snapshot",
                "id": self._next_id,
                "step": step,
                "config": dataclasses.asdict(config),
                "limit_settings": dataclasses.asdict(limit_settings or default_limit_settings(config.arch)),
                "memory_budget_bytes": memory_budget_bytes,
            }
        )
        return self._next_id

    def submit_call(self, function: str, kwargs: dict | None = None) -> int:
        """Send a call of the marked function ``function`` ("module:name") and return the call's id."""
        self.start()
        self._next_id += 1
        self._send(
            {"type": "call", "id": self._next_id, "function": function, "kwargs": to_json_value(kwargs or {})}
        )
        return self._next_id

    async def call(self, function: str, kwargs: dict | None = None, *, on_progress=None):
        """Call the marked library function ``function`` in the worker and return its value.

        ``on_progress(stage, done, total)`` receives every progress message. Raises CallFailed if the
        function raised and WorkerError if the worker died. Cancelling the awaiting task cancels
        the call (killing a worker that does not respond in time) and re-raises CancelledError.
        """
        call_id = self.submit_call(function, kwargs)
        value = None
        try:
            async for message in self.messages(call_id):
                kind = message["type"]
                if kind == "progress" and on_progress is not None:
                    on_progress(message["stage"], message["done"], message["total"])
                elif kind == "result":
                    value = from_json_value(message["value"])
                elif kind == "failed":
                    raise CallFailed(message["error"], message.get("kind"))
                elif kind == "cancelled":
                    raise asyncio.CancelledError
        except asyncio.CancelledError:
            await self.stop(call_id)
            raise
        return value

    async def messages(self, run_id: int) -> AsyncIterator[dict]:
        """Yield the messages of run ``run_id`` until its final one; raise WorkerError if the worker dies."""
        while True:
            message = self._take(run_id)
            if message is None:
                await asyncio.sleep(POLL_SECONDS)
                continue
            yield message
            if message["type"] in FINAL_MESSAGES:
                return

    def _take(self, run_id: int) -> dict | None:
        """Return the next message of run ``run_id``, or None when none is waiting."""
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                return None
            if message["type"] == "exit":
                raise WorkerError(f"the worker process ended (exit status {message['returncode']})")
            if message["type"] == "ready":
                self.ready = True
                continue
            if message.get("id") == run_id:
                return message
            # A message of an earlier run that was given up: drop it.

    async def stop(self, run_id: int, grace: float = CANCEL_GRACE_SECONDS) -> dict | None:
        """Cancel run ``run_id``; return its final message, or None after killing a worker that did not respond."""
        try:
            self._send({"type": "cancel", "id": run_id})
        except WorkerError as error:
            logger.warning("cancel of run %d not sent: %s", run_id, error)
            self.kill()
            return None
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                message = self._take(run_id)
            except WorkerError:
                return None
            if message is not None and message["type"] in FINAL_MESSAGES:
                return message
            await asyncio.sleep(POLL_SECONDS)
        logger.warning("run %d: cancel timed out after %.1f s; killing worker %s", run_id, grace, self.pid)
        self.kill()
        return None


def _read_messages(process: subprocess.Popen, messages: queue.Queue) -> None:
    for line in process.stdout:
        line = line.strip()
        if not line:
            continue
        try:
            messages.put(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("worker %d wrote a line that is not a message: %s", process.pid, line[:200])
    messages.put({"type": "exit", "returncode": process.wait()})


# -- the worker side --------------------------------------------------------------------------


def _serve_call(request: dict, send, cancelled: set[int], resolve) -> None:
    """Run one ``call`` request and send its progress, result and final message."""
    call_id = request["id"]

    def progress(stage: str, done: int, total: int) -> None:
        send({"type": "progress", "id": call_id, "stage": stage, "done": int(done), "total": int(total), "row": None})
        if call_id in cancelled:
            raise Cancelled

    try:
        function = resolve(request["function"])
        kwargs = dict(request.get("kwargs") or {})
        if "progress" in inspect.signature(function).parameters:
            kwargs["progress"] = progress
        value = to_json_value(function(**kwargs))
    except Cancelled:
        send({"type": "cancelled", "id": call_id, "state": None})
        return
    except Exception as error:  # reported to the parent, which shows it
        logger.warning("call %d (%s) failed: %s: %s", call_id, request.get("function"), type(error).__name__, error)
        send({"type": "failed", "id": call_id, "error": f"{type(error).__name__}: {error}", "kind": type(error).__name__})
        return
    send({"type": "result", "id": call_id, "value": value})
    send({"type": "finished", "id": call_id, "state": None})


def serve(requests, output, cache=None, resolve=resolve_function) -> None:
    """Run the requests read from ``requests`` (lines), writing messages to ``output``.

    ``cache`` is the LimitCache of every run, the library's in-memory default if None;
    ``resolve`` turns a call's function name into the function.
    """
    from resnet_limits.coordinates import snapshot_events, snapshot_from_comparison, snapshot_to_json
    from resnet_limits.experiment import DEFAULT_CACHE, Comparison

    cache = DEFAULT_CACHE if cache is None else cache
    pending: queue.Queue = queue.Queue()
    cancelled: set[int] = set()

    def read_requests() -> None:
        for line in requests:
            if not line.strip():
                continue
            request = json.loads(line)
            if request["type"] == "cancel":
                cancelled.add(request["id"])
            pending.put(request)
        pending.put(None)

    def send(message: dict) -> None:
        output.write(json.dumps(message) + "\n")
        output.flush()

    threading.Thread(target=read_requests, daemon=True).start()
    send({"type": "ready"})
    while (request := pending.get()) is not None:
        if request["type"] not in ("run", "snapshot", "call"):
            continue
        run_id = request["id"]
        if run_id in cancelled:
            send({"type": "cancelled", "id": run_id, "state": None})
            continue
        if request["type"] == "call":
            _serve_call(request, send, cancelled, resolve)
            continue
        comparison = None
        try:
            comparison = Comparison(
                RunConfig(**request["config"]),
                LimitSettings(**request["limit_settings"]),
                memory_budget_bytes=request["memory_budget_bytes"],
                cache=cache,
            )
            events = (
                comparison.events()
                if request["type"] == "run"
                else snapshot_events(comparison, request["step"])
            )
            for event in events:
                send(
                    {
                        "type": "progress",
                        "id": run_id,
                        "stage": event.stage,
                        "done": event.done,
                        "total": event.total,
                        "row": event.row,
                    }
                )
                if run_id in cancelled:
                    events.close()
                    break
            if request["type"] == "snapshot" and run_id not in cancelled:
                snapshot = snapshot_from_comparison(comparison)
                send({"type": "snapshot", "id": run_id, "snapshot": snapshot_to_json(snapshot)})
        except Exception as error:  # reported to the parent, which shows it
            logger.warning("run %d failed: %s: %s", run_id, type(error).__name__, error)
            send({"type": "failed", "id": run_id, "error": f"{type(error).__name__}: {error}", "kind": type(error).__name__})
            continue
        stopped = run_id in cancelled and (request["type"] == "snapshot" or not comparison.completed)
        final = "cancelled" if stopped else "finished"
        send({"type": final, "id": run_id, "state": comparison_state(comparison)})


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m resnet_limits.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--compilation-cache", default=None, help="directory of JAX's persistent compilation cache")
    parser.add_argument("--limit-cache", default=None, help="directory where limit estimates are kept")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="resnet_limits.worker: %(message)s")
    # Messages own the original standard output; everything else printed goes to standard error.
    output = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    if args.compilation_cache:
        from resnet_limits.compilation_cache import enable_compilation_cache

        enable_compilation_cache(args.compilation_cache)
    from resnet_limits.experiment import LimitCache

    cache = LimitCache(directory=args.limit_cache) if args.limit_cache else None
    try:
        serve(sys.stdin, output, cache)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
