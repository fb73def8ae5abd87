"""CreateSnapshots: every volume of an instance at one instant, crash-consistent across them."""
from __future__ import annotations

import threading
import time

import pytest
from botocore.exceptions import ClientError

from conftest import tagspec
from nbd import QemuIo, image_opts, qemu_img

pytestmark = pytest.mark.blocksnap_only
SECTOR = 512


def code(e) -> str:
    return e.value.response["Error"]["Code"]


def instance_with_volumes(ec2, az, run_tag, n=2, tags=None):
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az},
                             TagSpecifications=tagspec("instance", run_tag))["Instances"][0]
    vols = []
    for i in range(n):
        v = ec2.create_volume(Size=1, AvailabilityZone=az,
                              TagSpecifications=tagspec("volume", run_tag, **(tags or {}), idx=str(i)))["VolumeId"]
        ec2.attach_volume(VolumeId=v, InstanceId=inst["InstanceId"], Device=f"/dev/sd{'fghijklmnop'[i]}")
        vols.append(v)
    root = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    return inst["InstanceId"], root, vols


def wait_all(ec2, ids):
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=ids, WaiterConfig={"Delay": 1, "MaxAttempts": 300})


def test_create_snapshots_shape_tags_and_one_start_time(ec2, az, run_tag):
    inst, root, vols = instance_with_volumes(ec2, az, run_tag, n=2, tags={"team": "db"})
    r = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst, "ExcludeBootVolume": True},
                             Description="app set", CopyTagsFromSource="volume",
                             TagSpecifications=tagspec("snapshot", run_tag, set="nightly"))
    snaps = r["Snapshots"]
    assert sorted(s["VolumeId"] for s in snaps) == sorted(vols), "boot volume excluded"
    assert len({s["StartTime"] for s in snaps}) == 1, "one instant for the whole set"
    for s in snaps:
        assert s["State"] == "pending" and s["Description"] == "app set"
        tags = {t["Key"]: t["Value"] for t in s["Tags"]}
        assert tags["set"] == "nightly" and tags["team"] == "db", tags
        assert tags["idx"] in ("0", "1"), "each snapshot has its own volume's tags"
        assert s["Encrypted"] is False and s["VolumeSize"] == 1 and s["OwnerId"].isdigit()
    ids = [s["SnapshotId"] for s in snaps]
    wait_all(ec2, ids)
    found = ec2.describe_snapshots(Filters=[{"Name": "tag:set", "Values": ["nightly"]},
                                            {"Name": "tag:e2e-run", "Values": [run_tag]}])["Snapshots"]
    assert sorted(s["SnapshotId"] for s in found) == sorted(ids)
    # With the boot volume and without copied tags.
    r = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst})
    assert sorted(s["VolumeId"] for s in r["Snapshots"]) == sorted(vols + [root])
    assert all("Tags" not in s or s["Tags"] == [] for s in r["Snapshots"])
    wait_all(ec2, [s["SnapshotId"] for s in r["Snapshots"]])
    # Exclusions by id.
    r = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst, "ExcludeBootVolume": True,
                                                    "ExcludeDataVolumeIds": [vols[0]]})
    assert [s["VolumeId"] for s in r["Snapshots"]] == [vols[1]]
    wait_all(ec2, [s["SnapshotId"] for s in r["Snapshots"]])


def test_create_snapshots_errors_create_nothing(ec2, az, run_tag):
    inst, root, vols = instance_with_volumes(ec2, az, run_tag, n=1)
    other = ec2.create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    cases = [
        (dict(InstanceSpecification={"InstanceId": "i-00000000000000000"}), "InvalidInstanceID.NotFound"),
        (dict(InstanceSpecification={"InstanceId": inst, "ExcludeDataVolumeIds": [root]}), "InvalidParameterValue"),
        (dict(InstanceSpecification={"InstanceId": inst, "ExcludeDataVolumeIds": [other]}), "InvalidParameterValue"),
        (dict(InstanceSpecification={"InstanceId": inst, "ExcludeBootVolume": True, "ExcludeDataVolumeIds": vols}),
         "InvalidParameterCombination"),
        (dict(InstanceSpecification={"InstanceId": inst}, CopyTagsFromSource="instance"), "InvalidParameterValue"),
        (dict(InstanceSpecification={"InstanceId": inst},
              TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}]),
         "InvalidParameterValue"),
        (dict(InstanceSpecification={"InstanceId": inst}, OutpostArn="arn:aws:outposts:x"), "InvalidParameterValue"),
    ]
    for kw, want in cases:
        with pytest.raises(ClientError) as e:
            ec2.create_snapshots(**kw)
        assert code(e) == want, (kw, e.value)
    with pytest.raises(ClientError) as e:
        ec2.create_snapshots(InstanceSpecification={"InstanceId": inst}, DryRun=True)
    assert code(e) == "DryRunOperation"
    assert ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": vols + [root]}])["Snapshots"] == []
    ec2.terminate_instances(InstanceIds=[inst])
    with pytest.raises(ClientError) as e:
        ec2.create_snapshots(InstanceSpecification={"InstanceId": inst})
    assert code(e) == "IncorrectState"


