#!/usr/bin/env python3
"""Snapshot throughput into the local store vs into an S3 server (issue 14 item 6), same binary, same
run, same volume data; restic into the same S3 server as the peer.

One blocksnap serves two regions: us-east-1 keeps its snapshot store under the data dir, us-west-2 in a
bucket of a local S3 server (moto_server, as tests/run uses; or BLOCKSNAP_S3_ENDPOINT). A volume in each
region gets the same image over NBD (random data, incompressible: every block is uploaded); each round
snapshots both volumes one after the other (CreateSnapshot until `completed`), alternating which goes
first, after writing a fresh random block into every 512 KiB block's first 4 KiB so each round uploads
the whole volume again. Prints MiB/s of each store per round, the medians and the S3/local ratio; then
`restic backup` of the same image into the same S3 server (a fresh repository).

Usage: python3 bench/s3/run.py [--size-mib 512] [--rounds 3] [--skip-restic]
Env:   BLOCKSNAP_BENCH_BIN (default target/release/blocksnap), BLOCKSNAP_S3_ENDPOINT (default: start
       moto_server on a free port). restic comes from Debian (installed by this script when missing).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
AK, SK = "AKIABENCHS3000000001", "bench-s3-secret-0123456789"
S3K, S3S = "bench", "bench-secret"
LOCAL, REMOTE = "us-east-1", "us-west-2"
MiB = 1 << 20
BLOCK = 512 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listen(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen within {timeout} s")


def sh(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=True, capture_output=True, **kw)


def ensure_restic() -> str | None:
    if shutil.which("restic"):
        return shutil.which("restic")
    for cmd in (["apt-get", "install", "-y", "-qq", "restic"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "restic"]):
        r = subprocess.run(cmd, capture_output=True, timeout=600)
        if r.returncode == 0 and shutil.which("restic"):
            break
    return shutil.which("restic")


def stir(path: Path, size: int) -> None:
    """New random bytes at the start of every 512 KiB block: every block changes, none repeats."""
    with open(path, "r+b") as f:
        for off in range(0, size, BLOCK):
            f.seek(off)
            f.write(os.urandom(4096))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-restic", action="store_true")
    a = ap.parse_args()
    binary = Path(os.environ.get("BLOCKSNAP_BENCH_BIN", REPO / "target/release/blocksnap"))
    if not binary.exists():
        sys.exit(f"{binary} not found: run `cargo build --release -p blocksnap` first")
    work = Path(tempfile.mkdtemp(prefix="bsnap-s3-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        endpoint = os.environ.get("BLOCKSNAP_S3_ENDPOINT")
        if not endpoint:
            port = free_port()
            moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(moto)
            wait_listen(port, moto, "moto_server")
            endpoint = f"http://127.0.0.1:{port}"
        bucket = f"bench-{os.getpid()}-{int(time.time())}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=S3K,
                          aws_secret_access_key=S3S)
        s3.create_bucket(Bucket=bucket)
        cfg = work / "blocksnap.toml"
        cfg.write_text(f"""regions = ["{LOCAL}", "{REMOTE}"]
[stores.{REMOTE}]
bucket = "{bucket}"
prefix = "snapshots"
endpoint = "{endpoint}"
region = "us-east-1"
access_key_id = "{S3K}"
secret_access_key = "{S3S}"
allow_http = true
""")
        api, nbd = free_port(), free_port()
        env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=AK, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=SK,
                   RUST_LOG=os.environ.get("RUST_LOG", "info"))
        bs = subprocess.Popen([str(binary), "serve", "--data-dir", str(work / "data"), "--config", str(cfg),
                               "--listen", f"127.0.0.1:{api}", "--nbd-listen", f"127.0.0.1:{nbd}",
                               # Loopback plaintext NBD: this bench measures the store, not TLS.
                               "--nbd-insecure-plaintext", "--metrics-listen", "off"],
                              env=env, stdout=open(work / "blocksnap.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
        procs.insert(0, bs)
        wait_listen(api, bs, "blocksnap")

        def ec2(region):
            return boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{api}", region_name=region,
                                aws_access_key_id=AK, aws_secret_access_key=SK,
                                config=Config(retries={"max_attempts": 1}))

        size = a.size_mib * MiB
        gib = -(-size // (1 << 30))
        image = work / "image.raw"
        with open(image, "wb") as f:
            for _ in range(0, size, 64 * MiB):
                f.write(os.urandom(min(64 * MiB, size - f.tell())))
        vols = {}
        for region in (LOCAL, REMOTE):
            c = ec2(region)
            inst = c.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                                   Placement={"AvailabilityZone": region + "a"})["Instances"][0]["InstanceId"]
            vid = c.create_volume(Size=gib, AvailabilityZone=region + "a")["VolumeId"]
            c.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
            vols[region] = (c, vid)

        def snapshot(region: str) -> float:
            c, vid = vols[region]
            os.sync()
            t0 = time.perf_counter()
            sid = c.create_snapshot(VolumeId=vid)["SnapshotId"]
            while (s := c.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0])["State"] == "pending":
                time.sleep(0.02)
            if s["State"] != "completed":
                sys.exit(f"{sid} in {region}: {s['State']} {s.get('StateMessage')}")
            return time.perf_counter() - t0

        rates: dict[str, list[float]] = {LOCAL: [], REMOTE: []}
        print(f"{a.size_mib} MiB of random data per snapshot, {a.rounds} rounds, binary {binary}, S3 {endpoint}")
        for r in range(a.rounds):
            if r:
                stir(image, size)
            for region in (LOCAL, REMOTE):
                sh("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-W", "-m", "8", str(image),
                   f"nbd://127.0.0.1:{nbd}/{vols[region][1]}")
            for region in ((LOCAL, REMOTE) if r % 2 == 0 else (REMOTE, LOCAL)):
                secs = snapshot(region)
                rates[region].append(a.size_mib / secs)
                print(f"  round {r + 1} {'local' if region == LOCAL else 'S3   '}: {secs:7.2f} s  "
                      f"{a.size_mib / secs:8.1f} MiB/s", flush=True)
        local, remote = statistics.median(rates[LOCAL]), statistics.median(rates[REMOTE])
        chunks = sum(o["Size"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                       Prefix="snapshots/chunks/")
                     for o in p.get("Contents", []))
        print(f"\nsnapshot into the local store   {local:8.1f} MiB/s (median of {a.rounds})")
        print(f"snapshot into S3 (same server)  {remote:8.1f} MiB/s (median of {a.rounds}); "
              f"{chunks / MiB:.0f} MiB of chunks in the bucket")
        print(f"ratio S3 / local                {remote / local:8.2f}")

        restic = None if a.skip_restic else ensure_restic()
        if restic:
            renv = dict(os.environ, AWS_ACCESS_KEY_ID=S3K, AWS_SECRET_ACCESS_KEY=S3S,
                        RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=f"s3:{endpoint}/{bucket}-restic")
            s3.create_bucket(Bucket=f"{bucket}-restic")
            sh(restic, "init", env=renv)
            os.sync()
            t0 = time.perf_counter()
            sh(restic, "backup", "--quiet", str(image), env=renv)
            secs = time.perf_counter() - t0
            print(f"restic backup into S3 (peer)    {a.size_mib / secs:8.1f} MiB/s (first backup, one run); "
                  f"blocksnap S3 / restic S3 {remote / (a.size_mib / secs):.2f}")
        else:
            print("restic: skipped" if a.skip_restic else "restic: not available (apt-get install restic)")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
