#!/usr/bin/env python3
"""The newcomer's path (issue 15: "from `cargo run --release -- serve` to watching a snapshot's progress
bar in the browser in under two minutes, following only the README").

Follows the README literally, by machine: in a fresh directory (so a fresh ./blocksnap-data) it runs
`cargo run --release -- serve` (the repo's Cargo.toml), reads the root credentials from the `export`
lines `serve` prints at first start, opens http://127.0.0.1:4566/console in headless Chromium (Debian's
/usr/bin/chromium through Playwright), signs in with them, creates a volume with the Volumes page's
form, takes a snapshot of it from its row's Snapshot dialog, goes to the Snapshots page and waits until
that snapshot's progress bar shows 100 %. Prints the wall time of each step and the total.

The README's defaults are used as they are: the API on 127.0.0.1:4566 and NBD on 127.0.0.1:10809 (the
script stops when one of them is taken). The release build itself is not counted when it is already
built (cargo prints "Finished" and runs it); a first build is, and is printed as its own step.

Usage: python3 bench/console/newcomer.py
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = "http://127.0.0.1:4566/console"


def taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    for port in (4566, 10809):
        if taken(port):
            print(f"127.0.0.1:{port} is in use: the README's defaults need it free", file=sys.stderr)
            return 2
    from playwright.sync_api import sync_playwright

    steps: list[tuple[str, float]] = []
    t_start = last = time.monotonic()

    def step(name: str, at: float | None = None) -> None:
        nonlocal last
        now = at if at is not None else time.monotonic()
        steps.append((name, now - last))
        print(f"{name:<64}{(now - last):8.2f} s", flush=True)
        last = now

    with tempfile.TemporaryDirectory(prefix="newcomer-") as tmp:
        # `cargo run --release -- serve`, as the README says, from a fresh directory.
        proc = subprocess.Popen(["cargo", "run", "--release", "--manifest-path", str(ROOT / "Cargo.toml"), "--", "serve"],
                                cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        out: list[str] = []
        err: list[str] = []
        running_at: list[float] = []  # when cargo started the binary (its build was done)

        def drain() -> None:
            for line in proc.stderr:
                err.append(line)
                if not running_at and line.strip().startswith("Running `"):
                    running_at.append(time.monotonic())

        threading.Thread(target=drain, daemon=True).start()
        try:
            creds = {}
            for line in proc.stdout:  # the `export` lines, printed at first start
                out.append(line)
                m = re.match(r"export (AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_DEFAULT_REGION)=(\S+)", line)
                if m:
                    creds[m.group(1)] = m.group(2)
                if len(creds) == 3:
                    break
            if len(creds) < 3:
                raise RuntimeError("serve printed no credentials:\n" + "".join(out + err)[-4000:])
            if running_at:
                step("cargo run --release: build checked/done, binary started", running_at[0])
            step("serve: first start, root credentials printed")
            while not taken(4566):
                if proc.poll() is not None:
                    raise RuntimeError("serve exited:\n" + "".join(err)[-4000:])
                time.sleep(0.02)
            step("API listening on 127.0.0.1:4566")

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page()
                page.set_default_timeout(60_000)
                step("Chromium started")
                page.goto(CONSOLE)
                page.get_by_label("Access key ID").wait_for()
                step(f"{CONSOLE} open")
                page.get_by_label("Access key ID").fill(creds["AWS_ACCESS_KEY_ID"])
                page.get_by_label("Secret access key").fill(creds["AWS_SECRET_ACCESS_KEY"])
                page.get_by_role("textbox", name="Region").fill(creds["AWS_DEFAULT_REGION"])
                page.get_by_role("button", name="Sign in").click()
                page.get_by_role("heading", name=f"Volumes in {creds['AWS_DEFAULT_REGION']}").wait_for()
                step("signed in: Volumes page shown")
                page.get_by_role("button", name="Create volume").click()
                page.wait_for_function("() => /Created vol-/.test(document.querySelector('#status').textContent)")
                vid = re.search(r"vol-[0-9a-f]+", page.locator("#status").text_content()).group(0)
                page.locator(f'tr[data-id="{vid}"]').wait_for()
                step(f"volume {vid} created (form with its defaults)")
                page.get_by_role("button", name=f"Create snapshot of {vid}").click()
                page.get_by_role("dialog").get_by_role("button", name="Create snapshot").click()
                page.wait_for_function("() => /Snapshot snap-[0-9a-f]+ started/.test(document.querySelector('#status').textContent)")
                sid = re.search(r"snap-[0-9a-f]+", page.locator("#status").text_content()).group(0)
                step(f"snapshot {sid} started (Snapshot dialog)")
                page.get_by_role("link", name="Snapshots").click()
                page.wait_for_function(
                    "id => { const r = document.querySelector(`tr[data-id='${id}']`);"
                    " return r && r.querySelector('progress')?.value === 100; }", arg=sid)
                step("Snapshots page: its progress bar at 100 %")
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    total = time.monotonic() - t_start
    print(f"{'total (goal: under 120 s)':<64}{total:8.2f} s")
    return 0 if total < 120 else 1


if __name__ == "__main__":
    sys.exit(main())
