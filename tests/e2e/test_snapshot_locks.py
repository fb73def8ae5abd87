"""Snapshot locks (issue 16): LockSnapshot in governance and compliance mode, the cooling-off period, lock
duration or expiry date, UnlockSnapshot and DescribeLockedSnapshots, through boto3 and the AWS CLI. A
locked snapshot survives DeleteSnapshot by the root account; time moves with the test clock."""
from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from botocore.exceptions import ClientError

import cli_inproc
from conftest import poll

pytestmark = pytest.mark.blocksnap_only

HOUR = 3600
DAY = 24 * HOUR


@pytest.fixture(scope="module")
def ec2(clock_server):
    return clock_server.client()


@pytest.fixture(scope="module")
def volume(ec2, clock_server):
    vid = ec2.create_volume(Size=1, AvailabilityZone=f"{clock_server.region}a")["VolumeId"]
    poll(lambda: ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["State"], lambda s: s == "available")
    return vid


def snapshot(ec2, volume) -> str:
    sid = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    poll(lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"], lambda s: s == "completed")
    return sid


def err(call) -> tuple[str, str]:
    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def lock_of(ec2, sid) -> dict:
    (info,) = ec2.describe_locked_snapshots(SnapshotIds=[sid])["Snapshots"]
    return info


def cli(server, *args, check=True):
    """`aws ec2 …` as root, in-process (cli_inproc: the CLI's own code without a Python start)."""
    env = {"AWS_ACCESS_KEY_ID": server.creds.access_key, "AWS_SECRET_ACCESS_KEY": server.creds.secret_key,
           "AWS_DEFAULT_REGION": server.region, "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1"}
    rc, out, err = cli_inproc.run(["ec2", *args, "--endpoint-url", server.endpoint, "--output", "json"], env)
    if not check:
        assert rc != 0, out
        return err
    assert rc == 0, err
    return json.loads(out) if out.strip() else {}


def cli_fails(server, *args) -> str:
    return cli(server, *args, check=False)


def test_governance_lock_blocks_root_until_unlocked(ec2, clock_server, volume):
    sid = snapshot(ec2, volume)
    r = ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=1)
    assert r["SnapshotId"] == sid and r["LockState"] == "governance" and r["LockDuration"] == 1
    assert r["LockExpiresOn"] - r["LockDurationStartTime"] == dt.timedelta(days=1)
    # The server's credentials are the root account's: the lock holds against it too.
    code, msg = err(lambda: ec2.delete_snapshot(SnapshotId=sid))
    assert code == "SnapshotLocked" and sid in msg
    assert "SnapshotLocked" in cli_fails(clock_server, "delete-snapshot", "--snapshot-id", sid)
    # DryRun of the delete says the same (the lock is checked first), and the snapshot stays.
    assert err(lambda: ec2.delete_snapshot(SnapshotId=sid, DryRun=True))[0] == "SnapshotLocked"
    assert ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "completed"
    # A governance lock can be changed at will (here: a longer duration), then removed.
    assert ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=3)["LockDuration"] == 3
    out = clock_server.cli("unlock-snapshot", "--snapshot-id", sid)
    assert out == {"SnapshotId": sid}
    assert ec2.describe_locked_snapshots(SnapshotIds=[sid])["Snapshots"] == []
    assert err(lambda: ec2.unlock_snapshot(SnapshotId=sid))[0] == "IncorrectState"
    ec2.delete_snapshot(SnapshotId=sid)
    assert err(lambda: ec2.describe_snapshots(SnapshotIds=[sid]))[0] == "InvalidSnapshot.NotFound"


def test_compliance_lock_cooloff_then_only_extended(ec2, clock_server, volume):
    sid = snapshot(ec2, volume)
    out = cli(clock_server, "lock-snapshot", "--snapshot-id", sid, "--lock-mode", "compliance",
                           "--cool-off-period", "2", "--lock-duration", "2")
    assert out["LockState"] == "compliance-cooloff" and out["CoolOffPeriod"] == 2, out
    assert "CoolOffPeriodExpiresOn" in out and "LockExpiresOn" in out
    # Within the cooling-off period the lock may still be shortened or removed ...
    r = ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance", CoolOffPeriod=2, LockDuration=1)
    assert r["LockState"] == "compliance-cooloff" and r["LockDuration"] == 1
    assert err(lambda: ec2.delete_snapshot(SnapshotId=sid))[0] == "SnapshotLocked"
    # ... and after it, by nobody.
    clock_server.advance_clock(3 * HOUR)
    info = lock_of(ec2, sid)
    assert info["LockState"] == "compliance" and info["OwnerId"]
    code, msg = err(lambda: ec2.unlock_snapshot(SnapshotId=sid))
    assert code == "IncorrectState" and "compliance" in msg
    assert "IncorrectState" in cli_fails(clock_server, "unlock-snapshot", "--snapshot-id", sid)
    assert err(lambda: ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=5))[0] == "IncorrectState"
    shorter = info["LockExpiresOn"] - dt.timedelta(hours=6)
    assert err(lambda: ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance",
                                         ExpirationDate=shorter))[0] == "IncorrectState"
    assert err(lambda: ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance", CoolOffPeriod=1,
                                         LockDuration=3))[0] == "InvalidParameterCombination"
    assert err(lambda: ec2.delete_snapshot(SnapshotId=sid))[0] == "SnapshotLocked"
    # Extending is allowed: to a date two days after the current end.
    later = info["LockExpiresOn"] + dt.timedelta(days=2)
    r = ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance", ExpirationDate=later)
    assert r["LockState"] == "compliance" and r["LockExpiresOn"] == later
    # Past the (extended) end the lock is expired, listed as such, and the snapshot can go.
    clock_server.advance_clock(4 * DAY)
    expired = ec2.describe_locked_snapshots(Filters=[{"Name": "lock-state", "Values": ["expired"]}])["Snapshots"]
    assert sid in [s["SnapshotId"] for s in expired]
    assert sid not in [s["SnapshotId"] for s in ec2.describe_locked_snapshots(
        Filters=[{"Name": "lock-state", "Values": ["compliance", "governance", "compliance-cooloff"]}])["Snapshots"]]
    ec2.delete_snapshot(SnapshotId=sid)
    assert sid not in [s["SnapshotId"] for s in ec2.describe_locked_snapshots()["Snapshots"]]


