"""Snapshots over real bytes: CreateSnapshot on a live volume, point in time, incremental, restore to a
new volume, encrypted lineages, sharing, and the call's documented parameters and errors."""
from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import tagspec
from nbd import MiB, compare, from_file, pattern_ok, qemu_io, to_file

pytestmark = pytest.mark.blocksnap_only


def code(e) -> str:
    return e.value.response["Error"]["Code"]


@pytest.fixture
def instance(ec2, image_id, run_tag, az):
    r = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": az},
                          TagSpecifications=tagspec("instance", run_tag))
    return r["Instances"][0]["InstanceId"]


def attached_volume(ec2, instance, az, run_tag, size=1, device="/dev/sdf", **kw) -> str:
    v = ec2.create_volume(Size=size, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag), **kw)
    vid = v["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig={"Delay": 1})
    ec2.attach_volume(VolumeId=vid, InstanceId=instance, Device=device)
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid], WaiterConfig={"Delay": 1})
    return vid


def wait_completed(ec2, *ids: str) -> list[dict]:
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=list(ids), WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return ec2.describe_snapshots(SnapshotIds=list(ids))["Snapshots"]


def restore(ec2, snap_id, az, run_tag, instance=None, device="/dev/sdg", **kw) -> str:
    v = ec2.create_volume(SnapshotId=snap_id, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag), **kw)
    assert v["SnapshotId"] == snap_id
    ec2.get_waiter("volume_available").wait(VolumeIds=[v["VolumeId"]], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    if instance:
        ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=instance, Device=device)
    return v["VolumeId"]


def test_create_snapshot_shape_and_completion(server, ec2, instance, az, run_tag):
    vid = attached_volume(ec2, instance, az, run_tag)
    qemu_io(server, vid, "write -P 0xab 0 1M", "flush")
    s = ec2.create_snapshot(VolumeId=vid, Description="Daily Backup",
                            TagSpecifications=tagspec("snapshot", run_tag, env="prod"))
    assert s["SnapshotId"].startswith("snap-") and len(s["SnapshotId"]) == 22
    assert s["State"] == "pending"
    assert s["VolumeId"] == vid and s["VolumeSize"] == 1 and s["Description"] == "Daily Backup"
    assert s["Encrypted"] is False and "KmsKeyId" not in s
    assert s["OwnerId"].isdigit() and len(s["OwnerId"]) == 12
    assert s["Progress"].endswith("%")
    assert {"Key": "env", "Value": "prod"} in s["Tags"]
    assert s["StorageTier"] == "standard"
    done = wait_completed(ec2, s["SnapshotId"])[0]
    assert done["State"] == "completed" and done["Progress"] == "100%"
    assert done["StartTime"] == s["StartTime"]
    # The snapshot's bytes, straight from the read-only export.
    assert pattern_ok(server, s["SnapshotId"], 0, MiB, 0xab)
    assert pattern_ok(server, s["SnapshotId"], MiB, MiB, 0)
    p = qemu_io(server, s["SnapshotId"], "write -P 1 0 4k", check=False)
    assert p.returncode != 0 or "failed" in (p.stdout + p.stderr).lower(), "snapshot exports are read-only"


def test_boto3_resource_create_snapshot(server, ec2, ec2r, instance, az, run_tag):
    vid = attached_volume(ec2, instance, az, run_tag)
    snap = ec2r.Volume(vid).create_snapshot(Description="from resource")
    assert snap.id.startswith("snap-")
    snap.wait_until_completed(WaiterConfig={"Delay": 1})
    snap.reload()
    assert snap.state == "completed" and snap.volume_id == vid


