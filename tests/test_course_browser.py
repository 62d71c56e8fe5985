"""The four course parts served by one Voila server and driven by headless Chromium, offline.

Each page opens with ``auto_run=0`` and small settings from its query string, so it computes
only what the test requests. The test cancels a long run, changes a control and runs a panel,
then leaves the page and checks that Voila shut its kernel and the kernel's worker process down.
The server culls kernels that stay idle without a page for CULL_IDLE_SECONDS, which the last
part checks by closing its page without the browser's shutdown request.
"""

import pathlib
import time

import psutil
import pytest

from test_browser import BIN, STDERR_OUTPUTS, OfflinePage, browser, free_port, start_server, stop_server  # noqa: F401

pytestmark = pytest.mark.browser

# Kernel start, imports and the offline chart code, with nothing computed at start.
RENDER_MS = 90_000
RUN_MS = 90_000
# Cancel stops a run in the kernel within a second; the browser adds its round trips.
CANCEL_MS = 2_000
# A page that leaves sends the shutdown request; Voila then stops the kernel, and the worker
# exits when the kernel's end of its pipe closes.
SHUTDOWN_SECONDS = 5
CULL_IDLE_SECONDS = 6
CULL_INTERVAL_SECONDS = 1


def course_query(**values) -> str:
    return "auto_run=0" + "".join(f"&{name.replace('__', '.')}={value}" for name, value in values.items())


# Each part: the notebook, its query, the index of the panel to cancel and of the panel to run,
# the control change (selector, index within the panel, value), a text that the run must show,
# and whether the run comes first. A cancel index of None cancels the panel that runs. That
# panel first gets a larger grid in its first text box. Cancel may kill the worker, and a run after it starts a
# new one, so parts 1 and 4 cancel first and check that the page's worker process stops too;
# parts 2 and 3 run first and save that start.
PARTS = [
    ("01-mlu-resnet.ipynb", course_query(training__L=2, training__M=4, training__D=4, training__K=2),
     1, 0, ("input[type=number]", 3, "3"), "at step 3", False),
    ("02-depth-begets-width.ipynb", course_query(depth_width__L=2, depth_width__M=4, depth_width__D=4),
     None, 0, ("input[type=text]", 0, "2, 4"), "Slope of the error against L M", True),
    ("03-large-embedding-limit.ipynb", course_query(gap__D=16),
     2, 1, ("input[type=text]", 0, "16, 64"), "Fitted slope in log D", True),
    ("04-shapes-and-sizes.ipynb", course_query(),
     1, 0, ("select", 0, "output"), "output bound against P", False),
]


@pytest.fixture(scope="module")
def course_server(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("voila-course") / "voila.log"
    command = [
        str(BIN / "voila"), "notebooks", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
        f"--MappingKernelManager.cull_idle_timeout={CULL_IDLE_SECONDS}",
        f"--MappingKernelManager.cull_interval={CULL_INTERVAL_SECONDS}",
    ]
    url = f"http://127.0.0.1:{port}/"
    process, log = start_server(command, url, log_path)
    yield process, url, pathlib.Path(log_path)
    stop_server(process)
    log.close()


def kernel_processes(server) -> list[psutil.Process]:
    try:
        return psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_worker(process: psutil.Process) -> bool:
    try:
        return "resnet_limits.worker" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False


def wait_until_gone(server, seconds: float) -> float:
    """Wait until the server has no child process; return the seconds taken, or fail."""
    started = time.monotonic()
    while kernel_processes(server):
        if time.monotonic() - started > seconds:
            remaining = [" ".join(process.cmdline()[:4]) for process in kernel_processes(server)]
            pytest.fail(f"still running after {seconds} s: {remaining}")
        time.sleep(0.25)
    return time.monotonic() - started


def set_control(panel, change) -> None:
    """Set one control of the panel as a student would: pick an option, or type and press Enter."""
    selector, index, value = change
    control = panel.locator(selector).nth(index)
    if selector == "select":
        control.select_option(label=value)
    else:
        control.fill(str(value))
        control.press("Enter")


def cancel_run(panel) -> float:
    """Start the panel's run, cancel it once it computes, and return the seconds the cancel took."""
    panel.locator(".lesson-run").click()
    panel.locator(".lesson-status", has_text="Computing").wait_for(timeout=RUN_MS)
    clicked = time.monotonic()
    panel.locator(".lesson-cancel").click()
    panel.locator(".lesson-status", has_text="Cancelled.").wait_for(timeout=CANCEL_MS)
    return time.monotonic() - clicked


def change_and_run(panel, change) -> None:
    """Set one control of the panel, press Run and wait for the result."""
    set_control(panel, change)
    panel.locator(".lesson-run").click()
    panel.locator(".lesson-status", has_text="Computed in").wait_for(timeout=RUN_MS)


@pytest.mark.parametrize("name, query, cancel_index, run_index, change, expected, run_first", PARTS,
                         ids=[part[0].split("-")[0] for part in PARTS])
def test_course_part_in_browser(course_server, browser, name, query, cancel_index, run_index,  # noqa: F811
                                change, expected, run_first):
    server, url, log_path = course_server
    assert kernel_processes(server) == [], "a kernel of an earlier page is still running"
    offline = OfflinePage(browser)
    page = offline.page
    page.goto(f"{url}voila/render/{name}?{query}", timeout=RENDER_MS)
    panels = page.locator(".lesson-panel")
    panels.first.wait_for(timeout=RENDER_MS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.lesson-status')].every((s) => s.innerText.startsWith('Not run yet'))",
        timeout=RENDER_MS,
    )
    assert page.locator(".course-url-message").inner_text().strip() == ""  # every query parameter was used

    panel = panels.nth(run_index)
    cancelled = panels.nth(run_index if cancel_index is None else cancel_index)
    if run_first:
        change_and_run(panel, change)
        if cancel_index is None:
            set_control(cancelled, ("input[type=text]", 0, "2, 4, 8, 16, 32, 64"))  # a grid not computed yet
        cancel_seconds = cancel_run(cancelled)
    else:
        cancel_seconds = cancel_run(cancelled)
        change_and_run(panel, change)

    assert panel.locator(".lesson-message").inner_text().strip() == ""
    assert panel.locator(".lesson-chart g.role-mark path").count() > 0, log_path.read_text()[-3000:]
    assert expected in panel.inner_text()
    assert cancel_seconds < CANCEL_MS / 1000
    body = page.inner_text("body")
    assert "Traceback" not in body
    assert "NaN" not in body
    assert page.locator(STDERR_OUTPUTS).count() == 0
    assert offline.blocked_code() == []

    processes = kernel_processes(server)
    assert processes, "no kernel process found"
    if not run_first:
        assert any(is_worker(process) for process in processes), [process.cmdline()[:4] for process in processes]
    if name.startswith("04"):
        page.close()  # no beforeunload, so no shutdown request: the culler has to stop the kernel
        wait_until_gone(server, CULL_IDLE_SECONDS + CULL_INTERVAL_SECONDS + SHUTDOWN_SECONDS)
    else:
        # Playwright's request interception drops a request sent while the page unloads.
        page.unroute("**/*")
        page.goto("about:blank")  # the page's beforeunload handler sends the shutdown request
        wait_until_gone(server, SHUTDOWN_SECONDS)
        page.close()
