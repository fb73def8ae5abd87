"""The real `aws` CLI (v1) against the service: the issue's quick start and a few more calls."""
import pytest

from conftest import IS_MOTO


def test_cli_quick_start(server, image_id, run_tag):
    az = f"{server.region}a"
    v = server.cli("create-volume", "--size", "8", "--availability-zone", az, "--volume-type", "gp3",
                   "--tag-specifications", f"ResourceType=volume,Tags=[{{Key=e2e-run,Value={run_tag}}}]")
    vid = v["VolumeId"]
    assert vid.startswith("vol-") and v["Size"] == 8 and v["AvailabilityZone"] == az
    server.cli("wait", "volume-available", "--volume-ids", vid)

    d = server.cli("describe-volumes", "--filters", f"Name=tag:e2e-run,Values={run_tag}",
                   "Name=size,Values=8", "Name=volume-type,Values=gp3")
    assert [x["VolumeId"] for x in d["Volumes"]] == [vid]
    d = server.cli("describe-volumes", "--filters", f"Name=tag:e2e-run,Values={run_tag}", "Name=size,Values=9")
    assert d["Volumes"] == []

    r = server.cli("run-instances", "--image-id", image_id, "--count", "1", "--placement",
                   f"AvailabilityZone={az}", "--tag-specifications",
                   f"ResourceType=instance,Tags=[{{Key=e2e-run,Value={run_tag}}}]")
    iid = r["Instances"][0]["InstanceId"]
    server.cli("wait", "instance-running", "--instance-ids", iid)

    a = server.cli("attach-volume", "--volume-id", vid, "--instance-id", iid, "--device", "/dev/sdf")
    assert a["VolumeId"] == vid and a["InstanceId"] == iid and a["Device"] == "/dev/sdf"
    server.cli("wait", "volume-in-use", "--volume-ids", vid)
    d = server.cli("describe-volumes", "--volume-ids", vid)
    assert d["Volumes"][0]["State"] == "in-use"
    assert d["Volumes"][0]["Attachments"][0]["InstanceId"] == iid

    q = server.cli("describe-volumes", "--volume-ids", vid, "--query", "Volumes[0].Attachments[0].Device")
    assert q == "/dev/sdf"

    server.cli("detach-volume", "--volume-id", vid, "--instance-id", iid)
    server.cli("wait", "volume-available", "--volume-ids", vid)
    server.cli("delete-volume", "--volume-id", vid)
    server.cli("wait", "volume-deleted", "--volume-ids", vid)
    server.cli("terminate-instances", "--instance-ids", iid)
    server.cli("wait", "instance-terminated", "--instance-ids", iid)


def test_cli_error(server):
    out = server.cli("describe-volumes", "--volume-ids", "vol-0123456789abcdef0", check=False)
    assert out.returncode != 0
    assert "InvalidVolume.NotFound" in out.stderr


def test_cli_dry_run(server):
    out = server.cli("create-volume", "--size", "1", "--availability-zone", f"{server.region}a", "--dry-run",
                     check=False)
    assert out.returncode != 0
    assert "DryRunOperation" in out.stderr


def test_cli_tags_and_pagination(server, run_tag):
    az = f"{server.region}a"
    ids = []
    for n in range(6):
        ids.append(server.cli("create-volume", "--size", "1", "--availability-zone", az, "--tag-specifications",
                              f"ResourceType=volume,Tags=[{{Key=e2e-run,Value={run_tag}}}]")["VolumeId"])
    server.cli("create-tags", "--resources", ids[0], ids[1], "--tags", "Key=team,Value=blue")
    d = server.cli("describe-tags", "--filters", f"Name=resource-id,Values={ids[0]}")
    assert sorted((t["Key"], t["Value"]) for t in d["Tags"]) == [("e2e-run", run_tag), ("team", "blue")]
    # The CLI paginates on its own with --page-size and joins the pages.
    d = server.cli("describe-volumes", "--filters", f"Name=tag:e2e-run,Values={run_tag}", "--page-size", "5")
    assert sorted(v["VolumeId"] for v in d["Volumes"]) == sorted(ids)
    server.cli("delete-tags", "--resources", ids[0], "--tags", "Key=team")
    d = server.cli("describe-volumes", "--filters", f"Name=tag:team,Values=blue")
    assert [v["VolumeId"] for v in d["Volumes"]] == [ids[1]]
