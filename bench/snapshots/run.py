#!/usr/bin/env python3
"""Snapshot benchmark (issues 4 and 5), blocksnap against restic in the same run on the same machine.

  1. A 4 GiB volume, half random data, half zeros, written over NBD. Full snapshot (CreateSnapshot until
     `completed`) against `restic backup` of the same image file.
  2. An incremental snapshot after a 1 % scattered change, against restic's second backup.
  3. Restore: CreateVolume from the snapshot until the first byte reads back over NBD, and until the whole
     volume is readable; against `restic restore` of the image.
  4. CreateSnapshot API latency (p50/p99) on a 1 TiB sparse volume.
  5. The write pause of a CreateSnapshots cut (p50/p99/max of the server's gate-held time) for instances
     with 2, 8 and 26 volumes while every volume is being written.

Usage: python3 bench/snapshots/run.py [--size-gib 4] [--skip-restic] [--cut-rounds 20]
Env:   BLOCKSNAP_BENCH_BIN (default target/release/blocksnap). restic comes from Debian (`apt-get install
       restic`, done by this script when missing).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
AK, SK = "AKIABENCHSNAP0000001", "bench-snap-secret-0123456789"
REGION = "us-east-1"
AZ = REGION + "a"
MiB, GiB = 1 << 20, 1 << 30
BLOCK = 512 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=True, capture_output=True, **kw)


class Blocksnap:
    def __init__(self, workdir: Path):
        binary = Path(os.environ.get("BLOCKSNAP_BENCH_BIN", REPO / "target/release/blocksnap"))
        if not binary.exists():
            sys.exit(f"{binary} not found: run `cargo build --release` first")
        self.port, self.nbd = free_port(), free_port()
        self.log_path = workdir / "blocksnap.log"
        env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=AK, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=SK,
                   RUST_LOG=os.environ.get("RUST_LOG", "info,blocksnap_api=debug"))
        self.proc = subprocess.Popen([str(binary), "serve", "--data-dir", str(workdir / "data"),
                                      "--listen", f"127.0.0.1:{self.port}", "--nbd-listen", f"127.0.0.1:{self.nbd}",
                                      # Loopback plaintext NBD: this bench measures snapshots, not TLS
                                      # (bench/nbd has the TLS rows).
                                      "--nbd-insecure-plaintext", "--metrics-listen", "off"],
                                     env=env, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.ec2 = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{self.port}", region_name=REGION,
                                aws_access_key_id=AK, aws_secret_access_key=SK,
                                config=Config(retries={"max_attempts": 1}))
        self.instance = self.ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                                               Placement={"AvailabilityZone": AZ})["Instances"][0]["InstanceId"]
        self.devices = iter([f"/dev/sd{a}{b}" for a in "fghijklmnop" for b in "abcdefghijklmnopqrstuvwxyz"])

    def url(self, export: str) -> str:
        return f"nbd://127.0.0.1:{self.nbd}/{export}"

    def volume(self, size_gib: int, instance: str | None = None) -> str:
        vid = self.ec2.create_volume(Size=size_gib, AvailabilityZone=AZ)["VolumeId"]
        self.ec2.attach_volume(VolumeId=vid, InstanceId=instance or self.instance, Device=next(self.devices))
        return vid

    def wait_snapshot(self, sid: str, poll: float = 0.02) -> float:
        t0 = time.perf_counter()
        while True:
            s = self.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
            if s["State"] == "completed":
                return time.perf_counter() - t0
            if s["State"] == "error":
                raise RuntimeError(f"{sid} failed: {s.get('StateMessage')}")
            time.sleep(poll)

    def snapshot(self, vid: str) -> tuple[str, float]:
        # Flush what earlier steps left dirty, so neither peer pays for the other's writeback.
        os.sync()
        t0 = time.perf_counter()
        sid = self.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        self.wait_snapshot(sid)
        return sid, time.perf_counter() - t0

    def store_bytes(self) -> int:
        root = Path(self.log_path.parent / "data" / "snapshots")
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def make_image(path: Path, size: int) -> None:
    """Half random data, half zeros (sparse)."""
    with open(path, "wb") as f:
        half = size // 2
        chunk = 64 * MiB
        done = 0
        while done < half:
            f.write(os.urandom(min(chunk, half - done)))
            done += chunk
        f.truncate(size)


def scatter_change(path: Path, size: int, fraction: float, seed: int = 7) -> list[int]:
    """Overwrite 4 KiB in `fraction` of the 512 KiB blocks, scattered."""
    rnd = random.Random(seed)
    blocks = rnd.sample(range(size // BLOCK), max(1, int(size // BLOCK * fraction)))
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK + rnd.randrange(0, BLOCK - 4096, 4096))
            f.write(os.urandom(4096))
    return blocks


def ensure_restic() -> str | None:
    if shutil.which("restic"):
        return shutil.which("restic")
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "restic"], check=True, capture_output=True, timeout=600)
    except Exception:
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "restic"], check=True, capture_output=True, timeout=600)
        except Exception as e:  # noqa: BLE001
            print(f"restic unavailable: {e}", file=sys.stderr)
            return None
    return shutil.which("restic")


def timed(*args, **kw) -> float:
    os.sync()
    t0 = time.perf_counter()
    sh(*args, **kw)
    return time.perf_counter() - t0


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class Rows(list):
    """Table rows, each also printed as soon as it is measured (a long run still reports)."""

    def append(self, row):
        print("  " + " | ".join(row), flush=True)
        super().append(row)

    def __setitem__(self, i, row):
        print("  " + " | ".join(row), flush=True)
        super().__setitem__(i, row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=int, default=4)
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument("--cut-rounds", type=int, default=20)
    ap.add_argument("--api-rounds", type=int, default=200)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bsnap-bench-"))
    size = a.size_gib * GiB
    rows = Rows()
    bs = Blocksnap(work)
    try:
        image = work / "image.raw"
        make_image(image, size)
        vid = bs.volume(a.size_gib)
        sh("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-W", "-m", "8", str(image), bs.url(vid))
        full_sid, full_t = bs.snapshot(vid)
        full_store = bs.store_bytes()

        changed = scatter_change(image, size, 0.01)
        # The same 4 KiB changes on the volume, each written where the image changed.
        # Copy each changed 512 KiB block to the volume (qemu-io `write -s` reads from a file's start).
        piece = work / "piece.bin"
        with open(image, "rb") as f:
            for b in changed:
                f.seek(b * BLOCK)
                piece.write_bytes(f.read(BLOCK))
                sh("qemu-io", "-f", "raw", "-c", f"write -s {piece} {b * BLOCK} {BLOCK}", bs.url(vid))
        inc_sid, inc_t = bs.snapshot(vid)
        inc_store = bs.store_bytes() - full_store

        # Restore: time to the first byte readable, then until the whole volume reads back.
        os.sync()
        t0 = time.perf_counter()
        nv = bs.ec2.create_volume(SnapshotId=inc_sid, AvailabilityZone=AZ)["VolumeId"]
        while bs.ec2.describe_volumes(VolumeIds=[nv])["Volumes"][0]["State"] != "available":
            time.sleep(0.005)
        bs.ec2.attach_volume(VolumeId=nv, InstanceId=bs.instance, Device=next(bs.devices))
        sh("qemu-io", "-f", "raw", "-r", "-c", "read 0 4k", bs.url(nv))
        first_byte = time.perf_counter() - t0
        out = work / "restored.raw"
        sh("qemu-img", "convert", "-f", "raw", "-O", "raw", "-m", "8", bs.url(nv), str(out))
        restore_t = time.perf_counter() - t0
        ok = subprocess.run(["cmp", str(image), str(out)], capture_output=True).returncode == 0
        out.unlink()

        # Cross-region copy of the same snapshots (issue 6): full, then the incremental one.
        west = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{bs.port}", region_name="us-west-2",
                            aws_access_key_id=AK, aws_secret_access_key=SK, config=Config(retries={"max_attempts": 1}))
        west_root = work / "data" / "snapshots" / "us-west-2"

        def west_bytes() -> int:
            return sum(p.stat().st_size for p in west_root.rglob("*") if p.is_file()) if west_root.exists() else 0

        copy_times = []
        for sid in (full_sid, inc_sid):
            before = west_bytes()
            t0 = time.perf_counter()
            cid = west.copy_snapshot(SourceRegion=REGION, SourceSnapshotId=sid)["SnapshotId"]
            while west.describe_snapshots(SnapshotIds=[cid])["Snapshots"][0]["State"] != "completed":
                time.sleep(0.02)
            copy_times.append((time.perf_counter() - t0, west_bytes() - before))

        rows.append(("full snapshot (s)", f"{full_t:.2f}", "", ""))
        rows.append(("incremental after 1 % (s)", f"{inc_t:.2f}", "", f"{inc_t / full_t * 100:.1f}% of full"))
        rows.append(("stored: full / incremental (MiB)", f"{full_store / MiB:.0f} / {inc_store / MiB:.1f}", "", ""))
        rows.append(("restore: first byte (ms)", f"{first_byte * 1000:.0f}", "", ""))
        rows.append(("restore: whole volume (s)", f"{restore_t:.2f}", "", f"bytes equal: {ok}"))
        (cf, cfb), (ci, cib) = copy_times
        rows.append(("cross-region copy, full: s / MiB moved / MiB/s",
                     f"{cf:.2f} / {cfb / MiB:.0f} / {cfb / MiB / cf:.0f}", "",
                     f"snapshot: {full_store / MiB / full_t:.0f} MiB/s stored"))
        rows.append(("cross-region copy, incremental: s / MiB moved", f"{ci:.2f} / {cib / MiB:.1f}", "", ""))

        restic = None if a.skip_restic else ensure_restic()
        if restic:
            repo = work / "restic-repo"
            env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(repo))
            sh(restic, "init", env=env)
            # The image before the 1 % change is what the full snapshot holds: rebuild it.
            changed_image = work / "image.changed"
            image.rename(changed_image)
            sh("qemu-img", "convert", "-f", "raw", "-O", "raw", bs.url(full_sid), str(image))
            r_full = timed(restic, "backup", "--quiet", str(image), env=env)
            image.unlink()
            changed_image.rename(image)
            r_inc = timed(restic, "backup", "--quiet", str(image), env=env)
            rdir = work / "restic-restore"
            r_restore = timed(restic, "restore", "latest", "--target", str(rdir), env=env)
            shutil.rmtree(rdir, ignore_errors=True)
            rows[0] = ("full snapshot (s)", f"{full_t:.2f}", f"{r_full:.2f}", f"{r_full / full_t:.1f}x faster")
            rows[1] = ("incremental after 1 % (s)", f"{inc_t:.2f}", f"{r_inc:.2f}",
                       f"{r_inc / inc_t:.1f}x faster; {inc_t / full_t * 100:.1f}% of full")
            rows[4] = ("restore: whole volume (s)", f"{restore_t:.2f}", f"{r_restore:.2f}",
                       f"{r_restore / restore_t:.1f}x faster; bytes equal: {ok}")

        # CreateSnapshot latency on a 1 TiB sparse volume.
        big = bs.volume(1024)
        sh("qemu-io", "-f", "raw", "-c", "write -P 7 0 1M", "-c", "write -P 8 512G 1M", bs.url(big))
        lat, control = [], []
        os.sync()  # what the earlier steps (restic's restore among them) left dirty is not this step's
        # Python's cyclic garbage collector pauses the client for milliseconds at random calls:
        # that is the client's latency, not the server's, so it waits until the loop is done.
        gc.disable()
        for i in range(a.api_rounds):
            sh("qemu-io", "-f", "raw", "-c", f"write -P {i % 250} {i * MiB} 4k", bs.url(big))
            # Control: a read-only call in the same loop shows what the client and the VM add.
            t0 = time.perf_counter()
            bs.ec2.describe_volumes(VolumeIds=[big])
            control.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sid = bs.ec2.create_snapshot(VolumeId=big)["SnapshotId"]
            lat.append(time.perf_counter() - t0)
            bs.wait_snapshot(sid, poll=0.01)
        gc.enable()
        with open(bs.log_path, "rb") as f:
            log = re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode(errors="replace"))
        server = [int(m) / 1e6 for m in re.findall(r"action=\"?CreateSnapshot\"? .*?elapsed_us=(\d+)", log)]
        server = server[-len(lat):]
        rows.append(("CreateSnapshot on 1 TiB: p50 / p99 (ms)",
                     f"{pct(lat, 50) * 1000:.1f} / {pct(lat, 99) * 1000:.1f}", "",
                     f"boto3 client side; server side p50 / p99 / max {pct(server, 50) * 1000:.2f} / "
                     f"{pct(server, 99) * 1000:.2f} / {max(server) * 1000:.2f}" if server else "boto3 client side"))
        rows.append(("  control: DescribeVolumes in the same loop p50 / p99 (ms)",
                     f"{pct(control, 50) * 1000:.1f} / {pct(control, 99) * 1000:.1f}", "", "boto3 client side"))

        # The write pause of a multi-volume cut, under write load.
        for n in (2, 8, 26):
            inst = bs.ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                                        Placement={"AvailabilityZone": AZ})["Instances"][0]["InstanceId"]
            vols = [bs.volume(1, instance=inst) for _ in range(n)]
            stop = threading.Event()
            writers = [subprocess.Popen(["qemu-io", "-f", "raw", bs.url(v)], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
                       for v in vols]

            def feed(p):
                k = 0
                while not stop.is_set():
                    try:
                        p.stdin.write(f"write -P {k % 200} {(k % 256) * 4096} 4k\n")
                        p.stdin.flush()
                    except OSError:
                        return
                    k += 1
                    time.sleep(0.002)

            threads = [threading.Thread(target=feed, args=(p,), daemon=True) for p in writers]
            for t in threads:
                t.start()
            mark = bs.log_path.stat().st_size
            for _ in range(a.cut_rounds):
                snaps = bs.ec2.create_snapshots(InstanceSpecification={"InstanceId": inst, "ExcludeBootVolume": True})
                for s in snaps["Snapshots"]:
                    bs.wait_snapshot(s["SnapshotId"], poll=0.01)
            stop.set()
            for t in threads:
                t.join(timeout=5)
            for p in writers:
                p.kill()
                p.wait(timeout=30)
            with open(bs.log_path, "rb") as f:
                f.seek(mark)
                log = f.read().decode(errors="replace")
            pauses = [int(m) / 1000 for m in re.findall(rf"snapshot cut.*?volumes\S*={n}\b.*?pause_us\S*=(\d+)",
                                                         re.sub(r"\x1b\[[0-9;]*m", "", log))]
            if pauses:
                rows.append((f"cut pause, {n} volumes: p50 / p99 / max (ms)",
                             f"{statistics.median(pauses):.2f} / {pct(pauses, 99):.2f} / {max(pauses):.2f}", "",
                             f"{len(pauses)} cuts"))
    finally:
        bs.stop()
    w = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{w}} | {'blocksnap':>16} | {'restic':>8} | ratio / note")
    print("-" * (w + 50))
    for r in rows:
        print(f"{r[0]:<{w}} | {r[1]:>16} | {r[2]:>8} | {r[3]}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
