"""Everything survives a restart of the service on the same data dir."""
import os
import re
import signal
import time

import pytest
from botocore.exceptions import ClientError

from conftest import client_error_code, make_instance, make_volume, tagspec, wait_attached, wait_volume_state
from nbd import MiB, QemuIo, compare, from_file, pattern_ok, qemu_io

pytestmark = pytest.mark.blocksnap_only


def snapshot_state(c):
    vols = sorted(c.describe_volumes()["Volumes"], key=lambda v: v["VolumeId"])
    insts = sorted((i for r in c.describe_instances()["Reservations"] for i in r["Instances"]),
                   key=lambda i: i["InstanceId"])
    tags = sorted((t["ResourceId"], t["Key"], t["Value"]) for t in c.describe_tags()["Tags"])
    norm_v = [(v["VolumeId"], v["Size"], v["VolumeType"], v["AvailabilityZone"], v["State"], v["Encrypted"],
               v.get("KmsKeyId"), v.get("Iops"), v.get("Throughput"), v["CreateTime"],
               sorted((a["InstanceId"], a["Device"], a["State"], a.get("DeleteOnTermination")) for a in v["Attachments"]),
               sorted((t["Key"], t["Value"]) for t in v.get("Tags", [])))
              for v in vols]
    norm_i = [(i["InstanceId"], i["State"]["Name"], i["Placement"]["AvailabilityZone"], i["ImageId"],
               i["RootDeviceName"], i["LaunchTime"],
               sorted((m["DeviceName"], m["Ebs"]["VolumeId"]) for m in i["BlockDeviceMappings"]))
              for i in insts]
    return norm_v, norm_i, tags


