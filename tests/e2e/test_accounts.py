"""Accounts from `blocksnap admin create-account` are isolated: another account's resources do not exist."""
import re

import pytest
from botocore.exceptions import ClientError

from conftest import client_error_code, make_instance, make_volume, run_filter, tagspec, wait_attached

pytestmark = pytest.mark.blocksnap_only


@pytest.fixture(scope="module")
def other(server):
    creds = server.create_account()
    assert re.fullmatch(r"\d{12}", creds.account_id)
    assert creds.access_key.startswith("AKIA")
    return creds


def test_new_account_works(server, other, az, run_tag, image_id):
    c = server.client(other)
    v = make_volume(c, az, run_tag)
    assert v["State"] == "available"
    r = c.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": az},
                        TagSpecifications=tagspec("instance", run_tag))
    assert r["OwnerId"] == other.account_id


def test_accounts_differ(server, other, ec2, image_id, az, run_tag):
    mine = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": az},
                             TagSpecifications=tagspec("instance", run_tag))["OwnerId"]
    assert mine != other.account_id
    again = server.create_account()
    assert again.account_id not in (other.account_id, mine)
    assert again.access_key != other.access_key


def test_isolation(server, other, ec2, az, image_id, run_tag):
    vid = make_volume(ec2, az, run_tag)["VolumeId"]
    used = make_volume(ec2, az, run_tag)["VolumeId"]
    my_inst = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    ec2.attach_volume(VolumeId=used, InstanceId=my_inst, Device="/dev/sdf")
    wait_attached(ec2, used)

    c = server.client(other)
    their_inst = make_instance(c, image_id, az, run_tag)["InstanceId"]

    def nf(fn, code="InvalidVolume.NotFound"):
        with pytest.raises(ClientError) as e:
            fn()
        assert client_error_code(e) in (code if isinstance(code, tuple) else (code,)), e.value.response

    nf(lambda: c.describe_volumes(VolumeIds=[vid]))
    assert c.describe_volumes(Filters=[run_filter(run_tag)])["Volumes"] == []
    assert vid not in [v["VolumeId"] for v in c.describe_volumes()["Volumes"]]
    assert c.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vid]}])["Volumes"] == []
    nf(lambda: c.attach_volume(VolumeId=vid, InstanceId=their_inst, Device="/dev/sdf"))
    nf(lambda: c.detach_volume(VolumeId=used))
    nf(lambda: c.create_tags(Resources=[vid], Tags=[{"Key": "pwned", "Value": "1"}]),
       ("InvalidVolume.NotFound", "InvalidID"))
    nf(lambda: c.delete_tags(Resources=[vid], Tags=[{"Key": "e2e-run"}]), ("InvalidVolume.NotFound", "InvalidID"))
    nf(lambda: c.modify_volume(VolumeId=vid, Size=10))
    nf(lambda: c.delete_volume(VolumeId=vid))
    assert c.describe_tags(Filters=[{"Name": "resource-id", "Values": [vid]}])["Tags"] == []
    # Instances too.
    nf(lambda: c.describe_instances(InstanceIds=[my_inst]), "InvalidInstanceID.NotFound")
    nf(lambda: c.terminate_instances(InstanceIds=[my_inst]), "InvalidInstanceID.NotFound")
    # And the other way round: my volume cannot go on their instance.
    nf(lambda: ec2.attach_volume(VolumeId=vid, InstanceId=their_inst, Device="/dev/sdg"),
       "InvalidInstanceID.NotFound")

    # Nothing changed for the owner.
    v = ec2.describe_volumes(VolumeIds=[vid, used])["Volumes"]
    by = {x["VolumeId"]: x for x in v}
    assert by[vid]["State"] == "available" and by[vid]["Size"] == 1
    assert {t["Key"] for t in by[vid]["Tags"]} == {"e2e-run"}
    assert by[used]["State"] == "in-use"


def test_encryption_default_is_per_account(server, other, ec2):
    c = server.client(other)
    try:
        c.enable_ebs_encryption_by_default()
        assert ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    finally:
        c.disable_ebs_encryption_by_default()
