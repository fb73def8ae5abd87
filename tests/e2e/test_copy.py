"""CopySnapshot: within and across regions, across accounts, encrypting or re-keying on copy, moving only
the blocks the destination lacks."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import tagspec
from nbd import MiB, compare, from_file, pattern_ok, qemu_io

pytestmark = pytest.mark.blocksnap_only
SRC = "us-west-2"


def code(e) -> str:
    return e.value.response["Error"]["Code"]


def wait(ec2, sid, ok=("completed",)):
    for _ in range(600):
        s = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
        if s["State"] in ok or s["State"] == "error":
            return s
        import time
        time.sleep(0.05)
    raise AssertionError(f"{sid} never finished")


def chunk_count(server, region) -> int:
    return len(server.store_objects(f"snapshots/{region}/chunks"))


@pytest.fixture
def source(server, run_tag):
    """A completed snapshot in us-west-2 with known bytes, and a way to make a newer one."""
    ec2 = server.client(region=SRC)
    az = SRC + "a"
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag))["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    qemu_io(server, vid, "write -P 0x31 0 8M", "write -P 0x32 100M 1M", "flush")
    sid = ec2.create_snapshot(VolumeId=vid, TagSpecifications=tagspec("snapshot", run_tag, src="yes"))["SnapshotId"]
    assert wait(ec2, sid)["State"] == "completed"
    return ec2, vid, sid


def test_same_region_copy(server, source):
    ec2, vid, sid = source
    r = ec2.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid, Description="This is my copied snapshot.")
    c = wait(ec2, r["SnapshotId"])
    assert c["State"] == "completed" and c["Description"] == "This is my copied snapshot."
    assert c["VolumeId"] == "vol-ffffffff" and c["VolumeSize"] == 1 and c["Encrypted"] is False
    assert not c.get("Tags"), "source tags are not copied"
    assert compare(server, sid, r["SnapshotId"]).returncode == 0


def test_cross_region_copy_restores_same_bytes(server, source, run_tag):
    _, _, sid = source
    east = server.client(region="us-east-1")
    before = chunk_count(server, "us-east-1")
    r = east.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid,
                           TagSpecifications=tagspec("snapshot", run_tag, k="v"))
    assert {"Key": "k", "Value": "v"} in r["Tags"]
    c = wait(east, r["SnapshotId"])
    assert c["State"] == "completed", c
    assert chunk_count(server, "us-east-1") > before, "a cross-region copy moves chunks into the destination store"
    v = east.create_volume(SnapshotId=r["SnapshotId"], AvailabilityZone="us-east-1b")["VolumeId"]
    east.get_waiter("volume_available").wait(VolumeIds=[v], WaiterConfig={"Delay": 1})
    inst = east.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                              Placement={"AvailabilityZone": "us-east-1b"})["Instances"][0]["InstanceId"]
    east.attach_volume(VolumeId=v, InstanceId=inst, Device="/dev/sdf")
    assert compare(server, sid, v).returncode == 0
    # The source region does not see the copy, the destination does not see the source.
    with pytest.raises(ClientError) as e:
        east.describe_snapshots(SnapshotIds=[sid])
    assert code(e) == "InvalidSnapshot.NotFound"


def test_second_copy_moves_only_changed_blocks(server, source):
    ec2, vid, sid = source
    east = server.client(region="us-east-1")
    first = east.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid)["SnapshotId"]
    wait(east, first)
    # Random bytes: a block no other test can have stored already.
    piece = server.workdir / f"piece-{vid}.bin"
    piece.write_bytes(os.urandom(512 * 1024))
    qemu_io(server, vid, f"write -s {piece} 2M 512k", "flush")
    newer = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait(ec2, newer)
    before = chunk_count(server, "us-east-1")
    second = east.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=newer)["SnapshotId"]
    assert wait(east, second)["State"] == "completed"
    assert chunk_count(server, "us-east-1") - before == 1, "one changed block => one chunk moved"
    assert pattern_ok(server, second, 0, 2 * MiB, 0x31)
    assert compare(server, newer, second).returncode == 0


def _plaintext_free(server, region, marker: bytes):
    for obj in server.store_objects(f"snapshots/{region}"):
        assert marker not in server.read_store_object(obj), f"plaintext in {obj}"


def test_encrypt_on_copy_default_and_named_key(server, run_tag):
    ec2 = server.client(region=SRC)
    east = server.client(region="us-east-1")
    kms_east = server.session(region="us-east-1").client("kms", endpoint_url=server.endpoint)
    az = SRC + "a"
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    marker = b"COPY-PLAINTEXT-MARKER-" * 1000
    blob = server.workdir / "copy-marker.bin"
    blob.write_bytes((marker * 30)[: 512 * 1024])
    qemu_io(server, vid, f"write -s {blob} 0 512k", "flush")
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait(ec2, sid)
    # Default key of the destination region.
    a = east.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid, Encrypted=True)["SnapshotId"]
    ca = wait(east, a)
    assert ca["State"] == "completed" and ca["Encrypted"] is True
    assert ":key/" in ca["KmsKeyId"] and ca["KmsKeyId"].startswith("arn:aws:kms:us-east-1:")
    # A named key, by alias.
    key = kms_east.create_key(Description="copy key")["KeyMetadata"]
    kms_east.create_alias(AliasName=f"alias/copy-{run_tag}", TargetKeyId=key["KeyId"])
    b = east.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid, Encrypted=True,
                           KmsKeyId=f"alias/copy-{run_tag}")["SnapshotId"]
    cb = wait(east, b)
    assert cb["State"] == "completed" and cb["KmsKeyId"] == key["Arn"]
    _plaintext_free(server, "us-east-1", b"COPY-PLAINTEXT-MARKER-")
    assert compare(server, sid, a).returncode == 0 and compare(server, sid, b).returncode == 0
    # Re-key: an encrypted snapshot copied under another key stays encrypted and readable.
    key2 = kms_east.create_key(Description="second key")["KeyMetadata"]
    c = east.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=b, Encrypted=True, KmsKeyId=key2["Arn"])
    cc = wait(east, c["SnapshotId"])
    assert cc["State"] == "completed" and cc["KmsKeyId"] == key2["Arn"]
    assert compare(server, sid, c["SnapshotId"]).returncode == 0
    # Encrypted=False never decrypts.
    d = east.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=b, Encrypted=False)["SnapshotId"]
    assert wait(east, d)["Encrypted"] is True


def test_unknown_kms_key_ends_in_error(server, source):
    _, _, sid = source
    east = server.client(region="us-east-1")
    r = east.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid, Encrypted=True,
                           KmsKeyId="arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000")
    c = wait(east, r["SnapshotId"])
    assert c["State"] == "error" and c.get("StateMessage"), c


def test_cross_account_copy_of_shared_snapshot(server, source):
    ec2, _, sid = source
    other = server.create_account()
    oc = server.client(creds=other, region=SRC)
    with pytest.raises(ClientError) as e:
        oc.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid)
    assert code(e) == "InvalidSnapshot.NotFound"
    other_id = oc.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1)["OwnerId"]
    ec2.modify_snapshot_attribute(SnapshotId=sid, CreateVolumePermission={"Add": [{"UserId": other_id}]})
    east_other = server.client(creds=other, region="us-east-1")
    r = east_other.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid)
    c = wait(east_other, r["SnapshotId"])
    assert c["State"] == "completed" and c["OwnerId"] == other_id
    # Over NBD the source (shared with B) and B's copy are both B's to open.
    assert compare(server, sid, r["SnapshotId"], creds=other).returncode == 0
    # B's copy is B's: the owner of the source cannot see it.
    with pytest.raises(ClientError) as e:
        server.client(region="us-east-1").describe_snapshots(SnapshotIds=[r["SnapshotId"]])
    assert code(e) == "InvalidSnapshot.NotFound"


def test_copy_errors(server, source):
    ec2, vid, sid = source
    east = server.client(region="us-east-1")
    cases = [
        (dict(SourceRegion=SRC, SourceSnapshotId="snap-00000000000000000"), "InvalidSnapshot.NotFound"),
        (dict(SourceRegion="us-east-1", SourceSnapshotId=sid), "InvalidSnapshot.NotFound"),
        (dict(SourceRegion="xx-nowhere-1", SourceSnapshotId=sid), "InvalidParameterValue"),
        (dict(SourceRegion=SRC, SourceSnapshotId=sid, KmsKeyId="alias/aws/ebs"), "InvalidParameterDependency"),
        (dict(SourceRegion=SRC, SourceSnapshotId=sid, DestinationOutpostArn="arn:aws:outposts:x"),
         "InvalidParameterValue"),
        (dict(SourceRegion=SRC, SourceSnapshotId=sid,
              TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}]),
         "InvalidParameterValue"),
    ]
    for kw, want in cases:
        with pytest.raises(ClientError) as e:
            east.copy_snapshot(**kw)
        assert code(e) == want, (kw, e.value)
    with pytest.raises(ClientError) as e:
        east.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid, DryRun=True)
    assert code(e) == "DryRunOperation"
    # A tampered presigned URL is refused.
    r = server.raw({"Action": "CopySnapshot", "Version": "2016-11-15", "SourceRegion": SRC,
                    "SourceSnapshotId": sid,
                    "PresignedUrl": f"{server.endpoint}?Action=CopySnapshot&SourceSnapshotId={sid}"
                                    "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAXXXX%2F20260101%2F"
                                    f"{SRC}%2Fec2%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"
                                    "&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0" * 64})
    assert r.status == 400 and r.code == "InvalidParameterValue", r.text
    # The source cannot be deleted while a copy reads it, and the copy completes.
    # (Copies of small snapshots finish fast; this checks the completed path at least.)


def test_aws_cli_copy_snapshot(server, source):
    _, _, sid = source
    out = server.cli("copy-snapshot", "--source-region", SRC, "--source-snapshot-id", sid,
                     "--description", "cli copy", region="us-east-1")
    assert out["SnapshotId"].startswith("snap-")
    east = server.client(region="us-east-1")
    assert wait(east, out["SnapshotId"])["State"] == "completed"
    done = subprocess.run(["aws", "ec2", "--endpoint-url", server.endpoint, "wait", "snapshot-completed",
                           "--snapshot-ids", out["SnapshotId"], "--region", "us-east-1"], env=server_cli_env(server))
    assert done.returncode == 0


def server_cli_env(server):
    import os
    env = dict(os.environ, AWS_ACCESS_KEY_ID=server.creds.access_key, AWS_SECRET_ACCESS_KEY=server.creds.secret_key,
               AWS_CONFIG_FILE=str(Path("/nonexistent")), AWS_SHARED_CREDENTIALS_FILE=str(Path("/nonexistent")))
    return env


def test_copy_survives_restart_and_source_is_held(fresh_server):
    """kill -9 during a cross-region copy: after the restart the copy resumes and completes with the
    source's bytes; while it runs, the source cannot be deleted. The copy re-encrypts (a new lineage),
    so 256 MiB keep it pending long enough to see both."""
    import signal
    import time
    server = fresh_server
    west = server.client(region=SRC)
    inst = west.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                              Placement={"AvailabilityZone": SRC + "a"})["Instances"][0]["InstanceId"]
    vid = west.create_volume(Size=1, AvailabilityZone=SRC + "a")["VolumeId"]
    west.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    img = server.workdir / "copy-src.bin"
    img.write_bytes(os.urandom(256 * MiB))
    from_file(server, img, vid)
    sid = west.create_snapshot(VolumeId=vid)["SnapshotId"]
    assert wait(west, sid)["State"] == "completed"
    east = server.client(region="us-east-1")
    cid = east.copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid, Encrypted=True)["SnapshotId"]
    with pytest.raises(ClientError) as e:
        west.delete_snapshot(SnapshotId=sid)
    assert code(e) == "InvalidSnapshot.InUse"
    state = east.describe_snapshots(SnapshotIds=[cid])["Snapshots"][0]["State"]
    assert state == "pending", "the kill must land while the copy runs"
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.proc = None
    server.start()
    east = server.client(region="us-east-1")
    deadline = time.time() + 300
    while (c := east.describe_snapshots(SnapshotIds=[cid])["Snapshots"][0])["State"] == "pending":
        assert time.time() < deadline, f"{cid} still pending after 300 s"
        time.sleep(0.2)
    assert c["State"] == "completed", c
    assert c["Encrypted"] is True
    r = compare(server, sid, cid)
    assert r.returncode == 0, r.stdout + r.stderr
    time.sleep(0.1)
    # Once the copy has ended the source can go.
    server.client(region=SRC).delete_snapshot(SnapshotId=sid)