def test_point_in_time_while_writing(server, ec2, instance, az, run_tag):
    """The snapshot holds exactly what was written before the call; writes after it never leak in.
    Each block is checked against the writer's log: it holds the last pattern acknowledged before
    the call was sent, or one whose write was in flight during the call, and never a mix."""
    vid = attached_volume(ec2, instance, az, run_tag, size=1)
    qemu_io(server, vid, "write -P 0x11 0 8M", "flush")
    stop = threading.Event()
    errors: list[str] = []
    log: list[tuple[float, float, int, int]] = []  # (sent, acknowledged, block, write number)
    block = MiB // 2
    nonce = os.urandom(8)  # unique content per run and write: no dedup with other tests' blocks

    def content(n: int) -> bytes:
        return (nonce + n.to_bytes(8, "little")) * (block // 16)

    def writer():
        n = 1
        src = server.workdir / "pit-block.bin"
        while not stop.is_set():
            b = n % 16
            src.write_bytes(content(n))
            t0 = time.monotonic()
            p = qemu_io(server, vid, f"write -s {src} {b * block} {block}", check=False)
            t1 = time.monotonic()
            if p.returncode != 0:
                errors.append(p.stderr)
            else:
                log.append((t0, t1, b, n))
            n += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.3)
        # Overwrite with 0x33 and acknowledge (flush) right before the snapshot: it must be in it.
        qemu_io(server, vid, "write -P 0x33 16M 1M", "flush")
        sent = time.monotonic()
        s = ec2.create_snapshot(VolumeId=vid)
        answered = time.monotonic()
        # After the call returns, overwrite the same range: must not be in the snapshot.
        qemu_io(server, vid, "write -P 0x44 16M 1M", "flush")
        wait_completed(ec2, s["SnapshotId"])
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert any(a < sent for _, a, _, _ in log), "the writer had acknowledged writes before the call"
    assert any(t0 > answered for t0, _, _, _ in log), "the writer kept writing after the call"
    assert pattern_ok(server, s["SnapshotId"], 16 * MiB, MiB, 0x33)
    assert pattern_ok(server, vid, 16 * MiB, MiB, 0x44)
    image = server.workdir / f"{s['SnapshotId']}.bin"
    to_file(server, s["SnapshotId"], image)
    with open(image, "rb") as f:
        data = f.read(16 * block)
    image.unlink()
    for b in range(16):
        got = data[b * block:(b + 1) * block]
        before = [n for _, a, bb, n in log if bb == b and a < sent]
        allowed = {before[-1] if before else 0}
        allowed |= {n for t0, a, bb, n in log if bb == b and a >= sent and t0 < answered}
        expect = {n: (content(n) if n else bytes([0x11]) * block) for n in allowed}
        assert got in expect.values(), f"block {b} holds none of the writes {sorted(allowed)} (torn or later write)"


def test_restore_to_new_volume_same_bytes(server, ec2, instance, az, run_tag):
    vid = attached_volume(ec2, instance, az, run_tag, size=2)
    qemu_io(server, vid, "write -P 0x5a 0 3M", "write -P 0xa5 1G 512k", "write -z 100M 1M", "flush")
    s = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, s)
    new = ec2.create_volume(SnapshotId=s, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag))
    assert new["Size"] == 2 and new["SnapshotId"] == s
    ec2.get_waiter("volume_available").wait(VolumeIds=[new["VolumeId"]], WaiterConfig={"Delay": 1})
    ec2.attach_volume(VolumeId=new["VolumeId"], InstanceId=instance, Device="/dev/sdg")
    r = compare(server, s, new["VolumeId"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert pattern_ok(server, new["VolumeId"], 1 << 30, 512 * 1024, 0xa5)
    # Larger than the snapshot is fine; smaller is not.
    big = ec2.create_volume(SnapshotId=s, AvailabilityZone=az, Size=3)
    assert big["Size"] == 3
    with pytest.raises(ClientError) as e:
        ec2.create_volume(SnapshotId=s, AvailabilityZone=az, Size=1)
    assert code(e) == "InvalidParameterValue"


def test_incremental_reads_and_stores_only_changes(server, ec2, instance, az, run_tag):
    vid = attached_volume(ec2, instance, az, run_tag, size=1)
    qemu_io(server, vid, "write -P 0x61 0 16M", "flush")
    first = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, first)
    chunks = f"snapshots/{server.region}/chunks"
    before = len(server.store_objects(chunks))
    assert before >= 1, "the first snapshot stores blocks"
    qemu_io(server, vid, "write -P 0x62 4M 512k", "flush")
    second = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, second)
    after = len(server.store_objects(chunks))
    assert after - before == 1, f"one changed block => one new chunk, got {after - before}"
    assert pattern_ok(server, second, 4 * MiB, 512 * 1024, 0x62)
    assert pattern_ok(server, second, 0, 4 * MiB, 0x61)
    assert pattern_ok(server, first, 4 * MiB, 512 * 1024, 0x61)
    # Same bytes in another volume: deduplicated, no new chunk.
    v2 = attached_volume(ec2, instance, az, run_tag, size=1, device="/dev/sdi")
    qemu_io(server, v2, "write -P 0x61 0 16M", "flush")
    third = ec2.create_snapshot(VolumeId=v2)["SnapshotId"]
    wait_completed(ec2, third)
    assert len(server.store_objects(chunks)) == after


