"""One owner per data dir: a second `serve` on a data dir in use is refused before it reads, creates or
repairs anything, and the owner's next snapshot still holds exactly the volume's bytes."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Server, blocksnap_bin, free_port, psql, wait_port
from nbd import MiB, compare, qemu_io

pytestmark = pytest.mark.blocksnap_only


def tree(root: Path) -> dict:
    """Every file under `root`: size, mtime and content hash (directories: their entries)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        out[str(d.relative_to(root)) + "/"] = sorted(dirnames + filenames)
        for name in filenames:
            p = d / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def serve_cmd(data_dir: Path, port: int, nbd_port: int) -> list[str]:
    return [str(blocksnap_bin()), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
            "--nbd-listen", f"127.0.0.1:{nbd_port}", "--metrics-listen", "off"]


def run_second(data_dir: Path, port: int | None = None, nbd_port: int | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(serve_cmd(data_dir, port or free_port(), nbd_port or free_port()),
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RUST_LOG": "info"})


def attached_volume(ec2, az: str) -> str:
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid], WaiterConfig={"Delay": 1})
    return vid


def wait_staged(srv, vid: str) -> None:
    """Wait for the cut the owner stages in the background after a snapshot completes."""
    deadline = time.monotonic() + 60
    while not (srv.data_dir / "volumes" / vid / "changes.next").exists():
        assert time.monotonic() < deadline, "the next cut was never staged"
        time.sleep(0.05)
    time.sleep(0.2)


def wait_completed(ec2, *ids: str) -> None:
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=list(ids), WaiterConfig={"Delay": 1, "MaxAttempts": 120})


def test_second_serve_is_refused_and_the_next_snapshot_is_exact(fresh_server):
    srv = fresh_server
    ec2 = srv.client()
    vid = attached_volume(ec2, f"{srv.region}a")
    qemu_io(srv, vid, "write -P 0x11 0 1M", "flush")
    first = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, first)
    # Later writes: the change bitmap and a staged cut are live on disk.
    qemu_io(srv, vid, "write -P 0x22 1M 1M", "flush")
    wait_staged(srv, vid)  # the listing must not race the owner's own background work
    before = tree(srv.data_dir)

    r = run_second(srv.data_dir)
    assert r.returncode != 0, r.stderr
    assert f"pid {srv.proc.pid}" in r.stderr, r.stderr
    assert "in use" in r.stderr, r.stderr
    assert "change bitmap" not in r.stderr and "orphaned" not in r.stderr, r.stderr
    assert tree(srv.data_dir) == before, "the refused process changed the data dir"

    # The owner goes on: a 1 MiB write, then a snapshot holding exactly the volume's bytes.
    qemu_io(srv, vid, "write -P 0x33 2M 1M", "flush")
    second = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, second)
    c = compare(srv, second, vid)
    assert c.returncode == 0, c.stdout + c.stderr


def test_two_starts_at_the_same_instant_exactly_one_wins(tmp_path):
    data = tmp_path / "data"
    ports = [(free_port(), free_port()) for _ in range(2)]
    logs = [open(tmp_path / f"s{i}.log", "w+") for i in range(2)]
    procs = [subprocess.Popen(serve_cmd(data, p, n), stdout=logs[i], stderr=subprocess.STDOUT,
                              env={**os.environ, "RUST_LOG": "info"}, start_new_session=True)
             for i, (p, n) in enumerate(ports)]
    try:
        # The loser exits at once; the winner keeps serving.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        exited = [i for i, p in enumerate(procs) if p.poll() is not None]
        assert len(exited) == 1, "exactly one of the two must exit"
        loser, winner = exited[0], 1 - exited[0]
        assert procs[loser].returncode != 0
        logs[loser].seek(0)
        text = logs[loser].read()
        assert f"pid {procs[winner].pid}" in text, text
        wait_port("127.0.0.1", ports[winner][0], procs[winner], Path(logs[winner].name))
        assert procs[winner].poll() is None
        assert (data / "lock").read_text().startswith(f"pid={procs[winner].pid}\n")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        for f in logs:
            f.close()


