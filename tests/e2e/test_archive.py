"""The archive tier: ModifySnapshotTier, RestoreSnapshotTier, DescribeSnapshotTierStatus, `storageTier` and
`restoreExpiryTime` in DescribeSnapshots, through boto3 and the AWS CLI, with each documented error; and the
data check: a chain of snapshots, one archived, every other one deleted, GC, the standard store empty, the
tier restored, a volume from it byte for byte the original.

The module's server moves its clock with AdvanceClock (temporary restores end after days) and collects
garbage every second with no grace window.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import _make_server, poll, tagspec
from nbd import MiB, compare, from_file, qemu_io

pytestmark = pytest.mark.blocksnap_only

DAY = 24 * 3600


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = _make_server(tmp_path_factory.mktemp("archive"), BLOCKSNAP_TEST_CLOCK="1",
                     BLOCKSNAP_GC_INTERVAL_SECS="1", BLOCKSNAP_GC_GRACE_SECS="0")
    yield s
    s.stop()


def code(e) -> str:
    return e.value.response["Error"]["Code"]


def files(srv, prefix: str) -> list[str]:
    """The keys of the objects under `prefix` of the server's stores (data dir or bucket)."""
    return sorted(srv.store_objects(prefix))


def dir_bytes(srv, prefix: str) -> int:
    return sum(srv.store_objects(prefix).values())


def snap(ec2, sid) -> dict:
    return ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]


def tier(ec2, sid) -> dict:
    out = ec2.describe_snapshot_tier_status(Filters=[{"Name": "snapshot-id", "Values": [sid]}])
    assert len(out["SnapshotTierStatuses"]) == 1, out
    return out["SnapshotTierStatuses"][0]


def wait_tier(ec2, sid, status, timeout=60) -> dict:
    t = poll(lambda: tier(ec2, sid), lambda t: t.get("LastTieringOperationStatus") in (status, status.replace(
        "-completed", "-failed")), timeout)
    assert t["LastTieringOperationStatus"] == status, t
    return t


def completed_snapshot(ec2, vid, run_tag) -> str:
    sid = ec2.create_snapshot(VolumeId=vid, TagSpecifications=tagspec("snapshot", run_tag))["SnapshotId"]
    s = poll(lambda: snap(ec2, sid), lambda s: s["State"] in ("completed", "error"))
    assert s["State"] == "completed", s
    return sid


def attached(ec2, region, run_tag, **kw) -> tuple[str, str]:
    az = region + "a"
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag),
                            **kw)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    poll(lambda: ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0], lambda v: v["State"] == "in-use")
    return inst, vid


def attach(ec2, inst, vid, device):
    poll(lambda: ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0], lambda v: v["State"] == "available")
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device=device)
    poll(lambda: ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0], lambda v: v["State"] == "in-use")


def text_blob(path: Path, size: int) -> None:
    """Data that compresses like files do (log lines with counters), not like a fill pattern."""
    lines, n, total = [], 0, 0
    while total < size:
        lines.append(f"{n:08d} 2026-11-30T03:{n % 60:02d}:00Z INFO request id={n * 7919 % 100003:x} ok\n")
        total += len(lines[-1])
        n += 1
    path.write_bytes("".join(lines).encode()[:size])


