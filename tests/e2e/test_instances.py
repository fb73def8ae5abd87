"""RunInstances / DescribeInstances / Stop / Start / Terminate, and the catalog calls clients make first:
DescribeImages, DescribeRegions, DescribeAvailabilityZones, DescribeAccountAttributes."""
import datetime
import re

import pytest
from botocore.exceptions import ClientError

from conftest import (IS_MOTO, client_error_code, describe_volume, make_instance, make_volume, poll,
                      tagspec, wait_cfg)

INST_ID = re.compile(r"^i-[0-9a-f]{17}$")
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}


def describe_instance(ec2, iid):
    res = ec2.describe_instances(InstanceIds=[iid])["Reservations"]
    assert len(res) == 1 and len(res[0]["Instances"]) == 1
    return res[0]["Instances"][0]


# ------------------------------------------------------------------ catalog

def test_describe_images(ec2, image):
    assert image["ImageId"].startswith("ami-")
    assert image["State"] == "available"
    assert image["RootDeviceType"] == "ebs"
    assert image["RootDeviceName"].startswith("/dev/")
    assert image["BlockDeviceMappings"]
    root = [m for m in image["BlockDeviceMappings"] if m["DeviceName"] == image["RootDeviceName"]]
    assert root and root[0]["Ebs"]["VolumeSize"] >= 1
    one = ec2.describe_images(ImageIds=[image["ImageId"]])["Images"]
    assert [i["ImageId"] for i in one] == [image["ImageId"]]


def test_describe_images_unknown(ec2):
    with pytest.raises(ClientError) as e:
        ec2.describe_images(ImageIds=["ami-0123456789abcdef0"])
    assert client_error_code(e) == "InvalidAMIID.NotFound"


def test_describe_regions(ec2, server):
    regions = ec2.describe_regions()["Regions"]
    names = [r["RegionName"] for r in regions]
    assert server.region in names
    mine = [r for r in regions if r["RegionName"] == server.region][0]
    assert mine["Endpoint"]
    if not IS_MOTO:  # moto omits OptInStatus
        assert mine["OptInStatus"] in ("opt-in-not-required", "opted-in")
    one = ec2.describe_regions(RegionNames=[server.region])["Regions"]
    assert [r["RegionName"] for r in one] == [server.region]


def test_describe_availability_zones(ec2, server):
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    names = sorted(z["ZoneName"] for z in zones)
    for s in "abc":
        assert f"{server.region}{s}" in names
    for z in zones:
        assert z["RegionName"] == server.region
        assert z["State"] == "available"
        assert z["ZoneId"]
    f = ec2.describe_availability_zones(Filters=[{"Name": "zone-name", "Values": [f"{server.region}b"]}])
    assert [z["ZoneName"] for z in f["AvailabilityZones"]] == [f"{server.region}b"]


@pytest.mark.moto_deviates  # moto answers an empty list for an unknown zone
def test_describe_availability_zones_unknown(ec2, server):
    with pytest.raises(ClientError) as e:
        ec2.describe_availability_zones(ZoneNames=[server.region + "z"])
    assert client_error_code(e) in ("InvalidParameterValue", "InvalidZone.NotFound")


def test_describe_account_attributes(ec2):
    attrs = {a["AttributeName"]: [v["AttributeValue"] for v in a["AttributeValues"]]
             for a in ec2.describe_account_attributes()["AccountAttributes"]}
    assert "supported-platforms" in attrs
    assert "VPC" in attrs["supported-platforms"]
    assert "default-vpc" in attrs
    assert "max-instances" in attrs and int(attrs["max-instances"][0]) > 0


# ------------------------------------------------------------------ RunInstances / DescribeInstances

