"""Concurrency stress: every kind of NBD writer at once while snapshots, copies, deletes, restores and
attach/detach loops run, under a watchdog; afterwards every completed snapshot is checked against what
the writers had acknowledged (issue 11).

Writers (all through the real qemu-io / nbdcopy over the server's NBD port):
- `hammer`: back-to-back 4 KiB writes on A and B (the inline fast path racing the cuts);
- `alt`: one synchronous writer alternating 4 KiB writes at offset 0 between volumes A and B of one
  instance (the pattern that hung the service), counter k as the byte pattern;
- `mixed` on C: writes, FUA writes, write-zeroes, trims and 1 MiB writes (larger than a block) over
  eight regions, each acknowledged before the next;
- `aio` on E: qemu-io `aio_write` with 16 requests in flight, then `aio_flush`;
- `copy` on F: nbdcopy (several connections) of two alternating 4 MiB files;
- `hydrating` on G: writes to a volume restored from a snapshot while it still hydrates.
API loops: CreateSnapshots of instance 1 (A, B) every 150 ms, CreateSnapshot of C, E and F, CopySnapshot,
DeleteSnapshot of verified snapshots, Detach/AttachVolume, CreateVolume from snapshot + DeleteVolume.

The watchdog fails the test if any API call or NBD client step takes more than 10 s (a hang), and stops
the server so that nothing waits for ever.
"""
from __future__ import annotations

import faulthandler
import os
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

import nbd
from conftest import make_instance, make_volume, wait_attached, wait_volume_state

pytestmark = pytest.mark.blocksnap_only

MiB = 1 << 20
REGION_SIZE = MiB
LOAD_SECONDS = float(os.environ.get("BLOCKSNAP_STRESS_SECONDS", "30"))
HANG = 10.0
# Outcomes a busy volume may answer with; anything else is a failure.
BUSY = {"SnapshotLimitExceeded", "ConcurrentSnapshotLimitExceeded", "SnapshotCreationPerVolumeRateExceeded", "IncorrectState",
        "ServiceUnavailable", "IncorrectModificationState"}
SMALL_ROOT_IMAGE = "ami-0b5e4c3d2a1f00003"


def pat(k: int) -> int:
    """The byte pattern of counter k (never 0, which is what unwritten bytes read as)."""
    return k % 250 + 1


class Watchdog:
    """Every client step runs inside `step()`; a step open for longer than HANG is a hang."""

    def __init__(self, server):
        self.server = server
        self.open: dict[int, tuple[str, float]] = {}
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.worst: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    class _Step:
        def __init__(self, wd, name):
            self.wd, self.name = wd, name

        def __enter__(self):
            self.t0 = time.monotonic()
            with self.wd.lock:
                self.wd.open[id(self)] = (self.name, self.t0)

        def __exit__(self, *exc):
            dt = time.monotonic() - self.t0
            with self.wd.lock:
                self.wd.open.pop(id(self), None)
                self.wd.worst[self.name] = max(self.wd.worst.get(self.name, 0.0), dt)
            return False

    def step(self, name: str):
        return self._Step(self, name)

    def _run(self):
        while not self.stop.wait(0.25):
            now = time.monotonic()
            with self.lock:
                hung = [(n, now - t) for n, t in self.open.values() if now - t > HANG]
            if hung:
                self.failures.append(f"hung for more than {HANG} s: {hung}")
                ss = subprocess.run(["ss", "-tnpi"], capture_output=True, text=True)
                (self.server.workdir / "hang-sockets.txt").write_text(ss.stdout)
                with open(self.server.workdir / "hang-client-stacks.txt", "w") as f:
                    faulthandler.dump_traceback(file=f, all_threads=True)
                if shutil.which("gdb") and self.server.proc:
                    # Where every server thread waits: the diagnosis of a hang, in the test's output.
                    p = subprocess.run(["gdb", "-p", str(self.server.proc.pid), "-batch", "-ex",
                                        "thread apply all bt"], capture_output=True, text=True, timeout=120)
                    dump = self.server.workdir / "hang-stacks.txt"
                    dump.write_text(p.stdout)
                    self.failures.append(f"server stacks in {dump}")
                # Unblock every client: a hang must fail the test, not freeze it.
                if self.server.proc and self.server.proc.poll() is None:
                    self.server.proc.kill()
                return

    def close(self):
        self.stop.set()
        self.thread.join()


