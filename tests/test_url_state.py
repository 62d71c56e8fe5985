"""The query-string parser of the apps: valid values, snapping to slider options, and rejected values."""

import pytest

from resnet_limits_widgets import url_state
from resnet_limits_widgets.coordinates import URL_FIELDS as COORDINATE_FIELDS
from resnet_limits_widgets.explorer import URL_FIELDS as EXPLORER_FIELDS
from resnet_limits_widgets.shapes import URL_FIELDS as SHAPE_FIELDS


def test_valid_query_parsed_without_messages():
    settings = url_state.parse_query(
        "?task=paper-linear&L=32&M=128&D=64&K=20&lr=0.5&alpha=2&activation=identity&seed=7&auto_run=0",
        EXPLORER_FIELDS,
    )
    assert settings.messages == ()
    assert settings.values == {
        "task": "paper-linear",
        "L": 32,
        "M": 128,
        "D": 64,
        "K": 20,
        "lr": 0.5,
        "alpha": 2.0,
        "activation": "identity",
        "seed": 7,
        "auto_run": False,
    }


def test_empty_or_missing_query_gives_defaults():
    assert url_state.parse_query(None, EXPLORER_FIELDS) == url_state.UrlSettings({})
    assert url_state.parse_query("", EXPLORER_FIELDS) == url_state.UrlSettings({})
    assert url_state.parse_query("?", EXPLORER_FIELDS).values == {}


@pytest.mark.parametrize(
    "query, name, value, message",
    [
        ("L=30", "L", 32, "L=30 is not one of the slider's sizes; using L=32"),
        ("M=100", "M", 128, "M=100 is not one of the slider's sizes; using M=128"),
        ("D=5000", "D", 1024, "D=5000 is not one of the slider's sizes; using D=1024"),
        ("L=0.3", "L", 1, "L=0.3 is not one of the slider's sizes; using L=1"),
        ("K=99", "K", 60, "K=99 is outside 1..60; using K=60"),
        ("K=0", "K", 1, "K=0 is outside 1..60; using K=1"),
    ],
)
def test_sizes_snapped_with_message(query, name, value, message):
    settings = url_state.parse_query(query, EXPLORER_FIELDS)
    assert settings.values == {name: value}
    assert settings.messages == (message,)


@pytest.mark.parametrize(
    "query, message",
    [
        ("L=abc", "L='abc' is invalid: it must be a number; using the default"),
        ("L=-4", "L='-4' is invalid: it must be a positive integer; using the default"),
        ("L=1e999", "L='1e999' is invalid: it must be a positive integer; using the default"),
        ("K=2.5", "K='2.5' is invalid: it must be an integer; using the default"),
        ("lr=0", "lr='0' is invalid: it must be a positive finite number; using the default"),
        ("lr=nan", "lr='nan' is invalid: it must be a positive finite number; using the default"),
        ("alpha=inf", "alpha='inf' is invalid: it must be a positive finite number; using the default"),
        ("activation=relu", "activation='relu' is invalid: choose one of tanh, identity; using the default"),
        ("task=mnist", "task='mnist' is invalid: choose one of"),
        ("auto_run=maybe", "auto_run='maybe' is invalid: write 1 or 0; using the default"),
        ("width=3", "unknown parameter 'width' ignored (known: task, L, M, D, K, lr, alpha, activation, seed, auto_run)"),
    ],
)
def test_invalid_values_rejected_with_message(query, message):
    settings = url_state.parse_query(query, EXPLORER_FIELDS)
    assert settings.values == {}
    assert len(settings.messages) == 1
    assert settings.messages[0].startswith(message)


def test_invalid_and_valid_parameters_mixed():
    settings = url_state.parse_query("L=64&lr=abc&D=<script>", EXPLORER_FIELDS)
    assert settings.values == {"L": 64}
    assert len(settings.messages) == 2
    text = settings.message_text()
    assert text.startswith("The link's settings were adjusted: lr='abc' is invalid")
    assert "D='<script>' is invalid" in text


def test_seed_clamped_to_jax_range():
    settings = url_state.parse_query("seed=-1", EXPLORER_FIELDS)
    assert settings.values == {"seed": 0}
    assert settings.messages == ("seed=-1 is outside 0..4294967295; using seed=0",)


def test_repeated_parameter_uses_last_value():
    settings = url_state.parse_query("L=4&L=8", EXPLORER_FIELDS)
    assert settings.values == {"L": 8}
    assert settings.messages == ("L appears 2 times; using the last, L=8",)


def test_repeated_invalid_value_reported_once():
    settings = url_state.parse_query("L=4&L=x", EXPLORER_FIELDS)
    assert "L" not in settings.values
    assert len(settings.messages) == 2
    assert settings.messages[0] == "L appears 2 times; using the last, L=x"


@pytest.mark.parametrize(
    "fields, values",
    [
        (EXPLORER_FIELDS, {"task": "paper-tanh", "L": 16, "M": 64, "D": 64, "K": 15, "lr": 1.0, "alpha": 1.0,
                           "activation": "tanh", "seed": 3, "auto_run": True}),
        (COORDINATE_FIELDS, {"task": "paper-tanh", "L": 8, "M": 32, "D": 16, "k": 0, "seed": 1, "limit": "large-D",
                             "auto_run": False}),
        (SHAPE_FIELDS, {"P": 3e7, "law": "output"}),
    ],
)
def test_format_query_round_trips(fields, values):
    query = url_state.format_query(values, fields)
    assert query.startswith("?")
    assert "%" not in query
    settings = url_state.parse_query(query, fields)
    assert settings.messages == ()
    assert settings.values == values


def test_budget_clamped_to_slider_range():
    settings = url_state.parse_query("P=1e12", SHAPE_FIELDS)
    assert settings.values == {"P": 1e9}
    assert settings.messages == ("P=1e12 is outside 10000..1e+09; using P=1e+09",)


def test_link_html_escapes_query():
    text = url_state.link_html("?L=4&M=8", "explorer-link")
    assert 'href="?L=4&amp;M=8"' in text
    assert 'class="explorer-link"' in text
