"""No global stall (issue 11): a write that never finishes on one volume (its disk hangs) must not stop
the service. The data dir is a loop-mounted ext4 that the test freezes (`fsfreeze`): a FUA write to
the attached volume then hangs inside the volume's write gate, as on a hung disk.

- Another account's DescribeVolumes keeps answering while it hangs.
- CreateSnapshot of the hung volume does not hang: its cut gives up when the writes do not drain
  (ServiceUnavailable, no snapshot left behind).
- Once the disk answers again the write completes and the next snapshot holds it.
"""
from __future__ import annotations

import subprocess
import threading
import time

import pytest
from botocore.exceptions import ClientError

import nbd
from conftest import Server, attached_volume
from test_stress import wait_completed

pytestmark = pytest.mark.blocksnap_only

MiB = 1 << 20


def run(*cmd: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{' '.join(cmd)} failed: {p.stderr} (the test needs root and loop devices)"


def _frozen_disk_server(tmp_path, **env):
    img = tmp_path / "disk.img"
    data = tmp_path / "data"
    data.mkdir()
    run("truncate", "-s", "512M", str(img))
    run("mkfs.ext4", "-q", "-F", str(img))
    run("mount", "-o", "loop", str(img), str(data))
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_env=env)
    try:
        srv.start()
        yield srv
    finally:
        subprocess.run(["fsfreeze", "-u", str(data)], capture_output=True)
        srv.stop()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


@pytest.fixture
def frozen_disk_server(tmp_path):
    """A server whose data dir is a loop-mounted ext4 the test can freeze (catalog as configured)."""
    yield from _frozen_disk_server(tmp_path)


@pytest.fixture
def frozen_disk_sqlite_server(tmp_path):
    """The same, with the SQLite catalog inside the data dir (so freezing the dir freezes the catalog
    too), also when the suite runs on PostgreSQL."""
    yield from _frozen_disk_server(tmp_path, BLOCKSNAP_CATALOG="sqlite")