def test_encrypted_snapshot(server, ec2, instance, az, run_tag):
    kms = server.session().client("kms", endpoint_url=server.endpoint)
    key = kms.create_key(Description="snap key")["KeyMetadata"]
    vid = attached_volume(ec2, instance, az, run_tag, Encrypted=True, KmsKeyId=key["KeyId"])
    marker = "BLOCKSNAP-PLAINTEXT-MARKER-"
    Path(server.workdir / "marker.bin").write_bytes((marker * 20000)[: 512 * 1024].encode())
    qemu_io(server, vid, f"write -s {server.workdir / 'marker.bin'} 0 512k", "flush")
    s = ec2.create_snapshot(VolumeId=vid)
    assert s["Encrypted"] is True and s["KmsKeyId"] == key["Arn"]
    snap = wait_completed(ec2, s["SnapshotId"])[0]
    assert snap["Encrypted"] is True and snap["KmsKeyId"] == key["Arn"]
    for obj in server.store_objects(f"snapshots/{server.region}"):
        assert marker.encode() not in server.read_store_object(obj), f"plaintext found in {obj}"
    new = ec2.create_volume(SnapshotId=s["SnapshotId"], AvailabilityZone=az)
    assert new["Encrypted"] is True and new["KmsKeyId"] == key["Arn"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[new["VolumeId"]], WaiterConfig={"Delay": 1})
    ec2.attach_volume(VolumeId=new["VolumeId"], InstanceId=instance, Device="/dev/sdj")
    assert compare(server, s["SnapshotId"], new["VolumeId"]).returncode == 0


def test_create_snapshot_errors(ec2, instance, az, run_tag):
    vid = attached_volume(ec2, instance, az, run_tag)
    cases = [
        (dict(VolumeId="vol-00000000000000000"), "InvalidVolume.NotFound"),
        (dict(VolumeId="nope"), "InvalidVolumeID.Malformed"),
        (dict(VolumeId=vid, Location="local"), "InvalidParameterValue"),
        (dict(VolumeId=vid, Location="mars"), "InvalidParameterValue"),
        (dict(VolumeId=vid, OutpostArn="arn:aws:outposts:us-east-1:123456789012:outpost/op-1"), "InvalidParameterValue"),
        (dict(VolumeId=vid, Description="x" * 256), "InvalidParameterValue"),
        (dict(VolumeId=vid, TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}]),
         "InvalidParameterValue"),
        (dict(VolumeId=vid, TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "aws:x", "Value": "b"}]}]),
         "InvalidParameterValue"),
    ]
    for kw, want in cases:
        with pytest.raises(ClientError) as e:
            ec2.create_snapshot(**kw)
        assert code(e) == want, kw
    with pytest.raises(ClientError) as e:
        ec2.create_snapshot(VolumeId=vid, DryRun=True)
    assert code(e) == "DryRunOperation"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": [vid]}])["Snapshots"] == []


