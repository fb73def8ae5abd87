"""The test clock (BLOCKSNAP_TEST_CLOCK=1): the root account moves a test server's time forward, what
the engine stamps follows it, nobody else can move it, and a normal server does not serve it."""
from __future__ import annotations

import datetime
import json

import botocore.auth
import requests
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import make_volume


def advance_as(server, creds, seconds):
    req = AWSRequest(method="POST", url=server.endpoint, data=json.dumps({"Seconds": seconds}).encode(),
                     headers={"X-Amz-Target": "BlocksnapTest_20261130.AdvanceClock",
                              "Content-Type": "application/x-amz-json-1.1"})
    botocore.auth.SigV4Auth(Credentials(creds.access_key, creds.secret_key), "blocksnap",
                            server.region).add_auth(req)
    p = req.prepare()
    r = requests.post(p.url, headers=dict(p.headers), data=p.body, timeout=30)
    return r.status_code, r.json()


def test_root_moves_the_clock_and_timestamps_follow(clock_server, run_tag):
    ec2 = clock_server.client()
    az = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    before = datetime.datetime.now(datetime.timezone.utc)
    now = clock_server.advance_clock(3 * 24 * 3600)
    assert now >= before.timestamp() + 3 * 24 * 3600
    vol = make_volume(ec2, az, run_tag)
    # The volume was created "three days later": the engine stamps its time, not the wall clock's.
    assert vol["CreateTime"] >= before + datetime.timedelta(days=3)


def test_only_root_and_only_a_test_server(clock_server, server):
    acct = clock_server.create_account()
    status, body = advance_as(clock_server, acct, 60)
    assert status == 400 and body["__type"] == "AccessDeniedException", body
    status, body = advance_as(clock_server, clock_server.creds, -1)
    assert status == 400 and body["__type"] == "ValidationException", body
    # The shared server was started without BLOCKSNAP_TEST_CLOCK: its clock cannot be moved, even by root.
    status, body = advance_as(server, server.creds, 60)
    assert status == 400 and body["__type"] == "UnknownOperationException", body