def test_a_hung_disk_stalls_only_its_own_volume(frozen_disk_server):
    server = frozen_disk_server
    ec2 = server.client(read_timeout=30, connect_timeout=5)
    az = f"{server.region}a"
    _, vid = attached_volume(ec2, az, "live", image_id="ami-0b5e4c3d2a1f00003")
    nbd.qemu_io(server, vid, "write -P 0x11 0 1M", "flush")
    first = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, [first])
    # The next cut is staged in the background after a snapshot completes; wait for its files so that
    # the cut below needs no file I/O before its gate.
    vdir = server.data_dir / "volumes" / vid
    deadline = time.monotonic() + 30
    while not (vdir / "changes.next").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (vdir / "changes.next").exists(), "the next cut was never staged"

    other = server.create_account()
    other_ec2 = server.client(creds=other, read_timeout=30, connect_timeout=5)
    other_vol = other_ec2.create_volume(AvailabilityZone=az, Size=1)["VolumeId"]
    before = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}

    run("fsfreeze", "-f", str(server.data_dir))
    writer = subprocess.Popen(nbd.qemu_io_args(server, vid) + ["-c", "write -f -P 0x22 0 1M"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        assert writer.poll() is None, "the write finished although the disk is frozen: nothing was tested"
        outcome: dict = {}

        def snapshot():
            t0 = time.monotonic()
            try:
                ec2.create_snapshot(VolumeId=vid)
                outcome["code"] = "none"
            except ClientError as e:
                outcome["code"] = e.response["Error"]["Code"]
                outcome["message"] = e.response["Error"]["Message"]
            outcome["took"] = time.monotonic() - t0

        t = threading.Thread(target=snapshot, daemon=True)
        t.start()
        # While the cut waits for the hung write, another account is answered.
        answered = 0
        while t.is_alive():
            vols = other_ec2.describe_volumes(VolumeIds=[other_vol])["Volumes"]
            assert vols[0]["VolumeId"] == other_vol
            answered += 1
            time.sleep(0.1)
            if answered > 600:
                break
        t.join(timeout=1)
        assert not t.is_alive(), "CreateSnapshot of the hung volume did not answer within 60 s"
        assert answered >= 5, "the other account was not served while the cut waited"
        assert outcome["code"] == "ServiceUnavailable", outcome
        assert "not created" in outcome["message"], outcome
        assert writer.poll() is None, "the hung write completed before the disk came back"
    finally:
        run("fsfreeze", "-u", str(server.data_dir))
    out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0 and "wrote" in out, out
    after = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert after == before, f"an abandoned cut left a snapshot behind: {after - before}"
    # The volume works as before: the next snapshot holds the write that hung.
    snap = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    assert wait_completed(ec2, [snap])[snap]["State"] == "completed"
    assert nbd.pattern_ok(server, snap, 0, MiB, 0x22)


def test_hung_inline_writes_do_not_stall_other_connections(frozen_disk_server):
    """Small plain writes to blocks whose change bits are already durable are served inline on the
    NBD executor's threads; on a frozen filesystem such a write blocks its thread. Several connections
    writing at once must not take every executor thread: a new connection's reads and another
    account's API calls are still answered while those writes hang."""
    server = frozen_disk_server
    ec2 = server.client(read_timeout=30, connect_timeout=5)
    az = f"{server.region}a"
    _, vid = attached_volume(ec2, az, "inline", image_id="ami-0b5e4c3d2a1f00002")
    # Every block written once and flushed: its change bit is durable, so the writes below take the
    # inline path (no snapshot runs, so nothing is captured either).
    nbd.qemu_io(server, vid, "write -P 0x11 0 2M", "flush")
    other = server.create_account()
    other_ec2 = server.client(creds=other, read_timeout=30, connect_timeout=5)
    other_vol = other_ec2.create_volume(AvailabilityZone=az, Size=1)["VolumeId"]

    # The catalog's reads after its last commit: a read that would first have to update SQLite's
    # shared WAL index would block on the frozen disk (page fault on its mapping).
    other_ec2.describe_volumes(VolumeIds=[other_vol])

    n = 8  # more connections than the machine has executor threads
    run("fsfreeze", "-f", str(server.data_dir))
    writers = []
    try:
        for i in range(n):
            # Write-back cache: plain writes (qemu-io's default writethrough would send FUA).
            args = nbd.qemu_io_args(server, vid)
            writers.append(subprocess.Popen(
                args[:1] + ["-t", "writeback"] + args[1:] + ["-c", f"write -P 0x22 {i * 64 * 1024} 64k"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(2.0)
        hung = sum(w.poll() is None for w in writers)
        assert hung == n, f"only {hung} of {n} writes hung on the frozen disk: nothing was tested"
        # A new connection reads what is cached (no write involved), within the subprocess bound.
        try:
            r = subprocess.run(nbd.qemu_io_args(server, vid, read_only=True) + ["-c", "read -P 0x11 1M 64k"],
                               capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("a read on a new connection hung while other connections' writes were stuck")
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
        vols = other_ec2.describe_volumes(VolumeIds=[other_vol])["Volumes"]
        assert vols[0]["VolumeId"] == other_vol
        assert all(w.poll() is None for w in writers), "a write completed before the disk came back"
    finally:
        run("fsfreeze", "-u", str(server.data_dir))
    for w in writers:
        out, _ = w.communicate(timeout=60)
        assert w.returncode == 0 and "wrote" in out, out
    # Nothing acknowledged was lost: every hung write landed once the disk answered.
    assert nbd.pattern_ok(server, vid, 0, n * 64 * 1024, 0x22)
    assert nbd.pattern_ok(server, vid, n * 64 * 1024, 64 * 1024, 0x11)


def test_api_calls_stuck_on_the_catalog_do_not_stall_nbd(frozen_disk_sqlite_server):
    """Authentication reads the catalog; on a frozen data dir the first read after a commit blocks
    (SQLite must update its WAL index, a mapped file there). More such calls than the executor has
    threads must not take them all: those calls wait on blocking threads (bounded by the call
    timeout), and a new NBD connection's reads are answered meanwhile."""
    server = frozen_disk_sqlite_server
    ec2 = server.client(read_timeout=30, connect_timeout=5)
    az = f"{server.region}a"
    _, vid = attached_volume(ec2, az, "catalog", image_id="ami-0b5e4c3d2a1f00002")
    nbd.qemu_io(server, vid, "write -P 0x11 0 1M", "flush")
    other = server.create_account()
    other_ec2 = server.client(creds=other, read_timeout=30, connect_timeout=5)
    # A commit, and no read after it, before the freeze.
    other_vol = other_ec2.create_volume(AvailabilityZone=az, Size=1)["VolumeId"]

    clients = [server.client(creds=other, read_timeout=5, connect_timeout=5) for _ in range(8)]
    run("fsfreeze", "-f", str(server.data_dir))
    outcomes: list = []
    try:
        def describe(c):
            try:
                c.describe_volumes(VolumeIds=[other_vol])
                outcomes.append("answered")
            except Exception as e:  # a read timeout while the disk is frozen
                outcomes.append(type(e).__name__)

        callers = [threading.Thread(target=describe, args=(c,), daemon=True) for c in clients]
        for t in callers:
            t.start()
        time.sleep(1.0)
        try:
            r = subprocess.run(nbd.qemu_io_args(server, vid, read_only=True) + ["-c", "read -P 0x11 0 64k"],
                               capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("an NBD read hung while API calls waited on the frozen catalog")
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
        for t in callers:
            t.join(timeout=30)
        assert "answered" not in outcomes, f"the catalog read did not block: nothing was tested ({outcomes})"
    finally:
        run("fsfreeze", "-u", str(server.data_dir))
    # Once the disk answers, so does the API.
    assert other_ec2.describe_volumes(VolumeIds=[other_vol])["Volumes"][0]["VolumeId"] == other_vol
