"""The base of the apps that compute with one marked library function and draw its result.

A ``FunctionApp`` reads its controls into keyword arguments (JSON values), calls the library
function ``"module:name"`` with them, and hands the result to ``show``. ``start_run`` runs the
call as an asyncio task in the worker process (``ComparisonWorker.call``), so the page stays
responsive and Cancel stops the call within a second. ``run`` calls the function in the
kernel and blocks until it returns, for scripts and tests.

Invalid settings (ConfigError or ValueError, raised in the kernel or in the worker) are shown
as a message in the page. Any other failure is shown with its type and logged.
"""

from __future__ import annotations

import asyncio
import html
import importlib
import logging
import time

import ipywidgets as widgets

from resnet_limits.compilation_cache import enable_compilation_cache
from resnet_limits.config import ConfigError
from resnet_limits.worker import CallFailed, ComparisonWorker

from resnet_limits_widgets import url_state
from resnet_limits_widgets.background import BackgroundRun
from resnet_limits_widgets.copy_code import code_html, function_code
from resnet_limits_widgets.explorer import MESSAGE_STYLES

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# Exception types whose message describes an invalid setting rather than a failure.
SETTINGS_ERRORS = ("ConfigError", "MemoryBudgetError", "ValueError")


def call_in_kernel(function: str, arguments: dict, progress=None):
    """Import ``"module:name"`` and call it with ``arguments`` and ``progress`` in this process."""
    module, name = function.split(":")
    return getattr(importlib.import_module(module), name)(**arguments, progress=progress)


