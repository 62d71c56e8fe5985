"""The explorer served by Voila, and by the Binder route of a Jupyter server, driven by headless Chromium.

Every server listens on 127.0.0.1 and the browser aborts every request to another host, so the
tests also check that the app works offline. Voila 0.5.13 requests its icon-font style sheets
from jsDelivr and, under a Jupyter server, MathJax from cdnjs (its default ``mathjax_url``). The
explorer needs neither, because its text has no TeX, so the tests allow those two and assert that
no other code is fetched from outside.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dataclasses

import psutil
import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/explorer.ipynb"
BIN = pathlib.Path(sys.prefix) / "bin"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SERVER_START_SECONDS = 60
# Kernel start, imports, offline chart code, then the first run: about 10-20 s on a 2-core CPU.
FIRST_RENDER_MS = 90_000
RUN_MS = 60_000

LAST_RUN = ".explorer-last-run"
LAW_POINTS = ".explorer-law-chart g.mark-symbol.role-mark path"
ERROR_LINES = ".explorer-error-chart g.mark-line.role-mark path"
SLIDER_HANDLES = ".widget-slider .noUi-handle"
VOILA_MATHJAX = "https://cdnjs.cloudflare.com/ajax/libs/mathjax/"
STDERR_OUTPUTS = '[data-mime-type="application/vnd.jupyter.stderr"]'

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found; run scripts/ensure-chromium", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log_path: pathlib.Path) -> None:
    """Poll ``url`` until the server replies, failing with its log if it exits or times out."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with status {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # the server replied, even if with an error status
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"server at {url} did not reply within {SERVER_START_SECONDS} s:\n{log_path.read_text()}")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server by its process id, then any of its child processes (kernels) still alive."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def start_server(command: list[str], url: str, log_path: pathlib.Path):
    log = open(log_path, "w")
    process = subprocess.Popen(command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(url, process, log_path)
    except BaseException:
        stop_server(process)
        log.close()
        raise
    return process, log


@dataclasses.dataclass(frozen=True)
class Server:
    """A server started by a fixture: its base URL and the file that receives its output."""

    url: str
    log_path: pathlib.Path

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]