def test_run_instances_shape(ec2, image, az, run_tag, server):
    r = ec2.run_instances(ImageId=image["ImageId"], MinCount=1, MaxCount=1, InstanceType="t3.micro",
                          Placement={"AvailabilityZone": az}, TagSpecifications=tagspec("instance", run_tag))
    assert r["ReservationId"].startswith("r-")
    assert re.match(r"^\d{12}$", r["OwnerId"])
    assert len(r["Instances"]) == 1
    i = r["Instances"][0]
    assert INST_ID.match(i["InstanceId"]), i["InstanceId"]
    assert i["ImageId"] == image["ImageId"]
    assert i["InstanceType"] == "t3.micro"
    assert i["State"]["Name"] in ("pending", "running")
    assert i["State"]["Code"] == STATE_CODES[i["State"]["Name"]]
    assert i["Placement"]["AvailabilityZone"] == az
    assert isinstance(i["LaunchTime"], datetime.datetime)
    assert i["RootDeviceName"] == image["RootDeviceName"]
    assert i["RootDeviceType"] == "ebs"

    ec2.get_waiter("instance_running").wait(InstanceIds=[i["InstanceId"]], WaiterConfig=wait_cfg())
    res = ec2.describe_instances(InstanceIds=[i["InstanceId"]])["Reservations"]
    assert res[0]["ReservationId"] == r["ReservationId"]
    assert res[0]["OwnerId"] == r["OwnerId"]
    d = res[0]["Instances"][0]
    assert d["State"] == {"Code": 16, "Name": "running"}
    assert {"Key": "e2e-run", "Value": run_tag} in d["Tags"]
    # The root volume sits at the image's root device name.
    bdm = {m["DeviceName"]: m["Ebs"] for m in d["BlockDeviceMappings"]}
    assert image["RootDeviceName"] in bdm
    root = bdm[image["RootDeviceName"]]
    assert root["VolumeId"].startswith("vol-")
    assert root["Status"] == "attached"
    assert root["DeleteOnTermination"] is True
    assert isinstance(root["AttachTime"], datetime.datetime)
    vol = describe_volume(ec2, root["VolumeId"])
    assert vol["State"] == "in-use" and vol["AvailabilityZone"] == az
    assert vol["Attachments"][0]["InstanceId"] == i["InstanceId"]
    assert vol["Attachments"][0]["Device"] == image["RootDeviceName"]
    img_root = [m for m in image["BlockDeviceMappings"] if m["DeviceName"] == image["RootDeviceName"]][0]
    if not IS_MOTO:  # moto's root volume is always 8 GiB whatever the image says
        assert vol["Size"] == img_root["Ebs"]["VolumeSize"]


def test_run_instances_count(ec2, image_id, az, run_tag):
    r = ec2.run_instances(ImageId=image_id, MinCount=2, MaxCount=3, InstanceType="t3.micro",
                          Placement={"AvailabilityZone": az}, TagSpecifications=tagspec("instance", run_tag))
    ids = [i["InstanceId"] for i in r["Instances"]]
    assert 2 <= len(ids) <= 3 and len(set(ids)) == len(ids)
    res = ec2.describe_instances(Filters=[{"Name": "tag:e2e-run", "Values": [run_tag]}])["Reservations"]
    assert sorted(i["InstanceId"] for rr in res for i in rr["Instances"]) == sorted(ids)
    assert all(rr["ReservationId"] == r["ReservationId"] for rr in res)
    # Each instance has its own root volume.
    roots = set()
    for rr in res:
        for i in rr["Instances"]:
            roots |= {m["Ebs"]["VolumeId"] for m in i["BlockDeviceMappings"]}
    assert len(roots) == len(ids)


@pytest.mark.moto_deviates
@pytest.mark.parametrize("mn,mx", [(0, 1), (3, 2)])
def test_run_instances_bad_count(ec2, image_id, az, mn, mx):
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=image_id, MinCount=mn, MaxCount=mx, Placement={"AvailabilityZone": az})
    assert client_error_code(e) == "InvalidParameterValue"


