#!/usr/bin/env python3
"""Start-up at scale (issue 18): time from process start to the first answered API call, on a data dir
with V volumes (default 10,000) and S snapshots (default 100,000).

The data dir is built fast but from the real binary's own formats: the release binary creates one
volume and one completed snapshot through the API and stops cleanly; their catalog rows (the engine's
documents) and the volume's directory are then cloned under new ids (rows inserted in one SQLite
transaction, volume directories with a sparse data.img and the template's change bitmap). Each volume
gets S/V completed snapshots chained by `parent`. The measured server is the real release binary.

Measured, R times per scale (median printed): Popen → the answer of a signed DescribeVolumes
(MaxResults=5). The request is sent at once: the listeners are bound before start-up work, so it
waits in the backlog until the server answers. Printed for 1/10 of the scale and the full scale, with
their ratio (1.0 would be start-up independent of the data dir's size).

Usage: python3 bench/startup/run.py [--volumes 10000] [--snapshots 100000] [--runs 3] [--keep DIR]
Env:   BLOCKSNAP_BENCH_BIN (default target/release/blocksnap; built with `cargo build --release` if missing)
       BLOCKSNAP_BENCH_PREFIX="chrt -f 1" runs the measured server under that command (e.g. a real-time
       priority, as root, on a machine shared with other work: the wall time then approaches an idle
       machine's); the server's CPU time until the answer is printed either way
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
AK, SK = "AKIABENCHROOT0000001", "bench-secret-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> Path:
    b = Path(os.environ.get("BLOCKSNAP_BENCH_BIN", REPO / "target/release/blocksnap"))
    if not b.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "blocksnap"], cwd=REPO, check=True)
    return b


def call(port: int, params: dict, timeout: float = 120) -> tuple[int, str]:
    body = urlencode({**params, "Version": "2016-11-15"})
    req = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}/", data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(AK, SK), "ec2", REGION).add_auth(req)
    p = req.prepare()
    http = urllib3.PoolManager(retries=urllib3.Retry(connect=2000, backoff_factor=0, other=0, read=0))
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = http.request("POST", p.url, body=p.body, headers=dict(p.headers), timeout=timeout)
            return r.status, r.data.decode()
        except urllib3.exceptions.MaxRetryError:
            # Not bound yet (only in the first milliseconds of the process).
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


class Server:
    def __init__(self, data: Path, log: Path):
        self.port, self.nbd = free_port(), free_port()
        env = {**os.environ, "BLOCKSNAP_ROOT_ACCESS_KEY_ID": AK, "BLOCKSNAP_ROOT_SECRET_ACCESS_KEY": SK,
               "RUST_LOG": os.environ.get("RUST_LOG", "info"), "BLOCKSNAP_GC_INTERVAL_SECS": "86400"}
        self.log = open(log, "ab")
        self.t0 = time.monotonic()
        prio = os.environ.get("BLOCKSNAP_BENCH_PREFIX", "").split()
        self.proc = subprocess.Popen([*prio, str(binary()), "serve", "--data-dir", str(data),
                                      "--listen", f"127.0.0.1:{self.port}", "--nbd-listen", f"127.0.0.1:{self.nbd}",
                                      "--metrics-listen", "off"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def first_answer(self) -> float:
        status, text = call(self.port, {"Action": "DescribeVolumes", "MaxResults": "5"})
        t = time.monotonic() - self.t0
        if status != 200:
            raise SystemExit(f"DescribeVolumes answered {status}: {text[:500]}")
        self.cpu = self.cpu_seconds()
        return t

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server used so far: unlike the wall time, it
        does not grow when other processes compete for the cores."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=120)
        self.log.close()
        if rc != 0:
            raise SystemExit(f"server exited {rc}")


def template(work: Path) -> tuple[dict, dict, Path]:
    """One volume and one completed snapshot made by the real binary; returns their rows and dir."""
    data = work / "template"
    work.mkdir(parents=True, exist_ok=True)
    srv = Server(data, work / "template.log")
    srv.first_answer()
    status, text = call(srv.port, {"Action": "CreateVolume", "AvailabilityZone": f"{REGION}a", "Size": "8"})
    assert status == 200, text
    vol = text.split("<volumeId>")[1].split("<")[0]
    status, text = call(srv.port, {"Action": "CreateSnapshot", "VolumeId": vol})
    assert status == 200, text
    snap = text.split("<snapshotId>")[1].split("<")[0]
    for _ in range(600):
        status, text = call(srv.port, {"Action": "DescribeSnapshots", "SnapshotId.1": snap})
        if "<status>completed</status>" in text:
            break
        time.sleep(0.1)
    else:
        raise SystemExit("template snapshot did not complete")
    srv.stop()
    db = sqlite3.connect(data / "catalog.db")
    rows = {kind: db.execute("SELECT kind, id, account, region, doc FROM rows WHERE kind = ? AND id = ?",
                             (kind, i)).fetchone() for kind, i in (("volume", vol), ("snapshot", snap))}
    db.close()
    return rows["volume"], rows["snapshot"], data


def build(work: Path, volumes: int, snapshots: int) -> Path:
    vrow, srow, tdata = template(work)
    data = work / f"data-{volumes}-{snapshots}"
    shutil.copytree(tdata, data, ignore=shutil.ignore_patterns("volumes"))
    (data / "volumes").mkdir()
    tvol = tdata / "volumes" / vrow[1]
    bitmap = (tvol / "changes.bitmap").read_bytes()
    size = (tvol / "data.img").stat().st_size
    per = max(1, snapshots // volumes)
    vdoc, sdoc = json.loads(vrow[4]), json.loads(srow[4])
    db = sqlite3.connect(data / "catalog.db")
    db.execute("DELETE FROM rows WHERE kind IN ('volume', 'snapshot')")
    vrows, srows = [], []
    n = 0
    for v in range(volumes):
        vid = f"vol-{v:017x}"
        vrows.append(("volume", vid, vrow[2], vrow[3], json.dumps({**vdoc, "id": vid})))
        d = data / "volumes" / vid
        d.mkdir()
        with open(d / "data.img", "wb") as f:
            f.truncate(size)
        (d / "changes.bitmap").write_bytes(bitmap)
        parent = None
        for _ in range(per if v < volumes - 1 else snapshots - n):
            sid = f"snap-{n:017x}"
            srows.append(("snapshot", sid, srow[2], srow[3],
                          json.dumps({**sdoc, "id": sid, "volume_id": vid, "parent": parent})))
            parent = sid
            n += 1
    db.executemany("INSERT INTO rows (kind, id, account, region, doc) VALUES (?, ?, ?, ?, ?)", vrows + srows)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return data


def measure(data: Path, runs: int, log: Path) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(runs):
        srv = Server(data, log)
        wall.append(srv.first_answer())
        cpu.append(srv.cpu)
        srv.stop()
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=10_000)
    ap.add_argument("--snapshots", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build the data dirs here and keep them")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="bsnap-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for div in (10, 1):
            v, s = max(1, a.volumes // div), max(1, a.snapshots // div)
            t = time.monotonic()
            data = build(work / f"scale{div}", v, s)
            print(f"built {v} volumes, {s} snapshots in {time.monotonic() - t:.1f} s", file=sys.stderr)
            times, cpu = measure(data, a.runs, work / f"scale{div}" / "server.log")
            results.append((v, s, statistics.median(times), times, statistics.median(cpu)))
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("volumes | snapshots | start → first answered call (median) | server CPU until then (median) | runs (ms)")
        for v, s, med, times, cpu in results:
            print(f"{v} | {s} | {med * 1000:.0f} ms | {cpu * 1000:.0f} ms | {', '.join(f'{x * 1000:.0f}' for x in times)}")
        print(f"ratio full/tenth: {results[1][2] / results[0][2]:.2f} (10.0 = linear in the data dir's size)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