def last_written_sector(server, snapshot_id: str, limit: int) -> int:
    """The highest sector holding the writer's pattern in a snapshot (-1 if none)."""
    out = server.workdir / f"{snapshot_id}.head"
    qemu_img(server, "dd", "--image-opts", "-O", "raw", f"if={image_opts(server, snapshot_id)}",
             f"of={out}", "bs=512", f"count={limit}", check=True)
    data = out.read_bytes()
    out.unlink()
    best = -1
    for i in range(0, min(len(data), limit * SECTOR), SECTOR):
        if data[i] == 0x5A:
            best = i // SECTOR
    return best


def run_ordered_writer(server, a, b, stop, counter, errors):
    """Write sector n of A, wait for the ack, then sector n of B; forever increasing n."""
    qa, qb = QemuIo(server, a), QemuIo(server, b)
    try:
        n = 0
        while not stop.is_set() and n < 60000:
            qa.write(n * SECTOR, SECTOR, 0x5A)
            qb.write(n * SECTOR, SECTOR, 0x5A)
            n += 1
            counter[0] = n
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(repr(e))
    finally:
        qa.close()
        qb.close()


def consistency_rounds(server, ec2, az, run_tag, take):
    inst, _, (a, b) = instance_with_volumes(ec2, az, run_tag, n=2)
    stop, counter, errors = threading.Event(), [0], []
    t = threading.Thread(target=run_ordered_writer, args=(server, a, b, stop, counter, errors))
    t.start()
    pairs = []
    try:
        while counter[0] < 50 and t.is_alive():
            time.sleep(0.01)
        for _ in range(8):
            pairs.append(take(inst, a, b))
            time.sleep(0.1)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    writes = counter[0]
    wait_all(ec2, [s for p in pairs for s in p])
    results = []
    for sa, sb in pairs:
        results.append((last_written_sector(server, sa, writes + 8), last_written_sector(server, sb, writes + 8)))
    return writes, results


def test_create_snapshots_is_crash_consistent(server, ec2, az, run_tag):
    def take(inst, a, b):
        snaps = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst, "ExcludeBootVolume": True})["Snapshots"]
        by_vol = {s["VolumeId"]: s["SnapshotId"] for s in snaps}
        return by_vol[a], by_vol[b]

    writes, results = consistency_rounds(server, ec2, az, run_tag, take)
    assert writes > 20, f"the writer made too little progress ({writes} writes)"
    for ra, rb in results:
        assert ra >= rb, f"B holds write {rb} whose predecessor on A ({rb}) is missing: A only has {ra}"
    assert any(ra > 0 for ra, _ in results)


def test_two_separate_snapshots_are_caught_inconsistent(server, ec2, az, run_tag):
    """The same check catches the inconsistency of two separate CreateSnapshot calls (A, then B):
    so the check above is one that can fail."""
    def take(inst, a, b):
        sa = ec2.create_snapshot(VolumeId=a)["SnapshotId"]
        time.sleep(0.05)  # a client's next call: the writer goes on in between
        sb = ec2.create_snapshot(VolumeId=b)["SnapshotId"]
        return sa, sb

    writes, results = consistency_rounds(server, ec2, az, run_tag, take)
    assert any(rb > ra for ra, rb in results), (
        f"separate snapshots of A then B should sometimes hold a B write whose A predecessor is missing: {results}")