class Worker(threading.Thread):
    def __init__(self, name, fn, errors):
        super().__init__(name=name, daemon=True)
        self.fn, self.errors = fn, errors

    def run(self):
        try:
            self.fn()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{self.name}: {type(e).__name__}: {e}")


def first_byte(server, export: str, offset: int) -> int:
    p = nbd.qemu_io(server, export, f"read -v {offset} 16", read_only=True)
    m = re.search(r"^[0-9a-f]{8}:\s+([0-9a-f]{2})", p.stdout, re.M)
    assert m, f"unexpected qemu-io output: {p.stdout}"
    return int(m.group(1), 16)


def wait_completed(ec2, ids: list[str], timeout: float = 120) -> dict[str, dict]:
    out: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    todo = list(ids)
    while todo and time.monotonic() < deadline:
        for i in range(0, len(todo), 100):
            for s in ec2.describe_snapshots(SnapshotIds=todo[i:i + 100])["Snapshots"]:
                if s["State"] != "pending":
                    out[s["SnapshotId"]] = s
        todo = [i for i in todo if i not in out]
        if todo:
            time.sleep(0.3)
    assert not todo, f"snapshots still pending after {timeout} s: {todo[:5]}"
    return out


def test_stress_writers_snapshots_and_lifecycle(fresh_server, tmp_path):
    server = fresh_server
    ec2 = server.client(read_timeout=HANG, connect_timeout=5)
    az = f"{server.region}a"
    tag = "stress"
    errors: list[str] = []
    wd = Watchdog(server)
    stop = threading.Event()

    def api(name, fn, *a, **kw):
        with wd.step(f"api {name}"):
            return fn(*a, **kw)

    i1 = make_instance(ec2, SMALL_ROOT_IMAGE, az, tag)["InstanceId"]
    i2 = make_instance(ec2, SMALL_ROOT_IMAGE, az, tag)["InstanceId"]
    vols = {n: make_volume(ec2, az, tag)["VolumeId"] for n in "ABCEFI"}
    for n, inst, dev in [("A", i1, "/dev/sdf"), ("B", i1, "/dev/sdg"), ("C", i2, "/dev/sdf"),
                         ("E", i2, "/dev/sdg"), ("F", i2, "/dev/sdh"), ("I", i2, "/dev/sdi")]:
        ec2.attach_volume(VolumeId=vols[n], InstanceId=inst, Device=dev)
        wait_attached(ec2, vols[n])
    # G: restored from a snapshot of 48 MiB of data, written while it hydrates.
    nbd.qemu_io(server, vols["C"], "write -P 0x5a 0 48M", "flush")
    seed = ec2.create_snapshot(VolumeId=vols["C"])["SnapshotId"]
    wait_completed(ec2, [seed])
    vols["G"] = ec2.create_volume(AvailabilityZone=az, SnapshotId=seed)["VolumeId"]
    wait_volume_state(ec2, vols["G"], "available")
    ec2.attach_volume(VolumeId=vols["G"], InstanceId=i2, Device="/dev/sdj")
    wait_attached(ec2, vols["G"])

    # ---- writers -------------------------------------------------------------------------------
    alt_log: list[tuple[int, float, float]] = []  # (k, sent, acked): A(k) then B(k) per k
    alt_b_log: list[tuple[int, float, float]] = []

    def alt_writer():
        qa, qb = nbd.QemuIo(server, vols["A"]), nbd.QemuIo(server, vols["B"])
        try:
            k = 0
            while not stop.is_set():
                k += 1
                for q, log in ((qa, alt_log), (qb, alt_b_log)):
                    t0 = time.monotonic()
                    with wd.step("nbd alt write"):
                        q.write(0, 4096, pat(k))
                    log.append((k, t0, time.monotonic()))
        finally:
            qa.close()
            qb.close()

    # mixed: region r holds the pattern of its last op (0 for zeroes/trim).
    mixed_log: list[tuple[int, int, float, float]] = []  # (region, value, sent, acked)

    def mixed_writer():
        q = nbd.QemuIo(server, vols["C"])
        try:
            k = 0
            while not stop.is_set():
                k += 1
                r = k % 8
                off = r * REGION_SIZE
                kind = k % 5
                cmd, value = {
                    0: (f"write -P {pat(k):#x} {off} {REGION_SIZE}", pat(k)),
                    1: (f"write -f -P {pat(k):#x} {off} {REGION_SIZE}", pat(k)),
                    2: (f"write -z {off} {REGION_SIZE}", 0),
                    3: (f"discard {off} {REGION_SIZE}", 0),
                    4: (f"write -P {pat(k):#x} {off} {REGION_SIZE}", pat(k)),
                }[kind]
                t0 = time.monotonic()
                with wd.step(f"nbd mixed {cmd.split()[0]} {kind}"):
                    out = q.run(cmd)
                    if k % 7 == 0:
                        # A flush on a connection of its own (the export is multi-conn): an
                        # interactive qemu-io prints nothing for a flush, so its end can't be seen.
                        nbd.qemu_io(server, vols["C"], "flush")
                assert "failed" not in out.lower(), out
                mixed_log.append((r, value, t0, time.monotonic()))
        finally:
            q.close()

    aio_log: list[tuple[int, float, float]] = []  # (pattern of the whole first 8 MiB, sent, acked)

    def aio_writer():
        k = 0
        while not stop.is_set():
            k += 1
            cmds = [f"aio_write -P {pat(k):#x} {i * 512 * 1024} {512 * 1024}" for i in range(16)]
            t0 = time.monotonic()
            with wd.step("nbd aio"):
                nbd.qemu_io(server, vols["E"], *cmds, "aio_flush")
            aio_log.append((pat(k), t0, time.monotonic()))

    hammered: list[int] = []

    def hammer_writer():
        """Back-to-back small writes (the inline fast path) on A and B, away from offset 0: the
        writes most likely to race a cut's gate."""
        k = 0
        while not stop.is_set():
            k += 1
            with wd.step("nbd hammer"):
                nbd.qemu_io(server, vols["AB"[k % 2]], *[f"write -P 0x77 {MiB + (i % 64) * 4096} 4096"
                                                        for i in range(150)])
            hammered.append(150)

    files = []
    for n in range(2):
        f = tmp_path / f"copy{n}.img"
        f.write_bytes(random.Random(n).randbytes(4 * MiB))
        files.append(f)
    copy_log: list[tuple[int, float, float]] = []

    def copy_writer():
        k = 0
        while not stop.is_set():
            src = files[k % 2]
            t0 = time.monotonic()
            with wd.step("nbd nbdcopy"):
                p = subprocess.run(["nbdcopy", "-C", "2", str(src), nbd.uri(server, vols["F"])],
                                   capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            copy_log.append((k % 2, t0, time.monotonic()))
            k += 1

    hydrate_log: list[int] = []

    def hydrating_writer():
        q = nbd.QemuIo(server, vols["G"])
        try:
            k = 0
            while not stop.is_set() and k < 200:
                k += 1
                with wd.step("nbd hydrating write"):
                    q.write(40 * MiB + (k % 8) * 4096, 4096, pat(k))
                hydrate_log.append(k)
        finally:
            q.close()

    # ---- API loops -----------------------------------------------------------------------------
    sets: list[tuple[list[str], float, float]] = []  # CreateSnapshots of i1: (snap ids by A,B), sent, answered
    singles: list[tuple[str, str, float, float]] = []  # (volume letter, snap id, sent, answered)
    busy_answers: dict[str, int] = {}
    created_volumes: list[str] = []
    copies: list[tuple[str, str]] = []
    deleted: list[str] = []

    def busy(e: ClientError) -> bool:
        code = e.response["Error"]["Code"]
        if code in BUSY:
            busy_answers[code] = busy_answers.get(code, 0) + 1
            return True
        return False

    def create_snapshots_loop():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = api("CreateSnapshots", ec2.create_snapshots, InstanceSpecification={
                    "InstanceId": i1, "ExcludeBootVolume": True})
                by_vol = {s["VolumeId"]: s["SnapshotId"] for s in r["Snapshots"]}
                sets.append(([by_vol[vols["A"]], by_vol[vols["B"]]], t0, time.monotonic()))
            except ClientError as e:
                if not busy(e):
                    raise
            time.sleep(0.15)

    def create_snapshot_loop():
        n = 0
        while not stop.is_set():
            letter = "CEF"[n % 3]
            n += 1
            t0 = time.monotonic()
            try:
                s = api("CreateSnapshot", ec2.create_snapshot, VolumeId=vols[letter])
                singles.append((letter, s["SnapshotId"], t0, time.monotonic()))
            except ClientError as e:
                if not busy(e):
                    raise
            time.sleep(0.1)

    def lifecycle_loop():
        n = 0
        to_delete: list[str] = []
        while not stop.is_set():
            n += 1
            done = [s for (_, s, _, _) in singles[:-3]]
            if n % 4 == 3:
                # A snapshot of I (no writer), and the previous one deleted, pending or not.
                try:
                    s = api("CreateSnapshot", ec2.create_snapshot, VolumeId=vols["I"])["SnapshotId"]
                except ClientError as e:
                    if not busy(e):
                        raise
                    s = None
                if s:
                    to_delete.append(s)
                # Delete all but the newest, pending or not; one still read by a running job
                # (its child's upload, a copy, a restore) answers InvalidSnapshot.InUse, one still
                # uploading IncorrectState: later.
                for old in list(to_delete[:-1]):
                    try:
                        api("DeleteSnapshot", ec2.delete_snapshot, SnapshotId=old)
                        deleted.append(old)
                        to_delete.remove(old)
                    except ClientError as e:
                        if e.response["Error"]["Code"] not in ("InvalidSnapshot.InUse", "IncorrectState"):
                            raise
            elif n % 4 == 0:
                with wd.step("api Detach/Attach"):
                    ec2.detach_volume(VolumeId=vols["I"])
                    for _ in range(100):
                        if api("DescribeVolumes", ec2.describe_volumes,
                               VolumeIds=[vols["I"]])["Volumes"][0]["State"] == "available":
                            break
                        time.sleep(0.05)
                    ec2.attach_volume(VolumeId=vols["I"], InstanceId=i2, Device="/dev/sdi")
            elif n % 4 == 1 and done:
                src = random.choice(done)
                st = api("DescribeSnapshots", ec2.describe_snapshots, SnapshotIds=[src])["Snapshots"][0]
                if st["State"] == "completed":
                    c = api("CopySnapshot", ec2.copy_snapshot, SourceSnapshotId=src,
                            SourceRegion=server.region)
                    copies.append((src, c["SnapshotId"]))
                    v = api("CreateVolume", ec2.create_volume, AvailabilityZone=az, SnapshotId=src)
                    created_volumes.append(v["VolumeId"])
            elif created_volumes:
                v = created_volumes.pop(0)
                try:
                    api("DeleteVolume", ec2.delete_volume, VolumeId=v)
                except ClientError as e:
                    if e.response["Error"]["Code"] != "IncorrectState":
                        raise
                    created_volumes.append(v)
            time.sleep(0.2)

    # Another account's calls stay fast while all of this runs.
    other = server.create_account()
    other_ec2 = server.client(creds=other, read_timeout=HANG, connect_timeout=5)
    other_vol = other_ec2.create_volume(AvailabilityZone=az, Size=1)["VolumeId"]

    def other_account_loop():
        while not stop.is_set():
            api("DescribeVolumes (other account)", other_ec2.describe_volumes, VolumeIds=[other_vol])
            time.sleep(0.05)

    workers = [Worker(n, f, errors) for n, f in [
        ("alt", alt_writer), ("hammer", hammer_writer), ("mixed", mixed_writer), ("aio", aio_writer), ("copy", copy_writer),
        ("hydrating", hydrating_writer), ("CreateSnapshots", create_snapshots_loop),
        ("CreateSnapshot", create_snapshot_loop), ("lifecycle", lifecycle_loop),
        ("other account", other_account_loop)]]
    for w in workers:
        w.start()
    time.sleep(LOAD_SECONDS)
    stop.set()
    for w in workers:
        w.join(timeout=60)
    assert not wd.failures, wd.failures
    assert not errors, errors
    assert all(not w.is_alive() for w in workers), "a worker did not stop"

    # ---- verification --------------------------------------------------------------------------
    all_ids = [i for ids, _, _ in sets for i in ids] + [s for (_, s, _, _) in singles]
    states = wait_completed(ec2, all_ids + [c for _, c in copies], timeout=180)
    failed = {i: s.get("StateMessage") for i, s in states.items() if s["State"] != "completed"}
    assert not failed, f"snapshots ended in error: {failed}"
    assert len(sets) >= 10, f"too few CreateSnapshots sets to prove anything: {len(sets)} ({busy_answers})"

    def window(log, sent, answered):
        """Counters that the snapshot may hold: the last acknowledged before the call was sent,
        and every one sent before the answer came back."""
        acked = [k for (k, _, a) in log if a <= sent]
        lo = max(acked) if acked else 0
        hi = max([k for (k, s, _) in log if s <= answered], default=0)
        return lo, hi

    def resolve(value, lo, hi):
        if value == 0:
            return 0 if lo == 0 else None
        for k in range(max(lo, 1), hi + 1):
            if pat(k) == value:
                return k
        return None

    for (sa, sb), sent, answered in sets:
        a, b = first_byte(server, sa, 0), first_byte(server, sb, 0)
        ka = resolve(a, *window(alt_log, sent, answered))
        kb = resolve(b, *window(alt_b_log, sent, answered))
        assert ka is not None, f"{sa}: A holds {a:#x}, not a value acknowledged or in flight at the cut"
        assert kb is not None, f"{sb}: B holds {b:#x}, not a value acknowledged or in flight at the cut"
        assert ka >= kb and ka - kb <= 1, f"set {sa},{sb} is not one instant: A={ka} B={kb}"

    def head(path, n):
        with open(path, "rb") as f:
            return f.read(n)

    # At most 12 snapshots of each volume, spread over the run (each is read back whole).
    picked = []
    for letter in "CEF":
        mine = [x for x in singles if x[0] == letter]
        picked += mine[::max(1, len(mine) // 12)]
    mixed_checked = 0
    for letter, sid, sent, answered in picked:
        if letter == "C":
            img = tmp_path / f"{sid}.img"
            nbd.to_file(server, sid, img)
            data = head(img, 8 * MiB)
            for r in range(8):
                region = data[r * REGION_SIZE:(r + 1) * REGION_SIZE]
                ops = [(v, s, a) for (rr, v, s, a) in mixed_log if rr == r]
                acked = [v for (v, s, a) in ops if a <= sent]
                allowed = set(acked[-1:]) if acked else {0x5a if r * REGION_SIZE < 48 * MiB else 0}
                allowed |= {v for (v, s, a) in ops if s <= answered and a > sent}
                assert any(region == bytes([v]) * REGION_SIZE for v in allowed), (
                    f"{sid} region {r} holds {region[:1].hex()}.. not one of {sorted(allowed)}")
            img.unlink()
            mixed_checked += 1
        elif letter == "E":
            img = tmp_path / f"{sid}.img"
            nbd.to_file(server, sid, img)
            data = head(img, 8 * MiB)
            acked = [p for (p, s, a) in aio_log if a <= sent]
            allowed = set(acked[-1:]) if acked else {0}
            allowed |= {p for (p, s, a) in aio_log if s <= answered and a > sent}
            for i in range(16):
                chunk = data[i * 512 * 1024:(i + 1) * 512 * 1024]
                assert any(chunk == bytes([v]) * len(chunk) for v in allowed), (
                    f"{sid} block {i} holds {chunk[:1].hex()}.. not one of {sorted(allowed)}")
            img.unlink()
        elif letter == "F":
            img = tmp_path / f"{sid}.img"
            nbd.to_file(server, sid, img)
            data = head(img, 4 * MiB)
            contents = [f.read_bytes() for f in files] + [bytes(4 * MiB)]
            for off in range(0, 4 * MiB, 64 * 1024):
                assert any(data[off:off + 65536] == c[off:off + 65536] for c in contents), (
                    f"{sid} at {off}: bytes of neither copy source")
            img.unlink()
    assert mixed_checked >= 3, f"too few snapshots of C to check: {mixed_checked} ({busy_answers})"

    for src, dst in copies:
        assert nbd.compare(server, src, dst).returncode == 0, f"copy {dst} differs from {src}"

    # The restored volume: what was written while hydrating, the snapshot's bytes elsewhere.
    assert hydrate_log, "the hydrating writer wrote nothing"
    assert deleted, "the DeleteSnapshot loop never ran"
    assert nbd.pattern_ok(server, vols["G"], 0, 40 * MiB, 0x5a)

    p = server.admin("verify", timeout=300)
    assert p.returncode == 0, f"admin verify failed:\n{p.stdout}\n{p.stderr}"
    wd.close()
    print(f"\nstress: {len(sets)} sets, {len(singles)} single snapshots, {len(copies)} copies, "
          f"{len(alt_log)} alternating writes, {len(mixed_log)} mixed ops, busy answers {busy_answers}, "
          f"worst step times {({k: round(v, 3) for k, v in sorted(wd.worst.items())})}")
