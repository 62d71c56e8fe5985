"""App settings in a page URL's query string, so that a link opens an app in a given configuration.

Voila passes the query string of the page to the kernel as the environment variable
``QUERY_STRING`` (voila 0.5.13, ``voila/utils.py``), so a notebook reads it with
``os.environ.get("QUERY_STRING")``. Under JupyterLab the variable is not set and the apps open
with their defaults.

``parse_query`` never raises on user input. It returns the values it accepted and one message
for each parameter that it snapped to a slider's option, clamped, or rejected, so that the app
shows the messages in the page and opens with its defaults for the rejected parameters.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import math
import urllib.parse
from collections.abc import Mapping


class Field:
    """One query parameter: ``convert`` returns the value and a message, or raises ValueError."""

    def convert(self, name: str, text: str):
        raise NotImplementedError

    def format(self, value) -> str:
        return str(value)


@dataclasses.dataclass(frozen=True)
class SizeField(Field):
    """A positive integer that snaps to the nearest of ``options`` on a log scale."""

    options: tuple[int, ...]

    def convert(self, name: str, text: str):
        value = _parse_float(name, text)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}={text!r} is invalid: it must be a positive integer")
        nearest = min(self.options, key=lambda option: abs(math.log(option) - math.log(value)))
        if nearest != value:
            return nearest, f"{name}={text} is not one of the slider's sizes; using {name}={nearest}"
        return nearest, None


@dataclasses.dataclass(frozen=True)
class IntField(Field):
    """An integer from ``minimum`` to ``maximum``; values outside are clamped with a message."""

    minimum: int
    maximum: int

    def convert(self, name: str, text: str):
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is invalid: it must be an integer") from None
        clamped = min(max(value, self.minimum), self.maximum)
        if clamped != value:
            return clamped, f"{name}={value} is outside {self.minimum}..{self.maximum}; using {name}={clamped}"
        return value, None


@dataclasses.dataclass(frozen=True)
class PositiveFloatField(Field):
    """A positive finite number, optionally clamped to [``minimum``, ``maximum``]."""

    minimum: float | None = None
    maximum: float | None = None

    def convert(self, name: str, text: str):
        value = _parse_float(name, text)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={text!r} is invalid: it must be a positive finite number")
        clamped = value
        if self.minimum is not None:
            clamped = max(clamped, self.minimum)
        if self.maximum is not None:
            clamped = min(clamped, self.maximum)
        if clamped != value:
            return clamped, f"{name}={text} is outside {self.minimum:g}..{self.maximum:g}; using {name}={clamped:g}"
        return value, None

    def format(self, value) -> str:
        # "1e6" needs no percent-encoding in a URL, unlike "1e+06".
        mantissa, _, exponent = f"{value:g}".partition("e")
        return f"{mantissa}e{int(exponent)}" if exponent else mantissa


@dataclasses.dataclass(frozen=True)
class ChoiceField(Field):
    """One of ``choices``."""

    choices: tuple[str, ...]

    def convert(self, name: str, text: str):
        if text not in self.choices:
            raise ValueError(f"{name}={text!r} is invalid: choose one of {', '.join(self.choices)}")
        return text, None


@dataclasses.dataclass(frozen=True)
class BoolField(Field):
    """A flag written 1/0, true/false, yes/no or on/off."""

    def convert(self, name: str, text: str):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True, None
        if lowered in ("0", "false", "no", "off"):
            return False, None
        raise ValueError(f"{name}={text!r} is invalid: write 1 or 0")

    def format(self, value) -> str:
        return "1" if value else "0"


@dataclasses.dataclass(frozen=True)
class FloatField(Field):
    """A finite number from ``minimum`` to ``maximum``; values outside are clamped with a message."""

    minimum: float
    maximum: float

    def convert(self, name: str, text: str):
        value = _parse_float(name, text)
        if not math.isfinite(value):
            raise ValueError(f"{name}={text!r} is invalid: it must be a finite number")
        clamped = min(max(value, self.minimum), self.maximum)
        if clamped != value:
            return clamped, f"{name}={text} is outside {self.minimum:g}..{self.maximum:g}; using {name}={clamped:g}"
        return value, None

    def format(self, value) -> str:
        return f"{value:g}"


@dataclasses.dataclass(frozen=True)
class IntListField(Field):
    """Integers from ``minimum`` to ``maximum`` separated by commas, as in 4,16,64."""

    minimum: int
    maximum: int

    def convert(self, name: str, text: str):
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"{name}={text!r} is invalid: write integers separated by commas") from None
        if not values:
            raise ValueError(f"{name}={text!r} is invalid: it needs at least one integer")
        outside = [value for value in values if not self.minimum <= value <= self.maximum]
        if outside:
            raise ValueError(f"{name}={text!r} is invalid: {outside} are outside {self.minimum}..{self.maximum}")
        return sorted(set(values)), None

    def format(self, value) -> str:
        return ",".join(str(item) for item in value)


@dataclasses.dataclass(frozen=True)
class ChoiceListField(Field):
    """Several of ``choices`` separated by commas."""

    choices: tuple[str, ...]

    def convert(self, name: str, text: str):
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [value for value in values if value not in self.choices]
        if not values or unknown:
            raise ValueError(f"{name}={text!r} is invalid: choose from {', '.join(self.choices)}")
        return list(dict.fromkeys(values)), None

    def format(self, value) -> str:
        return ",".join(value)


def _parse_float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is invalid: it must be a number") from None


@dataclasses.dataclass(frozen=True)
class UrlSettings:
    """The settings read from a query string and the messages about parameters that were changed or ignored."""

    values: dict
    messages: tuple[str, ...] = ()

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def message_text(self) -> str:
        """Return the messages as one text for the page, or "" when there are none."""
        if not self.messages:
            return ""
        return "The link's settings were adjusted: " + "; ".join(self.messages) + "."


def parse_query(query: str | None, fields: Mapping[str, Field]) -> UrlSettings:
    """Return the valid settings in ``query`` (with or without its leading "?") for ``fields``.

    Unknown parameters and invalid values are left out with a message; the app keeps its default
    for them. A repeated parameter takes its last value, with a message.
    """
    if not query:
        return UrlSettings({})
    values = {}
    messages = []
    pairs = urllib.parse.parse_qsl(query.lstrip("?"), keep_blank_values=True)
    counts = collections.Counter(name for name, _ in pairs)
    last = {name: text for name, text in pairs}
    for name, count in counts.items():
        if count > 1 and name in fields:
            messages.append(f"{name} appears {count} times; using the last, {name}={last[name].strip()}")
    pairs = list(last.items())
    for name, text in pairs:
        field = fields.get(name)
        if field is None:
            messages.append(f"unknown parameter {name!r} ignored (known: {', '.join(fields)})")
            continue
        try:
            value, message = field.convert(name, text.strip())
        except ValueError as error:
            messages.append(f"{error}; using the default")
            continue
        values[name] = value
        if message:
            messages.append(message)
    return UrlSettings(values, tuple(messages))


def format_query(values: Mapping, fields: Mapping[str, Field]) -> str:
    """Return the query string (with a leading "?") that ``parse_query`` reads back as ``values``."""
    pairs = [(name, fields[name].format(value)) for name, value in values.items() if value is not None]
    return "?" + urllib.parse.urlencode(pairs)


def link_html(query: str, css_class: str) -> str:
    """Return an HTML line with a link to the current page with ``query``, for a teacher to copy."""
    escaped = html.escape(query)
    return (
        f'<div class="{css_class}">Link to this configuration: '
        f'<a href="{escaped}" target="_blank" rel="noopener"><code>{escaped}</code></a> '
        "(append it to the app's address)</div>"
    )