def test_archive_data_check(srv, run_tag, tmp_path):
    """Write a volume, snapshot twice (a chain), archive the second, delete the first, GC: nothing of the
    chain stays in the standard store; restore the tier; a volume from it has the original bytes."""
    region = "eu-west-1"
    ec2 = srv.client(region=region)
    inst, vid = attached(ec2, region, run_tag)
    blob = tmp_path / "text.bin"
    text_blob(blob, 6 * MiB)
    from_file(srv, blob, vid)
    rnd = tmp_path / "random.bin"
    rnd.write_bytes(os.urandom(2 * MiB))
    qemu_io(srv, vid, f"write -s {rnd} 16M 2M", "write -P 0x5a 40M 1M", "flush")
    first = completed_snapshot(ec2, vid, run_tag)
    qemu_io(srv, vid, "write -P 0x6b 64M 2M", "write -z 40M 512k", "flush")
    second = completed_snapshot(ec2, vid, run_tag)
    assert snap(ec2, second)["StorageTier"] == "standard"

    std = f"snapshots/{region}"
    full_compressed = dir_bytes(srv, f"{std}/chunks")  # every chunk of the chain: `second` references them all
    started = ec2.modify_snapshot_tier(SnapshotId=second, StorageTier="archive")
    assert started["SnapshotId"] == second and started["TieringStartTime"]
    t = wait_tier(ec2, second, "archival-completed")
    assert t["StorageTier"] == "archive" and t["LastTieringProgress"] == 100 and t["ArchivalCompleteTime"]
    assert t["VolumeId"] == vid and t["Status"] == "completed" and "RestoreExpiryTime" not in t
    s = snap(ec2, second)
    assert s["StorageTier"] == "archive" and "RestoreExpiryTime" not in s
    archived = ec2.describe_snapshots(Filters=[{"Name": "storage-tier", "Values": ["archive"]}])["Snapshots"]
    assert [x["SnapshotId"] for x in archived] == [second]

    # Archived snapshots cannot be used until restored.
    with pytest.raises(ClientError) as e:
        ec2.create_volume(SnapshotId=second, AvailabilityZone=region + "a")
    assert code(e) == "IncorrectState"
    with pytest.raises(ClientError) as e:
        ec2.copy_snapshot(SourceRegion=region, SourceSnapshotId=second)
    assert code(e) == "IncorrectState"
    assert qemu_io(srv, second, "read 0 4k", check=False, read_only=True).returncode != 0

    # The rest of the chain goes; GC then leaves nothing of it in the standard store.
    ec2.delete_snapshot(SnapshotId=first)
    poll(lambda: (files(srv, f"{std}/chunks"), files(srv, f"{std}/segs"), files(srv, f"{std}/snaps")),
         lambda r: r == ([], [], []), timeout=30)
    archive = f"archive/{region}/{second}"
    archive_bytes = dir_bytes(srv, archive)
    print(f"\nMEASURE archive of {second}: {archive_bytes} bytes in the archive store; the chain's chunks in the "
          f"standard store before: {full_compressed} bytes; standard store after archive+GC: "
          f"{sum(dir_bytes(srv, f'{std}/{d}') for d in ('chunks', 'segs', 'snaps'))} bytes")
    assert 0 < archive_bytes <= full_compressed, (archive_bytes, full_compressed)

    # Restore the tier for a day; a volume from it is the original byte for byte.
    r = ec2.restore_snapshot_tier(SnapshotId=second, TemporaryRestoreDays=1)
    assert r["SnapshotId"] == second and r["RestoreDuration"] == 1 and r["IsPermanentRestore"] is False
    t = wait_tier(ec2, second, "temporary-restore-completed")
    s = snap(ec2, second)
    assert s["StorageTier"] == "standard" and t["StorageTier"] == "standard"
    assert s["RestoreExpiryTime"] == t["RestoreExpiryTime"]
    left = s["RestoreExpiryTime"].timestamp() - time.time()
    assert DAY - 600 < left <= DAY + 60, left
    restored = ec2.create_volume(SnapshotId=second, AvailabilityZone=region + "a")["VolumeId"]
    attach(ec2, inst, restored, "/dev/sdg")
    assert compare(srv, vid, restored).returncode == 0
    poll(lambda: ec2.describe_volumes(VolumeIds=[restored])["Volumes"][0],
         lambda v: v["State"] == "in-use")

    # Two days later the restore has ended: archive tier again, the standard copy collected.
    srv.advance_clock(2 * DAY)
    poll(lambda: snap(ec2, second), lambda s: s["StorageTier"] == "archive", timeout=60)
    assert "RestoreExpiryTime" not in snap(ec2, second)
    poll(lambda: files(srv, f"{std}/chunks"), lambda f: f == [], timeout=30)
    with pytest.raises(ClientError) as e:
        ec2.create_volume(SnapshotId=second, AvailabilityZone=region + "a")
    assert code(e) == "IncorrectState"

    # For good: standard tier, the archive copy removed.
    r = ec2.restore_snapshot_tier(SnapshotId=second, PermanentRestore=True)
    assert r["IsPermanentRestore"] is True and "RestoreDuration" not in r
    wait_tier(ec2, second, "permanent-restore-completed")
    assert snap(ec2, second)["StorageTier"] == "standard"
    poll(lambda: files(srv, archive), lambda f: f == [], timeout=30)
    again = ec2.create_volume(SnapshotId=second, AvailabilityZone=region + "a")["VolumeId"]
    attach(ec2, inst, again, "/dev/sdh")
    assert compare(srv, vid, again).returncode == 0


