#!/usr/bin/env python3
"""The web console's page load with many snapshots (issue 15: "the console's pages load in under
200 ms with 10,000 snapshots").

A real server (the debug or release binary) gets N completed snapshots through the EBS direct APIs
(StartSnapshot + CompleteSnapshot with no blocks, 8 clients at once); then headless Chromium (Debian's
/usr/bin/chromium through Playwright), already signed in, opens each console page R times. Measured in
the browser: navigation start -> the page's first table rendered with its rows (the Snapshots page:
its first page of 50 from DescribeSnapshots MaxResults/NextToken), and the Snapshots page's "Next page"
click -> the next 50 rows. Printed for a small scale (N/100) and the full scale, with their ratio (1.0:
the page's cost does not grow with the number of snapshots).

Usage: python3 bench/console/run.py [--snapshots 10000] [--runs 5]
Env:   BLOCKSNAP_BENCH_BIN (default target/release/blocksnap if built, else target/debug/blocksnap)
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
AKID, SECRET, REGION = "AKIAE2ECONSOLEBENCH1", "console-bench-secret-key-0123456789abcdef", "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> Path:
    if os.environ.get("BLOCKSNAP_BENCH_BIN"):
        return Path(os.environ["BLOCKSNAP_BENCH_BIN"])
    rel = ROOT / "target/release/blocksnap"
    return rel if rel.exists() else ROOT / "target/debug/blocksnap"


def start(workdir: Path):
    port, nbd, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=AKID, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=SECRET,
               RUST_LOG="warn")
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([str(binary()), "serve", "--data-dir", str(workdir / "data"),
                             "--listen", f"127.0.0.1:{port}", "--nbd-listen", f"127.0.0.1:{nbd}",
                             "--metrics-listen", f"127.0.0.1:{metrics}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}/"
    ec2 = client("ec2", endpoint)
    deadline = time.monotonic() + 60
    while True:
        try:
            ec2.describe_regions()
            return proc, endpoint
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "server.log").read_text()[-4000:])
            time.sleep(0.1)


def client(service: str, endpoint: str):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id=AKID,
                        aws_secret_access_key=SECRET,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=16))


def add_snapshots(endpoint: str, n: int) -> None:
    ebs = client("ebs", endpoint)

    def one(_):
        sid = ebs.start_snapshot(VolumeSize=1, Description="console bench")["SnapshotId"]
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    ec2 = client("ec2", endpoint)
    while True:  # every snapshot completed: the page shows a settled list
        pending = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "status", "Values": ["pending"]}],
                                         MaxResults=5)["Snapshots"]
        if not pending:
            return
        time.sleep(0.5)


# Navigation start -> this predicate first true, in ms (performance.now() is relative to it).
READY = {
    "volumes": "() => document.querySelector('#main h1') && document.querySelector('section[aria-label=\"EC2 volumes\"] table') ? performance.now() : false",
    "snapshots": "() => document.querySelectorAll('section[aria-label=\"EC2 snapshots\"] tbody tr[data-id]').length >= Math.min(50, window.__expect) ? performance.now() : false",
    "store": "() => document.querySelector('tr[data-region]') ? performance.now() : false",
}


# The same moments as READY, seen by a MutationObserver: when the rows are in the DOM (the console's
# own work done), as opposed to the next animation frame that shows them (the browser's rendering,
# which a loaded machine delays the most).
IN_DOM = """
new MutationObserver((_, obs) => {
  const ready = {
    '#/volumes': () => document.querySelector('#main h1') && document.querySelector('section[aria-label="EC2 volumes"] table'),
    '#/snapshots': () => document.querySelectorAll('section[aria-label="EC2 snapshots"] tbody tr[data-id]').length >= Math.min(50, window.__expect),
    '#/store': () => document.querySelector('tr[data-region]'),
  }[location.hash];
  if (ready && ready()) { window.__inDom = performance.now(); obs.disconnect(); }
}).observe(document, { subtree: true, childList: true });
"""


def measure(page, endpoint: str, runs: int, expect: int) -> dict[str, float]:
    out = {}
    page.add_init_script(f"window.__expect = {expect};")  # set before the page's scripts run
    for name, ready in READY.items():
        times, dom = [], []
        for _ in range(runs):
            page.goto("about:blank")  # a new document each time: its time origin is this navigation
            page.goto(f"{endpoint}console/#/{name}")
            times.append(page.wait_for_function(ready, polling="raf").json_value())
            dom.append(page.evaluate("window.__inDom"))
        out[name] = statistics.median(times)
        out[f"{name} (rows in DOM)"] = statistics.median(dom)
    if expect > 50:
        times = []
        for _ in range(runs):
            page.goto("about:blank")
            page.goto(f"{endpoint}console/#/snapshots")
            page.wait_for_function(READY["snapshots"], polling="raf")
            first = page.locator('section[aria-label="EC2 snapshots"] tbody tr').first.get_attribute("data-id")
            t0 = page.evaluate("performance.now()")
            page.get_by_role("button", name="Next page").first.click()
            t1 = page.wait_for_function(
                "f => { const r = document.querySelector('section[aria-label=\"EC2 snapshots\"] tbody tr');"
                " return r && r.dataset.id !== f ? performance.now() : false; }", arg=first, polling="raf").json_value()
            times.append(t1 - t0)
        out["snapshots next page"] = statistics.median(times)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshots", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp, sync_playwright() as p:
        proc, endpoint = start(Path(tmp))
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.add_init_script(IN_DOM)
            page.goto(f"{endpoint}console/")
            page.get_by_label("Access key ID").fill(AKID)
            page.get_by_label("Secret access key").fill(SECRET)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name=f"Volumes in {REGION}").wait_for()
            print(f"binary: {binary()}")
            results = {}
            for n in (max(1, args.snapshots // 100), args.snapshots):
                t = time.monotonic()
                have = sum(results and [max(1, args.snapshots // 100)] or [0])
                add_snapshots(endpoint, n - have)
                print(f"{n} snapshots ready ({n - have} added in {time.monotonic() - t:.1f} s)")
                results[n] = measure(page, endpoint, args.runs, n)
            small, big = sorted(results)
            print(f"{'page (median of ' + str(args.runs) + ', ms)':<34}{small:>10}{big:>10}{'ratio':>8}")
            for name in results[big]:
                a, b = results[small].get(name), results[big][name]
                print(f"{name:<34}{(f'{a:.1f}' if a else '-'):>10}{b:>10.1f}{(f'{b / a:.2f}' if a else '-'):>8}")
        finally:
            browser.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
