#!/usr/bin/env python3
"""GetStoreStats (the console's Store page) at a small and a large number of snapshots.

A real server gets N completed snapshots through the EBS direct APIs, each with one block of its own
(so N manifests and N chunks; the blocks compress well, so the disk stays small), 8 clients at once.
Then the root account calls BlocksnapStore_20261130.GetStoreStats for the region R times, signed with
SigV4 like the console does, and the median wall time of the call is printed for N/100 and N
snapshots, with their ratio (1.0: the call's cost does not grow with the store).

Usage: python3 bench/store_stats/run.py [--snapshots 10000] [--runs 20] [--binary PATH]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import botocore.auth
import requests
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

ROOT = Path(__file__).resolve().parents[2]
AKID, SECRET, REGION = "AKIAE2ESTORESTATS001", "store-stats-bench-secret-key-0123456789ab", "us-east-1"
BLOCK = 524288


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(service: str, endpoint: str):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id=AKID,
                        aws_secret_access_key=SECRET,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=16))


def start(binary: str, workdir: Path):
    port = free_port()
    env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=AKID, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=SECRET,
               RUST_LOG="warn")
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([binary, "serve", "--data-dir", str(workdir / "data"), "--listen", f"127.0.0.1:{port}",
                             "--nbd-listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "off"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            client("ec2", endpoint).describe_regions()
            return proc, endpoint
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "server.log").read_text()[-4000:])
            time.sleep(0.1)


def add_snapshots(endpoint: str, first: int, n: int) -> None:
    ebs = client("ebs", endpoint)

    def one(i):
        data = hashlib.sha256(f"store-stats-{i}".encode()).digest() * (BLOCK // 32)
        sid = ebs.start_snapshot(VolumeSize=1, Description="store stats bench")["SnapshotId"]
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data, DataLength=BLOCK,
                               Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                               ChecksumAlgorithm="SHA256")
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(first, first + n)))
    ec2 = client("ec2", endpoint)
    while ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "status", "Values": ["pending"]}],
                                 MaxResults=5)["Snapshots"]:
        time.sleep(0.5)


def store_stats(session: requests.Session, endpoint: str,
                target: str = "BlocksnapStore_20261130.GetStoreStats") -> tuple[float, dict]:
    req = AWSRequest(method="POST", url=endpoint, data=json.dumps({"Regions": [REGION]}).encode(),
                     headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
    botocore.auth.SigV4Auth(Credentials(AKID, SECRET), "blocksnap", REGION).add_auth(req)
    p = req.prepare()
    t = time.perf_counter()
    r = session.post(p.url, headers=dict(p.headers), data=p.body, timeout=120)
    ms = (time.perf_counter() - t) * 1000
    r.raise_for_status()
    return ms, r.json().get("Regions", [{}])[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshots", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=20)
    default = ROOT / "target/release/blocksnap"
    ap.add_argument("--binary", default=str(default if default.exists() else ROOT / "target/debug/blocksnap"))
    args = ap.parse_args()
    print(f"binary: {args.binary}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start(args.binary, Path(tmp))
        try:
            have = 0
            session = requests.Session()
            for n in (max(1, args.snapshots // 100), args.snapshots):
                t = time.monotonic()
                add_snapshots(endpoint, have, n - have)
                have = n
                store_stats(session, endpoint)  # warm (a first count, if any)
                times, last = [], {}
                for _ in range(args.runs):
                    ms, last = store_stats(session, endpoint)
                    times.append(ms)
                # The same path (HTTP, SigV4, a blocking thread) with a call that touches no snapshot.
                floor = statistics.median(
                    store_stats(session, endpoint, "BlocksnapNbd_20261129.ListNbdCredentials")[0]
                    for _ in range(args.runs))
                results[n] = statistics.median(times)
                print(f"{n:>6} snapshots (seeded in {time.monotonic() - t:.0f} s): GetStoreStats median "
                      f"{results[n]:.1f} ms over {args.runs} calls (min {min(times):.1f}, max {max(times):.1f}); "
                      f"ListNbdCredentials (no snapshot work) {floor:.1f} ms; "
                      f"Manifests {last.get('Manifests')}, Chunks {last.get('Chunks')}")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    small, large = sorted(results)
    print(f"ratio {large} / {small} snapshots: {results[large] / results[small]:.2f}")


if __name__ == "__main__":
    main()
