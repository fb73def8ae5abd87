#!/usr/bin/env python3
"""Soak (issue 11): hours of mixed load with crashes, looking for leaks, hangs and lost writes. Not in CI.

For --duration seconds (default 30 min) against one `blocksnap serve`:
  - NBD writers, one long-lived qemu-io per volume: 64 KiB writes at random 64 KiB-aligned offsets,
    every 32nd with FUA; each acknowledged write is logged (region -> pattern);
  - CreateSnapshot of a random volume every --snap-every s (CreateSnapshots of the instance every 5th),
    a CopySnapshot and a restore (CreateVolume from a snapshot, attach, read, detach, delete) every
    ~30 s, old snapshots deleted (the newest 3 per volume kept) so GC has work;
    GC every BLOCKSNAP_GC_INTERVAL_SECS (default here 15 s, grace 60 s);
  - kill -9 and restart every --kill-every s (default 180 s).
Every --interval s it prints RSS, open fds, catalog size (db + WAL), store size, API latency p50/p99/max
per action and NBD write latency p50/p99/max for that interval, with errors and snapshot counts. At the
end: wait for pending snapshots, check every volume region against the writers' log (acknowledged
writes, or either side of a write cut by a kill), stop the server and run `blocksnap admin verify`.
Exit status 1 if anything is lost, wrong or hangs (an API call or NBD write over 30 s).

Usage: python3 bench/soak/run.py [--duration 1800] [--interval 60] [--kill-every 180] [--snap-every 3]
                                 [--volumes 4] [--json out.json]
Env:   BLOCKSNAP_SOAK_BIN (default target/release/blocksnap, else target/debug/blocksnap).
NBD access goes through tests/e2e/nbd.py (the transport and credentials are chosen there).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
import tempfile

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import nbd  # noqa: E402  (the e2e NBD helper: one place for transport and credentials)

AK, SK = "AKIASOAKTEST00000001", "soak-secret-0123456789abcdef"
REGION, AZ = "us-east-1", "us-east-1a"
KiB, MiB = 1024, 1 << 20
REGION_SIZE = 64 * KiB
VOLUME_BYTES = 1 << 30
HANG = 30.0  # any single API call or NBD write slower than this counts as a hang


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


class Creds:
    access_key, secret_key = AK, SK


class Server:
    """The attributes tests/e2e/nbd.py needs (creds, region, endpoint, workdir, extra_args) included."""

    creds = Creds()
    region = REGION
    extra_args: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __init__(self, binary: Path, workdir: Path):
        self.binary, self.workdir = binary, workdir
        self.data_dir = workdir / "data"
        self.port, self.nbd_port, self.metrics_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.up = threading.Event()

    def start(self):
        self.starts += 1
        env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=AK, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=SK,
                   BLOCKSNAP_GC_INTERVAL_SECS=os.environ.get("BLOCKSNAP_GC_INTERVAL_SECS", "15"),
                   BLOCKSNAP_GC_GRACE_SECS=os.environ.get("BLOCKSNAP_GC_GRACE_SECS", "60"),
                   RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        args = [str(self.binary), "serve", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
                "--nbd-listen", f"127.0.0.1:{self.nbd_port}"]
        if "--metrics-listen" in subprocess.run([str(self.binary), "serve", "--help"], capture_output=True,
                                                text=True).stdout:
            args += ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        log = open(self.workdir / f"server-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}; see {log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.nbd_port), timeout=0.2).close()
                self.up.set()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not listen within 60 s")

    def kill9(self):
        self.up.clear()
        assert self.proc
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.up.clear()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        return boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{self.port}", region_name=REGION,
                            aws_access_key_id=AK, aws_secret_access_key=SK,
                            config=Config(retries={"max_attempts": 1}, read_timeout=120, connect_timeout=5))

    def sample(self) -> dict:
        pid = self.proc.pid if self.proc and self.proc.poll() is None else None
        rss = fds = 0
        if pid:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                pass
        catalog = sum(p.stat().st_size for p in self.data_dir.glob("catalog.db*") if p.exists())
        store = 0
        for p in (self.data_dir / "snapshots").rglob("*"):
            try:
                if p.is_file():
                    store += p.stat().st_size
            except OSError:
                pass
        return {"rss": rss, "fds": fds, "catalog": catalog, "store": store}


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.api: dict[str, list[float]] = defaultdict(list)
        self.nbd: list[float] = []
        self.errors: dict[str, int] = defaultdict(int)
        self.counts: dict[str, int] = defaultdict(int)
        self.hangs: list[str] = []

    def took(self, kind: str, what: str, secs: float):
        with self.lock:
            (self.nbd if kind == "nbd" else self.api[what]).append(secs)
            if secs > HANG:
                self.hangs.append(f"{kind} {what} took {secs:.1f} s")

    def error(self, what: str):
        with self.lock:
            self.errors[what] += 1

    def count(self, what: str, n: int = 1):
        with self.lock:
            self.counts[what] += n

    def drain(self):
        with self.lock:
            out = (dict(self.api), list(self.nbd), dict(self.errors), dict(self.counts))
            self.api, self.nbd = defaultdict(list), []
            self.errors, self.counts = defaultdict(int), defaultdict(int)
            return out


class Writer(threading.Thread):
    """One volume: random writes through a long-lived qemu-io; the log of what each region must hold."""

    def __init__(self, server: Server, vid: str, stats: Stats, stop: threading.Event, seed: int):
        super().__init__(daemon=True)
        self.server, self.vid, self.stats, self.stop_ev = server, vid, stats, stop
        self.rnd = random.Random(seed)
        # region -> set of patterns it may hold (one after an acknowledged write; two when a kill cut it)
        self.expect: dict[int, set[int]] = {}
        self.regions = VOLUME_BYTES // REGION_SIZE // 4  # the first 256 MiB

    def run(self):
        io = None
        n = 0
        while not self.stop_ev.is_set():
            if not self.server.up.wait(timeout=1):
                continue
            if io is None:
                try:
                    io = nbd.QemuIo(self.server, self.vid)
                except Exception:
                    self.stats.error("nbd connect")
                    time.sleep(0.5)
                    continue
            region = self.rnd.randrange(self.regions)
            pattern = self.rnd.randrange(1, 256)
            old = self.expect.get(region, {0})
            t0 = time.perf_counter()
            try:
                # Every 32nd write is FUA (qemu-io's interactive `flush` prints nothing to wait for).
                fua = "-f " if n % 32 == 31 else ""
                out = io.run(f"write {fua}-P {pattern:#x} {region * REGION_SIZE} {REGION_SIZE}")
                if "wrote" not in out:
                    raise AssertionError(out)
                self.stats.took("nbd", "write", time.perf_counter() - t0)
                self.expect[region] = {pattern}
                self.stats.count("nbd writes")
                n += 1
            except Exception:
                # Cut by a kill (or a failure): the region holds the old or the new bytes.
                self.expect[region] = old | {pattern}
                self.stats.error("nbd write")
                try:
                    io.close()
                except Exception:
                    pass
                io = None
        if io:
            io.close()

    def check(self) -> list[str]:
        image = self.server.workdir / f"{self.vid}.img"
        nbd.to_file(self.server, self.vid, image)
        bad = []
        with open(image, "rb") as f:
            for region, allowed in sorted(self.expect.items()):
                f.seek(region * REGION_SIZE)
                got = f.read(REGION_SIZE)
                if not any(got == bytes([p]) * REGION_SIZE for p in allowed):
                    bad.append(f"{self.vid} region {region} holds none of {sorted(allowed)}")
        image.unlink()
        return bad


def call(stats: Stats, server: Server, ec2, action: str, **kw):
    """One API call, timed; None when it failed (the server may be restarting)."""
    if not server.up.is_set():
        return None
    t0 = time.perf_counter()
    try:
        r = getattr(ec2, action)(**kw)
    except ClientError as e:
        stats.error(f"{action} {e.response['Error']['Code']}")
        return None
    except Exception as e:  # connection refused/reset: the server is being killed or restarted
        stats.error(f"{action} {type(e).__name__}")
        return None
    stats.took("api", action, time.perf_counter() - t0)
    return r


def api_loop(server: Server, vols: list[str], instance: str, stats: Stats, stop: threading.Event, snap_every: float):
    ec2 = server.client()
    snaps: dict[str, list[str]] = defaultdict(list)
    k = 0
    while not stop.wait(snap_every):
        k += 1
        if k % 5 == 0:
            r = call(stats, server, ec2, "create_snapshots", InstanceSpecification={"InstanceId": instance})
            for s in (r or {}).get("Snapshots", []):
                snaps[s["VolumeId"]].append(s["SnapshotId"])
        else:
            vid = random.choice(vols)
            r = call(stats, server, ec2, "create_snapshot", VolumeId=vid)
            if r:
                snaps[vid].append(r["SnapshotId"])
        call(stats, server, ec2, "describe_volumes", VolumeIds=vols)
        all_ids = [s for ids in snaps.values() for s in ids]
        if not all_ids:
            continue
        d = call(stats, server, ec2, "describe_snapshots", SnapshotIds=all_ids[-200:])
        states = {s["SnapshotId"]: s for s in (d or {}).get("Snapshots", [])}
        completed = [s for s in all_ids if states.get(s, {}).get("State") == "completed"]
        stats.count("snapshots in error", sum(1 for s in states.values() if s["State"] == "error"))
        if k % 10 == 0 and completed:
            src = random.choice(completed)
            c = call(stats, server, ec2, "copy_snapshot", SourceRegion=REGION, SourceSnapshotId=src)
            if c:
                snaps["copies"].append(c["SnapshotId"])
        if k % 10 == 5 and completed:
            restore(server, ec2, stats, random.choice(completed), instance)
        # Keep the newest 3 completed snapshots per volume: deletes give GC work.
        for vid, ids in snaps.items():
            done = [s for s in ids if states.get(s, {}).get("State") in ("completed", "error")]
            for s in done[:-3]:
                if call(stats, server, ec2, "delete_snapshot", SnapshotId=s) is not None:
                    ids.remove(s)
                    stats.count("snapshots deleted")


def restore(server: Server, ec2, stats: Stats, sid: str, instance: str):
    """CreateVolume from a snapshot, attach, read two ranges over NBD (lazy restore), detach, delete."""
    v = call(stats, server, ec2, "create_volume", SnapshotId=sid, AvailabilityZone=AZ)
    if not v:
        return
    vid = v["VolumeId"]
    try:
        # Attachable once `available` (CreateVolume answers `creating`, as EC2 does).
        for _ in range(100):
            d = call(stats, server, ec2, "describe_volumes", VolumeIds=[vid])
            if d and d["Volumes"][0]["State"] == "available":
                break
            time.sleep(0.1)
        if call(stats, server, ec2, "attach_volume", VolumeId=vid, InstanceId=instance, Device="/dev/sdp"):
            t0 = time.perf_counter()
            p = nbd.qemu_io(server, vid, "read 0 64k", "read 100M 64k", check=False, read_only=True)
            # A qemu-io process per read: kept out of the NBD write percentiles.
            stats.took("api", "restored volume first reads (qemu-io)", time.perf_counter() - t0)
            if p.returncode != 0:
                stats.error("restore read")
            call(stats, server, ec2, "detach_volume", VolumeId=vid)
    except Exception as e:
        stats.error(f"restore {type(e).__name__}")
    for _ in range(50):
        if call(stats, server, ec2, "delete_volume", VolumeId=vid) is not None:
            stats.count("restores")
            return
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800)
    ap.add_argument("--interval", type=float, default=60)
    ap.add_argument("--kill-every", type=float, default=180)
    ap.add_argument("--snap-every", type=float, default=3)
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    a = ap.parse_args()
    binary = Path(os.environ.get("BLOCKSNAP_SOAK_BIN", REPO / "target/release/blocksnap"))
    if not binary.exists():
        binary = REPO / "target/debug/blocksnap"
    if not binary.exists():
        sys.exit("no blocksnap binary: cargo build --release")
    os.environ["BLOCKSNAP_BIN"] = str(binary)  # nbd.py fetches NBD credentials with this binary
    workdir = Path(tempfile.mkdtemp(prefix="blocksnap-soak-"))
    print(f"soak: {binary} for {a.duration:.0f} s, work dir {workdir}", flush=True)
    server = Server(binary, workdir)
    server.start()
    ec2 = server.client()
    instance = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                                 Placement={"AvailabilityZone": AZ})["Instances"][0]["InstanceId"]
    vols = []
    for i in range(a.volumes):
        vid = ec2.create_volume(Size=1, AvailabilityZone=AZ)["VolumeId"]
        ec2.attach_volume(VolumeId=vid, InstanceId=instance, Device=f"/dev/sd{'fghijklmno'[i]}")
        vols.append(vid)
    stats, stop = Stats(), threading.Event()
    writers = [Writer(server, v, stats, stop, seed=i) for i, v in enumerate(vols)]
    for w in writers:
        w.start()
    api = threading.Thread(target=api_loop, args=(server, vols, instance, stats, stop, a.snap_every), daemon=True)
    api.start()
    rows = []
    t_start = time.time()
    next_kill = t_start + a.kill_every
    next_report = t_start + a.interval
    kills = 0
    header = (f"{'t(s)':>6} {'rss MiB':>8} {'fds':>5} {'catalog MiB':>11} {'store MiB':>9} {'nbd writes':>10} "
              f"{'nbd p50/p99/max ms':>20} {'CreateSnapshot p50/p99/max ms':>30} {'other API p50/p99 ms':>20} "
              f"{'errors':>6} {'kills':>5}")
    print(header, flush=True)
    while time.time() - t_start < a.duration:
        time.sleep(0.5)
        now = time.time()
        if now >= next_kill:
            server.kill9()
            kills += 1
            time.sleep(1)
            server.start()
            next_kill = now + a.kill_every
        if now >= next_report:
            next_report = now + a.interval
            s = server.sample()
            api_t, nbd_t, errors, counts = stats.drain()
            cs = api_t.get("create_snapshot", []) + api_t.get("create_snapshots", [])
            other = [x for k, v in api_t.items() if k not in ("create_snapshot", "create_snapshots") for x in v]
            row = {"t": round(now - t_start), **s, "counts": counts, "errors": errors, "kills": kills,
                   "nbd_ms": [round(pct(nbd_t, p) * 1000, 2) for p in (50, 99, 100)],
                   "create_snapshot_ms": [round(pct(cs, p) * 1000, 2) for p in (50, 99, 100)],
                   "api_ms": {k: [round(pct(v, p) * 1000, 2) for p in (50, 99, 100)] for k, v in api_t.items()},
                   "other_api_ms": [round(pct(other, p) * 1000, 2) for p in (50, 99)]}
            rows.append(row)
            print(f"{row['t']:>6} {s['rss'] / MiB:>8.1f} {s['fds']:>5} {s['catalog'] / MiB:>11.2f} "
                  f"{s['store'] / MiB:>9.1f} {counts.get('nbd writes', 0):>10} "
                  f"{'/'.join(str(x) for x in row['nbd_ms']):>20} "
                  f"{'/'.join(str(x) for x in row['create_snapshot_ms']):>30} "
                  f"{'/'.join(str(x) for x in row['other_api_ms']):>20} {sum(errors.values()):>6} {kills:>5}",
                  flush=True)
    stop.set()
    for w in writers:
        w.join(timeout=60)
    api.join(timeout=120)
    problems = list(stats.hangs)
    if any(w.is_alive() for w in writers) or api.is_alive():
        problems.append("a load thread did not stop within its bound (hang)")
    # Let pending snapshots end, then check every volume against the writers' log.
    ec2 = server.client()
    deadline = time.time() + 600
    while time.time() < deadline:
        pend = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "status", "Values": ["pending"]}])
        if not pend["Snapshots"]:
            break
        time.sleep(1)
    else:
        problems.append("snapshots still pending 600 s after the load stopped")
    final = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    for w in writers:
        problems += w.check()
    server.stop()
    v = subprocess.run([str(binary), "admin", "verify", "--data-dir", str(server.data_dir)], capture_output=True,
                       text=True, timeout=1800)
    verified = sum(1 for line in v.stdout.splitlines() if " ok " in line)
    if v.returncode != 0:
        problems.append(f"admin verify failed: {v.stdout[-2000:]} {v.stderr[-2000:]}")
    totals: dict[str, int] = defaultdict(int)
    done: dict[str, int] = defaultdict(int)
    for r in rows:
        for k, n in r["errors"].items():
            totals[k] += n
        for k, n in r["counts"].items():
            done[k] += n
    print(f"\ntotals: {dict(done)}\nerrors by call and code (calls cut by a kill -9 included): {dict(totals)}")
    print(f"kills: {kills}; snapshots at the end: {len(final)} "
          f"({sum(1 for s in final if s['State'] == 'completed')} completed, "
          f"{sum(1 for s in final if s['State'] == 'error')} error); admin verify: {verified} ok, exit {v.returncode}; "
          f"regions checked: {sum(len(w.expect) for w in writers)}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "kills": kills, "problems": problems,
                                      "verify_ok": verified, "verify_exit": v.returncode}, indent=1))
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems[:50]))
    else:
        print("no hang, no lost or wrong write, verify passed")
    if not a.keep:
        subprocess.run(["rm", "-rf", str(workdir)])
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
