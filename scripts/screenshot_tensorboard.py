"""Screenshots of what a user sees in TensorBoard for a folder of runs (not a test).

    python scripts/screenshot_tensorboard.py outputs/multirun/DATE/TIME --out shots/

Starts TensorBoard on the folder, waits until it has read the runs, and saves the Time Series,
Scalars and HParams dashboards as PNGs with Debian's headless Chromium
(``apt-get install chromium``). Open the pictures to check what the dashboards show.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

VIEWS = {"time_series": "timeseries", "scalars": "scalars", "hparams": "hparams"}
CHROMIUM_FLAGS = (
    # Root in a container, no GPU, and no network beyond localhost: what Chromium needs here.
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_runs(url: str, timeout: float = 60.0) -> list[str]:
    """The runs TensorBoard lists, once it lists any (it reads the folder in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=2) as response:
                runs = json.load(response)
            if runs:
                return runs
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"TensorBoard at {url} listed no runs within {timeout:.0f} s")


def screenshot(chromium: str, url: str, path: Path, size: str, wait_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={path}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="a sweep folder or any folder of runs")
    parser.add_argument("--out", type=Path, default=Path("tensorboard_screenshots"))
    parser.add_argument("--size", default="1920,1080", help="window width,height in pixels")
    parser.add_argument("--wait-ms", type=int, default=15000, help="page time before the shot")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH; install it with: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            f"--logdir={args.logdir}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--reload_interval=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        runs = wait_for_runs(url)
        print(f"TensorBoard lists {len(runs)} runs: {', '.join(runs[:4])}...")
        for name, hash_route in VIEWS.items():
            path = (args.out / f"{name}.png").resolve()
            screenshot(chromium, f"{url}/#{hash_route}", path, args.size, args.wait_ms)
            print(f"wrote {path}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
