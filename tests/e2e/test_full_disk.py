"""A full data-dir disk (a 64 MiB tmpfs): NBD writes get ENOSPC (an NBD error reply), API calls that
need space get a clear error, nothing already acknowledged is lost, and the service recovers when
space returns (the tmpfs is grown). Needs root to mount; without it the test fails, it never skips."""
from __future__ import annotations

import subprocess

import pytest
from botocore.exceptions import ClientError

from conftest import Server, attached_volume
from nbd import MiB, pattern_ok, qemu_io

pytestmark = pytest.mark.blocksnap_only

REGION = "us-east-1"


@pytest.fixture
def small_disk(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(data)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"this test needs root to mount a 64 MiB tmpfs as the data dir (CI runs as root): "
                    f"mount said: {p.stderr.strip()}")
    yield data
    subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_full_data_dir(tmp_path, small_disk):
    srv = Server(kind="blocksnap", workdir=tmp_path)
    srv.start()
    try:
        ec2 = srv.client()
        _, vid = attached_volume(ec2, REGION + "a", "fulldisk")
        qemu_io(srv, vid, "write -P 0x31 0 8M", "flush")
        # Fill the disk through the volume, 1 MiB at a time, until the server answers ENOSPC.
        acked, enospc = [], None
        for k in range(16, 200):
            p = qemu_io(srv, vid, f"write -P {k % 200 + 40:#x} {k * MiB} 1M", "flush", check=False)
            out = p.stdout + p.stderr
            if p.returncode != 0 or "failed" in out.lower():
                enospc = out
                break
            acked.append(k)
        assert enospc is not None, "a 64 MiB disk cannot take 184 MiB of writes"
        assert "No space left on device" in enospc, enospc
        # Still full: another write is refused the same way, and the server keeps answering.
        p = qemu_io(srv, vid, f"write -P 0x99 {300 * MiB} 1M", check=False)
        assert "No space left on device" in p.stdout + p.stderr, p.stdout + p.stderr
        # A call that needs space (the cut writes the next change bitmap) answers with a clear error,
        # and leaves no snapshot behind.
        with pytest.raises(ClientError) as e:
            ec2.create_snapshot(VolumeId=vid)
        assert "No space left on device" in e.value.response["Error"]["Message"], e.value.response["Error"]
        assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
        # Calls that need no space go on.
        assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["State"] == "in-use"
        # Nothing acknowledged is lost.
        assert pattern_ok(srv, vid, 0, 8 * MiB, 0x31)
        for k in acked:
            assert pattern_ok(srv, vid, k * MiB, MiB, k % 200 + 40), f"acknowledged write at {k} MiB lost"
        # Space returns: writes and snapshots work again, and everything reads back.
        subprocess.run(["mount", "-o", "remount,size=1g", str(small_disk)], check=True)
        qemu_io(srv, vid, f"write -P 0x99 {300 * MiB} 1M", "flush")
        sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        assert pattern_ok(srv, sid, 0, 8 * MiB, 0x31)
        assert pattern_ok(srv, sid, 300 * MiB, MiB, 0x99)
        for k in acked:
            assert pattern_ok(srv, sid, k * MiB, MiB, k % 200 + 40)
        srv.stop()
        v = srv.admin("verify", timeout=300)
        assert v.returncode == 0, v.stdout + v.stderr
    finally:
        srv.stop()