@pytest.mark.moto_deviates  # moto launches from any image id
def test_run_instances_unknown_image(ec2, az):
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1,
                          Placement={"AvailabilityZone": az})
    assert client_error_code(e) in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed")


@pytest.mark.moto_deviates
def test_run_instances_bad_az(ec2, image_id, server):
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1,
                          Placement={"AvailabilityZone": server.region + "z"})
    assert client_error_code(e) in ("InvalidParameterValue", "InvalidZone.NotFound")


def test_run_instances_block_device_mappings(ec2, image, az, run_tag):
    root = image["RootDeviceName"]
    i = make_instance(ec2, image["ImageId"], az, run_tag, BlockDeviceMappings=[
        {"DeviceName": root, "Ebs": {"VolumeSize": 20, "VolumeType": "gp3", "DeleteOnTermination": True}},
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 5, "VolumeType": "gp2", "DeleteOnTermination": False}},
        {"DeviceName": "/dev/sdg", "Ebs": {"VolumeSize": 8, "VolumeType": "gp3", "Iops": 4000,
                                           "Encrypted": True, "DeleteOnTermination": True}},
    ])
    d = describe_instance(ec2, i["InstanceId"])
    bdm = {m["DeviceName"]: m["Ebs"] for m in d["BlockDeviceMappings"]}
    assert set(bdm) == {root, "/dev/sdf", "/dev/sdg"}
    assert bdm[root]["DeleteOnTermination"] is True
    assert bdm["/dev/sdf"]["DeleteOnTermination"] is False
    vr = describe_volume(ec2, bdm[root]["VolumeId"])
    vf = describe_volume(ec2, bdm["/dev/sdf"]["VolumeId"])
    vg = describe_volume(ec2, bdm["/dev/sdg"]["VolumeId"])
    assert (vr["Size"], vr["VolumeType"]) == (20, "gp3")
    assert (vf["Size"], vf["VolumeType"]) == (5, "gp2")
    assert (vg["Size"], vg["VolumeType"]) == (8, "gp3")
    if not IS_MOTO:  # moto ignores Ebs.Encrypted / Iops in mappings
        assert vg["Encrypted"] is True and vg["KmsKeyId"]
        assert vg["Iops"] == 4000
        assert vf["Attachments"][0]["DeleteOnTermination"] is False
        assert vr["Attachments"][0]["DeleteOnTermination"] is True
    for v in (vr, vf, vg):
        assert v["State"] == "in-use" and v["AvailabilityZone"] == az


def test_describe_instances_filters(ec2, image_id, az, az_b, run_tag):
    a = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    b = make_instance(ec2, image_id, az_b, run_tag)["InstanceId"]
    ec2.create_tags(Resources=[b], Tags=[{"Key": "role", "Value": "db-primary"}])
    ec2.stop_instances(InstanceIds=[b])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[b], WaiterConfig=wait_cfg())

    def ids(*filters):
        res = ec2.describe_instances(Filters=[{"Name": "tag:e2e-run", "Values": [run_tag]}, *filters])
        return sorted(i["InstanceId"] for r in res["Reservations"] for i in r["Instances"])

    assert ids() == sorted([a, b])
    assert ids({"Name": "instance-id", "Values": [a]}) == [a]
    assert ids({"Name": "instance-state-name", "Values": ["running"]}) == [a]
    assert ids({"Name": "instance-state-name", "Values": ["stopped"]}) == [b]
    assert ids({"Name": "instance-state-name", "Values": ["running", "stopped"]}) == sorted([a, b])
    if not IS_MOTO:  # moto's availability-zone filter on instances never matches
        assert ids({"Name": "availability-zone", "Values": [az_b]}) == [b]
    assert ids({"Name": "tag:role", "Values": ["db-*"]}) == [b]
    assert ids({"Name": "tag-key", "Values": ["role"]}) == [b]
    assert ids({"Name": "tag-value", "Values": ["db-primary"]}) == [b]
    assert ids({"Name": "instance-id", "Values": [a]},
               {"Name": "instance-state-name", "Values": ["stopped"]}) == []


