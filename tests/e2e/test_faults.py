"""Faults below blocksnap: a snapshot store (moto_server's S3) that hangs or disappears mid-upload.
Guest writes never wait on the store; a hung store's upload completes once it answers again; a store
that is gone ends the upload in `error` with a StateMessage, and the volume keeps serving."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import boto3
import pytest

from conftest import Server, attached_volume, free_port
from nbd import MiB, from_file, pattern_ok, qemu_io, to_file

pytestmark = pytest.mark.blocksnap_only

REGION = "us-east-1"


@pytest.fixture
def moto(tmp_path):
    port = free_port()
    p = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert p.poll() is None, "moto_server exited at start"
            assert time.time() < deadline, "moto_server did not listen within 30 s"
            time.sleep(0.05)
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION, aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket="faults")
    yield port, p
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGCONT)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


def s3_server(tmp_path, port) -> Server:
    cfg = tmp_path / "blocksnap.toml"
    cfg.write_text(f"""
[stores.{REGION}]
bucket = "faults"
prefix = "r"
endpoint = "http://127.0.0.1:{port}"
region = "{REGION}"
access_key_id = "k"
secret_access_key = "s"
allow_http = true
""")
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_args=["--config", str(cfg)])
    srv.start()
    return srv


def state(ec2, sid) -> dict:
    return ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]


def wait_done(ec2, sid, timeout=300) -> dict:
    deadline = time.time() + timeout
    while (s := state(ec2, sid))["State"] == "pending":
        assert time.time() < deadline, f"{sid} still pending after {timeout} s"
        time.sleep(0.2)
    return s


def test_store_hangs_then_disappears(tmp_path, moto):
    port, moto_proc = moto
    srv = s3_server(tmp_path, port)
    try:
        ec2 = srv.client()
        _, vid = attached_volume(ec2, REGION + "a", "faults")
        qemu_io(srv, vid, "write -P 0x21 0 1M", "flush")
        first = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        assert wait_done(ec2, first)["State"] == "completed"

        # The store hangs (the S3 server stops answering, connections stay open).
        img = tmp_path / "cut.bin"
        img.write_bytes(os.urandom(32 * MiB))
        from_file(srv, img, vid)
        os.killpg(moto_proc.pid, signal.SIGSTOP)
        sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        # Guest writes, flushes and reads go on while the upload waits on the store.
        for k in range(8):
            qemu_io(srv, vid, f"write -P {0x40 + k:#x} {64 * MiB + k * MiB} 1M", "flush")
        qemu_io(srv, vid, "write -P 0x55 0 4M", "flush")
        assert pattern_ok(srv, vid, 0, 4 * MiB, 0x55)
        assert state(ec2, sid)["State"] == "pending", "the upload cannot finish while the store hangs"
        # The store answers again: the upload completes with the bytes of the cut.
        os.killpg(moto_proc.pid, signal.SIGCONT)
        s = wait_done(ec2, sid)
        assert s["State"] == "completed", s
        out = tmp_path / "snap.bin"
        to_file(srv, sid, out)
        with open(out, "rb") as f:
            assert f.read(32 * MiB) == img.read_bytes(), "the snapshot holds the bytes of the cut"
        out.unlink()

        # The store disappears mid-upload: the snapshot ends in error with a message, within the bound.
        img.write_bytes(os.urandom(64 * MiB))
        from_file(srv, img, vid)
        os.killpg(moto_proc.pid, signal.SIGKILL)
        moto_proc.wait(timeout=10)
        gone = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        s = wait_done(ec2, gone)
        assert s["State"] == "error", s
        assert s.get("StateMessage"), s
        # The volume keeps serving, and nothing acknowledged is lost.
        qemu_io(srv, vid, "write -P 0x66 128M 1M", "flush")
        assert pattern_ok(srv, vid, 128 * MiB, MiB, 0x66)
        assert pattern_ok(srv, vid, 64 * MiB + 7 * MiB, MiB, 0x47)
        out = tmp_path / "vol.bin"
        to_file(srv, vid, out)
        with open(out, "rb") as f:
            assert f.read(64 * MiB) == img.read_bytes()
    finally:
        srv.stop()
