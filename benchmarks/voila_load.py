"""Several users at once: concurrent Voila sessions of the explorer, each waiting for its first run.

Starts `voila notebooks/explorer.ipynb` on 127.0.0.1 with Jupyter and cache directories in a
temporary folder, opens N pages at once in one headless Chromium (Debian's /usr/bin/chromium),
and measures per page the time to first render (the app's status line appears) and to first
result (the first run completed). Then reads the resident memory of each Voila kernel and of its
worker process. Every request to a host other than 127.0.0.1 is aborted, as on an offline
machine.

    .venv/bin/python benchmarks/voila_load.py --sessions 5

prints one JSON object; ``--markdown`` prints a table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
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
STATUS = ".explorer-status"
LAST_RUN = ".explorer-last-run"
STDERR_OUTPUTS = '[data-mime-type="application/vnd.jupyter.stderr"]'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    """Wait until the server accepts connections; an HTTP request to the page would start a kernel."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"voila exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"voila did not listen on port {port} within {seconds} s")


def _environment(folder: pathlib.Path) -> dict:
    names = ("JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    environment = dict(os.environ)
    for name in names:
        path = folder / name.lower()
        path.mkdir()
        environment[name] = str(path)
    environment["HOME"] = str(folder)
    return environment


def _app_processes(server: subprocess.Popen) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """Return the server's kernels and worker processes."""
    kernels, workers = [], []
    for child in psutil.Process(server.pid).children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "resnet_limits.worker" in command:
            workers.append(child)
        elif "ipykernel" in command:
            kernels.append(child)
    return kernels, workers


def _rss_mib(processes: list[psutil.Process]) -> list[float]:
    sizes = []
    for process in processes:
        try:
            sizes.append(process.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            pass
    return sizes


async def _one_session(browser, url: str, index: int, started: float, timeout_ms: int) -> dict:
    page = await browser.new_page()

    async def offline(route):
        if route.request.url.startswith("http://127.0.0.1"):
            await route.continue_()
        else:
            await route.abort()

    await page.route("**/*", offline)
    await page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    await page.wait_for_selector(STATUS, timeout=timeout_ms)
    rendered = time.monotonic() - started
    await page.wait_for_function(
        f"() => {{ const e = document.querySelector('{LAST_RUN}'); return e && /completed|diverged|failed/.test(e.innerText); }}",
        timeout=timeout_ms,
    )
    finished = time.monotonic() - started
    last_run = await page.inner_text(LAST_RUN)
    errors = await page.locator(STDERR_OUTPUTS).count()
    await page.close()
    return {
        "session": index,
        "first_render_s": round(rendered, 1),
        "first_result_s": round(finished, 1),
        "completed": "completed" in last_run,
        "python_errors_in_page": errors,
    }


async def _sessions(url: str, count: int, timeout_ms: int) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            started = time.monotonic()
            return list(
                await asyncio.gather(*(_one_session(browser, url, i, started, timeout_ms) for i in range(count)))
            )
        finally:
            await browser.close()


def run_load(sessions: int = 5, notebook: str = "notebooks/explorer.ipynb", timeout_s: float = 300) -> dict:
    """Serve ``notebook`` with Voila, open ``sessions`` pages at once, and return the measurements."""
    with tempfile.TemporaryDirectory(prefix="voila-load-") as folder:
        folder = pathlib.Path(folder)
        port = _free_port()
        url = f"http://127.0.0.1:{port}/"
        log = open(folder / "voila.log", "w")
        server = subprocess.Popen(
            [str(BIN / "voila"), notebook, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"],
            cwd=REPOSITORY,
            env=_environment(folder),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for_port(port, server)
            pages = asyncio.run(_sessions(url, sessions, int(timeout_s * 1000)))
            kernels, workers = _app_processes(server)
            kernel_mib, worker_mib = _rss_mib(kernels), _rss_mib(workers)
        finally:
            children = psutil.Process(server.pid).children(recursive=True)
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            for child in children:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            log.close()
    return {
        "sessions": sessions,
        "cpus": os.cpu_count(),
        "pages": pages,
        "first_render_s": {"median": statistics.median(p["first_render_s"] for p in pages),
                           "max": max(p["first_render_s"] for p in pages)},
        "first_result_s": {"median": statistics.median(p["first_result_s"] for p in pages),
                           "max": max(p["first_result_s"] for p in pages)},
        "kernel_rss_mib": [round(size) for size in kernel_mib],
        "worker_rss_mib": [round(size) for size in worker_mib],
    }


def _markdown(result: dict) -> str:
    lines = [
        "| session | first render (s) | first result (s) | completed |",
        "|---|---|---|---|",
    ]
    for page in result["pages"]:
        lines.append(f"| {page['session']} | {page['first_render_s']} | {page['first_result_s']} | {page['completed']} |")
    lines.append("")
    lines.append(f"Kernel memory (RSS, MiB): {result['kernel_rss_mib']}; worker memory: {result['worker_rss_mib']}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--notebook", default="notebooks/explorer.ipynb")
    parser.add_argument("--markdown", action="store_true", help="print a table for benchmarks/README.md")
    args = parser.parse_args()
    result = run_load(args.sessions, args.notebook)
    print(_markdown(result) if args.markdown else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
