"""The library code that reproduces an app's run, shown in a read-only text area for copying."""

from __future__ import annotations

import dataclasses
import html

from resnet_limits.config import LimitSettings, RunConfig


def _call(name: str, instance) -> str:
    arguments = ", ".join(f"{field.name}={getattr(instance, field.name)!r}" for field in dataclasses.fields(instance))
    return f"{name}({arguments})"


def comparison_code(config: RunConfig, limit_settings: LimitSettings) -> str:
    """Return Python code whose last line computes ``result``, the ``to_dict()`` of the same comparison."""
    return (
        "from resnet_limits.config import LimitSettings, RunConfig\n"
        "from resnet_limits.experiment import Comparison\n"
        "\n"
        f"config = {_call('RunConfig', config)}\n"
        f"limit_settings = {_call('LimitSettings', limit_settings)}\n"
        "result = Comparison(config, limit_settings).run().to_dict()\n"
    )


def snapshot_code(config: RunConfig, limit_settings: LimitSettings, step: int) -> str:
    """Return Python code that computes ``snapshot``, the coordinate snapshot of the same run at ``step``."""
    return (
        "from resnet_limits.config import LimitSettings, RunConfig\n"
        "from resnet_limits.coordinates import coordinate_snapshot\n"
        "\n"
        f"config = {_call('RunConfig', config)}\n"
        f"limit_settings = {_call('LimitSettings', limit_settings)}\n"
        f"snapshot = coordinate_snapshot(config, limit_settings, step={step!r})\n"
    )


def function_code(function: str, arguments: dict) -> str:
    """Return Python code that calls the library function ``"module:name"`` with ``arguments`` as ``result``."""
    module, name = function.split(":")
    lines = "".join(f"    {key}={value!r},\n" for key, value in arguments.items())
    return f"from {module} import {name}\n\nresult = {name}(\n{lines})\n"


def code_html(code: str, css_class: str) -> str:
    """Return a read-only HTML text area that shows ``code``."""
    rows = code.count("\n") + 1
    return (
        f'<div><b>Copy as code</b> (runs the same computation with the library)<br>'
        f'<textarea class="{css_class}" readonly rows="{rows}" spellcheck="false" '
        f'style="width:900px; font-family:monospace; font-size:12px">{html.escape(code)}</textarea></div>'
    )