def test_incremental_after_an_archived_parent(srv, run_tag):
    """The next snapshot of a volume whose latest snapshot is archived is complete on its own: its
    unchanged blocks come back from the archive, and it survives the archive's deletion."""
    ec2 = srv.client()
    inst, vid = attached(ec2, srv.region, run_tag)
    qemu_io(srv, vid, "write -P 0x11 0 3M", "write -P 0x12 20M 1M", "flush")
    base = completed_snapshot(ec2, vid, run_tag)
    ec2.modify_snapshot_tier(SnapshotId=base, StorageTier="archive")
    wait_tier(ec2, base, "archival-completed")
    qemu_io(srv, vid, "write -P 0x13 1M 512k", "flush")
    child = completed_snapshot(ec2, vid, run_tag)
    ec2.delete_snapshot(SnapshotId=base)
    poll(lambda: files(srv, f"archive/{srv.region}/{base}"), lambda f: f == [], timeout=30)
    new = ec2.create_volume(SnapshotId=child, AvailabilityZone=srv.region + "a")["VolumeId"]
    attach(ec2, inst, new, "/dev/sdg")
    assert compare(srv, vid, new).returncode == 0


def test_errors(srv, run_tag):
    ec2 = srv.client()
    inst, vid = attached(ec2, srv.region, run_tag)
    qemu_io(srv, vid, "write -P 0x21 0 1M", "flush")
    sid = completed_snapshot(ec2, vid, run_tag)

    def err(fn, **kw) -> str:
        with pytest.raises(ClientError) as e:
            fn(**kw)
        return code(e)

    assert err(ec2.modify_snapshot_tier, SnapshotId="snap-00000000000000000", StorageTier="archive") \
        == "InvalidSnapshot.NotFound"
    assert err(ec2.modify_snapshot_tier, SnapshotId="vol-1", StorageTier="archive") == "InvalidSnapshotID.Malformed"
    assert err(ec2.modify_snapshot_tier, SnapshotId=sid, StorageTier="standard") == "InvalidParameterValue"
    assert err(ec2.modify_snapshot_tier, SnapshotId=sid) == "MissingParameter"
    assert err(ec2.modify_snapshot_tier, SnapshotId=sid, StorageTier="archive", DryRun=True) == "DryRunOperation"
    assert tier(ec2, sid)["StorageTier"] == "standard" and "LastTieringOperationStatus" not in tier(ec2, sid)
    # Only completed snapshots: a snapshot still being written (EBS direct StartSnapshot) is pending.
    ebs = srv.session().client("ebs", endpoint_url=srv.endpoint)
    pending = ebs.start_snapshot(VolumeSize=1, Timeout=60)["SnapshotId"]
    assert err(ec2.modify_snapshot_tier, SnapshotId=pending, StorageTier="archive") == "IncorrectState"
    # Another account's snapshot, even shared with the caller, cannot be archived by it.
    other = srv.create_account()
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[other.account_id])
    assert err(srv.client(other).modify_snapshot_tier, SnapshotId=sid, StorageTier="archive") \
        == "InvalidSnapshot.NotFound"

    # Restoring what is not archived, and the parameter rules.
    assert err(ec2.restore_snapshot_tier, SnapshotId=sid, TemporaryRestoreDays=1) == "IncorrectState"
    assert err(ec2.restore_snapshot_tier, SnapshotId=sid) == "MissingParameter"
    assert err(ec2.restore_snapshot_tier, SnapshotId=sid, TemporaryRestoreDays=2, PermanentRestore=True) \
        == "InvalidParameterCombination"
    for days in (0, 181):
        assert err(ec2.restore_snapshot_tier, SnapshotId=sid, TemporaryRestoreDays=days) == "InvalidParameterValue"

    ec2.modify_snapshot_tier(SnapshotId=sid, StorageTier="archive")
    assert err(ec2.modify_snapshot_tier, SnapshotId=sid, StorageTier="archive") == "IncorrectState"
    wait_tier(ec2, sid, "archival-completed")
    assert err(ec2.modify_snapshot_tier, SnapshotId=sid, StorageTier="archive") == "IncorrectState"
    # Sharing is disabled once archived, and cannot be turned on again.
    perms = ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == []
    assert err(ec2.modify_snapshot_attribute, SnapshotId=sid, Attribute="createVolumePermission",
               OperationType="add", UserIds=[other.account_id]) == "IncorrectState"
    assert err(ec2.restore_snapshot_tier, SnapshotId=sid, TemporaryRestoreDays=1, DryRun=True) == "DryRunOperation"

    # A temporary restore's period changes from now; a second restore while one runs is refused.
    ec2.restore_snapshot_tier(SnapshotId=sid, TemporaryRestoreDays=3)
    wait_tier(ec2, sid, "temporary-restore-completed")
    assert err(ec2.modify_snapshot_tier, SnapshotId=sid, StorageTier="archive") == "IncorrectState"
    r = ec2.restore_snapshot_tier(SnapshotId=sid, TemporaryRestoreDays=7)
    assert r["RestoreDuration"] == 7
    left = snap(ec2, sid)["RestoreExpiryTime"].timestamp() - time.time()
    assert left > 6 * DAY, left  # from the server's clock, which an earlier test moved ahead

    # DescribeSnapshotTierStatus: filters and pagination.
    second = completed_snapshot(ec2, vid, run_tag)
    by_vol = ec2.describe_snapshot_tier_status(Filters=[{"Name": "volume-id", "Values": [vid]}])
    assert sorted(t["SnapshotId"] for t in by_vol["SnapshotTierStatuses"]) == sorted([sid, second])
    done = ec2.describe_snapshot_tier_status(Filters=[
        {"Name": "volume-id", "Values": [vid]},
        {"Name": "last-tiering-operation", "Values": ["temporary-restore-completed"]}])["SnapshotTierStatuses"]
    assert [t["SnapshotId"] for t in done] == [sid] and done[0]["Tags"] == [{"Key": "e2e-run", "Value": run_tag}]
    pages = list(ec2.get_paginator("describe_snapshot_tier_status").paginate(
        Filters=[{"Name": "volume-id", "Values": [vid]}], PaginationConfig={"PageSize": 1}))
    assert len(pages) >= 2 and sorted(t["SnapshotId"] for p in pages for t in p["SnapshotTierStatuses"]) \
        == sorted([sid, second])
    assert err(ec2.describe_snapshot_tier_status, Filters=[{"Name": "bogus", "Values": ["x"]}]) \
        == "InvalidParameterValue"

    # Deleting an archived snapshot removes its archive.
    ec2.modify_snapshot_tier(SnapshotId=second, StorageTier="archive")
    wait_tier(ec2, second, "archival-completed")
    assert f"archive/{srv.region}/{second}/index" in files(srv, f"archive/{srv.region}/{second}")
    ec2.delete_snapshot(SnapshotId=second)
    poll(lambda: files(srv, f"archive/{srv.region}/{second}"), lambda f: f == [], timeout=30)


