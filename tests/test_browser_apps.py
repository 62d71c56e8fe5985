"""All three apps served by one Voila server in directory mode, opened with query strings in headless Chromium.

The server lists ``notebooks/`` and renders each app at ``/voila/render/NAME.ipynb``; a query
string on that URL reaches the kernel as ``QUERY_STRING``. The server, browser and offline
checks are those of ``test_browser.py``.
"""

import base64

import pytest

from test_browser import (
    FIRST_RENDER_MS,
    RUN_MS,
    SLIDER_HANDLES,
    BIN,
    OfflinePage,
    Server,
    assert_no_python_error,
    browser,  # noqa: F401 (a fixture used by the tests below)
    free_port,
    playwright_sync,
    start_server,
    stop_server,
    voila_server,  # noqa: F401 (the explorer alone, as `make app` serves it)
    wait_for_last_run,
)

pytestmark = pytest.mark.browser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Seconds from a click on Cancel to "Cancelled." in the page: the worker stops within a second,
# and the click and the status update each cross the kernel's websocket.
CANCEL_SECONDS = 3


@pytest.fixture(scope="module")
def apps_server(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("voila-apps") / "voila.log"
    command = [str(BIN / "voila"), "notebooks", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    url = f"http://127.0.0.1:{port}/"
    process, log = start_server(command, url, log_path)
    yield Server(url, log_path)
    stop_server(process)
    log.close()


def open_app(browser, server: Server, notebook: str, query: str) -> OfflinePage:
    offline = OfflinePage(browser)
    offline.page.goto(
        f"{server.url}voila/render/{notebook}{query}", timeout=FIRST_RENDER_MS, wait_until="domcontentloaded"
    )
    return offline


def wait_for_text(page, server: Server, selector: str, fragment: str, timeout: int = RUN_MS) -> str:
    """Wait until the element at ``selector`` contains ``fragment``, and return its text."""
    try:
        page.wait_for_function(
            """([selector, fragment]) => {
                const element = document.querySelector(selector);
                return element !== null && element.innerText.includes(fragment);
            }""",
            arg=[selector, fragment],
            timeout=timeout,
        )
    except playwright_sync.TimeoutError:
        element = page.query_selector(selector)
        text = element.inner_text() if element is not None else f"{selector} missing; page: {page.inner_text('body')[:2000]}"
        pytest.fail(f"{selector} lacks {fragment!r} after {timeout / 1000:.0f} s: {text}\nServer log:\n{server.log_tail()}")
    return page.inner_text(selector)


def downloaded_png(page) -> bytes:
    """Return the file of the page's first PNG download link, once the link exists."""
    page.wait_for_selector(".chart-downloads a.download-png", timeout=RUN_MS)
    href = page.locator(".chart-downloads a.download-png").first.get_attribute("href")
    assert href.startswith("data:image/png;base64,")
    return base64.b64decode(href.split(",", 1)[1])


def test_explorer_opens_link_configuration(browser, apps_server):  # noqa: F811
    offline = open_app(browser, apps_server, "explorer.ipynb", "?L=32&M=128&D=32&K=4&seed=1&lr=abc")
    page = offline.page

    text = wait_for_last_run(page, apps_server, "L=32, M=128, D=32, seed 1", "completed 4 steps", timeout=FIRST_RENDER_MS)
    assert "law predicts" in text
    assert "lr='abc' is invalid: it must be a number; using the default" in page.inner_text(".explorer-url-message")
    assert "?task=paper-tanh&L=32&M=128&D=32&K=4&lr=1&alpha=1&activation=tanh&seed=1&auto_run=1" in page.inner_text(
        ".explorer-link"
    )
    code = page.locator("textarea.explorer-code").input_value()
    assert "L=32, M=128, D=32, K=4" in code
    assert downloaded_png(page).startswith(PNG_SIGNATURE)

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()


def test_single_app_reads_query_at_root(browser, voila_server):  # noqa: F811
    offline = OfflinePage(browser)
    page = offline.page
    page.goto(f"{voila_server.url}?L=8&K=2", timeout=FIRST_RENDER_MS, wait_until="domcontentloaded")

    wait_for_last_run(page, voila_server, "L=8, M=64, D=64, seed 0", "completed 2 steps", timeout=FIRST_RENDER_MS)
    assert page.inner_text(".explorer-url-message") == ""

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()


def test_coordinate_view_runs_redraws_and_cancels(browser, apps_server):  # noqa: F811
    offline = open_app(browser, apps_server, "coordinates.ipynb", "?L=8&M=32&D=32&k=3")
    page = offline.page

    wait_for_text(page, apps_server, ".coordinates-status", "Step 3 computed", timeout=FIRST_RENDER_MS)
    chart = ".coordinates-trajectory-chart"
    wait_for_text(page, apps_server, chart, "L=8, M=32, D=32, seed 0, step 3")
    assert "?task=paper-tanh&L=8&M=32&D=32&k=3" in page.inner_text(".coordinates-link")

    # A view control redraws the chart from the stored snapshot.
    coordinates = page.locator(".widget-inline-hbox", has_text="coordinates d").locator("input")
    coordinates.fill("5, 6")
    coordinates.press("Enter")
    wait_for_text(page, apps_server, chart, "d = 6")

    # A new seed needs a new fixed-D Mean ODE, which takes seconds: time to cancel.
    seed = page.locator(".widget-inline-hbox", has_text="seed").locator("input")
    seed.fill("5")
    seed.press("Enter")
    page.wait_for_function(
        "document.querySelector('textarea.coordinates-code').value.includes('seed=5')", timeout=RUN_MS
    )
    page.locator("button.widget-button", has_text="Run").click()
    wait_for_text(page, apps_server, ".coordinates-status", "Computing")
    page.locator("button.widget-button", has_text="Cancel").click()
    wait_for_text(page, apps_server, ".coordinates-status", "Cancelled.", timeout=CANCEL_SECONDS * 1000)
    assert "seed 0, step 3" in page.inner_text(chart)

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()


def test_shape_app_opens_budget_and_slider_updates(browser, apps_server):  # noqa: F811
    offline = open_app(browser, apps_server, "shapes.ipynb", "?P=1e7&law=output")
    page = offline.page

    wait_for_text(page, apps_server, ".shapes-readout", "Optimal shapes for P = 1e+07", timeout=FIRST_RENDER_MS)
    wait_for_text(page, apps_server, ".shapes-chart", "P = 1e+07 parameters (output error")
    assert "No sweep results at ../sweep-demo" in page.inner_text(".shapes-readout")

    handle = page.locator(SLIDER_HANDLES).first
    handle.focus()
    handle.press("ArrowRight")
    wait_for_text(page, apps_server, ".shapes-readout", "Optimal shapes for P = 1.12e+07")
    wait_for_text(page, apps_server, ".shapes-chart", "P = 1.12e+07 parameters")
    wait_for_text(page, apps_server, ".shapes-link", "?P=1.12202e7&law=output")
    assert downloaded_png(page).startswith(PNG_SIGNATURE)

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()


def test_transformer_app_runs_with_error_estimate(browser, apps_server):  # noqa: F811
    offline = open_app(browser, apps_server, "transformer.ipynb", "?L=2&H=4&D=8&K=2")
    page = offline.page

    text = wait_for_last_run(page, apps_server, "L=2, M=4, D=8, seed 0", "completed 2 steps", timeout=FIRST_RENDER_MS)
    assert "law predicts" in text
    assert "The large-D limit's own output error is estimated at" in text
    summary = page.inner_text(".explorer-summary")
    assert "sqrt(D/(L H))" in summary
    assert f"= {2 * 8 * (4 + 4 * 4):,}" in summary

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()


def test_phase_app_runs_and_cancels(browser, apps_server):  # noqa: F811
    query = "?n=12,24&gamma_min=0&gamma_max=0.25&lambda_min=-1&lambda_max=-0.5&seeds=1&K=3"
    offline = open_app(browser, apps_server, "phase.ipynb", query)
    page = offline.page

    wait_for_text(page, apps_server, ".phase-status", "Computed in", timeout=FIRST_RENDER_MS)
    wait_for_text(page, apps_server, ".phase-chart", "Measured regimes on L = M = D = n, n = 12, 24, K = 3")
    assert "depth-mup" in page.inner_text(".phase-table")
    assert "n=12%2C24&gamma_min=0&gamma_max=0.25" in page.inner_text(".phase-link")
    assert "scales=[12, 24]" in page.locator("textarea.phase-code").input_value()
    assert downloaded_png(page).startswith(PNG_SIGNATURE)

    # Larger sizes take long enough to cancel; the text box starts the run when Enter commits it.
    sizes = page.locator(".widget-inline-hbox", has_text="sizes n").locator("input")
    sizes.fill("12, 24, 48, 64")
    sizes.press("Enter")
    wait_for_text(page, apps_server, ".phase-status", "Training")
    page.locator("button.widget-button", has_text="Cancel").click()
    wait_for_text(page, apps_server, ".phase-status", "Cancelled.", timeout=CANCEL_SECONDS * 1000)
    assert "n = 12, 24, K = 3" in page.inner_text(".phase-chart")

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()