def test_describe_delete_and_filters(server, ec2, instance, az, run_tag):
    vid = attached_volume(ec2, instance, az, run_tag)
    a = ec2.create_snapshot(VolumeId=vid, Description="alpha", TagSpecifications=tagspec("snapshot", run_tag, k="1"))
    wait_completed(ec2, a["SnapshotId"])
    b = ec2.create_snapshot(VolumeId=vid, Description="beta", TagSpecifications=tagspec("snapshot", run_tag, k="2"))
    wait_completed(ec2, b["SnapshotId"])
    f = lambda *fs: sorted(s["SnapshotId"] for s in ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:e2e-run", "Values": [run_tag]}, *fs])["Snapshots"])
    assert f() == sorted([a["SnapshotId"], b["SnapshotId"]])
    assert f({"Name": "description", "Values": ["al*"]}) == [a["SnapshotId"]]
    assert f({"Name": "tag:k", "Values": ["2"]}) == [b["SnapshotId"]]
    assert f({"Name": "status", "Values": ["completed"]}) == sorted([a["SnapshotId"], b["SnapshotId"]])
    assert f({"Name": "volume-id", "Values": [vid]}) == sorted([a["SnapshotId"], b["SnapshotId"]])
    with pytest.raises(ClientError) as e:
        ec2.describe_snapshots(SnapshotIds=["snap-00000000000000000"])
    assert code(e) == "InvalidSnapshot.NotFound"
    # The tags API sees snapshots too.
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [a["SnapshotId"]]}])["Tags"]
    assert {t["Key"] for t in tags} == {"e2e-run", "k"} and tags[0]["ResourceType"] == "snapshot"
    ec2.delete_snapshot(SnapshotId=a["SnapshotId"])
    assert f() == [b["SnapshotId"]]
    with pytest.raises(ClientError) as e:
        ec2.delete_snapshot(SnapshotId=a["SnapshotId"])
    assert code(e) == "InvalidSnapshot.NotFound"
    # A newer snapshot whose parent was deleted still restores fully.
    assert pattern_ok(server, b["SnapshotId"], 0, MiB, 0)


def test_share_with_another_account(server, ec2, instance, az, run_tag):
    vid = attached_volume(ec2, instance, az, run_tag)
    qemu_io(server, vid, "write -P 0x77 0 1M", "flush")
    s = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, s)
    other = server.create_account()
    oc = server.client(creds=other)
    with pytest.raises(ClientError) as e:
        oc.describe_snapshots(SnapshotIds=[s])
    assert code(e) == "InvalidSnapshot.NotFound"
    other_id = server.client(creds=other).run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1)[
        "OwnerId"]
    ec2.modify_snapshot_attribute(SnapshotId=s, Attribute="createVolumePermission",
                                  OperationType="add", UserIds=[other_id])
    perms = ec2.describe_snapshot_attribute(SnapshotId=s, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == [{"UserId": other_id}]
    assert [x["SnapshotId"] for x in oc.describe_snapshots(RestorableByUserIds=["self"])["Snapshots"]] == [s]
    v = oc.create_volume(SnapshotId=s, AvailabilityZone=az)
    oc.get_waiter("volume_available").wait(VolumeIds=[v["VolumeId"]], WaiterConfig={"Delay": 1})
    # Shared is not owned: the other account cannot delete it.
    with pytest.raises(ClientError) as e:
        oc.delete_snapshot(SnapshotId=s)
    assert code(e) == "InvalidSnapshot.NotFound"
    ec2.reset_snapshot_attribute(SnapshotId=s, Attribute="createVolumePermission")
    with pytest.raises(ClientError) as e:
        oc.describe_snapshots(SnapshotIds=[s])
    assert code(e) == "InvalidSnapshot.NotFound"


def test_snapshots_survive_restart(fresh_server, az):
    ec2 = fresh_server.client()
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    qemu_io(fresh_server, vid, "write -P 0x12 0 2M", "flush")
    s = ec2.create_snapshot(VolumeId=vid, Description="persist")["SnapshotId"]
    wait_completed(ec2, s)
    fresh_server.restart()
    ec2 = fresh_server.client()
    snap = ec2.describe_snapshots(SnapshotIds=[s])["Snapshots"][0]
    assert snap["State"] == "completed" and snap["Description"] == "persist"
    assert pattern_ok(fresh_server, s, 0, 2 * MiB, 0x12)
    # Incremental after the restart: only the new block.
    qemu_io(fresh_server, vid, "write -P 0x13 0 512k", "flush")
    s2 = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, s2)
    assert pattern_ok(fresh_server, s2, 0, 512 * 1024, 0x13)
    assert pattern_ok(fresh_server, s2, 512 * 1024, 1536 * 1024, 0x12)


