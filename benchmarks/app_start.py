"""Wall time from `danna-sep app` to its first page, loaded in a headless browser.

    python benchmarks/app_start.py                 # 5 starts, median and range
    python benchmarks/app_start.py --repeat 9 --json app-start.json

Each start runs `danna-sep app --port P` in a fresh process (a free port, an empty
temporary folder) with Debian's chromium already running, so that the times are the app's
alone, and records two moments from the command's start:

- served: the first HTTP answer on `http://127.0.0.1:P/` (polled every 20 ms);
- first page: Playwright's `goto(..., wait_until="load")` returned (the page, its scripts
  and styles loaded, every one of them from the app itself).

It also records the CPU time the app's process had used when its page had loaded. Wall
time is CPU time plus waiting: measure on a quiet machine (the header gives the load
average), or read the CPU column.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List

try:  # run as a module: python -m benchmarks.app_start
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/app_start.py
    import _common as common  # type: ignore[no-redef]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_start(browser, timeout: float = 120.0) -> Dict[str, float]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="app-start-") as temporary:
        env = {**os.environ, "TMPDIR": temporary}
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "danna_sep.cli", "app", "--port", str(port)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"danna-sep app exited with {process.returncode} before serving")
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"danna-sep app did not answer on {url} within {timeout:.0f} s")
                try:
                    with urllib.request.urlopen(url, timeout=1):
                        break
                except (urllib.error.URLError, ConnectionError, socket.timeout):
                    time.sleep(0.02)
            served = time.monotonic() - started
            context = browser.new_context()
            page = context.new_page()
            page.goto(url, wait_until="load")
            loaded = time.monotonic() - started
            cpu = _cpu_seconds(process.pid)
            context.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return {"served": served, "first_page": loaded, "cpu": cpu}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="starts to measure (default 5)")
    parser.add_argument("--json", help="also write the runs and their medians to this file")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    info = common.machine_info()
    print(common.machine_line(info))
    runs: List[Dict[str, float]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        for index in range(args.repeat):
            runs.append(one_start(browser))
            print(f"start {index + 1}: served {runs[-1]['served']:.2f} s, first page {runs[-1]['first_page']:.2f} s, "
                  f"CPU {runs[-1]['cpu']:.2f} s", file=sys.stderr)
        browser.close()
    rows = []
    for key, label in (("served", "served"), ("first_page", "first page loaded"), ("cpu", "CPU time of the app")):
        values = [run[key] for run in runs]
        rows.append([label, f"{statistics.median(values):.2f}", f"{min(values):.2f} to {max(values):.2f}"])
    print(common.markdown_table(["from `danna-sep app`", f"median of {len(runs)} (s)", "range (s)"], rows))
    if args.json:
        common.write_json(args.json, {"machine": info, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