def test_restart_persists_everything(fresh_server, image_id_fresh=None):
    srv = fresh_server
    c = srv.client()
    az = f"{srv.region}a"
    image_id = c.describe_images()["Images"][0]["ImageId"]
    run_tag = "restart"
    v_plain = make_volume(c, az, run_tag, Size=10, VolumeType="gp3", Iops=4000, Throughput=200,
                          TagSpecifications=tagspec("volume", run_tag, Name="plain"))["VolumeId"]
    v_enc = make_volume(c, az, run_tag, Size=2, Encrypted=True)["VolumeId"]
    v_att = make_volume(c, az, run_tag, Size=4)["VolumeId"]
    v_gone = make_volume(c, az, run_tag)["VolumeId"]
    c.delete_volume(VolumeId=v_gone)
    running = make_instance(c, image_id, az, run_tag)["InstanceId"]
    stopped = make_instance(c, image_id, az, run_tag)["InstanceId"]
    c.stop_instances(InstanceIds=[stopped])
    c.get_waiter("instance_stopped").wait(InstanceIds=[stopped], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    c.attach_volume(VolumeId=v_att, InstanceId=running, Device="/dev/sdf")
    wait_attached(c, v_att)
    c.create_tags(Resources=[v_enc, running], Tags=[{"Key": "after", "Value": "create"}])
    c.delete_tags(Resources=[v_plain], Tags=[{"Key": "e2e-run"}])
    c.enable_ebs_encryption_by_default()
    other = srv.create_account()
    oc = srv.client(other)
    o_vol = make_volume(oc, az, run_tag)["VolumeId"]

    before = snapshot_state(c)
    o_before = snapshot_state(oc)
    srv.restart()
    c = srv.client()
    oc = srv.client(other)
    after = snapshot_state(c)
    assert after == before
    assert snapshot_state(oc) == o_before
    assert c.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    with pytest.raises(ClientError) as e:
        c.describe_volumes(VolumeIds=[v_gone])
    assert client_error_code(e) == "InvalidVolume.NotFound"
    with pytest.raises(ClientError) as e:
        oc.describe_volumes(VolumeIds=[v_plain])
    assert client_error_code(e) == "InvalidVolume.NotFound"
    assert o_vol in [v["VolumeId"] for v in oc.describe_volumes()["Volumes"]]

    # The service keeps working on the restored state.
    c.detach_volume(VolumeId=v_att)
    wait_volume_state(c, v_att, "available")
    new = c.create_volume(AvailabilityZone=az, Size=1)["VolumeId"]
    assert new not in {v[0] for v in before[0]}
    assert c.describe_volumes(VolumeIds=[new])["Volumes"][0]["Encrypted"] is True  # default still on
    c.start_instances(InstanceIds=[stopped])
    c.get_waiter("instance_running").wait(InstanceIds=[stopped], WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    # And a second restart keeps the changes made after the first.
    srv.restart()
    c = srv.client()
    assert c.describe_volumes(VolumeIds=[v_att])["Volumes"][0]["State"] == "available"
    assert c.describe_volumes(VolumeIds=[new])["Volumes"][0]["Size"] == 1


def test_restart_same_credentials(fresh_server):
    srv = fresh_server
    before = srv.client().describe_account_attributes()
    srv.restart()
    after = srv.client().describe_account_attributes()
    assert before["AccountAttributes"] == after["AccountAttributes"]


# ---- clean stop and recovery ------------------------------------------------------------------

def _problems(log: str) -> list[str]:
    return [l for l in log.splitlines() if re.search(r"\b(WARN|ERROR)\b", l)]


def _volume_with_history(srv):
    """An attached volume with a completed snapshot and later writes (so a cut is staged), and a
    volume restored from that snapshot (hydration state on disk)."""
    c = srv.client()
    az = f"{srv.region}a"
    inst = c.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                           Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = c.create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    c.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    wait_attached(c, vid)
    qemu_io(srv, vid, "write -P 0x51 0 2M", "flush")
    sid = c.create_snapshot(VolumeId=vid)["SnapshotId"]
    c.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    qemu_io(srv, vid, "write -P 0x52 1M 1M", "flush")
    rid = c.create_volume(AvailabilityZone=az, SnapshotId=sid)["VolumeId"]
    c.get_waiter("volume_available").wait(VolumeIds=[rid], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    c.attach_volume(VolumeId=rid, InstanceId=inst, Device="/dev/sdg")
    wait_attached(c, rid)
    # The next cut is staged in the background after the snapshot completes.
    deadline = time.monotonic() + 60
    while not (srv.data_dir / "volumes" / vid / "changes.next").exists():
        assert time.monotonic() < deadline, "the next cut was never staged"
        time.sleep(0.05)
    return vid, sid, rid


def test_sigterm_exits_zero_and_the_restart_is_silent(fresh_server):
    srv = fresh_server
    vid, sid, rid = _volume_with_history(srv)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=30) == 0, srv.log()
    assert "blocksnap stopped" in srv.log()
    srv.proc = None
    srv.start()
    c = srv.client()
    # Volumes are recovered when first used: use them all before reading the log.
    assert pattern_ok(srv, vid, 0, 1 * MiB, 0x51) and pattern_ok(srv, vid, 1 * MiB, 1 * MiB, 0x52)
    assert compare(srv, sid, rid).returncode == 0
    s2 = c.create_snapshot(VolumeId=vid)["SnapshotId"]
    c.get_waiter("snapshot_completed").wait(SnapshotIds=[s2], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    assert compare(srv, s2, vid).returncode == 0
    assert _problems(srv.log()) == [], srv.log()
    assert "interrupted cut" not in srv.log() and "orphaned" not in srv.log(), srv.log()
    # A second clean cycle stays silent too.
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=30) == 0
    srv.proc = None
    srv.start()
    assert pattern_ok(srv, vid, 1 * MiB, 1 * MiB, 0x52) and pattern_ok(srv, rid, 0, 1 * MiB, 0x51)
    assert _problems(srv.log()) == [], srv.log()


def test_kill_9_restart_logs_what_it_recovered(fresh_server):
    srv = fresh_server
    vid, sid, rid = _volume_with_history(srv)
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait()
    srv.proc = None
    srv.start()
    c = srv.client()
    c.describe_volumes(VolumeIds=[vid])
    # Recovery is per volume, when it is first used (here: opened over NBD).
    assert pattern_ok(srv, vid, 1 * MiB, 1 * MiB, 0x52)
    log = srv.log()
    assert re.search(r"\bINFO\b.*recovering an interrupted cut", log), log
    assert re.search(r"\bINFO\b.*orphaned frozen epoch", log), log
    assert "missing or damaged" not in log, log
    s2 = c.create_snapshot(VolumeId=vid)["SnapshotId"]
    c.get_waiter("snapshot_completed").wait(SnapshotIds=[s2], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    assert compare(srv, s2, vid).returncode == 0


def test_sigterm_with_a_client_connected_and_an_upload_in_flight(fresh_server):
    """Stop while an NBD client is connected and a snapshot uploads: exit 0, and the restart resumes the
    upload to a snapshot equal to the volume, without warnings."""
    srv = fresh_server
    c = srv.client()
    az = f"{srv.region}a"
    inst = c.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                           Placement={"AvailabilityZone": az})["Instances"][0]["InstanceId"]
    vid = c.create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    c.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    wait_attached(c, vid)
    blob = srv.workdir / "random.bin"
    blob.write_bytes(os.urandom(128 * MiB))
    from_file(srv, blob, vid)
    session = QemuIo(srv, vid)
    try:
        session.write(200 * MiB, MiB, 0x77)
        sid = c.create_snapshot(VolumeId=vid)["SnapshotId"]
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0, srv.log()
    finally:
        session.p.kill()
        session.p.wait()
    assert _problems(srv.log()) == [], srv.log()
    srv.proc = None
    srv.start()
    c = srv.client()
    c.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    assert compare(srv, sid, vid).returncode == 0
    assert pattern_ok(srv, vid, 200 * MiB, MiB, 0x77)
    assert _problems(srv.log()) == [], srv.log()