def chunks_in(server) -> int:
    return len(server.store_objects(f"snapshots/{server.region}/chunks"))


def test_chain_delete_middle_restore_later_and_gc(gc_server, az):
    """A chain of incremental snapshots restores each point; deleting the middle keeps the others
    intact; garbage collection returns exactly the space nobody needs any more."""
    server = gc_server
    ec2 = server.client()
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    points = [(0, 0x41), (MiB, 0x42), (MiB, 0x43)]  # the third overwrites the second's range
    chain = []
    for off, pattern in points:
        qemu_io(server, vid, f"write -P {pattern:#x} {off} 1M", "flush")
        chain.append(ec2.create_snapshot(VolumeId=vid)["SnapshotId"])
        wait_completed(ec2, chain[-1])
    expect = {chain[0]: (0x41, 0), chain[1]: (0x41, 0x42), chain[2]: (0x41, 0x43)}
    for sid, (a, b) in expect.items():
        assert pattern_ok(server, sid, 0, MiB, a) and pattern_ok(server, sid, MiB, MiB, b), sid
    time.sleep(2.5)  # a GC pass over the full store removes nothing
    before = chunks_in(server)
    assert before == 3, "each 1 MiB pattern is one deduplicated 512 KiB chunk"
    ec2.delete_snapshot(SnapshotId=chain[1])
    deadline = time.time() + 20
    while time.time() < deadline and chunks_in(server) != before - 1:
        time.sleep(0.5)
    assert chunks_in(server) == before - 1, "the block only the deleted snapshot held is reclaimed"
    for sid in (chain[0], chain[2]):
        a, b = expect[sid]
        assert pattern_ok(server, sid, 0, MiB, a) and pattern_ok(server, sid, MiB, MiB, b), sid
    new = restore(ec2, chain[2], az, "gc")
    ec2.attach_volume(VolumeId=new, InstanceId=inst, Device="/dev/sdg")
    assert compare(server, chain[2], new).returncode == 0
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    assert "blocksnap_store_dedup_ratio" in metrics and "blocksnap_store_stored_bytes" in metrics


def test_kill_9_during_upload(fresh_server, az):
    """kill -9 while a large snapshot uploads: after the restart the upload resumes (frozen bitmap and
    capture log) and completes with the bytes of the cut; the volume loses nothing."""
    server = fresh_server
    ec2 = server.client()
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    img = server.workdir / "random.bin"
    img.write_bytes(os.urandom(256 * MiB))
    from_file(server, img, vid)
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    # Overwrite part of the volume after the cut: the snapshot must not contain it.
    qemu_io(server, vid, "write -P 0xee 0 4M", "flush")
    before = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"]
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.proc = None
    server.start()
    ec2 = server.client()
    s = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    for _ in range(600):
        if s["State"] != "pending":
            break
        time.sleep(0.1)
        s = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    assert before == "pending", "the kill must land while the upload runs"
    assert s["State"] == "completed", s
    snap_copy = server.workdir / "snap.bin"
    to_file(server, sid, snap_copy)
    with open(snap_copy, "rb") as f:
        assert f.read(256 * MiB) == img.read_bytes(), "the snapshot holds the bytes of the cut"
    assert pattern_ok(server, vid, 0, 4 * MiB, 0xee), "the volume keeps the write acknowledged before the kill"
    # Either way the next snapshot is right.
    s2 = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, s2)
    assert compare(server, s2, vid).returncode == 0


