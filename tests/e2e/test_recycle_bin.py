"""The Recycle Bin (issue 16): retention rules (service `rbin`, REST-JSON) and the bin they fill
(EC2 ListSnapshotsInRecycleBin, RestoreSnapshotFromRecycleBin), through boto3 and the AWS CLI.

A deleted snapshot a rule retains leaves DescribeSnapshots but keeps its manifest and blocks (GC runs
every second here and must not take them); restored, it reads back byte for byte; past its retention
(the test clock moves days at once) it is purged and GC reclaims its blocks. Each test works in an
account of its own: a region-level rule retains every deleted snapshot of its account."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import cli_inproc
from conftest import _make_server, poll

pytestmark = pytest.mark.blocksnap_only

DAY = 24 * 3600
BLOCK = 524288


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = _make_server(tmp_path_factory.mktemp("rbin"), BLOCKSNAP_TEST_CLOCK="1", BLOCKSNAP_RBIN_SWEEP_MS="100",
                     BLOCKSNAP_GC_INTERVAL_SECS="1", BLOCKSNAP_GC_GRACE_SECS="0")
    yield s
    s.stop()


class Account:
    def __init__(self, srv):
        self.srv = srv
        self.creds = srv.create_account()
        sess = srv.session(self.creds)
        cfg = Config(retries={"max_attempts": 1, "mode": "standard"})
        self.ec2 = srv.client(self.creds)
        self.rbin = sess.client("rbin", endpoint_url=srv.endpoint, config=cfg)
        self.raw = sess.client("rbin", endpoint_url=srv.endpoint,
                               config=Config(retries={"max_attempts": 1}, parameter_validation=False))
        self.ebs = sess.client("ebs", endpoint_url=srv.endpoint, config=cfg)

    def cli(self, *args, check=True, executable=False):
        """`aws …` as this account: in-process (cli_inproc, the CLI's own code), or the real
        executable."""
        env = {"AWS_ACCESS_KEY_ID": self.creds.access_key, "AWS_SECRET_ACCESS_KEY": self.creds.secret_key,
               "AWS_DEFAULT_REGION": self.srv.region, "AWS_CONFIG_FILE": os.devnull,
               "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1"}
        argv = [*args, "--endpoint-url", self.srv.endpoint, "--output", "json"]
        if executable:
            full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env
            p = subprocess.run(["aws", *argv], capture_output=True, text=True, env=full, timeout=120)
            rc, out, err = p.returncode, p.stdout, p.stderr
        else:
            rc, out, err = cli_inproc.run(argv, env)
        if not check:
            assert rc != 0, out
            return err
        assert rc == 0, err
        return json.loads(out) if out.strip() else {}

    def snapshot(self, data: bytes = b"", tags: dict | None = None) -> str:
        """A completed snapshot, written through the EBS direct APIs (block 0 = data, if any)."""
        kw = {"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]} if tags else {}
        sid = self.ebs.start_snapshot(VolumeSize=1, **kw)["SnapshotId"]
        if data:
            self.ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data, DataLength=len(data),
                                        Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                                        ChecksumAlgorithm="SHA256")
        self.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1 if data else 0)
        poll(lambda: self.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"],
             lambda s: s == "completed")
        return sid

    def binned(self) -> dict:
        return {s["SnapshotId"]: s for s in self.ec2.list_snapshots_in_recycle_bin()["Snapshots"]}

    def described(self) -> set:
        return {s["SnapshotId"] for s in self.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def rerr(call) -> dict:
    with pytest.raises(ClientError) as e:
        call()
    r = e.value.response
    return {"code": r["Error"]["Code"], "reason": r.get("Reason"), "status": r["ResponseMetadata"]["HTTPStatusCode"],
            "message": r["Error"]["Message"]}


def days(n: int) -> dict:
    return {"RetentionPeriodValue": n, "RetentionPeriodUnit": "DAYS"}


def manifest_stored(srv, sid) -> bool:
    key = f"snapshots/{srv.region}/snaps/{sid}.manifest"
    return key in srv.store_objects(f"snapshots/{srv.region}/snaps")


def chunk_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(srv) -> set:
    keys = srv.store_objects(f"snapshots/{srv.region}/chunks")
    return {k.rsplit("/", 1)[-1] for k in keys if "#" not in k}


# ------------------------------------------------------------------------------------------- rules
def test_rule_lifecycle_and_tags(srv):
    a = Account(srv)
    r = a.rbin.create_rule(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(3), Description="keep tagged",
                           ResourceTags=[{"ResourceTagKey": "keep", "ResourceTagValue": "yes"}],
                           Tags=[{"Key": "team", "Value": "storage"}])
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201
    rid, arn = r["Identifier"], r["RuleArn"]
    assert len(rid) == 11 and arn == f"arn:aws:rbin:{srv.region}:{a.creds.account_id or arn.split(':')[4]}:rule/{rid}"
    assert r["Status"] == "available" and r["LockState"] == "unlocked" and r["Tags"] == [
        {"Key": "team", "Value": "storage"}]
    got = a.rbin.get_rule(Identifier=rid)
    assert got["RetentionPeriod"] == days(3) and got["ResourceTags"] == [
        {"ResourceTagKey": "keep", "ResourceTagValue": "yes"}] and got["Description"] == "keep tagged"
    # Update: retention and description; the resource type can't change.
    up = a.rbin.update_rule(Identifier=rid, RetentionPeriod=days(5), Description="five days")
    assert up["RetentionPeriod"] == days(5) and up["Description"] == "five days"
    assert rerr(lambda: a.rbin.update_rule(Identifier=rid, ResourceType="EC2_IMAGE"))["code"] == "ValidationException"
    # Tags of the rule, by ARN.
    a.rbin.tag_resource(ResourceArn=arn, Tags=[{"Key": "env", "Value": "test"}])
    assert {t["Key"] for t in a.rbin.list_tags_for_resource(ResourceArn=arn)["Tags"]} == {"team", "env"}
    a.rbin.untag_resource(ResourceArn=arn, TagKeys=["team"])
    assert a.rbin.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "env", "Value": "test"}]
    # The CLI: same calls, same answers.
    listed = a.cli("rbin", "list-rules", "--resource-type", "EBS_SNAPSHOT", executable=True)
    assert [x["Identifier"] for x in listed["Rules"]] == [rid] and listed["Rules"][0]["LockState"] == "unlocked"
    assert a.cli("rbin", "get-rule", "--identifier", rid)["RetentionPeriod"] == days(5)
    assert a.cli("rbin", "list-tags-for-resource", "--resource-arn", arn)["Tags"] == [{"Key": "env", "Value": "test"}]
    # Another account sees nothing of it.
    b = Account(srv)
    assert rerr(lambda: b.rbin.get_rule(Identifier=rid))["code"] == "ResourceNotFoundException"
    assert b.rbin.list_rules(ResourceType="EBS_SNAPSHOT")["Rules"] == []
    assert a.rbin.delete_rule(Identifier=rid)["ResponseMetadata"]["HTTPStatusCode"] == 204
    e = rerr(lambda: a.rbin.get_rule(Identifier=rid))
    assert e == {**e, "code": "ResourceNotFoundException", "reason": "RULE_NOT_FOUND", "status": 404}
    assert "ResourceNotFoundException" in a.cli("rbin", "delete-rule", "--identifier", rid, check=False)


@pytest.fixture(scope="module")
def validation_account(srv):
    """One account for the refused creations: none of them may leave a rule behind."""
    return Account(srv)


@pytest.mark.parametrize("kw", [
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(0)),
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(366)),
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod={"RetentionPeriodValue": 1, "RetentionPeriodUnit": "HOURS"}),
    dict(ResourceType="EBS_VOLUME", RetentionPeriod=days(1)),
    dict(ResourceType="DISK", RetentionPeriod=days(1)),
    dict(RetentionPeriod=days(1)),
    dict(ResourceType="EBS_SNAPSHOT"),
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1), Description="tab\there"),
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1), ResourceTags=[{"ResourceTagKey": "a"}],
         ExcludeResourceTags=[{"ResourceTagKey": "b"}]),
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1), ResourceTags=[{"ResourceTagKey": "a"}],
         LockConfiguration={"UnlockDelay": {"UnlockDelayValue": 7, "UnlockDelayUnit": "DAYS"}}),
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1),
         LockConfiguration={"UnlockDelay": {"UnlockDelayValue": 6, "UnlockDelayUnit": "DAYS"}}),
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1),
         ExcludeResourceTags=[{"ResourceTagKey": f"k{i}"} for i in range(6)]),
    dict(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1), Tags=[{"Key": "aws:x", "Value": "1"}]),
], ids=["zero-days", "366-days", "hours", "ebs-volume", "bad-type", "no-type", "no-retention", "tab",
        "tags-and-exclusions", "lock-tag-level", "unlock-delay-6", "six-exclusions", "aws-tag"])
def test_create_rule_validation(validation_account, kw):
    a = validation_account
    e = rerr(lambda: a.raw.create_rule(**kw))
    assert (e["code"], e["reason"], e["status"]) == ("ValidationException", "INVALID_PARAMETER_VALUE", 400), e
    assert a.rbin.list_rules(ResourceType="EBS_SNAPSHOT")["Rules"] == []


def test_rule_errors_and_paging(srv):
    a = Account(srv)
    e = rerr(lambda: a.rbin.get_rule(Identifier="0123456789a"))
    assert (e["code"], e["reason"], e["status"]) == ("ResourceNotFoundException", "RULE_NOT_FOUND", 404)
    assert rerr(lambda: a.raw.get_rule(Identifier="short"))["code"] == "ValidationException"
    assert rerr(lambda: a.rbin.list_tags_for_resource(
        ResourceArn=f"arn:aws:rbin:{srv.region}:123456789012:rule/0123456789a"))["code"] == "ResourceNotFoundException"
    e = rerr(lambda: a.rbin.list_rules(ResourceType="EBS_SNAPSHOT", NextToken="bm90LWEtdG9rZW4="))
    assert (e["code"], e["reason"]) == ("ValidationException", "INVALID_PAGE_TOKEN")
    ids = sorted(a.rbin.create_rule(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1 + i),
                                    ResourceTags=[{"ResourceTagKey": "k", "ResourceTagValue": "v"}])["Identifier"]
                 for i in range(5))
    # The same tag pair in at most five rules.
    e = rerr(lambda: a.rbin.create_rule(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1),
                                        ResourceTags=[{"ResourceTagKey": "k", "ResourceTagValue": "v"}]))
    assert (e["code"], e["reason"], e["status"]) == ("ServiceQuotaExceededException", "SERVICE_QUOTA_EXCEEDED", 402)
    img = a.rbin.create_rule(ResourceType="EC2_IMAGE", RetentionPeriod=days(1))["Identifier"]
    pages = list(a.rbin.get_paginator("list_rules").paginate(ResourceType="EBS_SNAPSHOT",
                                                             PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3 and [r["Identifier"] for p in pages for r in p["Rules"]] == ids
    assert [r["Identifier"] for r in a.rbin.list_rules(ResourceType="EC2_IMAGE")["Rules"]] == [img]
    assert a.rbin.list_rules(ResourceType="EBS_SNAPSHOT", ResourceTags=[
        {"ResourceTagKey": "k", "ResourceTagValue": "other"}])["Rules"] == []
    assert len(a.rbin.list_rules(ResourceType="EBS_SNAPSHOT", LockState="unlocked")["Rules"]) == 5
    assert a.rbin.list_rules(ResourceType="EBS_SNAPSHOT", LockState="locked")["Rules"] == []


def test_rule_lock_unlock_delay(srv):
    a = Account(srv)
    lock = {"UnlockDelay": {"UnlockDelayValue": 7, "UnlockDelayUnit": "DAYS"}}
    r = a.rbin.create_rule(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1), LockConfiguration=lock)
    rid = r["Identifier"]
    assert r["LockState"] == "locked" and r["LockConfiguration"] == lock
    for call in (lambda: a.rbin.update_rule(Identifier=rid, RetentionPeriod=days(2)),
                 lambda: a.rbin.delete_rule(Identifier=rid),
                 lambda: a.rbin.lock_rule(Identifier=rid, LockConfiguration=lock)):
        e = rerr(call)
        assert (e["code"], e["reason"], e["status"]) == ("ConflictException", "INVALID_RULE_STATE", 409), e
    assert "ConflictException" in a.cli("rbin", "delete-rule", "--identifier", rid, check=False)
    u = a.cli("rbin", "unlock-rule", "--identifier", rid)
    assert u["LockState"] == "pending_unlock" and "LockEndTime" in u
    end = a.rbin.get_rule(Identifier=rid)["LockEndTime"]
    assert dt.timedelta(days=6, hours=23) < end - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=7)
    assert rerr(lambda: a.rbin.delete_rule(Identifier=rid))["code"] == "ConflictException"
    assert rerr(lambda: a.rbin.unlock_rule(Identifier=rid))["code"] == "ConflictException"
    assert [x["Identifier"] for x in a.rbin.list_rules(ResourceType="EBS_SNAPSHOT",
                                                       LockState="pending_unlock")["Rules"]] == [rid]
    # Relocked during the delay, unlocked again; the delay passes (test clock): free to change.
    assert a.rbin.lock_rule(Identifier=rid, LockConfiguration=lock)["LockState"] == "locked"
    a.rbin.unlock_rule(Identifier=rid)
    srv.advance_clock(8 * DAY)
    got = a.rbin.get_rule(Identifier=rid)
    assert got["LockState"] == "unlocked" and "LockEndTime" not in got
    assert a.rbin.update_rule(Identifier=rid, RetentionPeriod=days(2))["RetentionPeriod"] == days(2)
    # Exclusion tags make a rule unlockable.
    a.rbin.update_rule(Identifier=rid, ExcludeResourceTags=[{"ResourceTagKey": "temp"}])
    e = rerr(lambda: a.rbin.lock_rule(Identifier=rid, LockConfiguration=lock))
    assert e["code"] == "ValidationException"
    a.rbin.delete_rule(Identifier=rid)
    assert rerr(lambda: a.rbin.unlock_rule(Identifier=rid))["code"] == "ResourceNotFoundException"


# ------------------------------------------------------------------------------------------- the bin
def test_deleted_snapshot_is_binned_restored_and_purged(srv):
    a = Account(srv)
    rule = a.rbin.create_rule(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(1),
                              ResourceTags=[{"ResourceTagKey": "keep", "ResourceTagValue": "yes"}])["Identifier"]
    data, junk = os.urandom(BLOCK), os.urandom(BLOCK)
    kept = a.snapshot(data, {"keep": "yes"})
    other = a.snapshot(junk, {"keep": "no"})
    assert {chunk_name(data), chunk_name(junk)} <= chunks(srv)
    a.ec2.delete_snapshot(SnapshotId=kept)
    a.ec2.delete_snapshot(SnapshotId=other)
    # Gone from EC2's view, listed in the bin with its retention; the other is gone for good.
    assert kept not in a.described() and other not in a.described()
    with pytest.raises(ClientError) as e:
        a.ec2.describe_snapshots(SnapshotIds=[kept])
    assert e.value.response["Error"]["Code"] == "InvalidSnapshot.NotFound"
    binned = a.binned()
    assert set(binned) == {kept}
    b = binned[kept]
    assert b["RecycleBinExitTime"] - b["RecycleBinEnterTime"] == dt.timedelta(days=1)
    assert b["VolumeId"] == "vol-ffffffff"
    out = a.cli("ec2", "list-snapshots-in-recycle-bin", "--snapshot-ids", kept)
    assert [s["SnapshotId"] for s in out["Snapshots"]] == [kept]
    # Nothing else may use it while it is in the bin.
    for call in (lambda: a.ec2.create_volume(SnapshotId=kept, AvailabilityZone=f"{srv.region}a"),
                 lambda: a.ec2.lock_snapshot(SnapshotId=kept, LockMode="governance", LockDuration=1),
                 lambda: a.ec2.delete_snapshot(SnapshotId=kept)):
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "InvalidSnapshot.NotFound"
    # GC (every second, no grace) reclaims the other snapshot's block, so it ran after the binning,
    # and kept the binned snapshot's manifest and block.
    poll(lambda: chunks(srv), lambda c: chunk_name(junk) not in c, timeout=30)
    assert manifest_stored(srv, kept) and chunk_name(data) in chunks(srv)
    # Its tags may still change in the bin.
    a.ec2.create_tags(Resources=[kept], Tags=[{"Key": "note", "Value": "binned"}])
    # Restored: the same id, completed, its tags, and its bytes read back.
    r = a.ec2.restore_snapshot_from_recycle_bin(SnapshotId=kept)
    assert r["SnapshotId"] == kept and r["State"] == "completed" and r["VolumeSize"] == 1
    assert kept in a.described() and a.binned() == {}
    tags = {t["Key"]: t["Value"] for t in a.ec2.describe_snapshots(SnapshotIds=[kept])["Snapshots"][0]["Tags"]}
    assert tags == {"keep": "yes", "note": "binned"}
    token = a.ebs.list_snapshot_blocks(SnapshotId=kept)["Blocks"][0]["BlockToken"]
    got = a.ebs.get_snapshot_block(SnapshotId=kept, BlockIndex=0, BlockToken=token)["BlockData"].read()
    assert got == data
    assert rerr(lambda: a.ec2.restore_snapshot_from_recycle_bin(SnapshotId=kept))["code"] == "InvalidSnapshot.NotFound"
    # Into the bin again (the CLI restores once more), then past its retention: purged.
    a.ec2.delete_snapshot(SnapshotId=kept)
    out = a.cli("ec2", "restore-snapshot-from-recycle-bin", "--snapshot-id", kept)
    assert out["SnapshotId"] == kept and out["State"] == "completed"
    a.ec2.delete_snapshot(SnapshotId=kept)
    srv.advance_clock(DAY + 60)
    assert a.binned() == {}
    assert rerr(lambda: a.ec2.restore_snapshot_from_recycle_bin(SnapshotId=kept))["code"] == "InvalidSnapshot.NotFound"
    poll(lambda: manifest_stored(srv, kept), lambda e: not e, timeout=30)
    poll(lambda: chunks(srv), lambda c: chunk_name(data) not in c, timeout=30)
    a.rbin.delete_rule(Identifier=rule)


def test_region_rule_exclusions_longest_retention_and_locks(srv):
    a = Account(srv)
    a.rbin.create_rule(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(2),
                       ExcludeResourceTags=[{"ResourceTagKey": "temp"}])
    a.rbin.create_rule(ResourceType="EBS_SNAPSHOT", RetentionPeriod=days(9),
                       ResourceTags=[{"ResourceTagKey": "gold"}])
    plain, temp, gold, locked = (a.snapshot(), a.snapshot(tags={"temp": "1"}), a.snapshot(tags={"gold": "x"}),
                                 a.snapshot())
    a.ec2.lock_snapshot(SnapshotId=locked, LockMode="compliance", LockDuration=1)
    for sid in (plain, temp, gold):
        a.ec2.delete_snapshot(SnapshotId=sid)
    # A locked snapshot is neither deleted nor binned.
    with pytest.raises(ClientError) as e:
        a.ec2.delete_snapshot(SnapshotId=locked)
    assert e.value.response["Error"]["Code"] == "SnapshotLocked"
    binned = a.binned()
    assert set(binned) == {plain, gold} and locked in a.described()
    span = lambda s: binned[s]["RecycleBinExitTime"] - binned[s]["RecycleBinEnterTime"]  # noqa: E731
    assert span(plain) == dt.timedelta(days=2) and span(gold) == dt.timedelta(days=9)
    # Paging through the bin.
    more = [a.snapshot() for _ in range(4)]
    for sid in more:
        a.ec2.delete_snapshot(SnapshotId=sid)
    pages = list(a.ec2.get_paginator("list_snapshots_in_recycle_bin").paginate(PaginationConfig={"PageSize": 5}))
    assert len(pages) == 2 and sorted(s["SnapshotId"] for p in pages for s in p["Snapshots"]) == sorted(
        [plain, gold, *more])
    # The bin survives a restart.
    srv.restart()
    a2 = Account.__new__(Account)
    a2.__dict__.update(a.__dict__)
    a2.ec2 = srv.client(a.creds)
    assert set(a2.binned()) == {plain, gold, *more}
