"""AttachVolume / DetachVolume, DeleteVolume while attached, waiters, and the boto3 resource API."""
import datetime

import pytest
from botocore.exceptions import ClientError

from conftest import (IS_MOTO, client_error_code, describe_volume, make_instance, make_volume, poll,
                      tagspec, wait_attached, wait_cfg, wait_volume_state)


@pytest.fixture
def inst(ec2, image_id, az, run_tag):
    return make_instance(ec2, image_id, az, run_tag)


def test_attach_detach_lifecycle(ec2, az, run_tag, inst):
    v = make_volume(ec2, az, run_tag, Size=2)
    vid, iid = v["VolumeId"], inst["InstanceId"]
    r = ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
    assert r["VolumeId"] == vid and r["InstanceId"] == iid and r["Device"] == "/dev/sdf"
    assert r["State"] in ("attaching", "attached")
    assert isinstance(r["AttachTime"], datetime.datetime)

    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid], WaiterConfig=wait_cfg())
    vol = wait_attached(ec2, vid)
    assert vol["State"] == "in-use"
    assert len(vol["Attachments"]) == 1
    att = vol["Attachments"][0]
    assert att["VolumeId"] == vid and att["InstanceId"] == iid and att["Device"] == "/dev/sdf"
    assert att["State"] == "attached"
    assert isinstance(att["AttachTime"], datetime.datetime)
    if not IS_MOTO:  # moto omits deleteOnTermination on attachments
        assert att["DeleteOnTermination"] is False

    # The instance shows the volume in its block device mappings.
    i = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    bdm = {m["DeviceName"]: m["Ebs"] for m in i["BlockDeviceMappings"]}
    assert bdm["/dev/sdf"]["VolumeId"] == vid
    assert bdm["/dev/sdf"]["Status"] in ("attaching", "attached")

    # Attachment filters.
    flt = lambda name, val: [v["VolumeId"] for v in
                             ec2.describe_volumes(Filters=[{"Name": name, "Values": [val]}])["Volumes"]]
    # The instance's root volume (RunInstances made it) is attached too.
    assert sorted(flt("attachment.instance-id", iid)) == sorted(m["VolumeId"] for m in bdm.values())
    assert vid in flt("attachment.instance-id", iid)
    assert vid in flt("attachment.device", "/dev/sdf")
    assert vid in flt("attachment.status", "attached")
    assert vid in flt("status", "in-use")

    d = ec2.detach_volume(VolumeId=vid, InstanceId=iid)
    assert d["VolumeId"] == vid and d["InstanceId"] == iid
    assert d["State"] in ("detaching", "detached")
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig=wait_cfg())
    vol = describe_volume(ec2, vid)
    assert vol["State"] == "available" and vol["Attachments"] == []
    i = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert "/dev/sdf" not in {m["DeviceName"] for m in i["BlockDeviceMappings"]}
    assert vid not in flt("attachment.instance-id", iid)


@pytest.mark.moto_deviates  # moto: HTTP 500 without InstanceId
def test_detach_without_instance_id(ec2, az, run_tag, inst):
    v = make_volume(ec2, az, run_tag)
    ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdg")
    wait_attached(ec2, v["VolumeId"])
    d = ec2.detach_volume(VolumeId=v["VolumeId"])
    assert d["InstanceId"] == inst["InstanceId"] and d["Device"] == "/dev/sdg"
    wait_volume_state(ec2, v["VolumeId"], "available")


def test_detach_force(ec2, az, run_tag, inst):
    v = make_volume(ec2, az, run_tag)
    ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdh")
    wait_attached(ec2, v["VolumeId"])
    ec2.detach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdh", Force=True)
    wait_volume_state(ec2, v["VolumeId"], "available")


@pytest.mark.moto_deviates  # moto answers InvalidVolume.NotFound / no state check
def test_detach_not_attached(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)
    with pytest.raises(ClientError) as e:
        ec2.detach_volume(VolumeId=v["VolumeId"])
    # AWS: IncorrectState "Volume 'vol-…' is in the 'available' state."
    assert client_error_code(e) == "IncorrectState"


