#!/usr/bin/env python3
"""API benchmark for issue 2: blocksnap vs moto_server, same calls, same client, same run.

Starts blocksnap (release binary) and moto_server on free ports, creates N volumes (default 1,000) in each,
then measures, against each target:
  - DescribeVolumes for a single VolumeId          (sequential client: p50/p99 latency, requests/s)
  - DescribeVolumes with filters (tag + size)      (sequential)
  - CreateVolume                                   (sequential)
  - DescribeVolumes single id with C concurrent client processes (aggregate requests/s, p50/p99)
and prints: metric | blocksnap | moto | ratio.

The client is deliberately thin and identical for both targets: a pre-opened urllib3 keep-alive connection,
the body form-encoded once per request and signed with botocore's SigV4Auth. Concurrency uses processes
(not threads) so the Python GIL does not cap the measured server throughput.

Usage: python3 bench/api/run.py [--volumes 1000] [--clients 4] [--seconds 5] [--max-requests 5000]
Env:   BLOCKSNAP_BENCH_BIN (default target/release/blocksnap), BLOCKSNAP_BENCH_REGION (us-east-1)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REPO = Path(__file__).resolve().parents[2]
REGION = os.environ.get("BLOCKSNAP_BENCH_REGION", "us-east-1")
AK, SK = "AKIABENCHROOT0000001", "bench-secret-key-0123456789"
VERSION = "2016-11-15"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    def __init__(self, name: str, cmd: list[str], env: dict, port: int, workdir: Path):
        self.name, self.port, self.workdir = name, port, workdir
        self.log = open(workdir / f"{name}.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=workdir)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited early; see {workdir / (name + '.log')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start listening")
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Client:
    """Minimal signed EC2 Query client over one keep-alive connection."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/"
        self.pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False, timeout=30)
        self.signer = SigV4Auth(Credentials(AK, SK), "ec2", REGION)

    def call(self, params: dict) -> tuple[int, bytes]:
        body = urlencode({**params, "Version": VERSION})
        req = AWSRequest(method="POST", url=self.url, data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        self.signer.add_auth(req)
        r = self.pool.urlopen("POST", "/", body=body, headers=dict(req.headers), preload_content=True)
        return r.status, r.data


def extract_id(xml: bytes) -> str:
    i = xml.index(b"<volumeId>") + len(b"<volumeId>")
    return xml[i:xml.index(b"</volumeId>", i)].decode()


# ------------------------------------------------------------------ workloads

def req_describe_one(ids):
    return lambda rnd: {"Action": "DescribeVolumes", "VolumeId.1": rnd.choice(ids)}


def req_describe_filtered():
    # ~1000/50 groups x 1 of 4 sizes -> ~5 matches out of 1,000+
    return lambda rnd: {"Action": "DescribeVolumes",
                        "Filter.1.Name": "tag:group", "Filter.1.Value.1": f"g{rnd.randrange(50):02d}",
                        "Filter.2.Name": "size", "Filter.2.Value.1": str(rnd.randrange(1, 5))}


def req_create():
    return lambda rnd: {"Action": "CreateVolume", "AvailabilityZone": f"{REGION}a", "Size": "1",
                        "VolumeType": "gp3"}


def run_loop(port: int, make_params, seconds: float, max_requests: int, seed: int):
    c = Client(port)
    rnd = random.Random(seed)
    c.call(make_params(rnd))  # warm the connection
    lat, errors = [], 0
    t_end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while len(lat) < max_requests and time.perf_counter() < t_end:
        p = make_params(rnd)
        s = time.perf_counter()
        status, _ = c.call(p)
        lat.append(time.perf_counter() - s)
        if status != 200:
            errors += 1
    return lat, time.perf_counter() - t0, errors


def _worker(args):
    port, kind, ids, seconds, max_requests, seed = args
    mk = {"one": lambda: req_describe_one(ids), "filtered": req_describe_filtered, "create": req_create}[kind]()
    return run_loop(port, mk, seconds, max_requests, seed)


def measure(port, kind, ids, seconds, max_requests, clients=1):
    if clients == 1:
        lat, elapsed, errors = _worker((port, kind, ids, seconds, max_requests, 1))
        rps = len(lat) / elapsed
    else:
        ctx = mp.get_context("fork")
        with ctx.Pool(clients) as pool:
            t0 = time.perf_counter()
            res = pool.map(_worker, [(port, kind, ids, seconds, max_requests // clients, i) for i in range(clients)])
            wall = time.perf_counter() - t0
        lat = [x for r in res for x in r[0]]
        errors = sum(r[2] for r in res)
        # aggregate rate: sum of each worker's rate over its own measuring window
        rps = sum(len(r[0]) / r[1] for r in res)
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    return {"n": len(lat), "errors": errors, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "rps": rps,
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan")}


def seed_volumes(port: int, n: int, threads: int = 4) -> list[str]:
    def one(i):
        c = seed_volumes.clients.setdefault(threading_ident(), Client(port))
        st, body = c.call({"Action": "CreateVolume", "AvailabilityZone": f"{REGION}{'abc'[i % 3]}",
                           "Size": str(1 + i % 4), "VolumeType": ["gp2", "gp3", "standard"][i % 3],
                           "TagSpecification.1.ResourceType": "volume",
                           "TagSpecification.1.Tag.1.Key": "group", "TagSpecification.1.Tag.1.Value": f"g{i % 50:02d}",
                           "TagSpecification.1.Tag.2.Key": "Name", "TagSpecification.1.Tag.2.Value": f"bench-{i}"})
        if st != 200:
            raise RuntimeError(f"seed CreateVolume failed: {st} {body[:300]!r}")
        return extract_id(body)
    seed_volumes.clients = {}
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(one, range(n)))


def threading_ident():
    import threading
    return threading.get_ident()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    ap.add_argument("--seconds", type=float, default=5.0, help="time cap per measurement")
    ap.add_argument("--max-requests", type=int, default=5000, help="request cap per measurement")
    ap.add_argument("--bin", default=os.environ.get("BLOCKSNAP_BENCH_BIN", "target/release/blocksnap"))
    ap.add_argument("--only", choices=["blocksnap", "moto"], help="measure one target only")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="blocksnap-bench-"))
    targets: dict[str, Target] = {}
    try:
        if args.only in (None, "blocksnap"):
            binary = Path(args.bin)
            if not binary.is_absolute():
                binary = REPO / binary
            if not binary.exists():
                raise SystemExit(f"{binary} missing: cargo build --release (or --bin / BLOCKSNAP_BENCH_BIN)")
            port = free_port()
            env = {**os.environ, "BLOCKSNAP_ROOT_ACCESS_KEY_ID": AK, "BLOCKSNAP_ROOT_SECRET_ACCESS_KEY": SK,
                   "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
            (work / "data").mkdir()
            targets["blocksnap"] = Target("blocksnap", [str(binary), "serve", "--data-dir", str(work / "data"),
                                                        "--listen", f"127.0.0.1:{port}",
                                                        "--nbd-listen", f"127.0.0.1:{free_port()}"],
                                          env, port, work)
        if args.only in (None, "moto"):
            if not shutil.which("moto_server"):
                raise SystemExit("moto_server not found: pip install 'moto[server]'")
            port = free_port()
            targets["moto"] = Target("moto", ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                     dict(os.environ), port, work)

        results: dict[str, dict] = {}
        for name, t in targets.items():
            t0 = time.perf_counter()
            ids = seed_volumes(t.port, args.volumes)
            print(f"[{name}] created {len(ids)} volumes in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            r = {}
            r["DescribeVolumes 1 id"] = measure(t.port, "one", ids, args.seconds, args.max_requests)
            r["DescribeVolumes filtered"] = measure(t.port, "filtered", ids, args.seconds, args.max_requests)
            r["CreateVolume"] = measure(t.port, "create", ids, args.seconds, min(args.max_requests, 2000))
            r[f"DescribeVolumes 1 id x{args.clients}"] = measure(t.port, "one", ids, args.seconds,
                                                                args.max_requests * args.clients, args.clients)
            r[f"CreateVolume x{args.clients}"] = measure(t.port, "create", ids, args.seconds,
                                                         min(args.max_requests, 2000) * args.clients, args.clients)
            results[name] = r
            for m, v in r.items():
                print(f"[{name}] {m}: n={v['n']} err={v['errors']} p50={v['p50_ms']:.2f}ms "
                      f"p99={v['p99_ms']:.2f}ms rps={v['rps']:.0f}", file=sys.stderr)
    finally:
        for t in targets.values():
            t.stop()

    names = list(results)
    # What the Python client itself costs per request (encode + SigV4 sign), to read the figures against.
    c = Client(1)
    n, t0 = 2000, time.perf_counter()
    for i in range(n):
        body = urlencode({"Action": "DescribeVolumes", "VolumeId.1": "vol-0123456789abcdef0", "Version": VERSION})
        req = AWSRequest(method="POST", url=c.url, data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        c.signer.add_auth(req)
    overhead_ms = (time.perf_counter() - t0) / n * 1000
    print()
    print(f"client-side encode+sign cost: {overhead_ms:.3f} ms/request (included in every latency below); "
          f"{os.cpu_count()} CPUs shared by server and clients")
    print(f"{args.volumes} volumes present; sequential = 1 client; xN = N client processes; "
          f"ratio = blocksnap advantage (moto/blocksnap for latency, blocksnap/moto for req/s)")
    header = ["metric"] + names + (["ratio"] if len(names) == 2 else [])
    rows = []
    for m in next(iter(results.values())):
        for key, label, unit in (("p50_ms", "p50", "ms"), ("p99_ms", "p99", "ms"), ("rps", "req/s", "")):
            vals = [results[n][m][key] for n in names]
            row = [f"{m} {label}"] + [f"{v:.2f} {unit}".strip() if unit else f"{v:.0f}" for v in vals]
            if len(names) == 2:
                b, mo = vals
                ratio = (mo / b) if unit else (b / mo)
                row.append(f"{ratio:.1f}x")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    errs = {n: sum(v["errors"] for v in results[n].values()) for n in names}
    if any(errs.values()):
        print(f"\nnon-200 responses: {errs}")
    if "blocksnap" in results:
        b = results["blocksnap"]
        worst_p99 = max(v["p99_ms"] for v in b.values())
        print(f"\ngoal p99 < 5 ms: worst blocksnap p99 = {worst_p99:.2f} ms -> {'MET' if worst_p99 < 5 else 'NOT MET'}")
        if "moto" in results:
            ratios = {m: b[m]["rps"] / results["moto"][m]["rps"] for m in b}
            lo = min(ratios, key=ratios.get)
            print(f"goal >= 10x moto req/s: lowest ratio {ratios[lo]:.1f}x ({lo}) -> "
                  f"{'MET' if ratios[lo] >= 10 else 'NOT MET'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