def test_port_clash_leaves_the_data_dir_untouched(fresh_server):
    srv = fresh_server
    ec2 = srv.client()
    vid = attached_volume(ec2, f"{srv.region}a")
    qemu_io(srv, vid, "write -P 0x44 0 1M", "flush")
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, sid)
    srv.stop()
    before = tree(srv.data_dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_second(srv.data_dir, nbd_port=busy.getsockname()[1])
    assert r.returncode != 0
    assert "binding NBD" in r.stderr, r.stderr
    assert tree(srv.data_dir) == before, "a start that could not bind changed the data dir"
    # A dir that does not exist yet is not even created.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_second(srv.workdir / "never", port=busy.getsockname()[1])
    assert r.returncode != 0 and "binding HTTP" in r.stderr, r.stderr
    assert not (srv.workdir / "never").exists()


# ---- formats ------------------------------------------------------------------------------------

@pytest.fixture
def local_store_server(tmp_path):
    """A server of its own whose snapshot stores are under its data dir whatever BLOCKSNAP_E2E_STORE
    says: the test below checks the data dir's own store format (`snapshots/<region>/store.json`)."""
    srv = Server(kind="blocksnap", workdir=tmp_path, local_store=True)
    srv.start()
    yield srv
    srv.stop()


def test_a_data_dir_of_a_newer_format_is_refused_untouched(local_store_server):
    import json
    import sqlite3
    srv = local_store_server
    ec2 = srv.client()
    vid = attached_volume(ec2, f"{srv.region}a")
    qemu_io(srv, vid, "write -P 0x66 0 1M", "flush")
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, sid)
    srv.stop()
    fmt = srv.data_dir / "format"
    assert fmt.read_text() == "format=1\n"
    store_json = srv.data_dir / "snapshots" / srv.region / "store.json"
    original_store = store_json.read_text()

    def refused(expect: str) -> None:
        # The lock file records the last process that held the dir; everything else stays as it was.
        before = {k: v for k, v in tree(srv.data_dir).items() if k != "lock"}
        r = run_second(srv.data_dir)
        assert r.returncode != 0 and expect in r.stderr, r.stderr
        assert "nothing was changed" in r.stderr, r.stderr
        assert {k: v for k, v in tree(srv.data_dir).items() if k != "lock"} == before, \
            "a refused start changed the data dir"
        v = subprocess.run([str(blocksnap_bin()), "admin", "verify", "--data-dir", str(srv.data_dir)],
                           capture_output=True, text=True, timeout=60)
        assert v.returncode != 0 and expect in v.stderr, v.stderr

    fmt.write_text("format=2\n")
    refused("has format 2, written by a newer blocksnap")
    fmt.write_text("format=1\n")

    def catalog_version(v: int) -> int:
        """Set the catalog's schema version; returns the one it had."""
        if srv.catalog_url:
            old = int(psql(srv.catalog_url, "SELECT version FROM blocksnap_schema").strip())
            psql(srv.catalog_url, f"UPDATE blocksnap_schema SET version = {v}")
            return old
        db = sqlite3.connect(srv.data_dir / "catalog.db")
        old = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute(f"PRAGMA user_version = {v}")
        db.commit()
        db.close()
        return old

    current = catalog_version(99)
    refused("catalog schema version 99 was written by a newer blocksnap")
    catalog_version(current)

    store_json.write_text(json.dumps({**json.loads(original_store), "format": 9}))
    refused("has format 9")
    store_json.write_text(original_store)

    # Put back as it was: the same dir serves again, with its data.
    srv.start()
    assert compare(srv, sid, vid).returncode == 0


def test_a_data_dir_of_an_older_format_is_upgraded_under_the_lock(fresh_server):
    srv = fresh_server
    ec2 = srv.client()
    vid = ec2.create_volume(Size=1, AvailabilityZone=f"{srv.region}a")["VolumeId"]
    srv.stop()
    # As written by a blocksnap before the data dir recorded its format.
    (srv.data_dir / "format").unlink()
    srv.start()
    assert srv.client().describe_volumes(VolumeIds=[vid])["Volumes"][0]["VolumeId"] == vid
    assert (srv.data_dir / "format").read_text() == "format=1\n"
    assert "data dir format upgraded" in srv.log()
    assert not (srv.data_dir / "format.tmp").exists()