def test_detach_wrong_instance(ec2, az, run_tag, image_id, inst):
    other = make_instance(ec2, image_id, az, run_tag)
    v = make_volume(ec2, az, run_tag)
    ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdf")
    wait_attached(ec2, v["VolumeId"])
    with pytest.raises(ClientError) as e:
        ec2.detach_volume(VolumeId=v["VolumeId"], InstanceId=other["InstanceId"])
    assert client_error_code(e) in ("InvalidAttachment.NotFound", "IncorrectState")
    assert describe_volume(ec2, v["VolumeId"])["State"] == "in-use"


@pytest.mark.moto_deviates  # moto deletes attached volumes
def test_delete_attached_volume_in_use(ec2, az, run_tag, inst):
    v = make_volume(ec2, az, run_tag)
    ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdf")
    wait_attached(ec2, v["VolumeId"])
    with pytest.raises(ClientError) as e:
        ec2.delete_volume(VolumeId=v["VolumeId"])
    assert client_error_code(e) == "VolumeInUse"
    assert describe_volume(ec2, v["VolumeId"])["State"] == "in-use"
    ec2.detach_volume(VolumeId=v["VolumeId"])
    wait_volume_state(ec2, v["VolumeId"], "available")
    ec2.delete_volume(VolumeId=v["VolumeId"])
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[v["VolumeId"]], WaiterConfig=wait_cfg())
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(VolumeIds=[v["VolumeId"]])
    assert client_error_code(e) == "InvalidVolume.NotFound"


@pytest.mark.moto_deviates  # moto attaches across zones
def test_attach_wrong_az(ec2, az_b, run_tag, inst):
    v = make_volume(ec2, az_b, run_tag)
    with pytest.raises(ClientError) as e:
        ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdf")
    assert client_error_code(e) == "InvalidVolume.ZoneMismatch"
    assert describe_volume(ec2, v["VolumeId"])["State"] == "available"


@pytest.mark.moto_deviates
def test_attach_device_in_use(ec2, az, run_tag, inst):
    a = make_volume(ec2, az, run_tag)
    b = make_volume(ec2, az, run_tag)
    ec2.attach_volume(VolumeId=a["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdf")
    with pytest.raises(ClientError) as e:
        ec2.attach_volume(VolumeId=b["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdf")
    # AWS: InvalidParameterValue "Attachment point /dev/sdf is already in use"
    assert client_error_code(e) in ("InvalidParameterValue", "InvalidDevice.InUse")
    assert describe_volume(ec2, b["VolumeId"])["State"] == "available"


@pytest.mark.moto_deviates
def test_attach_root_device_in_use(ec2, az, run_tag, inst, image):
    v = make_volume(ec2, az, run_tag)
    with pytest.raises(ClientError) as e:
        ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"],
                          Device=image["RootDeviceName"])
    assert client_error_code(e) in ("InvalidParameterValue", "InvalidDevice.InUse")


@pytest.mark.moto_deviates
def test_attach_volume_in_use_elsewhere(ec2, az, image_id, run_tag, inst):
    other = make_instance(ec2, image_id, az, run_tag)
    v = make_volume(ec2, az, run_tag)
    ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdf")
    wait_attached(ec2, v["VolumeId"])
    with pytest.raises(ClientError) as e:
        ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=other["InstanceId"], Device="/dev/sdf")
    assert client_error_code(e) == "VolumeInUse"
    vol = describe_volume(ec2, v["VolumeId"])
    assert [a["InstanceId"] for a in vol["Attachments"]] == [inst["InstanceId"]]


@pytest.mark.moto_deviates
def test_attach_terminated_instance(ec2, az, image_id, run_tag):
    i = make_instance(ec2, image_id, az, run_tag)
    ec2.terminate_instances(InstanceIds=[i["InstanceId"]])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[i["InstanceId"]], WaiterConfig=wait_cfg())
    v = make_volume(ec2, az, run_tag)
    with pytest.raises(ClientError) as e:
        ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=i["InstanceId"], Device="/dev/sdf")
    assert client_error_code(e) in ("IncorrectInstanceState", "IncorrectState", "InvalidInstanceID.NotFound")
    assert describe_volume(ec2, v["VolumeId"])["State"] == "available"


