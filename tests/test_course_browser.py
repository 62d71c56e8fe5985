"""A course notebook served by Voila and rendered by headless Chromium, offline."""

import pathlib

import pytest

from test_browser import BIN, OfflinePage, browser, free_port, start_server, stop_server  # noqa: F401

pytestmark = pytest.mark.browser

NOTEBOOK = "notebooks/04-shapes-and-sizes.ipynb"
# Kernel start, imports, offline chart code and the two panels' computations on a 2-core CPU.
RENDER_MS = 150_000


@pytest.fixture(scope="module")
def course_server(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("voila-course") / "voila.log"
    command = [str(BIN / "voila"), NOTEBOOK, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    url = f"http://127.0.0.1:{port}/"
    process, log = start_server(command, url, log_path)
    yield url, pathlib.Path(log_path)
    stop_server(process)
    log.close()


def test_course_page_renders_panels(course_server, browser):  # noqa: F811
    url, log_path = course_server
    offline = OfflinePage(browser)
    page = offline.page
    page.goto(url, timeout=RENDER_MS)

    page.wait_for_function(
        """() => {
            const statuses = [...document.querySelectorAll('.lesson-status')];
            return statuses.length === 2 && statuses.every((s) => s.innerText.startsWith('Computed in'));
        }""",
        timeout=RENDER_MS,
    )

    body = page.inner_text("body")
    assert "Traceback" not in body
    assert all(text.strip() == "" for text in page.locator(".lesson-message").all_inner_texts())
    assert page.locator(".lesson-chart svg, .lesson-chart canvas").count() >= 2, log_path.read_text()[-3000:]
    assert offline.blocked_code() == []
    page.close()