def test_lock_survives_restart(ec2, clock_server, volume):
    sid = snapshot(ec2, volume)
    ec2.lock_snapshot(SnapshotId=sid, LockMode="compliance", LockDuration=30)
    clock_server.restart()
    ec2 = clock_server.client()
    assert lock_of(ec2, sid)["LockState"] == "compliance"
    assert err(lambda: ec2.delete_snapshot(SnapshotId=sid))[0] == "SnapshotLocked"


@pytest.fixture(scope="module")
def unlocked(ec2, volume):
    """A snapshot the refused locks must leave unlocked."""
    return snapshot(ec2, volume)


@pytest.mark.parametrize("kw,code", [
    (dict(LockMode="governance"), "MissingParameter"),
    (dict(LockMode="governance", LockDuration=1, ExpirationDate=dt.datetime(2100, 1, 1)),
     "InvalidParameterCombination"),
    (dict(LockMode="governance", LockDuration=0), "InvalidParameterValue"),
    (dict(LockMode="governance", LockDuration=36501), "InvalidParameterValue"),
    (dict(LockMode="governance", ExpirationDate=dt.datetime(2001, 1, 1)), "InvalidParameterValue"),
    (dict(LockMode="governance", LockDuration=1, CoolOffPeriod=1), "InvalidParameterCombination"),
    (dict(LockMode="compliance", LockDuration=1, CoolOffPeriod=73), "InvalidParameterValue"),
    (dict(LockMode="forever", LockDuration=1), "InvalidParameterValue"),
], ids=["no-length", "both-lengths", "zero-days", "too-many-days", "past-date", "cooloff-governance",
        "cooloff-73h", "bad-mode"])
def test_lock_validation(ec2, clock_server, unlocked, kw, code):
    sid = unlocked
    # The server checks what botocore would check itself too.
    raw = clock_server.client(parameter_validation=False)
    assert err(lambda: raw.lock_snapshot(SnapshotId=sid, **kw))[0] == code
    assert ec2.describe_locked_snapshots(SnapshotIds=[sid])["Snapshots"] == []


def test_unknown_and_malformed_ids(ec2, clock_server):
    missing = "snap-0123456789abcdef0"
    assert err(lambda: ec2.lock_snapshot(SnapshotId=missing, LockMode="governance",
                                         LockDuration=1))[0] == "InvalidSnapshot.NotFound"
    assert err(lambda: ec2.unlock_snapshot(SnapshotId=missing))[0] == "InvalidSnapshot.NotFound"
    assert err(lambda: ec2.describe_locked_snapshots(SnapshotIds=[missing]))[0] == "InvalidSnapshot.NotFound"
    assert err(lambda: ec2.unlock_snapshot(SnapshotId="vol-0123"))[0] == "InvalidSnapshotID.Malformed"
    assert "InvalidSnapshot.NotFound" in cli_fails(clock_server, "lock-snapshot", "--snapshot-id", missing,
                                                   "--lock-mode", "governance", "--lock-duration", "1")


def test_other_accounts_cannot_see_or_unlock(ec2, clock_server, volume):
    sid = snapshot(ec2, volume)
    ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=1)
    other = clock_server.client(clock_server.create_account())
    assert other.describe_locked_snapshots()["Snapshots"] == []
    assert err(lambda: other.unlock_snapshot(SnapshotId=sid))[0] == "InvalidSnapshot.NotFound"
    ec2.unlock_snapshot(SnapshotId=sid)


def test_describe_locked_snapshots_pages(ec2, clock_server, volume):
    sids = [snapshot(ec2, volume) for _ in range(6)]
    for s in sids:
        ec2.lock_snapshot(SnapshotId=s, LockMode="governance", LockDuration=7)
    mine = set(sids)
    seen, token, pages = [], None, 0
    while True:
        kw = {"NextToken": token} if token else {}
        r = ec2.describe_locked_snapshots(MaxResults=5, **kw)
        seen += [s["SnapshotId"] for s in r["Snapshots"]]
        pages += 1
        token = r.get("NextToken")
        if not token:
            break
    assert mine <= set(seen) and len(seen) == len(set(seen)) and pages >= 2
    raw = clock_server.client(parameter_validation=False)
    assert err(lambda: raw.describe_locked_snapshots(MaxResults=4))[0] == "InvalidParameterValue"
    assert err(lambda: ec2.describe_locked_snapshots(
        Filters=[{"Name": "volume-id", "Values": [volume]}]))[0] == "InvalidParameterValue"
    # The CLI pages through them the same way.
    listed = cli(clock_server, "describe-locked-snapshots", "--max-results", "5")
    assert len(listed["Snapshots"]) == 5 and "NextToken" in listed
    for s in sids:
        ec2.unlock_snapshot(SnapshotId=s)