@pytest.fixture(scope="module")
def voila_server(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("voila") / "voila.log"
    command = [str(BIN / "voila"), NOTEBOOK, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    url = f"http://127.0.0.1:{port}/"
    process, log = start_server(command, url, log_path)
    yield Server(url, log_path)
    stop_server(process)
    log.close()


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("jupyter-server") / "server.log"
    command = [
        str(BIN / "jupyter"),
        "server",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        "--IdentityProvider.token=",
        f"--ServerApp.root_dir={REPOSITORY}",
    ]
    if os.geteuid() == 0:  # CI containers run as root, which Jupyter Server rejects without this flag
        command.append("--allow-root")
    url = f"http://127.0.0.1:{port}/"
    process, log = start_server(command, url + "api/status", log_path)
    yield Server(url, log_path)
    stop_server(process)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class OfflinePage:
    """A browser page that aborts every request to a host other than 127.0.0.1 and records it."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1500, "height": 1900})
        self.blocked: list[str] = []
        self.page.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def blocked_code(self) -> list[str]:
        """Return the blocked requests other than style sheets and Voila's default MathJax."""
        return [
            url
            for url in self.blocked
            if not url.split("?")[0].endswith(".css") and not url.startswith(VOILA_MATHJAX)
        ]


def page_readouts(page) -> str:
    """Return the app's status, message and last-run texts, or the start of the page without them."""
    texts = page.evaluate(
        """() => ['.explorer-status', '.explorer-message', '.explorer-last-run'].map((selector) => {
            const element = document.querySelector(selector);
            return element === null ? selector + ' missing' : element.innerText;
        })"""
    )
    if all(text.endswith(" missing") for text in texts):
        texts.append(page.inner_text("body")[:2000])
    return "\n".join(texts)


def wait_for_last_run(page, server: Server, *fragments: str, timeout: int = RUN_MS) -> str:
    """Wait until the last-run readout contains every one of ``fragments``, and return its text.

    On a timeout the test fails with the page's readouts and the end of the server's log.
    """
    try:
        page.wait_for_function(
            """(fragments) => {
                const readout = document.querySelector('.explorer-last-run');
                return readout !== null && fragments.every((f) => readout.innerText.includes(f));
            }""",
            arg=list(fragments),
            timeout=timeout,
        )
    except playwright_sync.TimeoutError:
        pytest.fail(
            f"last-run readout lacks {fragments} after {timeout / 1000:.0f} s.\n"
            f"Page:\n{page_readouts(page)}\nServer log:\n{server.log_tail()}"
        )
    return page.inner_text(LAST_RUN)


def assert_no_python_error(page) -> None:
    body = page.inner_text("body")
    assert "Traceback" not in body
    assert page.locator(STDERR_OUTPUTS).count() == 0
    assert page.locator(".jp-OutputArea-output.jp-RenderedText[data-mime-type*='error']").count() == 0


def test_voila_renders_and_slider_reruns(browser, voila_server):
    offline = OfflinePage(browser)
    page = offline.page
    page.goto(voila_server.url, timeout=FIRST_RENDER_MS, wait_until="domcontentloaded")

    text = wait_for_last_run(page, voila_server, "L=16, M=64, D=64", "completed", timeout=FIRST_RENDER_MS)
    assert "law predicts" in text
    page.wait_for_selector(LAW_POINTS, timeout=RUN_MS)
    assert page.locator(LAW_POINTS).count() == 2
    # Three lines (both limits and the law's prediction) in each of the two panels.
    assert page.locator(ERROR_LINES).count() == 6

    depth_handle = page.locator(SLIDER_HANDLES).first
    depth_handle.focus()
    depth_handle.press("ArrowRight")

    wait_for_last_run(page, voila_server, "L=32, M=64, D=64", "completed")
    page.wait_for_function(f"document.querySelectorAll('{LAW_POINTS}').length === 4", timeout=RUN_MS)
    assert "P = L M D = 131,072" in page.inner_text(".explorer-summary")

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()


def test_voila_cancel_and_invalid_input(browser, voila_server):
    offline = OfflinePage(browser)
    page = offline.page
    page.goto(voila_server.url, timeout=FIRST_RENDER_MS, wait_until="domcontentloaded")
    wait_for_last_run(page, voila_server, "L=16", "completed", timeout=FIRST_RENDER_MS)

    # K = 16 has no cached limits, so the run computes them for seconds before training starts,
    # which leaves time to click Cancel.
    steps_handle = page.locator(SLIDER_HANDLES).nth(3)
    steps_handle.focus()
    steps_handle.press("ArrowRight")
    page.wait_for_function(
        "document.querySelector('.explorer-status').innerText.startsWith('Computing')", timeout=RUN_MS
    )
    page.locator("button.widget-button", has_text="Cancel").click()
    text = wait_for_last_run(page, voila_server, "cancelled")
    assert "cancelled before training started" in text
    assert page.inner_text(".explorer-status") == "Cancelled."

    learning_rate = page.locator(".widget-inline-hbox", has_text="learning rate").locator("input")
    learning_rate.fill("-1")
    learning_rate.press("Enter")
    page.wait_for_function(
        "document.querySelector('.explorer-message').innerText.includes('must be positive')", timeout=RUN_MS
    )
    assert "learning_rate must be positive and finite, got -1.0" in page.inner_text(".explorer-message")

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()


def test_binder_route_renders(browser, jupyter_server):
    offline = OfflinePage(browser)
    page = offline.page
    page.goto(f"{jupyter_server.url}voila/render/{NOTEBOOK}", timeout=FIRST_RENDER_MS, wait_until="domcontentloaded")

    wait_for_last_run(page, jupyter_server, "L=16, M=64, D=64", "completed", timeout=FIRST_RENDER_MS)
    page.wait_for_selector(LAW_POINTS, timeout=RUN_MS)

    assert_no_python_error(page)
    assert offline.blocked_code() == []
    page.close()