class FunctionApp(BackgroundRun):
    """Run button, Cancel, progress bar, status line, message box, link and copy-as-code of one app.

    A subclass sets ``function`` and ``css_prefix``, calls ``_build_run_controls``, builds its
    controls and outputs, and passes them to ``_build_layout``. It implements ``arguments``
    (raise ConfigError for invalid controls), ``show`` and ``query_values``, and sets
    ``url_fields``. With ``use_worker`` False, ``start_run`` computes in the kernel. With
    ``show_link`` False the app shows no link to its settings, for a page that contains two apps.
    """

    function: str
    css_prefix: str
    url_fields: dict

    def _init_runner(self, *, use_worker: bool, compilation_cache: bool, show_link: bool = True) -> None:
        self.show_link = show_link
        cache_dir = enable_compilation_cache() if compilation_cache else None
        self.worker = ComparisonWorker(compilation_cache_dir=cache_dir) if use_worker else None
        if self.worker is not None:
            self.worker.start()
        self.result: dict | None = None
        self.outcome: str | None = None  # "completed", "cancelled", "invalid" or "failed" for the latest run
        self._task: asyncio.Task | None = None

    def _build_run_controls(self) -> None:
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.run_button.on_click(lambda _: self.start_run())
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.cancel_button.on_click(lambda _: self.cancel())
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="progress", bar_style="info")
        self.status = widgets.HTML(value="Not run yet. Press Run.")
        self.message = widgets.HTML(value="")
        self.link = widgets.HTML(value="")
        self.code = widgets.HTML(value="")
        for widget, name in ((self.status, "status"), (self.message, "message")):
            widget.add_class(f"{self.css_prefix}-{name}")

    def _build_layout(self, controls: tuple, outputs: list) -> None:
        """Watch ``controls`` and set ``self.widget``: two columns of controls, the run row, messages, ``outputs``.

        The first four controls form the left column. A control change updates the link and starts
        a run. ``self.url_message`` must exist.
        """
        self.controls = controls
        for control in controls:
            control.observe(self._on_control, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([widgets.VBox(list(controls[:4])), widgets.VBox(list(controls[4:]))],
                         layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.run_button, self.cancel_button, self.progress, self.status]),
            self.url_message,
            self.message,
            *outputs,
            self.link,
            self.code,
        ])
        self._update_link_and_code()

    def _on_control(self, _change) -> None:
        self._update_link_and_code()
        self.start_run()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- what a subclass provides --------------------------------------------------------------

    def arguments(self) -> dict:
        """Return the keyword arguments of the function for the current controls."""
        raise NotImplementedError

    def show(self, result: dict) -> None:
        """Draw a result of the function."""
        raise NotImplementedError

    def query_values(self) -> dict:
        """Return the values of ``url_fields`` for the current controls."""
        raise NotImplementedError

    # -- link and code ---------------------------------------------------------------------------

    def query_string(self) -> str:
        """Return the query string (leading "?") that opens the app with the current settings."""
        return url_state.format_query(self.query_values(), self.url_fields)

    def code_text(self) -> str:
        """Return library code that computes the result of the current settings as ``result``."""
        return function_code(self.function, self.arguments())

    def _update_link_and_code(self) -> None:
        if self.show_link:
            self.link.value = url_state.link_html(self.query_string(), f"{self.css_prefix}-link")
        try:
            self.code.value = code_html(self.code_text(), f"{self.css_prefix}-code")
        except ConfigError as error:
            self.code.value = f"<div><b>Copy as code</b>: not available for these settings ({html.escape(str(error))})</div>"

    # -- runs ------------------------------------------------------------------------------------

    def _show_message(self, text: str, kind: str = "error") -> None:
        self.message.value = (
            f'<div style="{MESSAGE_STYLES[kind]}; padding:6px 10px; border-radius:4px; max-width:900px">'
            f"{html.escape(text)}</div>" if text else ""
        )

    def _checked_arguments(self) -> dict | None:
        try:
            arguments = self.arguments()
        except ConfigError as error:
            self._invalid(str(error))
            return None
        self._show_message("")
        return arguments

    def run(self) -> dict | None:
        """Compute with the current controls in the kernel and draw the result; None after a message."""
        arguments = self._checked_arguments()
        if arguments is None:
            return None
        started = time.monotonic()
        self.status.value = "Computing in the kernel..."
        try:
            result = call_in_kernel(self.function, arguments, self._on_progress)
        except (ConfigError, ValueError) as error:
            self._invalid(str(error))
            return None
        except Exception as error:  # noqa: BLE001 - the page shows the failure instead of a traceback
            logger.exception("%s: computation failed", self.function)
            self._fail(f"{type(error).__name__}: {error}")
            return None
        self._finish(result, time.monotonic() - started)
        return result

    def start_run(self) -> asyncio.Task | None:
        """Cancel the running computation and start one with the current controls as an asyncio task.

        Returns the task, or None when the settings are invalid. Without a running event loop
        (a plain script), or without a worker, computes with ``run`` and returns None.
        """
        arguments = self._checked_arguments()
        if arguments is None:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.run()
            return None
        if self.worker is None:
            self.run()
            return None
        return self._start_task(lambda previous: self._run(arguments, previous))

    async def _run(self, arguments: dict, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        self.outcome = None
        self.cancel_button.disabled = False
        self.progress.value = 0.0
        self.progress.bar_style = "info"
        self.status.value = "Starting the worker..."
        started = time.monotonic()
        try:
            result = await self.worker.call(self.function, arguments, on_progress=self._on_progress)
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            self.cancel_button.disabled = True
            self.progress.bar_style = "warning"
            self.status.value = "Cancelled."
            raise
        except CallFailed as error:
            if error.kind in SETTINGS_ERRORS:
                self._invalid(str(error).split(": ", 1)[-1])
            else:
                self._fail(str(error))
            return
        except Exception as error:  # any failure ends up in the page, never as a traceback
            self._fail(f"{type(error).__name__}: {error}")
            return
        self._finish(result, time.monotonic() - started)

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self.progress.value = done / total if total else 0.0
        self.status.value = f"{stage.capitalize()}: {done} of {total}"

    def _invalid(self, text: str) -> None:
        self.outcome = "invalid"
        self.cancel_button.disabled = True
        self._show_message(f"Cannot run these settings: {text}")
        self.status.value = "Not run: invalid settings."

    def _fail(self, text: str) -> None:
        logger.warning("%s failed: %s", self.function, text)
        self.outcome = "failed"
        self.cancel_button.disabled = True
        self.progress.bar_style = "danger"
        self.status.value = "Failed."
        self._show_message(f"The run failed: {text}")

    def _finish(self, result: dict, seconds: float) -> None:
        self.result = result
        self.show(result)
        self.outcome = "completed"
        self.cancel_button.disabled = True
        self.progress.value = 1.0
        self.progress.bar_style = "success"
        self.status.value = f"Computed in {seconds:.1f} s."

    def close(self) -> None:
        """Stop the running computation and the worker process."""
        self.cancel()
        if self.worker is not None:
            self.worker.kill()
