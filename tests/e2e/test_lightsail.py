"""Lightsail (JSON 1.1, `Lightsail_20161128.*`) through boto3 and the real `aws lightsail` CLI: disks,
instances, disk snapshots (of a disk or an instance's system disk), disks from snapshots holding the
snapshot's bytes over NBD, instance snapshots across disks at one instant, operations, tags, pagination
and Lightsail's errors. A disk's supportCode is `<account>/<vol-…>` (its NBD export while attached); a
disk snapshot's is `<account>/<snap-…>` (its read-only NBD export)."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import poll
from nbd import MiB, QemuIo, compare, from_file, image_opts, pattern_ok, qemu_img, qemu_io

pytestmark = pytest.mark.blocksnap_only

REGION = "us-west-2"  # the region of the documented examples
AZ = "us-west-2a"

OPERATION_KEYS = {"id", "resourceName", "resourceType", "createdAt", "location", "isTerminal",
                  "operationDetails", "operationType", "status", "statusChangedAt"}


def lsclient(server, creds=None, region: str = REGION):
    return server.session(creds, region).client(
        "lightsail", endpoint_url=server.endpoint, config=Config(retries={"max_attempts": 1, "mode": "standard"}))


@pytest.fixture(scope="module")
def ls(server):
    return lsclient(server)


def lscli(server, *args: str, check: bool = True, region: str = REGION):
    """Run the real `aws lightsail …` CLI; parsed JSON when check=True, else the CompletedProcess."""
    c = server.creds
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": c.access_key, "AWS_SECRET_ACCESS_KEY": c.secret_key, "AWS_DEFAULT_REGION": region,
        "AWS_CONFIG_FILE": str(server.workdir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(server.workdir / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1",
    })
    cmd = ["aws", "lightsail", "--endpoint-url", server.endpoint, "--output", "json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if not check:
        return out
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def err(excinfo) -> tuple[str, int]:
    r = excinfo.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def export_of(support_code: str) -> str:
    """The NBD export named by a supportCode `<account>/<vol-… | snap-…>`."""
    account, _, export = support_code.partition("/")
    assert len(account) == 12 and account.isdigit(), support_code
    assert export.startswith(("vol-", "snap-")), support_code
    return export


def make_disk(ls, name=None, size=8, **kw) -> str:
    name = name or uniq("Disk")
    ls.create_disk(diskName=name, availabilityZone=kw.pop("az", AZ), sizeInGb=size, **kw)
    return name


def make_instance(ls, name=None, az=AZ, bundle="nano_3_0") -> str:
    name = name or uniq("Inst")
    ls.create_instances(instanceNames=[name], availabilityZone=az, blueprintId="amazon_linux_2023", bundleId=bundle)
    return name


def attach(ls, disk: str, inst: str, path="/dev/xvdf") -> str:
    ls.attach_disk(diskName=disk, instanceName=inst, diskPath=path)
    d = ls.get_disk(diskName=disk)["disk"]
    assert d["state"] == "in-use" and d["isAttached"] and d["attachedTo"] == inst and d["path"] == path
    return export_of(d["supportCode"])


def wait_snapshot(ls, name: str, timeout=120) -> dict:
    return poll(lambda: ls.get_disk_snapshot(diskSnapshotName=name)["diskSnapshot"],
                lambda s: s["state"] != "pending", timeout)


def wait_disk_available(ls, name: str, timeout=120) -> dict:
    return poll(lambda: ls.get_disk(diskName=name)["disk"], lambda d: d["state"] == "available", timeout)


def check_operation(op: dict, *, name, rtype, op_type, zone, details=None, status="Started"):
    expected_keys = OPERATION_KEYS if details is not None else OPERATION_KEYS - {"operationDetails"}
    assert set(op) == expected_keys, op
    uuid.UUID(op["id"])
    assert op["resourceName"] == name and op["resourceType"] == rtype and op["operationType"] == op_type
    assert op["location"] == {"availabilityZone": zone, "regionName": REGION}
    assert op["status"] == status and op["isTerminal"] == (status in ("Succeeded", "Failed", "Completed"))
    if details is not None:
        assert op["operationDetails"] == details
    assert abs(op["createdAt"].timestamp() - time.time()) < 120


# ---- the issue's command sequence through the real CLI -------------------------------------------

def test_issue_sequence_with_the_aws_cli(server):
    disk, inst = uniq("Disk"), uniq("WordPress")
    snap, sys_snap, disk2 = uniq("DiskSnapshot"), uniq("SystemDiskSnapshot"), uniq("Disk")

    out = lscli(server, "create-disk", "--disk-name", disk, "--availability-zone", AZ, "--size-in-gb", "32")
    [op] = out["operations"]
    assert (op["resourceName"], op["resourceType"], op["operationType"], op["status"]) == \
        (disk, "Disk", "CreateDisk", "Started")
    assert isinstance(op["createdAt"], float) and op["location"] == {"availabilityZone": AZ, "regionName": REGION}

    bundles = lscli(server, "get-bundles")["bundles"]
    blueprints = lscli(server, "get-blueprints")["blueprints"]
    out = lscli(server, "create-instances", "--instance-names", inst, "--availability-zone", AZ,
                "--blueprint-id", blueprints[0]["blueprintId"], "--bundle-id", bundles[0]["bundleId"])
    assert [o["operationType"] for o in out["operations"]] == ["CreateInstance"]

    out = lscli(server, "attach-disk", "--disk-name", disk, "--instance-name", inst, "--disk-path", "/dev/xvdf")
    assert [(o["resourceName"], o["operationDetails"]) for o in out["operations"]] == [(disk, inst), (inst, disk)]

    out = lscli(server, "create-disk-snapshot", "--disk-name", disk, "--disk-snapshot-name", snap)
    a, b = out["operations"]
    assert set(a) == OPERATION_KEYS and set(b) == OPERATION_KEYS
    assert (a["resourceName"], a["resourceType"], a["operationDetails"], a["location"]["availabilityZone"]) == \
        (snap, "DiskSnapshot", disk, "all")
    assert (b["resourceName"], b["resourceType"], b["operationDetails"], b["location"]["availabilityZone"]) == \
        (disk, "Disk", snap, AZ)
    assert a["operationType"] == b["operationType"] == "CreateDiskSnapshot"
    assert a["status"] == b["status"] == "Started" and a["isTerminal"] is False

    out = lscli(server, "create-disk-snapshot", "--instance-name", inst, "--disk-snapshot-name", sys_snap)
    a, b = out["operations"]
    assert (a["resourceName"], a["resourceType"], a["operationDetails"]) == (sys_snap, "DiskSnapshot", inst)
    assert (b["resourceName"], b["resourceType"], b["operationDetails"]) == (inst, "Instance", sys_snap)

    first = lscli(server, "get-disk-snapshot", "--disk-snapshot-name", snap)["diskSnapshot"]
    assert first["state"] in ("pending", "completed")
    done = poll(lambda: lscli(server, "get-disk-snapshot", "--disk-snapshot-name", snap)["diskSnapshot"],
                lambda s: s["state"] == "completed", 120)
    assert done["progress"] == "100%" and done["sizeInGb"] == 32 and done["fromDiskName"] == disk
    sys_done = poll(lambda: lscli(server, "get-disk-snapshot", "--disk-snapshot-name", sys_snap)["diskSnapshot"],
                    lambda s: s["state"] == "completed", 120)
    assert sys_done["fromInstanceName"] == inst and sys_done["sizeInGb"] == bundles[0]["diskSizeInGb"]

    out = lscli(server, "create-disk-from-snapshot", "--disk-name", disk2, "--disk-snapshot-name", snap,
                "--availability-zone", AZ, "--size-in-gb", "32")
    assert [o["operationType"] for o in out["operations"]] == ["CreateDiskFromSnapshot"]
    d2 = poll(lambda: lscli(server, "get-disk", "--disk-name", disk2)["disk"], lambda d: d["state"] == "available", 120)
    assert d2["sizeInGb"] == 32 and d2["isAttached"] is False

    names = [d["name"] for d in lscli(server, "get-disks")["disks"]]
    assert disk in names and disk2 in names

    bad = lscli(server, "create-disk-snapshot", "--disk-name", disk, "--instance-name", inst,
                "--disk-snapshot-name", uniq("x"), check=False)
    assert bad.returncode != 0 and "InvalidInputException" in bad.stderr and "mutually exclusive" in bad.stderr
    missing = lscli(server, "get-disk", "--disk-name", uniq("Nope"), check=False)
    assert missing.returncode != 0 and "NotFoundException" in missing.stderr


# ---- CreateDiskSnapshot as documented -------------------------------------------------------------

def test_create_disk_snapshot_documented_response(ls):
    disk, inst, snap, sys_snap = uniq("Disk"), uniq("WordPress"), uniq("DiskSnapshot"), uniq("SystemDiskSnapshot")
    make_disk(ls, disk)
    make_instance(ls, inst)
    a, b = ls.create_disk_snapshot(diskName=disk, diskSnapshotName=snap)["operations"]
    check_operation(a, name=snap, rtype="DiskSnapshot", op_type="CreateDiskSnapshot", zone="all", details=disk)
    check_operation(b, name=disk, rtype="Disk", op_type="CreateDiskSnapshot", zone=AZ, details=snap)
    assert a["createdAt"] == a["statusChangedAt"] == b["createdAt"] and a["id"] != b["id"]

    a, b = ls.create_disk_snapshot(instanceName=inst, diskSnapshotName=sys_snap)["operations"]
    check_operation(a, name=sys_snap, rtype="DiskSnapshot", op_type="CreateDiskSnapshot", zone="all", details=inst)
    check_operation(b, name=inst, rtype="Instance", op_type="CreateDiskSnapshot", zone=AZ, details=sys_snap)

    s = wait_snapshot(ls, snap)
    assert s["state"] == "completed" and s["progress"] == "100%"
    assert s["resourceType"] == "DiskSnapshot" and s["location"] == {"availabilityZone": "all", "regionName": REGION}
    assert s["arn"].startswith(f"arn:aws:lightsail:{REGION}:") and ":DiskSnapshot/" in s["arn"]
    assert s["fromDiskArn"] == ls.get_disk(diskName=disk)["disk"]["arn"] and s["isFromAutoSnapshot"] is False
    assert "fromInstanceName" not in s and export_of(s["supportCode"]).startswith("snap-")
    ss = wait_snapshot(ls, sys_snap)
    assert ss["fromInstanceArn"] == ls.get_instance(instanceName=inst)["instance"]["arn"] and "fromDiskName" not in ss

    # Both operations of each call reach Succeeded with the job.
    for op in (a, b):
        done = poll(lambda: ls.get_operation(operationId=op["id"])["operation"], lambda o: o["isTerminal"], 60)
        assert done["status"] == "Succeeded" and "errorCode" not in done
        assert done["statusChangedAt"] >= done["createdAt"]


def test_snapshot_is_pending_then_completed_with_real_bytes(server, ls):
    disk, inst, snap = uniq("Disk"), uniq("Inst"), uniq("Snap")
    make_disk(ls, disk, size=8)
    make_instance(ls, inst)
    vol = attach(ls, disk, inst)
    qemu_io(server, vol, f"write -P 0x3c 0 {64 * MiB}")
    ops = ls.create_disk_snapshot(diskName=disk, diskSnapshotName=snap)["operations"]
    seen = [ls.get_disk_snapshot(diskSnapshotName=snap)["diskSnapshot"]["state"]]
    while seen[-1] == "pending":
        time.sleep(0.05)
        seen.append(ls.get_disk_snapshot(diskSnapshotName=snap)["diskSnapshot"]["state"])
    # pending (for as long as the upload takes: one chunk here, so maybe not long enough to be seen),
    # then completed, and nothing else.
    assert seen[-1] == "completed" and set(seen[:-1]) <= {"pending"}, seen
    op = ls.get_operation(operationId=ops[0]["id"])["operation"]
    assert op["status"] == "Succeeded" and op["isTerminal"] is True


# ---- bytes: a disk from a snapshot holds the snapshot's bytes ------------------------------------

def test_disk_from_snapshot_holds_the_snapshot_bytes(server, ls):
    disk, inst, snap, disk2 = uniq("Disk"), uniq("Inst"), uniq("Snap"), uniq("Disk")
    make_disk(ls, disk)
    make_instance(ls, inst)
    vol = attach(ls, disk, inst)
    qemu_io(server, vol, f"write -P 0xa5 0 {4 * MiB}", f"write -P 0x5a {100 * MiB} {MiB}")
    ls.create_disk_snapshot(diskName=disk, diskSnapshotName=snap)
    # Written after the snapshot: must not be in it.
    qemu_io(server, vol, f"write -P 0xee 0 {MiB}")
    s = wait_snapshot(ls, snap)
    assert s["state"] == "completed"
    snap_export = export_of(s["supportCode"])
    assert pattern_ok(server, snap_export, 0, 4 * MiB, 0xA5)

    ls.create_disk_from_snapshot(diskName=disk2, diskSnapshotName=snap, availabilityZone=AZ, sizeInGb=8)
    wait_disk_available(ls, disk2)
    vol2 = attach(ls, disk2, inst, "/dev/xvdg")
    assert vol2 != vol
    assert pattern_ok(server, vol2, 0, 4 * MiB, 0xA5)
    assert pattern_ok(server, vol2, 100 * MiB, MiB, 0x5A)
    assert pattern_ok(server, vol2, 4 * MiB, MiB, 0)
    cmp = compare(server, vol2, snap_export)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert pattern_ok(server, vol, 0, MiB, 0xEE)  # the source went on


def test_system_disk_snapshot_holds_the_system_disk_bytes(server, ls):
    inst, snap, disk2 = uniq("Inst"), uniq("SysSnap"), uniq("Disk")
    make_instance(ls, inst, bundle="nano_3_0")
    system = ls.get_instance(instanceName=inst)["instance"]["hardware"]["disks"][0]
    assert system["isSystemDisk"] is True and system["path"] == "/dev/xvda" and system["sizeInGb"] == 20
    sys_vol = export_of(system["supportCode"])
    qemu_io(server, sys_vol, f"write -P 0x77 {MiB} {2 * MiB}")
    ls.create_disk_snapshot(instanceName=inst, diskSnapshotName=snap)
    s = wait_snapshot(ls, snap)
    assert s["state"] == "completed" and s["sizeInGb"] == 20 and s["fromInstanceName"] == inst
    with pytest.raises(ClientError) as e:
        ls.create_disk_from_snapshot(diskName=disk2, diskSnapshotName=snap, availabilityZone=AZ, sizeInGb=8)
    assert err(e) == ("InvalidInputException", 400) and "smaller" in str(e.value)
    ls.create_disk_from_snapshot(diskName=disk2, diskSnapshotName=snap, availabilityZone=AZ, sizeInGb=20)
    wait_disk_available(ls, disk2)
    vol2 = attach(ls, disk2, inst, "/dev/xvdh")
    assert pattern_ok(server, vol2, MiB, 2 * MiB, 0x77)


# ---- instance snapshots: every disk at one instant -----------------------------------------------

SECTOR = 512


def last_written_sector(server, snapshot_id: str, limit: int) -> int:
    out = server.workdir / f"{snapshot_id}.img"
    qemu_img(server, "dd", "--image-opts", "-O", "raw", f"if={image_opts(server, snapshot_id)}",
             f"of={out}", "bs=512", f"count={limit}", check=True)
    data = out.read_bytes()
    out.unlink()
    best = -1
    for i in range(0, min(len(data), limit * SECTOR), SECTOR):
        if data[i] == 0x5A:
            best = i // SECTOR
    return best


def test_instance_snapshot_shape_and_crash_consistency(server, ls):
    inst, da, db = uniq("Inst"), uniq("DiskA"), uniq("DiskB")
    make_instance(ls, inst)
    make_disk(ls, da)
    make_disk(ls, db)
    a = attach(ls, da, inst, "/dev/xvdf")
    b = attach(ls, db, inst, "/dev/xvdg")

    stop, counter, errors = threading.Event(), [0], []

    def writer():
        qa, qb = QemuIo(server, a), QemuIo(server, b)
        try:
            n = 0
            while not stop.is_set() and n < 60000:
                qa.write(n * SECTOR, SECTOR, 0x5A)  # acknowledged on A before it is issued on B
                qb.write(n * SECTOR, SECTOR, 0x5A)
                n += 1
                counter[0] = n
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
        finally:
            qa.close()
            qb.close()

    t = threading.Thread(target=writer)
    t.start()
    names = []
    try:
        while counter[0] < 50 and t.is_alive():
            time.sleep(0.01)
        for _ in range(4):
            name = uniq("ISnap")
            ops = ls.create_instance_snapshot(instanceName=inst, instanceSnapshotName=name)["operations"]
            check_operation(ops[0], name=name, rtype="InstanceSnapshot", op_type="CreateInstanceSnapshot",
                            zone="all", details=inst)
            check_operation(ops[1], name=inst, rtype="Instance", op_type="CreateInstanceSnapshot", zone=AZ,
                            details=name)
            names.append(name)
            time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    writes = counter[0]
    assert writes > 60, f"the writer made too little progress ({writes} writes)"
    results = []
    for name in names:
        s = poll(lambda: ls.get_instance_snapshot(instanceSnapshotName=name)["instanceSnapshot"],
                 lambda s: s["state"] != "pending", 120)
        assert s["state"] == "available" and s["progress"] == "100%", s
        assert s["fromInstanceName"] == inst and s["fromBundleId"] == "nano_3_0" and s["sizeInGb"] == 20
        assert s["resourceType"] == "InstanceSnapshot" and ":InstanceSnapshot/" in s["arn"]
        by_name = {d["name"]: d for d in s["fromAttachedDisks"]}
        assert set(by_name) == {da, db}
        assert by_name[da]["path"] == "/dev/xvdf" and by_name[db]["path"] == "/dev/xvdg"
        sa, sb = export_of(by_name[da]["supportCode"]), export_of(by_name[db]["supportCode"])
        results.append((last_written_sector(server, sa, writes + 8), last_written_sector(server, sb, writes + 8)))
    for ra, rb in results:
        assert ra >= rb, f"B holds write {rb} whose predecessor on A is missing: A only has {ra} ({results})"
    assert any(ra > 0 for ra, _ in results)

    listed = []
    token = None
    while True:
        r = ls.get_instance_snapshots(**({"pageToken": token} if token else {}))
        listed += [s["name"] for s in r["instanceSnapshots"]]
        token = r.get("nextPageToken")
        if not token:
            break
    assert set(names) <= set(listed)
    ops = ls.delete_instance_snapshot(instanceSnapshotName=names[0])["operations"]
    assert [(o["operationType"], o["status"], o["isTerminal"]) for o in ops] == \
        [("DeleteInstanceSnapshot", "Succeeded", True)]
    with pytest.raises(ClientError) as e:
        ls.get_instance_snapshot(instanceSnapshotName=names[0])
    assert err(e) == ("NotFoundException", 400)


# ---- errors --------------------------------------------------------------------------------------

def test_create_disk_snapshot_errors(ls):
    disk, inst, snap = uniq("Disk"), uniq("Inst"), uniq("Snap")
    make_disk(ls, disk)
    make_instance(ls, inst)
    cases = [
        (dict(diskName=disk, instanceName=inst, diskSnapshotName=uniq("s")), "InvalidInputException", "mutually exclusive"),
        (dict(diskSnapshotName=uniq("s")), "InvalidInputException", "One of diskName or instanceName"),
        (dict(diskName=uniq("NoSuchDisk"), diskSnapshotName=uniq("s")), "NotFoundException", "Disk does not exist"),
        (dict(instanceName=uniq("NoSuchInst"), diskSnapshotName=uniq("s")), "NotFoundException", "Instance does not exist"),
        (dict(diskName=disk, diskSnapshotName="bad name!"), "InvalidInputException", "not a valid Lightsail resource name"),
        (dict(diskName=disk, diskSnapshotName=uniq("s"), tags=[{"key": "bad#key", "value": "v"}]),
         "InvalidInputException", "bad#key"),
        (dict(diskName=disk, diskSnapshotName=uniq("s"), tags=[{"key": "k" * 129}]), "InvalidInputException", "128"),
        (dict(diskName=disk, diskSnapshotName=uniq("s"), tags=[{"key": "k", "value": "v" * 257}]),
         "InvalidInputException", "256"),
        (dict(diskName=disk, diskSnapshotName=uniq("s"), tags=[{"key": "aws:owner", "value": "x"}]),
         "InvalidInputException", "reserved"),
        (dict(diskName=disk, diskSnapshotName=uniq("s"), tags=[{"key": f"k{i}"} for i in range(51)]),
         "InvalidInputException", "50"),
    ]
    for kwargs, code, text in cases:
        with pytest.raises(ClientError) as e:
            ls.create_disk_snapshot(**kwargs)
        assert err(e) == (code, 400), kwargs
        assert text in e.value.response["Error"]["Message"], (kwargs, e.value.response)
        body = e.value.response
        assert body["code"] == code.removesuffix("Exception") and body["docs"].startswith("https://") and "tip" in body
    # The allowed characters pass.
    ls.create_disk_snapshot(diskName=disk, diskSnapshotName=snap,
                            tags=[{"key": "a b+-=._:/@", "value": "Ünïcode 42 +-=._:/@"}, {"key": "keyonly"}])
    with pytest.raises(ClientError) as e:
        ls.create_disk_snapshot(diskName=disk, diskSnapshotName=snap)
    assert err(e) == ("InvalidInputException", 400) and "already in use" in str(e.value)
    tags = ls.get_disk_snapshot(diskSnapshotName=snap)["diskSnapshot"]["tags"]
    assert {t["key"]: t.get("value", "") for t in tags} == {"a b+-=._:/@": "Ünïcode 42 +-=._:/@", "keyonly": ""}


def test_disk_and_instance_errors(ls):
    disk, inst, inst_b = uniq("Disk"), uniq("Inst"), uniq("InstB")
    make_disk(ls, disk)
    make_instance(ls, inst)
    make_instance(ls, inst_b, az=f"{REGION}b")

    def fails(fn, code, text, **kw):
        with pytest.raises(ClientError) as e:
            fn(**kw)
        assert err(e)[0] == code and text in e.value.response["Error"]["Message"], e.value.response

    fails(ls.create_disk, "InvalidInputException", "already in use", diskName=disk, availabilityZone=AZ, sizeInGb=8)
    fails(ls.create_disk, "InvalidInputException", "Availability Zone", diskName=uniq("d"),
          availabilityZone="us-west-2z", sizeInGb=8)
    fails(ls.create_disk, "InvalidInputException", "Availability Zone", diskName=uniq("d"),
          availabilityZone="us-east-1a", sizeInGb=8)
    fails(ls.create_disk, "InvalidInputException", "sizeInGb", diskName=uniq("d"), availabilityZone=AZ, sizeInGb=4)
    fails(ls.create_disk, "InvalidInputException", "sizeInGb", diskName=uniq("d"), availabilityZone=AZ,
          sizeInGb=16385)
    fails(ls.create_disk, "InvalidInputException", "resource name", diskName="-bad", availabilityZone=AZ, sizeInGb=8)
    fails(ls.get_disk, "NotFoundException", "does not exist", diskName=uniq("nope"))
    fails(ls.get_instance, "NotFoundException", "does not exist", instanceName=uniq("nope"))
    fails(ls.get_disk_snapshot, "NotFoundException", "does not exist", diskSnapshotName=uniq("nope"))
    fails(ls.delete_disk, "NotFoundException", "does not exist", diskName=uniq("nope"))
    fails(ls.create_instances, "InvalidInputException", "already in use", instanceNames=[inst],
          availabilityZone=AZ, blueprintId="wordpress", bundleId="nano_3_0")
    fails(ls.create_instances, "InvalidInputException", "more than once", instanceNames=["Dup-1", "Dup-1"],
          availabilityZone=AZ, blueprintId="wordpress", bundleId="nano_3_0")
    fails(ls.create_instances, "InvalidInputException", "blueprint", instanceNames=[uniq("i")],
          availabilityZone=AZ, blueprintId="windows_xp", bundleId="nano_3_0")
    fails(ls.create_instances, "InvalidInputException", "bundle", instanceNames=[uniq("i")],
          availabilityZone=AZ, blueprintId="wordpress", bundleId="huge_9_9")
    fails(ls.attach_disk, "InvalidInputException", "Availability Zone", diskName=disk, instanceName=inst_b,
          diskPath="/dev/xvdf")
    fails(ls.attach_disk, "InvalidInputException", "disk path", diskName=disk, instanceName=inst, diskPath="/etc/x")
    fails(ls.attach_disk, "InvalidInputException", "in use", diskName=disk, instanceName=inst, diskPath="/dev/xvda")
    fails(ls.attach_disk, "NotFoundException", "Instance does not exist", diskName=disk, instanceName=uniq("n"),
          diskPath="/dev/xvdf")
    fails(ls.detach_disk, "OperationFailureException", "not attached", diskName=disk)
    attach(ls, disk, inst)
    fails(ls.attach_disk, "OperationFailureException", "already attached", diskName=disk, instanceName=inst,
          diskPath="/dev/xvdg")
    fails(ls.delete_disk, "OperationFailureException", "detach it", diskName=disk)
    fails(ls.get_disks, "InvalidInputException", "page token", pageToken="garbage")
    fails(ls.create_disk_from_snapshot, "NotFoundException", "DiskSnapshot does not exist", diskName=uniq("d"),
          diskSnapshotName=uniq("nope"), availabilityZone=AZ, sizeInGb=8)
    fails(ls.create_disk_from_snapshot, "InvalidInputException", "not supported", diskName=uniq("d"),
          sourceDiskName=disk, restoreDate="2024-01-01", availabilityZone=AZ, sizeInGb=8)


def test_pending_snapshot_cannot_be_deleted_or_restored(server, ls):
    disk, inst, snap = uniq("Disk"), uniq("Inst"), uniq("Snap")
    make_disk(ls, disk)
    make_instance(ls, inst)
    vol = attach(ls, disk, inst)
    # Random bytes (no dedup, no compression): the upload takes long enough to see it pending.
    img = server.workdir / "pending-src.bin"
    img.write_bytes(os.urandom(256 * MiB))
    from_file(server, img, vol)
    img.unlink()
    ls.create_disk_snapshot(diskName=disk, diskSnapshotName=snap)
    with pytest.raises(ClientError) as e:
        ls.delete_disk_snapshot(diskSnapshotName=snap)
    assert err(e)[0] == "OperationFailureException"
    with pytest.raises(ClientError) as e:
        ls.create_disk_from_snapshot(diskName=uniq("d"), diskSnapshotName=snap, availabilityZone=AZ, sizeInGb=8)
    assert err(e)[0] == "OperationFailureException"
    assert ls.get_disk_snapshot(diskSnapshotName=snap)["diskSnapshot"]["state"] == "pending", \
        "both refusals must have met a pending snapshot"
    wait_snapshot(ls, snap)
    ops = ls.delete_disk_snapshot(diskSnapshotName=snap)["operations"]
    assert [(o["resourceName"], o["operationType"], o["status"], o["location"]["availabilityZone"]) for o in ops] == \
        [(snap, "DeleteDiskSnapshot", "Succeeded", "all")]
    with pytest.raises(ClientError) as e:
        ls.get_disk_snapshot(diskSnapshotName=snap)
    assert err(e) == ("NotFoundException", 400)


def test_raw_errors_and_unknown_operation(server, ls):
    with pytest.raises(ClientError) as e:
        ls.get_operation(operationId=str(uuid.uuid4()))
    assert err(e) == ("NotFoundException", 400)
    # An operation blocksnap does not implement is named in the error.
    with pytest.raises(ClientError) as e:
        ls.get_static_ips()
    assert err(e)[0] == "InvalidInputException" and "GetStaticIps" in str(e.value)


# ---- lifecycle, operations, tags, pagination -----------------------------------------------------

def test_detach_delete_and_names_are_reusable(ls):
    disk, inst, other = uniq("Disk"), uniq("Inst"), uniq("Disk")
    make_disk(ls, disk)
    make_disk(ls, other)
    make_instance(ls, inst)
    attach(ls, disk, inst, "/dev/xvdf")
    attach(ls, other, inst, "/dev/xvdg")
    hw = ls.get_instance(instanceName=inst)["instance"]["hardware"]["disks"]
    assert [d.get("name") for d in hw[1:]] == [disk, other] and hw[0]["isSystemDisk"]

    ops = ls.detach_disk(diskName=disk)["operations"]
    assert [(o["resourceName"], o["resourceType"], o["operationType"], o["operationDetails"]) for o in ops] == \
        [(disk, "Disk", "DetachDisk", inst), (inst, "Instance", "DetachDisk", disk)]
    d = ls.get_disk(diskName=disk)["disk"]
    assert d["state"] == "available" and d["isAttached"] is False and d["attachmentState"] == "detached"
    assert "attachedTo" not in d

    ops = ls.delete_disk(diskName=disk)["operations"]
    assert [(o["operationType"], o["status"], o["isTerminal"]) for o in ops] == [("DeleteDisk", "Succeeded", True)]

    ops = ls.delete_instance(instanceName=inst)["operations"]
    assert [(o["resourceName"], o["operationType"]) for o in ops] == \
        [(other, "DetachDisk"), (inst, "DetachDisk"), (inst, "DeleteInstance")]
    assert ops[-1]["status"] == "Succeeded" and ops[-1]["isTerminal"] is True
    d = ls.get_disk(diskName=other)["disk"]
    assert d["state"] == "available" and not d["isAttached"]
    with pytest.raises(ClientError) as e:
        ls.get_instance(instanceName=inst)
    assert err(e)[0] == "NotFoundException"
    # The names are free again.
    make_disk(ls, disk)
    make_instance(ls, inst)
    assert ls.get_disk(diskName=disk)["disk"]["state"] == "available"
    assert ls.get_instance(instanceName=inst)["instance"]["state"] == {"code": 16, "name": "running"}


def test_operations_for_resource_and_pagination(server):
    ls = lsclient(server, region="eu-west-2")  # a region of its own: a known number of operations
    disk = make_disk(ls, az="eu-west-2a")
    for i in range(205):
        ls.tag_resource(resourceName=disk, tags=[{"key": "n", "value": str(i)}])
    ops = ls.get_operations_for_resource(resourceName=disk)
    assert len(ops["operations"]) == 200 and ops.get("nextPageToken")
    assert ops["operations"][0]["operationType"] == "CreateDisk"
    rest = ls.get_operations_for_resource(resourceName=disk, pageToken=ops["nextPageToken"])
    assert len(rest["operations"]) == 6 and "nextPageToken" not in rest
    assert [o["operationType"] for o in rest["operations"]] == ["TagResource"] * 6
    all_ops = ops["operations"] + rest["operations"]
    assert len({o["id"] for o in all_ops}) == 206
    assert all(o["status"] == "Succeeded" for o in all_ops)
    created = [o["createdAt"] for o in all_ops]
    assert created == sorted(created), "oldest first"
    page1 = ls.get_operations()
    assert len(page1["operations"]) == 200 and page1.get("nextPageToken")
    page2 = ls.get_operations(pageToken=page1["nextPageToken"])
    assert len(page2["operations"]) == 6
    one = ls.get_operation(operationId=all_ops[0]["id"])["operation"]
    assert one == all_ops[0]
    with pytest.raises(ClientError) as e:
        ls.get_operations_for_resource(resourceName=uniq("nothing"))
    assert err(e)[0] == "NotFoundException"
    assert ls.get_disk(diskName=disk)["disk"]["tags"] == [{"key": "n", "value": "204"}]


def test_get_disks_and_disk_snapshots_pagination(server):
    ls = lsclient(server, region="eu-west-1")
    disks = sorted(make_disk(ls, f"Page-{i:02d}", az="eu-west-1b") for i in range(25))
    for d in disks:
        ls.create_disk_snapshot(diskName=d, diskSnapshotName=f"{d}-snap")
    p1 = ls.get_disks()
    assert [d["name"] for d in p1["disks"]] == disks[:20] and p1["nextPageToken"]
    p2 = ls.get_disks(pageToken=p1["nextPageToken"])
    assert [d["name"] for d in p2["disks"]] == disks[20:] and "nextPageToken" not in p2
    s1 = ls.get_disk_snapshots()
    s2 = ls.get_disk_snapshots(pageToken=s1["nextPageToken"])
    assert [s["name"] for s in s1["diskSnapshots"] + s2["diskSnapshots"]] == [f"{d}-snap" for d in disks]
    assert len(s1["diskSnapshots"]) == 20 and "nextPageToken" not in s2
    # The CLI follows nextPageToken by itself.
    listed = lscli(server, "get-disks", region="eu-west-1")["disks"]
    assert [d["name"] for d in listed] == disks
    for d in disks:
        wait_snapshot(ls, f"{d}-snap")
        ls.delete_disk_snapshot(diskSnapshotName=f"{d}-snap")
        ls.delete_disk(diskName=d)
    assert ls.get_disks()["disks"] == []


def test_tags(ls):
    disk, inst, snap = uniq("Disk"), uniq("Inst"), uniq("Snap")
    make_disk(ls, disk, tags=[{"key": "env", "value": "prod"}])
    make_instance(ls, inst)
    ls.create_disk_snapshot(diskName=disk, diskSnapshotName=snap, tags=[{"key": "kind", "value": "backup"}])
    assert ls.get_disk(diskName=disk)["disk"]["tags"] == [{"key": "env", "value": "prod"}]
    [op] = ls.tag_resource(resourceName=disk, tags=[{"key": "team", "value": "storage"},
                                                    {"key": "env", "value": "dev"}])["operations"]
    assert (op["resourceName"], op["resourceType"], op["operationType"], op["status"]) == \
        (disk, "Disk", "TagResource", "Succeeded")
    assert ls.get_disk(diskName=disk)["disk"]["tags"] == [{"key": "env", "value": "dev"},
                                                           {"key": "team", "value": "storage"}]
    ls.untag_resource(resourceName=disk, tagKeys=["env", "absent"])
    assert ls.get_disk(diskName=disk)["disk"]["tags"] == [{"key": "team", "value": "storage"}]
    ls.tag_resource(resourceName=inst, tags=[{"key": "role", "value": "web"}])
    assert ls.get_instance(instanceName=inst)["instance"]["tags"] == [{"key": "role", "value": "web"}]
    s = ls.get_disk_snapshot(diskSnapshotName=snap)["diskSnapshot"]
    ls.tag_resource(resourceName=snap, resourceArn=s["arn"], tags=[{"key": "x", "value": "1"}])
    tags = ls.get_disk_snapshot(diskSnapshotName=snap)["diskSnapshot"]["tags"]
    assert {t["key"] for t in tags} == {"kind", "x"}
    for kwargs, code in [
        (dict(resourceName=uniq("nope"), tags=[{"key": "a", "value": "b"}]), "NotFoundException"),
        (dict(resourceName=disk, tags=[{"key": "bad%", "value": "b"}]), "InvalidInputException"),
        (dict(resourceName=disk, tags=[{"key": f"k{i}"} for i in range(50)]), "InvalidInputException"),
        (dict(resourceName=disk, resourceArn=s["arn"], tags=[{"key": "a"}]), "NotFoundException"),
    ]:
        with pytest.raises(ClientError) as e:
            ls.tag_resource(**kwargs)
        assert err(e)[0] == code, kwargs
    with pytest.raises(ClientError) as e:
        ls.untag_resource(resourceName=uniq("nope"), tagKeys=["a"])
    assert err(e)[0] == "NotFoundException"


def test_regions_blueprints_bundles(ls):
    regions = {r["name"]: r for r in ls.get_regions(includeAvailabilityZones=True)["regions"]}
    assert {"us-east-1", "us-west-2", "eu-west-1"} <= set(regions)
    assert regions["us-west-2"]["displayName"] == "Oregon"
    assert [z["zoneName"] for z in regions["us-west-2"]["availabilityZones"]] == ["us-west-2a", "us-west-2b", "us-west-2c"]
    assert all(r["availabilityZones"] == [] for r in ls.get_regions()["regions"])
    bundles = {b["bundleId"]: b for b in ls.get_bundles()["bundles"]}
    assert bundles["nano_3_0"]["diskSizeInGb"] == 20 and bundles["micro_3_0"]["diskSizeInGb"] == 40
    assert "wordpress" in {b["blueprintId"] for b in ls.get_blueprints()["blueprints"]}
    inst = make_instance(ls, bundle="micro_3_0")
    i = ls.get_instance(instanceName=inst)["instance"]
    assert i["bundleId"] == "micro_3_0" and i["hardware"]["disks"][0]["sizeInGb"] == 40
    assert i["hardware"]["ramSizeInGb"] == 1.0 and i["state"]["name"] == "running"
    assert i["arn"].startswith(f"arn:aws:lightsail:{REGION}:") and ":Instance/" in i["arn"]
    assert i["supportCode"].split("/")[1].startswith("i-")
    names = []
    token = None
    while True:
        r = ls.get_instances(**({"pageToken": token} if token else {}))
        names += [x["name"] for x in r["instances"]]
        token = r.get("nextPageToken")
        if not token:
            break
    assert inst in names


# ---- namespace, accounts, durability -------------------------------------------------------------

def test_ec2_does_not_see_lightsail_resources(server, ls):
    disk, inst = uniq("Disk"), uniq("Inst")
    make_disk(ls, disk)
    make_instance(ls, inst)
    vol = attach(ls, disk, inst)
    ec2 = server.client(region=REGION)
    assert vol not in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    with pytest.raises(ClientError) as e:
        ec2.delete_volume(VolumeId=vol)
    assert e.value.response["Error"]["Code"] == "InvalidVolume.NotFound"
    iid = ls.get_instance(instanceName=inst)["instance"]["supportCode"].split("/")[1]
    with pytest.raises(ClientError) as e:
        ec2.describe_instances(InstanceIds=[iid])
    assert e.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"


def test_accounts_are_isolated(fresh_server):
    srv = fresh_server
    mine, theirs = lsclient(srv), lsclient(srv, srv.create_account())
    make_disk(mine, "Shared-Name")
    with pytest.raises(ClientError) as e:
        theirs.get_disk(diskName="Shared-Name")
    assert err(e)[0] == "NotFoundException"
    make_disk(theirs, "Shared-Name", size=9)
    assert mine.get_disk(diskName="Shared-Name")["disk"]["sizeInGb"] == 8
    assert theirs.get_disk(diskName="Shared-Name")["disk"]["sizeInGb"] == 9
    assert [d["name"] for d in theirs.get_disks()["disks"]] == ["Shared-Name"]


def test_lightsail_state_survives_a_restart(fresh_server):
    srv = fresh_server
    ls = lsclient(srv)
    make_disk(ls, "Keep-1", tags=[{"key": "a", "value": "b"}])
    make_instance(ls, "Keep-Inst")
    vol = attach(ls, "Keep-1", "Keep-Inst")
    qemu_io(srv, vol, f"write -P 0x42 0 {MiB}")
    op = ls.create_disk_snapshot(diskName="Keep-1", diskSnapshotName="Keep-Snap")["operations"][0]
    wait_snapshot(ls, "Keep-Snap")
    srv.restart()
    ls = lsclient(srv)
    d = ls.get_disk(diskName="Keep-1")["disk"]
    assert d["tags"] == [{"key": "a", "value": "b"}] and d["attachedTo"] == "Keep-Inst"
    assert ls.get_disk_snapshot(diskSnapshotName="Keep-Snap")["diskSnapshot"]["state"] == "completed"
    assert ls.get_operation(operationId=op["id"])["operation"]["status"] == "Succeeded"
    assert pattern_ok(srv, export_of(d["supportCode"]), 0, MiB, 0x42)
