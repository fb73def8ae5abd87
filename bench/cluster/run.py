#!/usr/bin/env python3
"""API throughput with 1 node and with 3 nodes (issue 14 item 6), same client, same run.

Starts one PostgreSQL catalog per target (BLOCKSNAP_TEST_PG names a server whose user may create
databases: `. tests/pg.sh && pg_start` gives one), one moto_server for the S3 stores, then:
  - 1 node:  `blocksnap serve` alone on its PostgreSQL catalog (no --node-id);
  - 3 nodes: `blocksnap serve --node-id 1..3` on 127.0.0.1-3, one catalog; node 1 leads.
Against each: seeds N volumes, then C client processes run a mix for S seconds (default 90%
DescribeVolumes of one id, 10% CreateVolume); with 3 nodes the clients are spread over the nodes
(followers forward to the leader), then all sent to the leader (`3n/leader`: the hop's cost apart).
Prints requests/s, p50/p99 and the 3-node/1-node ratio.

The client is bench/api's: one keep-alive connection per process, SigV4 by botocore, no retries.

Usage: python3 bench/cluster/run.py [--volumes 300] [--clients 6] [--seconds 8] [--create-share 0.1]
Env:   BLOCKSNAP_BENCH_BIN (default target/release/blocksnap if present, else target/debug/blocksnap)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
AK, SK = "AKIABENCHROOT0000001", "bench-secret-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listen(host: str, port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited early")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not listen")
            time.sleep(0.05)


def wait_log(path: Path, text: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no {text!r} in {path}")
        time.sleep(0.05)


def pg_database(base: str) -> str:
    name = "bench_" + secrets.token_hex(6)
    subprocess.run(["psql", base, "-XAtqc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    head, sep, query = base.partition("?")
    return head[:head.rindex("/")] + "/" + name + sep + query


class Client:
    def __init__(self, host: str, port: int):
        self.url = f"http://{host}:{port}/"
        self.pool = urllib3.HTTPConnectionPool(host, port, maxsize=1, retries=False, timeout=60)
        self.signer = SigV4Auth(Credentials(AK, SK), "ec2", REGION)

    def call(self, params: dict) -> tuple[int, bytes]:
        body = urlencode({**params, "Version": "2016-11-15"})
        req = AWSRequest(method="POST", url=self.url, data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        self.signer.add_auth(req)
        r = self.pool.urlopen("POST", "/", body=body, headers=dict(req.headers), preload_content=True)
        return r.status, r.data


def extract_id(xml: bytes) -> str:
    i = xml.index(b"<volumeId>") + len(b"<volumeId>")
    return xml[i:xml.index(b"</volumeId>", i)].decode()


def worker(args):
    (host, port), ids, seconds, create_share, seed = args
    c = Client(host, port)
    rnd = random.Random(seed)
    lat, errors = [], 0
    c.call({"Action": "DescribeVolumes", "VolumeId.1": ids[0]})
    t0 = time.perf_counter()
    t_end = t0 + seconds
    while time.perf_counter() < t_end:
        if rnd.random() < create_share:
            p = {"Action": "CreateVolume", "AvailabilityZone": f"{REGION}a", "Size": "1"}
        else:
            p = {"Action": "DescribeVolumes", "VolumeId.1": rnd.choice(ids)}
        s = time.perf_counter()
        status, _ = c.call(p)
        lat.append(time.perf_counter() - s)
        errors += status != 200
    return lat, time.perf_counter() - t0, errors


def measure(endpoints, ids, clients, seconds, create_share):
    ctx = mp.get_context("fork")
    with ctx.Pool(clients) as pool:
        res = pool.map(worker, [(endpoints[i % len(endpoints)], ids, seconds, create_share, i)
                                for i in range(clients)])
    lat = sorted(x for r in res for x in r[0])
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    return {"rps": sum(len(r[0]) / r[1] for r in res), "p50": pct(0.5), "p99": pct(0.99),
            "n": len(lat), "errors": sum(r[2] for r in res)}


def seed(endpoint, n) -> list[str]:
    c = Client(*endpoint)
    ids = []
    for _ in range(n):
        st, body = c.call({"Action": "CreateVolume", "AvailabilityZone": f"{REGION}a", "Size": "1"})
        if st != 200:
            raise SystemExit(f"seed CreateVolume: {st} {body[:200]!r}")
        ids.append(extract_id(body))
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--create-share", type=float, default=0.1)
    default_bin = REPO / "target/release/blocksnap"
    if not default_bin.exists():
        default_bin = REPO / "target/debug/blocksnap"
    ap.add_argument("--bin", default=os.environ.get("BLOCKSNAP_BENCH_BIN", str(default_bin)))
    args = ap.parse_args()
    base = os.environ.get("BLOCKSNAP_TEST_PG")
    if not base:
        raise SystemExit("set BLOCKSNAP_TEST_PG (e.g. `. tests/pg.sh && pg_start`)")
    work = Path(tempfile.mkdtemp(prefix="blocksnap-bench-cluster-"))
    procs: list[subprocess.Popen] = []
    try:
        s3_port = free_port()
        moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(s3_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(moto)
        wait_listen("127.0.0.1", s3_port, moto, "moto_server")
        s3 = f"http://127.0.0.1:{s3_port}"
        boto3.client("s3", endpoint_url=s3, region_name=REGION, aws_access_key_id="k",
                     aws_secret_access_key="s").create_bucket(Bucket="bench")
        config = work / "blocksnap.toml"
        text = f'regions = ["{REGION}"]\n'
        for kind in ("stores", "archives"):
            text += (f'[{kind}.{REGION}]\nbucket = "bench"\nprefix = "{kind}"\nendpoint = "{s3}"\n'
                     f'region = "{REGION}"\naccess_key_id = "k"\nsecret_access_key = "s"\nallow_http = true\n')
        config.write_text(text)
        env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=AK, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=SK, RUST_LOG="warn")
        env.pop("BLOCKSNAP_CATALOG", None)

        def start(name, host, node_id, url, wait_for):
            port = free_port()
            (work / name).mkdir()
            cmd = [args.bin, "serve", "--data-dir", str(work / name / "data"), "--catalog", url, "--config",
                   str(config), "--listen", f"{host}:{port}", "--nbd-listen", f"{host}:{free_port()}",
                   "--metrics-listen", "off"] + (["--node-id", str(node_id)] if node_id else [])
            log = work / name / "log"
            p = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                 env=dict(env, RUST_LOG="info"), start_new_session=True)
            procs.append(p)
            wait_log(log, wait_for, p)
            return (host, port), p

        results = {}
        single, p = start("single", "127.0.0.1", None, pg_database(base), "blocksnap serving")
        ids = seed(single, args.volumes)
        results["1 node"] = measure([single], ids, args.clients, args.seconds, args.create_share)
        p.send_signal(signal.SIGTERM)
        p.wait(20)

        url = pg_database(base)
        nodes = [start("node1", "127.0.0.1", 1, url, "blocksnap serving")[0]]
        for n in (2, 3):
            nodes.append(start(f"node{n}", f"127.0.0.{n}", n, url, "cluster node up")[0])
        ids = seed(nodes[0], args.volumes)
        results["3 nodes"] = measure(nodes, ids, args.clients, args.seconds, args.create_share)
        # The same cluster with every client on the leader: what the forwarding hop costs, apart
        # from the followers' own work (heartbeats, election polls).
        results["3n/leader"] = measure(nodes[:1], ids, args.clients, args.seconds, args.create_share)

        print(f"binary: {args.bin}; {args.clients} client processes, {args.seconds:g} s, "
              f"{100 * (1 - args.create_share):.0f}% DescribeVolumes (1 id) / {100 * args.create_share:.0f}% "
              f"CreateVolume, {args.volumes} volumes seeded")
        print(f"{'target':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name, r in results.items():
            print(f"{name:<10} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>7}")
        print(f"ratio 3 nodes / 1 node: {results['3 nodes']['rps'] / results['1 node']['rps']:.2f}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
