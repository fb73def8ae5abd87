#!/usr/bin/env python3
"""EBS direct APIs benchmark, with the NBD read path and coldsnap in the same run.

1. PutSnapshotBlock and GetSnapshotBlock: 1 and 8 concurrent clients (crates/blocksnap/examples/
   ebs_load.rs: Rust, HTTP/1.1 keep-alive, SigV4 as the SDKs sign, UNSIGNED-PAYLOAD + signed
   checksum for puts), MiB/s and p50/p99 per request, on incompressible distinct blocks.
2. The same snapshot read over NBD (plaintext loopback dev mode, `nbdcopy` with 8 connections into
   null:): the data-plane peer of GetSnapshotBlock. Ratio printed.
3. ListChangedBlocks on a 1 TiB volume with 1 % of its blocks changed between two snapshots (every
   100th block written in the parent, every 100th block at another offset in the child: every
   512 MiB segment differs, the worst case for the segment skip), time to the first page
   (MaxResults 10000 and 1000), cold (after a restart; the server warmed on another snapshot, the
   two manifests' segments not in its cache) and warm. A page reads at most 128 segment pairs, so
   with changes this sparse a MaxResults 10000 page holds ~1,300 blocks.
4. coldsnap (awslabs/coldsnap, the AWS tool that uses these APIs): `upload --wait` of a 1 GiB image,
   `download` back (the whole volume: the image byte for byte, then zeros), and `wait`. coldsnap is installed with
   `cargo install --locked coldsnap` into bench/.tools (takes minutes the first time) unless
   --coldsnap PATH is given; --skip-coldsnap skips it.

Usage: bench/ebs/run.py [--binary target/release/blocksnap] [--load target/release/examples/ebs_load]
                        [--size-mib 1024] [--skip-coldsnap] [--coldsnap PATH] [--skip-diff]
Build first: cargo build --release -p blocksnap --bin blocksnap --example ebs_load
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY, SECRET = "AKIABENCHEBS00000001", "bench-ebs-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, workdir):
        self.binary, self.workdir = binary, workdir
        self.port, self.nbd = free_port(), free_port()
        self.proc = None

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=KEY, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=SECRET,
                   RUST_LOG="warn")
        log = open(os.path.join(self.workdir, "server.log"), "ab")
        self.proc = subprocess.Popen([self.binary, "serve", "--data-dir", os.path.join(self.workdir, "data"),
                                      "--listen", f"127.0.0.1:{self.port}",
                                      "--nbd-listen", f"127.0.0.1:{self.nbd}", "--nbd-insecure-plaintext",
                                      "--metrics-listen", "off"], stdout=log, stderr=log, env=env)
        end = time.time() + 60
        while time.time() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def env():
    return dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")


def load(args, srv, *a):
    out = subprocess.run([args.load, *a, "--endpoint", srv.endpoint], capture_output=True, text=True, env=env(),
                         timeout=3600)
    if out.returncode != 0:
        sys.exit(f"ebs_load {' '.join(a)} failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(name, r):
    print(f"  {name:<44} {r['mib_per_s']:8.0f} MiB/s   p50 {r['p50_ms']:7.2f} ms   p99 {r['p99_ms']:7.2f} ms")


def nbd_read(srv, snap, size_mib):
    if not shutil.which("nbdcopy"):
        return None
    t0 = time.monotonic()
    subprocess.run(["nbdcopy", "--connections=8", "--requests=16", "--no-extents",
                    f"nbd://127.0.0.1:{srv.nbd}/{snap}", "null:"], check=True, timeout=600)
    return size_mib / (time.monotonic() - t0)


def same_then_zeros(image, out):
    with open(image, "rb") as a, open(out, "rb") as b:
        while True:
            x = a.read(1 << 20)
            if not x:
                break
            if b.read(len(x)) != x:
                return False
        while True:
            y = b.read(1 << 20)
            if not y:
                return True
            if y.count(0) != len(y):
                return False


def coldsnap_bin(args):
    if args.coldsnap:
        return args.coldsnap
    path = os.path.join(ROOT, "bench", ".tools", "bin", "coldsnap")
    if not os.path.exists(path):
        print("installing coldsnap (cargo install --locked coldsnap; takes a few minutes)...", flush=True)
        subprocess.run(["cargo", "install", "--locked", "coldsnap", "--root", os.path.join(ROOT, "bench", ".tools")],
                       check=True)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/blocksnap"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target/release/examples/ebs_load"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--coldsnap")
    ap.add_argument("--skip-coldsnap", action="store_true")
    ap.add_argument("--skip-diff", action="store_true")
    args = ap.parse_args()
    for p in (args.binary, args.load):
        if not os.path.exists(p):
            sys.exit(f"{p} missing: cargo build --release -p blocksnap --bin blocksnap --example ebs_load")
    work = tempfile.mkdtemp(prefix="bench-ebs-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    srv = Server(args.binary, work)
    srv.start()
    try:
        blocks = args.size_mib * 2
        print(f"EBS direct APIs, {args.size_mib} MiB of distinct incompressible blocks "
              f"({os.cpu_count()} cores, server and clients on one machine)")
        puts = {c: load(args, srv, "put", "--blocks", str(blocks), "--clients", str(c)) for c in (1, 8)}
        for c, r in puts.items():
            row(f"PutSnapshotBlock, {c} client(s)", r)
        print(f"  CompleteSnapshot ({blocks} blocks): {puts[8]['complete_ms']:.0f} ms, status {puts[8]['status']}")
        snap = puts[8]["snapshot"]
        gets = {c: load(args, srv, "get", "--snapshot", snap, "--clients", str(c)) for c in (1, 8)}
        for c, r in gets.items():
            row(f"GetSnapshotBlock, {c} client(s)", r)
        print(f"  ListSnapshotBlocks, all {gets[8]['blocks']} blocks: {gets[8]['list_all_ms']:.1f} ms")
        nbd = nbd_read(srv, snap, args.size_mib)
        if nbd:
            print(f"  NBD read of the same snapshot (nbdcopy, 8 connections): {nbd:8.0f} MiB/s")
            print(f"  ratio GetSnapshotBlock(8) / NBD read: {gets[8]['mib_per_s'] / nbd:.2f}")
        if not args.skip_diff:
            print("ListChangedBlocks, 1 TiB volume, 1 % changed (20,480 blocks, every segment differs)")
            t0 = time.monotonic()
            p = load(args, srv, "put", "--volume-gib", "1024", "--stride", "100", "--offset", "0",
                     "--clients", "8", "--compressible")
            c = load(args, srv, "put", "--volume-gib", "1024", "--stride", "100", "--offset", "50",
                     "--clients", "8", "--compressible", "--parent", p["snapshot"])
            print(f"  (setup: two snapshots of {p['requests']} blocks each in {time.monotonic() - t0:.0f} s)")
            srv.stop()
            srv.start()
            # Warm the server (region store opened, token key loaded) on another snapshot: "cold"
            # below means the two manifests' segments are not in blocksnap's cache.
            import boto3
            boto3.client("ebs", endpoint_url=srv.endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                         aws_secret_access_key=SECRET).list_snapshot_blocks(SnapshotId=snap, MaxResults=100)
            for mx in ("10000", "1000"):
                d = load(args, srv, "diff", "--snapshot", c["snapshot"], "--first", p["snapshot"], "--reps", "20",
                         "--max-results", mx)
                print(f"  first page, MaxResults {mx:>5}: cold {d['first_call_ms']:7.1f} ms, "
                      f"warm p50 {d['p50_ms']:6.1f} ms, p99 {d['p99_ms']:6.1f} ms ({d['blocks_in_page']} blocks)")
        if not args.skip_coldsnap:
            cs = coldsnap_bin(args)
            image = os.path.join(work, "disk.img")
            with open(image, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(1 << 20))
            base = [cs, "--endpoint", srv.endpoint, "--region", "us-east-1"]
            t0 = time.monotonic()
            up = subprocess.run([*base, "upload", "--no-progress", "--wait", image], capture_output=True, text=True,
                                env=env(), timeout=1800)
            if up.returncode != 0:
                sys.exit(f"coldsnap upload failed: {up.stderr}")
            t_up = time.monotonic() - t0
            sid = up.stdout.strip().splitlines()[-1]
            w = subprocess.run([*base, "wait", sid], capture_output=True, text=True, env=env(), timeout=600)
            t0 = time.monotonic()
            out = os.path.join(work, "back.img")
            dn = subprocess.run([*base, "download", "--no-progress", sid, out], capture_output=True, text=True,
                                env=env(), timeout=1800)
            if dn.returncode != 0:
                sys.exit(f"coldsnap download failed: {dn.stderr}")
            t_dn = time.monotonic() - t0
            # The download is the whole volume (whole GiB): the image, then zeros.
            same = same_then_zeros(image, out)
            sizes = f"{os.path.getsize(image) >> 20} MiB image, {os.path.getsize(out) >> 20} MiB volume"
            print(f"coldsnap ({sizes}): upload --wait {args.size_mib / t_up:.0f} MiB/s, "
                  f"download {args.size_mib / t_dn:.0f} MiB/s, image bytes identical, rest zeros: {same}, "
                  f"wait: {'ok' if w.returncode == 0 else w.stderr.strip()}")
            if not same:
                sys.exit("coldsnap download differs from the uploaded image")
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
