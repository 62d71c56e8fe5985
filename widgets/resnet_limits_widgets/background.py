"""The asyncio task of an app's latest run: start one in place of the previous, cancel, wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine


class BackgroundRun:
    """Mixin of the apps that run one computation at a time as a task in the kernel's event loop.

    A subclass sets ``self._task = None`` and ``self.outcome`` (how the latest run ended) and
    starts runs with ``_start_task``.
    """

    _task: asyncio.Task | None = None
    outcome = None

    def _start_task(self, make_run: Callable[[asyncio.Task | None], Coroutine]) -> asyncio.Task:
        """Cancel the running task and start ``make_run(previous)``, which may wait for the previous task."""
        previous = self._task
        if previous is not None and not previous.done():
            previous.cancel()
        self._task = asyncio.ensure_future(make_run(previous))
        return self._task

    def cancel(self) -> None:
        """Stop the running computation; what it has shown so far stays in the page."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait(self):
        """Wait until the latest run ends and return its outcome."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
        return self.outcome

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()