def test_aws_cli_and_encrypted_archive(srv, run_tag):
    """The AWS CLI's commands on an encrypted snapshot; its archive holds no plaintext."""
    ec2 = srv.client()
    inst, vid = attached(ec2, srv.region, run_tag, Encrypted=True)
    marker = b"ARCHIVE-PLAINTEXT-MARKER-" * 40
    blob = srv.workdir / f"marker-{vid}.bin"
    blob.write_bytes((marker * (MiB // len(marker) + 1))[:MiB])
    from_file(srv, blob, vid)
    sid = completed_snapshot(ec2, vid, run_tag)
    out = srv.cli("modify-snapshot-tier", "--snapshot-id", sid, "--storage-tier", "archive")
    assert out["SnapshotId"] == sid and "TieringStartTime" in out
    poll(lambda: srv.cli("describe-snapshot-tier-status", "--filters", f"Name=snapshot-id,Values={sid}"),
         lambda o: o["SnapshotTierStatuses"][0].get("LastTieringOperationStatus") == "archival-completed")
    listed = srv.cli("describe-snapshots", "--owner-ids", "self", "--filters", "Name=storage-tier,Values=archive",
                     f"Name=volume-id,Values={vid}")
    assert [s["SnapshotId"] for s in listed["Snapshots"]] == [sid] and listed["Snapshots"][0]["Encrypted"]
    packs = files(srv, f"archive/{srv.region}/{sid}")
    assert packs and not any(b"ARCHIVE-PLAINTEXT-MARKER" in srv.read_store_object(p) for p in packs)
    bad = srv.cli("restore-snapshot-tier", "--snapshot-id", sid, check=False)
    assert bad.returncode != 0 and "MissingParameter" in bad.stderr, bad.stderr
    out = srv.cli("restore-snapshot-tier", "--snapshot-id", sid, "--temporary-restore-days", "2")
    assert out["RestoreDuration"] == 2 and out["IsPermanentRestore"] is False
    poll(lambda: srv.cli("describe-snapshot-tier-status", "--filters", f"Name=snapshot-id,Values={sid}"),
         lambda o: o["SnapshotTierStatuses"][0].get("LastTieringOperationStatus") == "temporary-restore-completed")
    out = srv.cli("restore-snapshot-tier", "--snapshot-id", sid, "--permanent-restore")
    assert out["IsPermanentRestore"] is True
    new = ec2.create_volume(SnapshotId=sid, AvailabilityZone=srv.region + "a")["VolumeId"]
    attach(ec2, inst, new, "/dev/sdg")
    assert compare(srv, vid, new).returncode == 0


def test_killed_mid_archive_restarts_consistent(srv, run_tag):
    """kill -9 right after ModifySnapshotTier: the job resumes, the archive completes, and `admin verify`
    finds every snapshot and archive whole."""
    ec2 = srv.client()
    inst, vid = attached(ec2, srv.region, run_tag)
    qemu_io(srv, vid, "write -P 0x31 0 8M", "flush")
    sid = completed_snapshot(ec2, vid, run_tag)
    ec2.modify_snapshot_tier(SnapshotId=sid, StorageTier="archive")
    srv.proc.kill()
    srv.proc.wait()
    srv.start()
    ec2 = srv.client()
    wait_tier(ec2, sid, "archival-completed")
    v = srv.admin("verify")
    assert v.returncode == 0 and f"{sid} ok" in v.stdout, v.stdout + v.stderr


def test_recycle_bin_keeps_an_archived_snapshot(srv, run_tag):
    """"If you delete an archived snapshot that matches a Recycle Bin retention rule, the archived snapshot
    is retained in the Recycle Bin": its archive stays, it comes back archived, and is restored from there."""
    ec2 = srv.client()
    rbin = srv.session().client("rbin", endpoint_url=srv.endpoint)
    rule = rbin.create_rule(ResourceType="EBS_SNAPSHOT",
                            RetentionPeriod={"RetentionPeriodValue": 1, "RetentionPeriodUnit": "DAYS"},
                            ResourceTags=[{"ResourceTagKey": "e2e-run", "ResourceTagValue": run_tag}])["Identifier"]
    try:
        inst, vid = attached(ec2, srv.region, run_tag)
        qemu_io(srv, vid, "write -P 0x41 0 2M", "flush")
        sid = completed_snapshot(ec2, vid, run_tag)
        ec2.modify_snapshot_tier(SnapshotId=sid, StorageTier="archive")
        wait_tier(ec2, sid, "archival-completed")
        ec2.delete_snapshot(SnapshotId=sid)
        assert [s["SnapshotId"] for s in ec2.list_snapshots_in_recycle_bin(SnapshotIds=[sid])["Snapshots"]] == [sid]
        time.sleep(2.5)  # GC ticks every second: the binned snapshot's archive is not an orphan
        assert f"archive/{srv.region}/{sid}/index" in files(srv, f"archive/{srv.region}/{sid}")
        ec2.restore_snapshot_from_recycle_bin(SnapshotId=sid)
        assert snap(ec2, sid)["StorageTier"] == "archive"
        with pytest.raises(ClientError) as e:
            ec2.create_volume(SnapshotId=sid, AvailabilityZone=srv.region + "a")
        assert code(e) == "IncorrectState"
        ec2.restore_snapshot_tier(SnapshotId=sid, TemporaryRestoreDays=1)
        wait_tier(ec2, sid, "temporary-restore-completed")
        new = ec2.create_volume(SnapshotId=sid, AvailabilityZone=srv.region + "a")["VolumeId"]
        attach(ec2, inst, new, "/dev/sdg")
        assert compare(srv, vid, new).returncode == 0
    finally:
        rbin.delete_rule(Identifier=rule)