def test_describe_instances_unknown(ec2):
    with pytest.raises(ClientError) as e:
        ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"])
    assert client_error_code(e) == "InvalidInstanceID.NotFound"


@pytest.mark.moto_deviates  # moto ignores MaxResults on DescribeInstances
def test_describe_instances_pagination(ec2, image_id, az, run_tag):
    ids = sorted(i["InstanceId"] for i in
                 ec2.run_instances(ImageId=image_id, MinCount=7, MaxCount=7, Placement={"AvailabilityZone": az},
                                   TagSpecifications=tagspec("instance", run_tag))["Instances"])
    pages = list(ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:e2e-run", "Values": [run_tag]}], PaginationConfig={"PageSize": 5}))
    got = [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]]
    assert sorted(got) == ids
    assert len(pages) == 2


# ------------------------------------------------------------------ Stop / Start / Terminate

def test_stop_start(ec2, image_id, az, run_tag):
    iid = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    r = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
    assert r["InstanceId"] == iid
    assert r["PreviousState"] == {"Code": 16, "Name": "running"}
    assert r["CurrentState"]["Name"] in ("stopping", "stopped")
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig=wait_cfg())
    assert describe_instance(ec2, iid)["State"] == {"Code": 80, "Name": "stopped"}
    # Volumes stay attached across stop.
    root = describe_instance(ec2, iid)["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert describe_volume(ec2, root)["State"] == "in-use"
    r = ec2.start_instances(InstanceIds=[iid])["StartingInstances"][0]
    assert r["PreviousState"]["Name"] == "stopped"
    assert r["CurrentState"]["Name"] in ("pending", "running")
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=wait_cfg())


@pytest.mark.moto_deviates  # moto drops the image's root mapping when BlockDeviceMappings are given
def test_terminate_deletes_and_detaches(ec2, image, az, run_tag):
    root = image["RootDeviceName"]
    iid = make_instance(ec2, image["ImageId"], az, run_tag, BlockDeviceMappings=[
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 2, "DeleteOnTermination": False}},
    ])["InstanceId"]
    extra = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.attach_volume(VolumeId=extra, InstanceId=iid, Device="/dev/sdh")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[extra], WaiterConfig=wait_cfg())
    bdm = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in describe_instance(ec2, iid)["BlockDeviceMappings"]}
    root_vol, keep_vol = bdm[root], bdm["/dev/sdf"]

    r = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert r["InstanceId"] == iid and r["PreviousState"]["Name"] == "running"
    assert r["CurrentState"]["Name"] in ("shutting-down", "terminated")
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=wait_cfg())
    assert describe_instance(ec2, iid)["State"] == {"Code": 48, "Name": "terminated"}

    # DeleteOnTermination=true (the root by default) is deleted ...
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[root_vol], WaiterConfig=wait_cfg())
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(VolumeIds=[root_vol])
    assert client_error_code(e) == "InvalidVolume.NotFound"
    # ... the others are detached and available.
    for v in (keep_vol, extra):
        vol = poll(lambda: describe_volume(ec2, v), lambda x: x["State"] == "available")
        assert vol["Attachments"] == []


@pytest.mark.moto_deviates  # moto lets a terminated instance start
def test_start_terminated_fails(ec2, image_id, az, run_tag):
    iid = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=wait_cfg())
    with pytest.raises(ClientError) as e:
        ec2.start_instances(InstanceIds=[iid])
    assert client_error_code(e) == "IncorrectInstanceState"


def test_terminate_unknown(ec2):
    with pytest.raises(ClientError) as e:
        ec2.terminate_instances(InstanceIds=["i-0123456789abcdef0"])
    assert client_error_code(e) == "InvalidInstanceID.NotFound"