def test_attach_unknown_volume_or_instance(ec2, az, run_tag, inst):
    with pytest.raises(ClientError) as e:
        ec2.attach_volume(VolumeId="vol-0123456789abcdef0", InstanceId=inst["InstanceId"], Device="/dev/sdf")
    assert client_error_code(e) == "InvalidVolume.NotFound"
    v = make_volume(ec2, az, run_tag)
    with pytest.raises(ClientError) as e:
        ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId="i-0123456789abcdef0", Device="/dev/sdf")
    assert client_error_code(e) == "InvalidInstanceID.NotFound"


def test_attach_to_stopped_instance(ec2, az, run_tag, inst):
    ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[inst["InstanceId"]], WaiterConfig=wait_cfg())
    v = make_volume(ec2, az, run_tag)
    ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdk")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[v["VolumeId"]], WaiterConfig=wait_cfg())


@pytest.mark.moto_deviates  # moto allows multi-attach for any volume
def test_multi_attach_io2(ec2, az, image_id, run_tag, inst):
    other = make_instance(ec2, image_id, az, run_tag)
    v = make_volume(ec2, az, run_tag, Size=4, VolumeType="io2", Iops=100, MultiAttachEnabled=True)
    ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdf")
    ec2.attach_volume(VolumeId=v["VolumeId"], InstanceId=other["InstanceId"], Device="/dev/sdf")
    vol = poll(lambda: describe_volume(ec2, v["VolumeId"]),
               lambda x: len(x["Attachments"]) == 2 and all(a["State"] == "attached" for a in x["Attachments"]))
    assert sorted(a["InstanceId"] for a in vol["Attachments"]) == sorted([inst["InstanceId"], other["InstanceId"]])
    # With two attachments, DetachVolume must name the instance.
    with pytest.raises(ClientError) as e:
        ec2.detach_volume(VolumeId=v["VolumeId"])
    assert client_error_code(e) in ("InvalidParameterCombination", "MissingParameter", "InvalidParameterValue")
    ec2.detach_volume(VolumeId=v["VolumeId"], InstanceId=other["InstanceId"])
    vol = poll(lambda: describe_volume(ec2, v["VolumeId"]), lambda x: len(x["Attachments"]) == 1)
    assert vol["Attachments"][0]["InstanceId"] == inst["InstanceId"]


# ------------------------------------------------------------------ boto3 resource API

def test_resource_api(ec2r, ec2, az, image_id, run_tag):
    vol = ec2r.create_volume(AvailabilityZone=az, Size=3, VolumeType="gp3",
                             TagSpecifications=tagspec("volume", run_tag, Name="res"))
    assert vol.id.startswith("vol-")
    vol.reload()
    assert vol.size == 3 and vol.volume_type == "gp3" and vol.availability_zone == az
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol.id], WaiterConfig=wait_cfg())

    insts = ec2r.create_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                  Placement={"AvailabilityZone": az},
                                  TagSpecifications=tagspec("instance", run_tag))
    assert len(insts) == 1
    instance = insts[0]
    instance.wait_until_running(WaiterConfig=wait_cfg())
    instance.reload()
    assert instance.state["Name"] == "running"
    assert instance.placement["AvailabilityZone"] == az

    r = vol.attach_to_instance(InstanceId=instance.id, Device="/dev/sdf")
    assert r["VolumeId"] == vol.id
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol.id], WaiterConfig=wait_cfg())
    wait_attached(ec2, vol.id)
    vol.reload()
    assert vol.state == "in-use"
    assert vol.attachments[0]["InstanceId"] == instance.id

    ids = [v.id for v in ec2r.Instance(instance.id).volumes.all()]
    assert vol.id in ids
    assert {t["Key"]: t["Value"] for t in vol.tags}["Name"] == "res"

    listed = [v.id for v in ec2r.volumes.filter(Filters=[{"Name": "tag:e2e-run", "Values": [run_tag]}])]
    assert vol.id in listed

    vol.detach_from_instance(InstanceId=instance.id)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol.id], WaiterConfig=wait_cfg())
    vol.create_tags(Tags=[{"Key": "stage", "Value": "done"}])
    vol.reload()
    assert {"Key": "stage", "Value": "done"} in vol.tags
    vol.delete()
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[vol.id], WaiterConfig=wait_cfg())
    instance.terminate()
    instance.wait_until_terminated(WaiterConfig=wait_cfg())
