"""Volumes hold real bytes: NBD exports of attached volumes through the real binary, driven by qemu-io,
qemu-img and libnbd's tools; durability across kill -9; detach while connected; restart persistence."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import tagspec
from nbd import MiB, compare, file_opts, image_opts, pattern_ok, qemu_img, qemu_io, qemu_io_args, to_file, uri

pytestmark = pytest.mark.blocksnap_only


def setup_volume(ec2, az, run_tag, size=1, device="/dev/sdf", instance=None):
    if instance is None:
        instance = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                                     Placement={"AvailabilityZone": az},
                                     TagSpecifications=tagspec("instance", run_tag))["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=size, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag))["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=instance, Device=device)
    return instance, vid


def test_write_read_map_and_compare(server, ec2, az, run_tag, tmp_path):
    _, vid = setup_volume(ec2, az, run_tag)
    qemu_io(server, vid, "write -P 0xab 0 1M", "write -P 0xcd 512M 64k", "flush")
    assert pattern_ok(server, vid, 0, MiB, 0xab)
    assert pattern_ok(server, vid, 512 * MiB, 65536, 0xcd)
    assert not pattern_ok(server, vid, 0, MiB, 0xac), "a wrong pattern must not verify"
    # qemu-img map: the unwritten rest of the volume is a hole that reads as zeros.
    m = qemu_img(server, "map", "--output=json", "--image-opts", image_opts(server, vid), check=True).stdout
    assert '"start": 0, "length": 1048576' in m.replace("  ", " ") and '"zero": true' in m
    # qemu-img convert to a file, then compare with the export.
    copy = tmp_path / "copy.raw"
    to_file(server, vid, copy)
    assert copy.stat().st_size == 1 << 30
    r = qemu_img(server, "compare", "--image-opts", image_opts(server, vid), file_opts(copy))
    assert r.returncode == 0, r.stdout


@pytest.mark.skipif(not shutil.which("nbdcopy"), reason="libnbd-bin (nbdcopy, nbdinfo) not installed")
def test_nbdcopy_and_nbdinfo(server, ec2, az, run_tag, tmp_path):
    _, vid = setup_volume(ec2, az, run_tag)
    qemu_io(server, vid, "write -P 0x3c 8M 4M", "flush")
    out = tmp_path / "nbdcopy.raw"
    subprocess.run(["nbdcopy", "--connections=4", uri(server, vid), str(out)], check=True, timeout=300)
    with open(out, "rb") as f:
        f.seek(8 * MiB)
        assert f.read(4 * MiB) == b"\x3c" * (4 * MiB)
        f.seek(0)
        assert f.read(MiB) == b"\0" * MiB
    info = subprocess.run(["nbdinfo", "--map", uri(server, vid)], capture_output=True, text=True, check=True).stdout
    assert "hole" in info and "data" in info
    listing = subprocess.run(["nbdinfo", "--list", uri(server)], capture_output=True,
                             text=True).stdout
    assert vid in listing


def test_unattached_and_unknown_exports_are_refused(server, ec2, az, run_tag):
    vid = ec2.create_volume(Size=1, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag))["VolumeId"]
    for name in (vid, "vol-00000000000000000", "nope"):
        p = qemu_io(server, name, "read 0 4k", check=False)
        assert p.returncode != 0 and "export" in (p.stdout + p.stderr).lower()


def test_bytes_persist_across_detach_attach(server, ec2, az, run_tag):
    inst, vid = setup_volume(ec2, az, run_tag)
    qemu_io(server, vid, "write -P 0x71 4M 1M", "flush")
    ec2.detach_volume(VolumeId=vid)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig={"Delay": 1})
    assert qemu_io(server, vid, "read 0 4k", check=False).returncode != 0, "detached: not served"
    inst2 = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                              Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst2, Device="/dev/sdk")
    assert pattern_ok(server, vid, 4 * MiB, MiB, 0x71)


def test_detach_while_connected_closes_the_connection(server, ec2, az, run_tag):
    _, vid = setup_volume(ec2, az, run_tag)
    # A long-lived client: qemu-io in interactive mode keeps its connection open.
    p = subprocess.Popen(qemu_io_args(server, vid), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        p.stdin.write("write -P 0x19 0 64k\nflush\n")
        p.stdin.flush()
        time.sleep(0.5)
        ec2.detach_volume(VolumeId=vid)
        # The server closed the export: further I/O on that connection fails.
        p.stdin.write("write -P 0x1a 0 64k\nread -P 0x1a 0 64k\nquit\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert "wrote 65536/65536" in out, out
    assert "failed" in out.lower() or "error" in out.lower() or "disconnect" in out.lower(), out
    # What was flushed before the detach is there after attaching again.
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    assert pattern_ok(server, vid, 0, 65536, 0x19)


def test_flushed_writes_survive_kill_9(fresh_server, az):
    ec2 = fresh_server.client()
    _, vid = setup_volume(ec2, az, "kill9")
    qemu_io(fresh_server, vid, "write -P 0x99 0 2M", "flush", "write -P 0x98 64M 512k -f")
    os.kill(fresh_server.proc.pid, signal.SIGKILL)
    fresh_server.proc.wait()
    fresh_server.proc = None
    fresh_server.start()
    assert pattern_ok(fresh_server, vid, 0, 2 * MiB, 0x99), "flushed write lost"
    assert pattern_ok(fresh_server, vid, 64 * MiB, 512 * 1024, 0x98), "FUA write lost"


def test_deleted_volume_frees_its_bytes(server, ec2, az, run_tag):
    inst, vid = setup_volume(ec2, az, run_tag)
    d = server.data_dir / "volumes" / vid
    qemu_io(server, vid, "write -P 1 0 4k", "flush")
    assert d.is_dir(), "bytes are allocated on first use"
    ec2.detach_volume(VolumeId=vid)
    ec2.delete_volume(VolumeId=vid)
    assert not d.exists()


def test_snapshot_of_identical_volumes_compare_equal(server, ec2, az, run_tag):
    inst, a = setup_volume(ec2, az, run_tag, device="/dev/sdf")
    _, b = setup_volume(ec2, az, run_tag, device="/dev/sdg", instance=inst)
    for v in (a, b):
        qemu_io(server, v, "write -P 0x42 1M 3M", "flush")
    assert compare(server, a, b).returncode == 0
    qemu_io(server, b, "write -P 0x43 2M 4k", "flush")
    assert compare(server, a, b).returncode == 1
