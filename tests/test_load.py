"""Five users at once: concurrent Voila sessions of the explorer each complete their first run."""

import importlib.util
import os
import pathlib

import pytest

pytest.importorskip("playwright.async_api")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]

if not os.path.exists("/usr/bin/chromium"):
    pytest.skip("/usr/bin/chromium not found; run scripts/ensure-chromium", allow_module_level=True)


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("voila_load", REPOSITORY / "benchmarks" / "voila_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_five_sessions_complete_runs():
    result = _load_benchmark().run_load(sessions=5, timeout_s=400)

    assert len(result["pages"]) == 5
    for page in result["pages"]:
        assert page["completed"], page
        assert page["python_errors_in_page"] == 0, page
        assert page["first_render_s"] <= page["first_result_s"]
    # One kernel and one worker process per session.
    assert len(result["kernel_rss_mib"]) == 5
    assert len(result["worker_rss_mib"]) == 5
