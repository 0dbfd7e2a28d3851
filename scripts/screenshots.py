"""Screenshots of the Dagster UI on the demo's instance: `make screenshots`, after `make demo`.

Starts `dagster-webserver --read-only` (no daemon: nothing is launched, nothing changes) on
DAGSTER_HOME with this project's workspace, drives Debian's headless Chromium through Playwright
(its own browser builds are never downloaded), and saves one PNG per page under docs/screenshots/.
A page is captured once it shows what it is for (a named element is visible and the network has
gone quiet), not after a fixed sleep. The webserver and the browser are stopped whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_SECONDS = 300  # the code location imports torch and Dagster: slow on a loaded machine
PAGE_SECONDS = 120
WORKSPACE_QUERY = '{"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"}'


@dataclass(frozen=True)
class Shot:
    name: str  # the PNG's file name, without .png
    path: str  # URL path in the UI
    ready: str  # text that is visible once the page shows what it is for
    then: Callable | None = None  # what to do on the page before the picture, waiting for its effect
    height: int = 1000  # viewport height in CSS pixels


def _expand_groups(page) -> None:  # type: ignore[no-untyped-def]
    """The global lineage opens with each group collapsed to a box: expand them all (the graph's
    ⌥E, kept by the UI), then load the page again so the graph is fitted to the expanded nodes."""
    page.get_by_text("main_model", exact=True).first.click()
    page.keyboard.press("Alt+KeyE")
    page.get_by_text("curriculum_dataset", exact=True).first.wait_for(state="visible")
    page.reload()
    page.get_by_text("active_main_version", exact=True).first.wait_for(state="visible")


def _open_markdown(key: str) -> Callable:
    """Filter the asset's metadata down to `key`, open its markdown (a long one is behind a link)
    and wait for its embedded picture."""

    def open_markdown(page) -> None:  # type: ignore[no-untyped-def]
        page.get_by_placeholder("Filter metadata keys").fill(key)
        page.get_by_text("[Show Markdown]").first.click()
        page.locator("img[src^='data:image/png']").first.wait_for(state="visible")

    return open_markdown


SHOTS = [
    Shot("lineage", "/asset-groups", "main_model", _expand_groups, height=1800),
    Shot("active-version", "/assets/active_main_version", "serving_since", height=1300),
    Shot("round-report", "/assets/federated_main_model", "round_report", _open_markdown("round_report"), 1300),
    Shot("main-model", "/assets/main_model", "test_accuracy_pct", height=1300),
    Shot("main-model-check", "/assets/main_model?view=checks", "main_model_near_bayes_ceiling"),
    Shot("runs", "/runs", "federated_aggregation"),
]
# Set before any page loads: the UI's welcome dialog (shown on 127.0.0.1 until dismissed) would
# cover every page, and a vertical graph fits the lineage's five levels with its nodes' details.
BROWSER_STATE = (
    "window.localStorage.setItem('communityNux', JSON.stringify('1'));"
    "window.localStorage.setItem('asset-graph-direction', JSON.stringify('vertical'));"
)
# What the UI shows while a page's live data (statuses, checks) is still arriving.
LOADING = re.compile(r"^Loading(\.\.\.|…)$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _location_loaded(url: str) -> bool:
    request = urllib.request.Request(
        f"{url}/graphql", data=WORKSPACE_QUERY.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@contextmanager
def webserver(dagster_home: Path) -> Iterator[str]:
    """`dagster-webserver --read-only` on a free port; yields its URL once the code location is loaded."""
    port = _free_port()
    log = open(dagster_home / "screenshots-webserver.log", "w")  # noqa: SIM115 (closed below)
    command = [sys.executable, "-m", "dagster_webserver", "--read-only", "-w", "workspace.yaml"]
    process = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its code server is in the same group: stopped together
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _location_loaded(url):
            if process.poll() is not None:
                raise RuntimeError(f"the webserver exited ({process.returncode}); see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the code location did not load in {STARTUP_SECONDS} s; see {log.name}")
            time.sleep(1)
        yield url
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def capture(url: str, out: Path, width: int) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="aivo-chromium-") as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": 1000},
        )
        browser.add_init_script(BROWSER_STATE)
        try:
            page = browser.new_page()
            page.set_default_timeout(PAGE_SECONDS * 1000)
            for shot in SHOTS:
                page.set_viewport_size({"width": width, "height": shot.height})
                page.goto(f"{url}{shot.path}")
                page.get_by_text(shot.ready, exact=True).first.wait_for(state="visible")
                if shot.then is not None:
                    shot.then(page)
                page.wait_for_load_state("networkidle")
                page.get_by_text(LOADING).first.wait_for(state="hidden")  # live data arrived
                path = out / f"{shot.name}.png"
                page.screenshot(path=path)
                saved.append(path)
                print(f"✓ {path}", flush=True)
        finally:
            browser.close()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--width", type=int, default=1600)
    args = parser.parse_args()
    home = Path(os.environ.get("DAGSTER_HOME") or ROOT / ".dagster_home").resolve()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 2
    if not (home / "history").exists():
        print(f"No Dagster instance at {home}: run `make demo` first", file=sys.stderr)
        return 2
    with webserver(home) as url:
        capture(url, args.out, args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
