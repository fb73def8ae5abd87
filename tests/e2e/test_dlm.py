"""Amazon Data Lifecycle Manager (service `dlm`, REST-JSON) through boto3's `dlm` client and the AWS CLI
`aws dlm …`: every call and every documented error, then policies that run. The server's test clock
(BLOCKSNAP_TEST_CLOCK=1) is moved forward by a schedule's interval instead of waiting for it, and the
scheduler ticks every 200 ms of real time (BLOCKSNAP_DLM_TICK_MS)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import cli_inproc
from conftest import _make_server, make_instance, make_volume, poll, wait_attached

pytestmark = pytest.mark.blocksnap_only

ROLE = "arn:aws:iam::123456789012:role/AWSDataLifecycleManagerDefaultRole"
COPY_REGION = "eu-west-1"
POLICY_TAG = "aws:dlm:lifecycle-policy-id"
SCHEDULE_TAG = "aws:dlm:lifecycle-schedule-name"


@pytest.fixture(scope="module")
def dlm_server(tmp_path_factory):
    srv = _make_server(tmp_path_factory.mktemp("dlm"), BLOCKSNAP_TEST_CLOCK="1", BLOCKSNAP_DLM_TICK_MS="200")
    yield srv
    srv.stop()


def dlm_client(server, creds=None, region=None):
    return server.session(creds, region).client("dlm", endpoint_url=server.endpoint,
                                                config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def aws_dlm(server, *args, creds=None, inproc=True):
    """`aws dlm …` (in-process CLI, or the real executable): (exit code, parsed stdout or stderr)."""
    c = creds or server.creds
    env = {"AWS_ACCESS_KEY_ID": c.access_key, "AWS_SECRET_ACCESS_KEY": c.secret_key,
           "AWS_DEFAULT_REGION": server.region, "AWS_MAX_ATTEMPTS": "1", "AWS_PAGER": ""}
    argv = ["dlm", *args, "--endpoint-url", server.endpoint, "--output", "json"]
    if inproc:
        rc, out, err = cli_inproc.run(argv, env)
    else:
        full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env
        p = subprocess.run(["aws", *argv], capture_output=True, text=True, env=full, timeout=120)
        rc, out, err = p.returncode, p.stdout, p.stderr
    if rc == 0:
        return rc, (json.loads(out) if out.strip() else {})
    return rc, err


def details(tag_value: str, **schedule) -> dict:
    s = {"Name": "hourly", "CreateRule": {"Interval": 1, "IntervalUnit": "HOURS"}, "RetainRule": {"Count": 2}}
    s.update(schedule)
    return {"PolicyType": "EBS_SNAPSHOT_MANAGEMENT", "ResourceTypes": ["VOLUME"],
            "TargetTags": [{"Key": "backup", "Value": tag_value}], "Schedules": [s]}


def error_of(excinfo) -> tuple[str, int, dict]:
    r = excinfo.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"], r


# ------------------------------------------------------------------------------------------ the calls
def test_policy_calls_boto3(dlm_server, run_tag):
    dlm = dlm_client(dlm_server)
    d = details(run_tag)
    d["Schedules"][0] = {
        "Name": "twice a day", "CopyTags": True, "TagsToAdd": [{"Key": "made-by", "Value": "dlm"}],
        "CreateRule": {"Interval": 12, "IntervalUnit": "HOURS", "Times": ["09:30"]},
        "RetainRule": {"Interval": 3, "IntervalUnit": "DAYS"},
        "CrossRegionCopyRules": [{"Target": COPY_REGION, "Encrypted": False, "CopyTags": True,
                                  "RetainRule": {"Interval": 1, "IntervalUnit": "WEEKS"}}],
    }
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="daily backups", State="ENABLED",
                                      PolicyDetails=d, Tags={"team": "storage"})["PolicyId"]
    assert pid.startswith("policy-")
    p = dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]
    assert p["PolicyId"] == pid and p["State"] == "ENABLED" and p["StatusMessage"] == "ENABLED"
    assert p["Description"] == "daily backups" and p["ExecutionRoleArn"] == ROLE
    assert re.fullmatch(rf"arn:aws:dlm:{dlm_server.region}:\d{{12}}:policy/{pid}", p["PolicyArn"]), p["PolicyArn"]
    assert p["Tags"] == {"team": "storage"} and p["DefaultPolicy"] is False
    assert p["DateCreated"] <= p["DateModified"]
    got = p["PolicyDetails"]
    assert got["PolicyType"] == "EBS_SNAPSHOT_MANAGEMENT" and got["ResourceTypes"] == ["VOLUME"]
    assert got["TargetTags"] == d["TargetTags"]
    assert got["Schedules"] == d["Schedules"]

    # Listing and its filters.
    ids = lambda **kw: [x["PolicyId"] for x in dlm.get_lifecycle_policies(**kw)["Policies"]]
    assert pid in ids()
    summary = next(x for x in dlm.get_lifecycle_policies()["Policies"] if x["PolicyId"] == pid)
    assert summary == {"PolicyId": pid, "Description": "daily backups", "State": "ENABLED",
                       "Tags": {"team": "storage"}, "PolicyType": "EBS_SNAPSHOT_MANAGEMENT", "DefaultPolicy": False}
    assert ids(PolicyIds=[pid]) == [pid]
    assert pid in ids(State="ENABLED") and pid not in ids(State="DISABLED")
    assert pid in ids(ResourceTypes=["VOLUME"]) and pid not in ids(ResourceTypes=["INSTANCE"])
    assert ids(TargetTags=[f"backup={run_tag}"]) == [pid]
    assert pid in ids(TagsToAdd=["made-by=dlm"]) and pid not in ids(TagsToAdd=["made-by=other"])
    assert ids(DefaultPolicyType="ALL") == []

    # Update: state, description, role, details; a disabled policy lists as DISABLED.
    d2 = json.loads(json.dumps(d))
    d2["Schedules"][0]["RetainRule"] = {"Interval": 2, "IntervalUnit": "WEEKS"}
    dlm.update_lifecycle_policy(PolicyId=pid, State="DISABLED", Description="weekly keep",
                                ExecutionRoleArn=ROLE + "2", PolicyDetails=d2)
    p2 = dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]
    assert p2["State"] == "DISABLED" and p2["Description"] == "weekly keep" and p2["ExecutionRoleArn"] == ROLE + "2"
    assert p2["PolicyDetails"]["Schedules"][0]["RetainRule"] == {"Interval": 2, "IntervalUnit": "WEEKS"}
    assert p2["DateModified"] >= p["DateModified"]
    assert pid in ids(State="DISABLED")

    # Tags.
    arn = p["PolicyArn"]
    dlm.tag_resource(ResourceArn=arn, Tags={"env": "prod", "team": "platform"})
    assert dlm.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"env": "prod", "team": "platform"}
    dlm.untag_resource(ResourceArn=arn, TagKeys=["team"])
    assert dlm.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"env": "prod"}

    dlm.delete_lifecycle_policy(PolicyId=pid)
    with pytest.raises(ClientError) as e:
        dlm.get_lifecycle_policy(PolicyId=pid)
    code, status, r = error_of(e)
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert r["ResourceIds"] == [pid] and r["ResourceType"] == "LifecyclePolicy"
    assert pid not in ids()


def test_documented_errors_boto3(dlm_server, run_tag):
    dlm = dlm_client(dlm_server)

    def invalid(**kw):
        args = dict(ExecutionRoleArn=ROLE, Description="bad", State="ENABLED", PolicyDetails=details(run_tag))
        args.update(kw)
        with pytest.raises(ClientError) as e:
            dlm.create_lifecycle_policy(**args)
        code, status, r = error_of(e)
        assert (code, status) == ("InvalidRequestException", 400), r
        return r

    # Required members the client does not check itself.
    d = details(run_tag)
    del d["ResourceTypes"]
    assert invalid(PolicyDetails=d)["RequiredParameters"] == ["ResourceTypes"]
    d = details(run_tag)
    del d["Schedules"][0]["RetainRule"]
    assert invalid(PolicyDetails=d)["RequiredParameters"] == ["RetainRule"]
    # Mutually exclusive members.
    r = invalid(PolicyDetails=details(run_tag, CreateRule={"Interval": 1, "IntervalUnit": "HOURS",
                                                           "CronExpression": "cron(0 9 * * ? *)"}))
    assert r["MutuallyExclusiveParameters"] == ["CronExpression", "Interval"]
    r = invalid(PolicyDetails=details(run_tag, RetainRule={"Count": 2, "Interval": 1, "IntervalUnit": "DAYS"}))
    assert r["MutuallyExclusiveParameters"] == ["Count", "Interval"]
    # Bad values.
    for bad in [
        details(run_tag, CreateRule={"Interval": 5, "IntervalUnit": "HOURS"}),
        details(run_tag, CreateRule={"Interval": 1, "IntervalUnit": "HOURS", "Times": ["25:00"]}),
        details(run_tag, CreateRule={"CronExpression": "cron(0/5 * * * ? *)"}),
        details(run_tag, CreateRule={"CronExpression": "cron(0 9 * * * *)"}),
        details(run_tag, RetainRule={"Count": 1001}),
        details(run_tag, CrossRegionCopyRules=[{"Target": "mars-north-1", "Encrypted": False}]),
        details(run_tag, CrossRegionCopyRules=[{"Target": dlm_server.region, "Encrypted": False}]),
        details(run_tag, VariableTags=[{"Key": "id", "Value": "$(instance-id)"}]),
        details(run_tag, FastRestoreRule={"Count": 1, "AvailabilityZones": ["us-east-1a"]}),
        details(run_tag, ArchiveRule={"RetainRule": {"RetentionArchiveTier": {"Count": 3}}}),
        details(run_tag, CreateRule={"CronExpression": "cron(0 0 1 * ? *)"},
                ArchiveRule={"RetainRule": {"RetentionArchiveTier": {"Count": 2}}}),
        details(run_tag, CreateRule={"CronExpression": "cron(0 0 1 * ? *)"},
                ArchiveRule={"RetainRule": {"RetentionArchiveTier": {"Interval": 120, "IntervalUnit": "DAYS"}}}),
        details(run_tag, ShareRules=[{"TargetAccounts": ["not-an-account"]}]),
        details(run_tag, ShareRules=[{"TargetAccounts": ["123456789012"], "UnshareInterval": 1}]),
        dict(details(run_tag), PolicyType="IMAGE_MANAGEMENT"),
    ]:
        invalid(PolicyDetails=bad)
    invalid(ExecutionRoleArn="arn:aws:iam::123456789012:user/not-a-role")
    invalid(Description="no!punctuation?")
    invalid(DefaultPolicy="VOLUME")

    # Unknown policies and ARNs.
    missing = "policy-0123456789abcdef0"
    for call in (lambda: dlm.get_lifecycle_policy(PolicyId=missing),
                 lambda: dlm.update_lifecycle_policy(PolicyId=missing, State="ENABLED"),
                 lambda: dlm.delete_lifecycle_policy(PolicyId=missing),
                 lambda: dlm.get_lifecycle_policies(PolicyIds=[missing])):
        with pytest.raises(ClientError) as e:
            call()
        code, status, r = error_of(e)
        assert (code, status) == ("ResourceNotFoundException", 404) and missing in r["ResourceIds"]
    with pytest.raises(ClientError) as e:
        dlm.tag_resource(ResourceArn="arn:aws:ec2:us-east-1:123456789012:volume/vol-1", Tags={"a": "b"})
    assert error_of(e)[:2] == ("InvalidRequestException", 400)

    # Another account's policy is not found.
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="mine", State="DISABLED",
                                      PolicyDetails=details(run_tag))["PolicyId"]
    arn = dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]["PolicyArn"]
    with pytest.raises(ClientError) as e:
        dlm.list_tags_for_resource(ResourceArn=arn.replace(pid, missing))
    assert error_of(e)[:2] == ("ResourceNotFoundException", 404)
    other = dlm_client(dlm_server, dlm_server.create_account())
    with pytest.raises(ClientError) as e:
        other.get_lifecycle_policy(PolicyId=pid)
    assert error_of(e)[:2] == ("ResourceNotFoundException", 404)
    # An update cannot change the resource type.
    d = details(run_tag)
    d["ResourceTypes"] = ["INSTANCE"]
    with pytest.raises(ClientError) as e:
        dlm.update_lifecycle_policy(PolicyId=pid, PolicyDetails=d)
    assert error_of(e)[:2] == ("InvalidRequestException", 400)
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_policy_limit(dlm_server, run_tag):
    creds = dlm_server.create_account()
    dlm = dlm_client(dlm_server, creds)
    for i in range(100):
        dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description=f"p{i}", State="DISABLED",
                                    PolicyDetails=details(run_tag))
    with pytest.raises(ClientError) as e:
        dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="one too many", State="DISABLED",
                                    PolicyDetails=details(run_tag))
    code, status, r = error_of(e)
    assert (code, status) == ("LimitExceededException", 429) and r["ResourceType"] == "LifecyclePolicy"
    rc, err = aws_dlm(dlm_server, "create-lifecycle-policy", "--execution-role-arn", ROLE, "--description", "cli",
                      "--state", "DISABLED", "--policy-details", json.dumps(details(run_tag)), creds=creds)
    assert rc != 0 and "LimitExceededException" in err, err
    # Another region has its own limit.
    dlm_client(dlm_server, creds, COPY_REGION).create_lifecycle_policy(
        ExecutionRoleArn=ROLE, Description="elsewhere", State="DISABLED", PolicyDetails=details(run_tag))


def test_policy_calls_cli(dlm_server, run_tag):
    rc, out = aws_dlm(dlm_server, "create-lifecycle-policy", "--execution-role-arn", ROLE, "--description", "cli",
                      "--state", "DISABLED", "--policy-details", json.dumps(details(run_tag)),
                      "--tags", "owner=cli", inproc=False)
    assert rc == 0, out
    pid = out["PolicyId"]
    rc, out = aws_dlm(dlm_server, "get-lifecycle-policy", "--policy-id", pid)
    assert rc == 0 and out["Policy"]["State"] == "DISABLED" and out["Policy"]["Tags"] == {"owner": "cli"}
    arn = out["Policy"]["PolicyArn"]
    rc, out = aws_dlm(dlm_server, "get-lifecycle-policies", "--target-tags", f"backup={run_tag}")
    assert rc == 0 and [p["PolicyId"] for p in out["Policies"]] == [pid]
    rc, out = aws_dlm(dlm_server, "update-lifecycle-policy", "--policy-id", pid, "--state", "ENABLED")
    assert rc == 0
    rc, out = aws_dlm(dlm_server, "get-lifecycle-policies", "--policy-ids", pid, "--state", "ENABLED")
    assert rc == 0 and [p["PolicyId"] for p in out["Policies"]] == [pid]
    assert aws_dlm(dlm_server, "tag-resource", "--resource-arn", arn, "--tags", "k=v")[0] == 0
    rc, out = aws_dlm(dlm_server, "list-tags-for-resource", "--resource-arn", arn)
    assert rc == 0 and out["Tags"] == {"owner": "cli", "k": "v"}
    assert aws_dlm(dlm_server, "untag-resource", "--resource-arn", arn, "--tag-keys", "owner")[0] == 0
    assert aws_dlm(dlm_server, "list-tags-for-resource", "--resource-arn", arn)[1]["Tags"] == {"k": "v"}
    assert aws_dlm(dlm_server, "delete-lifecycle-policy", "--policy-id", pid)[0] == 0
    # The documented errors, as the CLI reports them.
    rc, err = aws_dlm(dlm_server, "get-lifecycle-policy", "--policy-id", pid, inproc=False)
    assert rc != 0 and "ResourceNotFoundException" in err, err
    bad = details(run_tag, CreateRule={"Interval": 7, "IntervalUnit": "HOURS"})
    rc, err = aws_dlm(dlm_server, "create-lifecycle-policy", "--execution-role-arn", ROLE, "--description", "x",
                      "--state", "ENABLED", "--policy-details", json.dumps(bad))
    assert rc != 0 and "InvalidRequestException" in err, err


# ------------------------------------------------------------------------------------------ policies that run
def policy_snapshots(ec2, pid: str) -> list[dict]:
    snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": f"tag:{POLICY_TAG}", "Values": [pid]}])
    return sorted(snaps["Snapshots"], key=lambda s: s["StartTime"])


def tags_of(s: dict) -> dict:
    return {t["Key"]: t["Value"] for t in s.get("Tags", [])}


def wait_for(ec2, pid: str, pred, what: str) -> list[dict]:
    return poll(lambda: policy_snapshots(ec2, pid), pred, timeout=60, interval=0.2) or pytest.fail(what)


def completed(n: int):
    return lambda snaps: len(snaps) == n and all(s["State"] == "completed" for s in snaps)


def test_interval_policy_creates_copies_and_retires(dlm_server, az, run_tag):
    """An hourly policy: each advance of the clock by the interval takes one snapshot; the copy rule copies
    it to another region; the count rule keeps the newest two; the copies go after their age; slots
    missed while the clock jumped a day are made up by one run, not 24."""
    ec2 = dlm_server.client()
    ec2_copy = dlm_server.client(region=COPY_REGION)
    dlm = dlm_client(dlm_server)
    vol = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[vol], Tags=[{"Key": "backup", "Value": run_tag}, {"Key": "owner", "Value": "ops"}])
    d = details(run_tag, CopyTags=True, TagsToAdd=[{"Key": "made-by", "Value": "dlm"}],
                CrossRegionCopyRules=[{"Target": COPY_REGION, "Encrypted": False, "CopyTags": True,
                                       "RetainRule": {"Interval": 1, "IntervalUnit": "DAYS"}}])
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="hourly", State="ENABLED",
                                      PolicyDetails=d)["PolicyId"]
    assert policy_snapshots(ec2, pid) == []

    dlm_server.advance_clock(3600)
    first = wait_for(ec2, pid, completed(1), "the first run took no snapshot")[0]
    assert first["VolumeId"] == vol
    tags = tags_of(first)
    assert tags[POLICY_TAG] == pid and tags[SCHEDULE_TAG] == "hourly" and tags["dlm:managed"] == "true"
    assert tags["made-by"] == "dlm" and tags["owner"] == "ops" and tags["backup"] == run_tag
    assert pid in first["Description"]
    copies = wait_for(ec2_copy, pid, completed(1), "the snapshot was not copied")
    ctags = tags_of(copies[0])
    assert ctags[POLICY_TAG] == pid and ctags["owner"] == "ops" and "aws:dlm:expirationTime" in ctags
    assert first["SnapshotId"] in copies[0]["Description"]

    dlm_server.advance_clock(3600)
    wait_for(ec2, pid, completed(2), "the second run took no snapshot")
    dlm_server.advance_clock(3600)
    # Count 2: the third run retires the first snapshot.
    kept = wait_for(ec2, pid, lambda s: len(s) == 2 and first["SnapshotId"] not in [x["SnapshotId"] for x in s]
                    and all(x["State"] == "completed" for x in s), "the count rule retired nothing")
    assert len(wait_for(ec2_copy, pid, completed(3), "copies missing")) == 3

    # A day later: one catch-up run (not 24); the three copies are past their one-day age.
    dlm_server.advance_clock(24 * 3600)
    kept_ids = [k["SnapshotId"] for k in kept]
    now = wait_for(ec2, pid, lambda s: [x["SnapshotId"] for x in s][:1] == kept_ids[1:]
                   and len(s) == 2 and all(x["State"] == "completed" for x in s), "no catch-up run")
    newest = now[-1]["SnapshotId"]
    left = wait_for(ec2_copy, pid, lambda s: len(s) == 1 and newest in s[0]["Description"]
                    and s[0]["State"] == "completed", "the copies were not retired by age")
    assert left
    # Settled: more ticks take nothing more.
    time.sleep(1)
    assert [s["SnapshotId"] for s in policy_snapshots(ec2, pid)] == [s["SnapshotId"] for s in now]
    assert len(policy_snapshots(ec2_copy, pid)) == 1, "more than one catch-up run was copied"
    p = dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]
    assert p["State"] == "ENABLED", p["StatusMessage"]
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_cron_policy_retires_by_age_and_copies_encrypted(dlm_server, az, run_tag):
    """A cron schedule (hourly at :00), age retention (one day) of the snapshots, and a copy rule that
    encrypts the copies under a KMS key of the destination region (CmkArn)."""
    ec2 = dlm_server.client()
    ec2_copy = dlm_server.client(region=COPY_REGION)
    dlm = dlm_client(dlm_server)
    key = dlm_server.session(region=COPY_REGION).client("kms", endpoint_url=dlm_server.endpoint).create_key(
        Description="dlm copies")["KeyMetadata"]["Arn"]
    vol = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[vol], Tags=[{"Key": "backup", "Value": run_tag}])
    d = details(run_tag, CreateRule={"CronExpression": "cron(0 * * * ? *)"},
                RetainRule={"Interval": 1, "IntervalUnit": "DAYS"},
                CrossRegionCopyRules=[{"Target": COPY_REGION, "Encrypted": True, "CmkArn": key}])
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="cron", State="ENABLED",
                                      PolicyDetails=d)["PolicyId"]
    dlm_server.advance_clock(3600)
    first = wait_for(ec2, pid, completed(1), "the cron schedule did not run")[0]
    assert not first["Encrypted"]
    assert "aws:dlm:expirationTime" in tags_of(first)
    copy = wait_for(ec2_copy, pid, completed(1), "no encrypted copy")[0]
    assert copy["Encrypted"] and copy["KmsKeyId"] == key
    # A day later: a catch-up run, and the first snapshot is past its age.
    dlm_server.advance_clock(24 * 3600 + 60)
    later = wait_for(ec2, pid, lambda s: len(s) == 1 and s[0]["SnapshotId"] != first["SnapshotId"]
                     and s[0]["State"] == "completed", "the first snapshot was not retired by age")
    assert later
    # Copies without a retain rule of their own stay.
    assert len(wait_for(ec2_copy, pid, completed(2), "the second copy is missing")) == 2
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_share_rule_shares_then_unshares(dlm_server, az, run_tag):
    """ShareRules: each new snapshot is shared with the rule's account (which can then see it), and
    unshared once UnshareInterval has passed."""
    ec2 = dlm_server.client()
    dlm = dlm_client(dlm_server)
    friend = dlm_server.create_account()
    friend_ec2 = dlm_server.client(friend)
    vol = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[vol], Tags=[{"Key": "backup", "Value": run_tag}])
    d = details(run_tag, ShareRules=[{"TargetAccounts": [friend.account_id], "UnshareInterval": 1,
                                      "UnshareIntervalUnit": "DAYS"}])
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="shared", State="ENABLED",
                                      PolicyDetails=d)["PolicyId"]
    assert dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]["PolicyDetails"]["Schedules"][0]["ShareRules"] == \
        d["Schedules"][0]["ShareRules"]
    dlm_server.advance_clock(3600)
    sid = wait_for(ec2, pid, completed(1), "no run")[0]["SnapshotId"]

    def shared_with():
        r = ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
        return [p.get("UserId") for p in r["CreateVolumePermissions"]]
    assert poll(shared_with, lambda a: a == [friend.account_id], timeout=30)
    assert friend_ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["OwnerId"] != friend.account_id
    dlm_server.advance_clock(24 * 3600 + 60)
    assert poll(shared_with, lambda a: a == [], timeout=30) == [], "not unshared after a day"
    with pytest.raises(ClientError):
        friend_ec2.describe_snapshots(SnapshotIds=[sid])
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_archive_rule_archives_then_deletes(dlm_server, az, run_tag):
    """ArchiveRule: a monthly schedule keeping one standard snapshot archives the older ones
    (ModifySnapshotTier) and keeps three in the archive tier, deleting the oldest beyond that."""
    ec2 = dlm_server.client()
    dlm = dlm_client(dlm_server)
    vol = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[vol], Tags=[{"Key": "backup", "Value": run_tag}])
    d = details(run_tag, CreateRule={"CronExpression": "cron(0 0 1 * ? *)"}, RetainRule={"Count": 1},
                ArchiveRule={"RetainRule": {"RetentionArchiveTier": {"Count": 3}}})
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="archive", State="ENABLED",
                                      PolicyDetails=d)["PolicyId"]
    got = dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]["PolicyDetails"]["Schedules"][0]
    assert got["ArchiveRule"] == d["Schedules"][0]["ArchiveRule"]
    taken = []
    for month in range(5):
        dlm_server.advance_clock(32 * 24 * 3600)
        snaps = wait_for(ec2, pid, lambda s: len({x["SnapshotId"] for x in s} - set(taken)) == 1
                         and all(x["State"] == "completed" for x in s), f"no run in month {month}")
        taken += [x["SnapshotId"] for x in snaps if x["SnapshotId"] not in taken]

    def tiers():
        return {s["SnapshotId"]: s.get("StorageTier") for s in policy_snapshots(ec2, pid)}
    want = {taken[1]: "archive", taken[2]: "archive", taken[3]: "archive", taken[4]: "standard"}
    assert poll(tiers, lambda t: t == want, timeout=60) == want, (tiers(), want)
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_locked_snapshot_is_not_retired(dlm_server, az, run_tag):
    """Retirement deletes through DeleteSnapshot: a locked snapshot past the count stays until unlocked."""
    ec2 = dlm_server.client()
    dlm = dlm_client(dlm_server)
    vol = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[vol], Tags=[{"Key": "backup", "Value": run_tag}])
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="locked", State="ENABLED",
                                      PolicyDetails=details(run_tag, RetainRule={"Count": 1}))["PolicyId"]
    dlm_server.advance_clock(3600)
    first = wait_for(ec2, pid, completed(1), "no first run")[0]["SnapshotId"]
    ec2.lock_snapshot(SnapshotId=first, LockMode="governance", LockDuration=1)
    dlm_server.advance_clock(3600)
    both = wait_for(ec2, pid, completed(2), "no second run")
    time.sleep(0.6)  # ticks that try (and fail) to retire the locked one
    assert [s["SnapshotId"] for s in policy_snapshots(ec2, pid)] == [s["SnapshotId"] for s in both]
    ec2.unlock_snapshot(SnapshotId=first)
    left = wait_for(ec2, pid, lambda s: [x["SnapshotId"] for x in s] == [both[1]["SnapshotId"]],
                    "the unlocked snapshot was not retired")
    assert left
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_retired_snapshot_goes_to_the_recycle_bin(dlm_server, az, run_tag):
    """Retirement deletes through DeleteSnapshot: with a Recycle Bin rule the retired snapshot goes to the
    bin (and can be restored from it), as it does on AWS."""
    creds = dlm_server.create_account()
    ec2 = dlm_server.client(creds)
    dlm = dlm_client(dlm_server, creds)
    rbin = dlm_server.session(creds).client("rbin", endpoint_url=dlm_server.endpoint)
    rbin.create_rule(ResourceType="EBS_SNAPSHOT", Description="keep deleted snapshots",
                     RetentionPeriod={"RetentionPeriodValue": 7, "RetentionPeriodUnit": "DAYS"})
    vol = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[vol], Tags=[{"Key": "backup", "Value": run_tag}])
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="binned", State="ENABLED",
                                      PolicyDetails=details(run_tag, RetainRule={"Count": 1}))["PolicyId"]
    dlm_server.advance_clock(3600)
    first = wait_for(ec2, pid, completed(1), "no first run")[0]["SnapshotId"]
    dlm_server.advance_clock(3600)
    wait_for(ec2, pid, lambda s: len(s) == 1 and s[0]["SnapshotId"] != first and s[0]["State"] == "completed",
             "the first snapshot was not retired")
    binned = poll(lambda: [s["SnapshotId"] for s in ec2.list_snapshots_in_recycle_bin()["Snapshots"]],
                  lambda ids: first in ids, timeout=30)
    assert binned and first in binned, binned
    ec2.restore_snapshot_from_recycle_bin(SnapshotId=first)
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_instance_policy_takes_multi_volume_sets(dlm_server, az, image_id, run_tag):
    """A policy that targets instances takes one crash-consistent set of the instance's volumes
    (CreateSnapshots), minus data volumes carrying an excluded tag; variable tags name the instance."""
    ec2 = dlm_server.client()
    dlm = dlm_client(dlm_server)
    inst = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    ec2.create_tags(Resources=[inst], Tags=[{"Key": "backup", "Value": run_tag}])
    root = ec2.describe_instances(InstanceIds=[inst])["Reservations"][0]["Instances"][0]["BlockDeviceMappings"]
    volumes = {m["Ebs"]["VolumeId"] for m in root}
    data = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    skip = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[skip], Tags=[{"Key": "scratch", "Value": "yes"}])
    for vid, dev in ((data, "/dev/sdf"), (skip, "/dev/sdg")):
        ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device=dev)
        wait_attached(ec2, vid)
    volumes.add(data)
    d = details(run_tag, VariableTags=[{"Key": "instance", "Value": "$(instance-id)"},
                                       {"Key": "taken", "Value": "$(timestamp)"}])
    d["ResourceTypes"] = ["INSTANCE"]
    d["Parameters"] = {"ExcludeBootVolume": False, "ExcludeDataVolumeTags": [{"Key": "scratch", "Value": "yes"}]}
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="instances", State="ENABLED",
                                      PolicyDetails=d)["PolicyId"]
    dlm_server.advance_clock(3600)
    snaps = wait_for(ec2, pid, completed(len(volumes)), "the instance was not snapshotted")
    assert {s["VolumeId"] for s in snaps} == volumes
    assert len({s["StartTime"] for s in snaps}) == 1, "one instant across the instance's volumes"
    for s in snaps:
        t = tags_of(s)
        assert t["instance"] == inst and t[POLICY_TAG] == pid and t["taken"].startswith("20")
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_failed_run_puts_the_policy_in_error(dlm_server, az, image_id, run_tag):
    """A run that cannot snapshot a target (an instance with nothing left after ExcludeBootVolume) puts
    the policy in ERROR with a StatusMessage; GetLifecyclePolicies filters on it."""
    ec2 = dlm_server.client()
    dlm = dlm_client(dlm_server)
    inst = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    ec2.create_tags(Resources=[inst], Tags=[{"Key": "backup", "Value": run_tag}])
    d = details(run_tag)
    d["ResourceTypes"] = ["INSTANCE"]
    d["Parameters"] = {"ExcludeBootVolume": True}
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="fails", State="ENABLED",
                                      PolicyDetails=d)["PolicyId"]
    dlm_server.advance_clock(3600)
    p = poll(lambda: dlm.get_lifecycle_policy(PolicyId=pid)["Policy"], lambda p: p["State"] == "ERROR",
             timeout=30) or pytest.fail("the policy never reported its failed run")
    assert inst in p["StatusMessage"]
    assert pid in [x["PolicyId"] for x in dlm.get_lifecycle_policies(State="ERROR")["Policies"]]
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_disabled_policy_does_not_run(dlm_server, az, run_tag):
    ec2 = dlm_server.client()
    dlm = dlm_client(dlm_server)
    vol = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    ec2.create_tags(Resources=[vol], Tags=[{"Key": "backup", "Value": run_tag}])
    pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="off", State="DISABLED",
                                      PolicyDetails=details(run_tag))["PolicyId"]
    dlm_server.advance_clock(2 * 3600)
    time.sleep(1)
    assert policy_snapshots(ec2, pid) == []
    # Enabled now: slots missed while disabled are not made up; the next one runs.
    dlm.update_lifecycle_policy(PolicyId=pid, State="ENABLED")
    time.sleep(0.6)
    assert policy_snapshots(ec2, pid) == []
    dlm_server.advance_clock(3600)
    wait_for(ec2, pid, completed(1), "the enabled policy did not run")
    dlm.delete_lifecycle_policy(PolicyId=pid)


def test_restart_does_not_run_a_slot_twice(tmp_path, az, run_tag):
    """A slot is claimed durably before its snapshots are taken: after a restart the policy does not take
    it again (the test clock's offset is gone after the restart, the claim is not)."""
    srv = _make_server(tmp_path, BLOCKSNAP_TEST_CLOCK="1", BLOCKSNAP_DLM_TICK_MS="200")
    try:
        ec2 = srv.client()
        dlm = dlm_client(srv)
        vol = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
        ec2.create_tags(Resources=[vol], Tags=[{"Key": "backup", "Value": run_tag}])
        pid = dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="restart", State="ENABLED",
                                          PolicyDetails=details(run_tag, RetainRule={"Count": 10}))["PolicyId"]
        srv.advance_clock(3600)
        taken = wait_for(ec2, pid, completed(1), "no run before the restart")
        srv.restart()
        ec2 = srv.client()
        time.sleep(1)
        assert policy_snapshots(ec2, pid) == taken
        # The clock back where it was before the restart: the slot it ran is still claimed.
        srv.advance_clock(3600)
        time.sleep(1)
        assert policy_snapshots(ec2, pid) == taken
        # The next slot runs once.
        srv.advance_clock(3600)
        wait_for(ec2, pid, completed(2), "the next slot did not run")
        time.sleep(0.6)
        assert len(policy_snapshots(ec2, pid)) == 2
    finally:
        srv.stop()