def test_admin_verify_reads_every_snapshot_back_and_catches_damage(fresh_server, az):
    server = fresh_server
    ec2 = server.client()
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    kms = server.session().client("kms", endpoint_url=server.endpoint)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    sids = []
    for i, kw in enumerate(({}, {"Encrypted": True, "KmsKeyId": key})):
        vid = ec2.create_volume(Size=1, AvailabilityZone=az, **kw)["VolumeId"]
        ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device=f"/dev/sd{'fg'[i]}")
        blob = server.workdir / f"v{i}.bin"
        blob.write_bytes(os.urandom(2 * MiB))
        qemu_io(server, vid, f"write -s {blob} 0 2M", "flush")
        sids.append(ec2.create_snapshot(VolumeId=vid)["SnapshotId"])
    wait_completed(ec2, *sids)
    r = server.admin("verify")
    assert r.returncode == 0, r.stdout + r.stderr
    for s in sids:
        assert f"{s} ok" in r.stdout, r.stdout
    # Damage one stored chunk: verification must say so.
    chunk = next(iter(server.store_objects(f"snapshots/{server.region}/chunks")))
    data = bytearray(server.read_store_object(chunk))
    data[len(data) // 2] ^= 0xFF
    server.write_store_object(chunk, bytes(data))
    r = server.admin("verify")
    assert r.returncode != 0 and "FAILED" in r.stdout, r.stdout + r.stderr


def test_deleting_the_newest_snapshot_loses_nothing_in_the_next(server, ec2, instance, az, run_tag):
    """The next snapshot of a volume is incremental against its newest one. Delete that one and the
    next snapshot must still hold every block: those changed between the two older cuts too, and a
    block zeroed since (both lost once: the change map was relative to the deleted snapshot)."""
    vid = attached_volume(ec2, instance, az, run_tag)
    qemu_io(server, vid, "write -P 0x11 0 512k", "write -P 0x44 3M 512k", "flush")
    s1 = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, s1)
    qemu_io(server, vid, "write -P 0x22 512k 512k", "write -z 3M 512k", "flush")
    s2 = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, s2)
    ec2.delete_snapshot(SnapshotId=s2)
    qemu_io(server, vid, "write -P 0x33 1M 512k", "flush")
    s3 = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_completed(ec2, s3)
    new = restore(ec2, s3, az, run_tag, instance=instance, device="/dev/sdg")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[new], WaiterConfig={"Delay": 1})
    assert compare(server, vid, new).returncode == 0, "the snapshot after deleting the newest one lost blocks"
    assert pattern_ok(server, s3, 512 * 1024, 512 * 1024, 0x22) and pattern_ok(server, s3, 3 * MiB, 512 * 1024, 0)

    # A volume restored from a snapshot that is then deleted: its next snapshots complete, whole.
    qemu_io(server, new, "write -P 0x55 2M 512k", "flush")
    ec2.delete_snapshot(SnapshotId=s3)
    s4 = ec2.create_snapshot(VolumeId=new)["SnapshotId"]
    assert wait_completed(ec2, s4)[0]["State"] == "completed"
    for off, pat in ((0, 0x11), (512 * 1024, 0x22), (MiB, 0x33), (2 * MiB, 0x55), (3 * MiB, 0)):
        assert pattern_ok(server, s4, off, 512 * 1024, pat), (off, pat)
