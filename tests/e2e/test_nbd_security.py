"""NBD is authenticated and encrypted: TLS with a pre-shared key per account (`blocksnap
nbd-credentials` over SigV4), exports only for accounts that may open them, and revocations (share
removed, snapshot deleted, volume detached, credentials rotated) cut connections that are mid-read."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import blocksnap_bin, free_port, tagspec
from nbd import (MiB, credentials, fetch_credentials, from_file, pattern_ok, qemu_io, tls_objects, uri)

pytestmark = [pytest.mark.blocksnap_only,
              pytest.mark.skipif(not shutil.which("nbdcopy"), reason="libnbd-bin (nbdcopy, nbdinfo) not installed")]

DATA = 64 * MiB


def attached_volume(ec2, az, run_tag, size=1):
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az},
                             TagSpecifications=tagspec("instance", run_tag))["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=size, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag))["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    return vid


def with_data(server, vid, tmp_path, creds=None):
    """Random bytes over the first DATA bytes (so a copy has real reads to do, no holes to skip)."""
    img = tmp_path / "random.bin"
    img.write_bytes(os.urandom(DATA))
    from_file(server, img, vid, creds=creds)


def completed_snapshot(ec2, vid):
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return sid


def nbdinfo_list(server, creds=None) -> subprocess.CompletedProcess:
    return subprocess.run(["nbdinfo", "--list", uri(server, creds=creds)], capture_output=True, text=True, timeout=60)


class MidRead:
    """`nbdcopy` of an export into a pipe nobody reads yet: it has read the first megabytes and is
    blocked with its connection open, in the middle of the copy."""

    def __init__(self, server, export, creds=None, nbd_uri=None):
        self.p = subprocess.Popen(["nbdcopy", "--connections=1", nbd_uri or uri(server, export, creds=creds), "-"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.p.stdout
        first = self.p.stdout.read(MiB)
        assert len(first) == MiB, self.p.stderr.read().decode(errors="replace") if self.p.stderr else ""
        self.got = len(first)

    def finish(self) -> tuple[int, int, str]:
        """Read the rest: (exit status, bytes copied in all, stderr)."""
        assert self.p.stdout and self.p.stderr
        while chunk := self.p.stdout.read(4 * MiB):
            self.got += len(chunk)
        err = self.p.stderr.read().decode(errors="replace")
        return self.p.wait(timeout=60), self.got, err


def assert_cut(reader: MidRead, size: int):
    rc, got, err = reader.finish()
    assert rc != 0 and got < size, f"the copy went on after the revocation: rc={rc} got={got} of {size}: {err}"


def test_unauthenticated_and_wrong_key_clients_are_refused(server, ec2, az, run_tag, tmp_path):
    vid = attached_volume(ec2, az, run_tag)
    qemu_io(server, vid, "write -P 0x5c 0 64k")
    # Plaintext: refused before any export is named or listed.
    p = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4k", f"nbd://127.0.0.1:{server.nbd_port}/{vid}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "tls" in (p.stdout + p.stderr).lower(), p.stderr
    p = subprocess.run(["nbdinfo", "--list", f"nbd://127.0.0.1:{server.nbd_port}/"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0 and vid not in p.stdout
    # TLS with a known identity and the wrong key, and with an unknown identity.
    k = credentials(server)
    for identity in (k.identity, "nbdk-00000000000000000000"):
        bad = tmp_path / f"bad-{identity}"
        bad.mkdir()
        (bad / "keys.psk").write_text(f"{identity}:{os.urandom(32).hex()}\n")
        p = subprocess.run(["qemu-io", "--object", f"tls-creds-psk,id=tls0,endpoint=client,dir={bad},username={identity}",
                            "--image-opts", f"driver=nbd,host=127.0.0.1,port={server.nbd_port},export={vid},tls-creds=tls0",
                            "-c", "read -P 0x5c 0 4k"], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "read 4096/4096" not in p.stdout, p.stdout
        p = subprocess.run(["nbdinfo", "--list",
                            f"nbds://{identity}@127.0.0.1:{server.nbd_port}/?tls-psk-file={bad / 'keys.psk'}"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and vid not in p.stdout


def test_tls_interop_qemu_io_and_nbdinfo(server, ec2, az, run_tag):
    vid = attached_volume(ec2, az, run_tag)
    # qemu-io with --object tls-creds-psk (what `blocksnap nbd-credentials` wrote).
    args = ["qemu-io", *tls_objects(server), "--image-opts",
            f"driver=nbd,host=127.0.0.1,port={server.nbd_port},export={vid},tls-creds=tls0"]
    p = subprocess.run(args + ["-c", "write -P 0x6d 1M 1M", "-c", "read -P 0x6d 1M 1M"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "read 1048576/1048576" in p.stdout, p.stdout + p.stderr
    # nbdinfo with nbds://identity@host/export?tls-psk-file=…
    info = subprocess.run(["nbdinfo", uri(server, vid)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "with TLS" in info.stdout and "1073741824" in info.stdout, info.stderr
    # The key file is the account's secret: owner-only.
    k = credentials(server)
    assert (k.psk_file.stat().st_mode & 0o777) == 0o600
    assert (k.dir.stat().st_mode & 0o777) == 0o700


def test_other_account_can_neither_list_open_nor_read(server, ec2, az, run_tag, tmp_path):
    vid = attached_volume(ec2, az, run_tag)
    qemu_io(server, vid, "write -P 0x7e 0 1M", "flush")
    sid = completed_snapshot(ec2, vid)
    other = server.create_account()
    credentials(server, other)
    listing = nbdinfo_list(server, other)
    assert listing.returncode == 0, listing.stderr
    assert vid not in listing.stdout and sid not in listing.stdout
    for export in (vid, sid):
        p = qemu_io(server, export, "read -P 0x7e 0 4k", check=False, read_only=True, creds=other)
        assert p.returncode != 0 and "read 4096/4096" not in p.stdout, p.stdout
        p = subprocess.run(["nbdinfo", uri(server, export, creds=other)], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0
    # The owner lists the volume and reads both.
    assert vid in nbdinfo_list(server).stdout
    assert pattern_ok(server, vid, 0, MiB, 0x7e) and pattern_ok(server, sid, 0, MiB, 0x7e)
    # Shared with the other account: it may read the snapshot (never the volume).
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[other.account_id])
    assert pattern_ok(server, sid, 0, MiB, 0x7e, creds=other)
    assert not pattern_ok(server, vid, 0, MiB, 0x7e, creds=other)


def test_share_removed_mid_read_cuts_the_connection(server, ec2, az, run_tag, tmp_path):
    vid = attached_volume(ec2, az, run_tag)
    with_data(server, vid, tmp_path)
    sid = completed_snapshot(ec2, vid)
    other = server.create_account()
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[other.account_id])
    reader = MidRead(server, sid, creds=other)
    owner_reader = MidRead(server, sid)
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="remove",
                                  UserIds=[other.account_id])
    assert_cut(reader, 1 << 30)
    # The owner's connection to the same export is not affected.
    rc, got, err = owner_reader.finish()
    assert rc == 0 and got == 1 << 30, err
    assert not pattern_ok(server, sid, 0, 4096, 0, creds=other)
    # ResetSnapshotAttribute removes a share the same way.
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[other.account_id])
    reader = MidRead(server, sid, creds=other)
    ec2.reset_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert_cut(reader, 1 << 30)


def test_delete_snapshot_and_detach_cut_readers(server, ec2, az, run_tag, tmp_path):
    vid = attached_volume(ec2, az, run_tag)
    with_data(server, vid, tmp_path)
    sid = completed_snapshot(ec2, vid)
    reader = MidRead(server, sid)
    ec2.delete_snapshot(SnapshotId=sid)
    assert_cut(reader, 1 << 30)
    reader = MidRead(server, vid)
    ec2.detach_volume(VolumeId=vid)
    assert_cut(reader, 1 << 30)


def test_rotation_cuts_old_credentials(server, az, run_tag, tmp_path):
    acct = server.create_account()
    ec2 = server.client(acct)
    vid = attached_volume(ec2, az, run_tag)
    with_data(server, vid, tmp_path, creds=acct)
    old = credentials(server, acct)
    old_uri = uri(server, vid, creds=acct)
    reader = MidRead(server, vid, nbd_uri=old_uri)
    new_dir = tmp_path / "rotated"
    out = fetch_credentials(server, acct, out=new_dir, rotate=True).stdout
    assert "NBD_TLS_USERNAME=" in out and old.identity not in out
    assert_cut(reader, 1 << 30)
    # The old key no longer opens anything; the new one does.
    p = subprocess.run(["nbdinfo", old_uri], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    new_identity = (new_dir / "keys.psk").read_text().split(":", 1)[0]
    p = subprocess.run(["nbdinfo", f"nbds://{new_identity}@127.0.0.1:{server.nbd_port}/{vid}?tls-psk-file="
                        f"{new_dir / 'keys.psk'}"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "with TLS" in p.stdout, p.stderr


def test_credentials_need_a_signed_call(server):
    import requests
    r = requests.post(server.endpoint, data=b"{}", timeout=30,
                      headers={"X-Amz-Target": "BlocksnapNbd_20261129.CreateNbdCredential",
                               "Content-Type": "application/x-amz-json-1.1"})
    assert r.status_code in (400, 401, 403) and "Key" not in r.text and "nbdk-" not in r.text


def test_plaintext_only_on_loopback_and_only_when_asked(tmp_path):
    r = subprocess.run([str(blocksnap_bin()), "serve", "--data-dir", str(tmp_path / "d"),
                        "--listen", f"127.0.0.1:{free_port()}", "--nbd-listen", f"0.0.0.0:{free_port()}",
                        "--metrics-listen", "off", "--nbd-insecure-plaintext"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--nbd-insecure-plaintext" in r.stderr and "TLS" in r.stderr, r.stderr


def nbd_api(server, op: str, body: dict, creds=None, url: str | None = None):
    """A SigV4-signed call of the NBD credentials API (JSON 1.1, service `blocksnap`), at `url` if
    given (another URL of the same server, e.g. another host name), else at the server's endpoint."""
    import json

    import botocore.auth
    import requests
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    c = creds or server.creds
    req = AWSRequest(method="POST", url=url or server.endpoint, data=json.dumps(body).encode(),
                     headers={"X-Amz-Target": f"BlocksnapNbd_20261129.{op}",
                              "Content-Type": "application/x-amz-json-1.1"})
    botocore.auth.SigV4Auth(Credentials(c.access_key, c.secret_key), "blocksnap", server.region).add_auth(req)
    p = req.prepare()
    r = requests.post(p.url, headers=dict(p.headers), data=p.body, timeout=30)
    return r.status_code, r.json()


def test_list_and_delete_credentials(server, az, run_tag, tmp_path):
    acct = server.create_account()
    ec2 = server.client(acct)
    vid = attached_volume(ec2, az, run_tag)
    with_data(server, vid, tmp_path, creds=acct)
    k = credentials(server, acct)
    status, listed = nbd_api(server, "ListNbdCredentials", {}, acct)
    assert status == 200 and [c["Identity"] for c in listed["Credentials"]] == [k.identity]
    assert "Key" not in listed["Credentials"][0]
    # Another account neither sees nor deletes it.
    status, other = nbd_api(server, "ListNbdCredentials", {})
    assert status == 200 and k.identity not in [c["Identity"] for c in other["Credentials"]]
    status, err = nbd_api(server, "DeleteNbdCredential", {"Identity": k.identity})
    assert status == 400 and err["__type"] == "ResourceNotFoundException"
    # Deleting it cuts its reader and refuses it afterwards.
    old_uri = uri(server, vid, creds=acct)
    reader = MidRead(server, vid, nbd_uri=old_uri)
    status, _ = nbd_api(server, "DeleteNbdCredential", {"Identity": k.identity}, acct)
    assert status == 200
    assert_cut(reader, 1 << 30)
    assert subprocess.run(["nbdinfo", old_uri], capture_output=True, timeout=60).returncode != 0
    status, listed = nbd_api(server, "ListNbdCredentials", {}, acct)
    assert listed["Credentials"] == []


def test_plaintext_dev_mode_on_loopback(tmp_path):
    from conftest import Server
    from nbd import plaintext
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_args=["--nbd-insecure-plaintext"])
    srv.start()
    try:
        assert plaintext(srv)
        ec2 = srv.client()
        vid = attached_volume(ec2, f"{srv.region}a", "dev")
        # Plain nbd:// with no credentials: development only, and the log says so.
        qemu_io(srv, vid, "write -P 0x3e 0 64k", "read -P 0x3e 0 64k")
        assert "unauthenticated" in srv.log() and "development only" in srv.log()
    finally:
        srv.stop()


def test_cli_lists_and_deletes(server, tmp_path):
    acct = server.create_account()
    out = tmp_path / "k"
    fetch_credentials(server, acct, out=out)
    identity = (out / "keys.psk").read_text().split(":", 1)[0]
    listed = fetch_credentials(server, acct, extra=["--list"]).stdout
    assert identity in listed and (out / "keys.psk").read_text().split(":", 1)[1].strip() not in listed
    assert "deleted" in fetch_credentials(server, acct, extra=["--delete", identity]).stdout
    assert identity not in fetch_credentials(server, acct, extra=["--list"]).stdout
    p = fetch_credentials(server, acct, extra=["--delete", identity], check=False)
    assert p.returncode != 0 and "ResourceNotFoundException" in p.stderr
    # Wrong AWS credentials: refused, nothing written.
    bad = type(acct)(acct.access_key, "wrong-secret", acct.account_id)
    p = fetch_credentials(server, bad, out=tmp_path / "never", check=False)
    assert p.returncode != 0 and not (tmp_path / "never" / "keys.psk").exists()


def delete_account(server, account_id, creds=None) -> subprocess.CompletedProcess:
    """`blocksnap admin delete-account` as `creds` (default: root), through the AWS credential chain."""
    c = creds or server.creds
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": c.access_key, "AWS_SECRET_ACCESS_KEY": c.secret_key,
                "AWS_DEFAULT_REGION": server.region, "AWS_ENDPOINT_URL": server.endpoint.rstrip("/"),
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"})
    return subprocess.run([str(blocksnap_bin()), "admin", "delete-account", account_id], capture_output=True,
                          text=True, env=env, timeout=60)


def test_account_deletion_revokes_keys_and_cuts_connections(server, ec2, az, run_tag, tmp_path):
    from botocore.exceptions import ClientError

    vid = attached_volume(ec2, az, run_tag)
    with_data(server, vid, tmp_path)
    sid = completed_snapshot(ec2, vid)
    other = server.create_account()
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[other.account_id])
    reader = MidRead(server, sid, creds=other)
    other_key = credentials(server, other)

    # Only root deletes accounts, and not itself.
    p = delete_account(server, other.account_id, creds=other)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr
    root_id = server.client().describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["OwnerId"]
    p = delete_account(server, root_id)
    assert p.returncode != 0 and "ValidationException" in p.stderr and "root" in p.stderr, p.stderr
    p = delete_account(server, "12345")
    assert p.returncode != 0 and "ValidationException" in p.stderr, p.stderr
    # An account that owns something is refused and keeps working: nothing is lost by a mistake.
    owner = server.create_account()
    owned = server.client(owner).create_volume(Size=1, AvailabilityZone=az)["VolumeId"]
    p = delete_account(server, owner.account_id)
    assert p.returncode != 0 and "ConflictException" in p.stderr and "1 volume" in p.stderr, p.stderr
    assert server.client(owner).describe_volumes(VolumeIds=[owned])["Volumes"]

    # The deletion: the mid-read connection of the deleted account (on a snapshot shared with it) ends
    # before the command returns; the owner's data is untouched.
    p = delete_account(server, other.account_id)
    assert p.returncode == 0 and "1 access key(s), 1 NBD credential(s)" in p.stdout, p.stdout + p.stderr
    assert_cut(reader, 1 << 30)
    with pytest.raises(ClientError) as e:
        server.client(other).describe_volumes()
    assert e.value.response["Error"]["Code"] == "AuthFailure"
    # Its NBD credential is gone too: a new connection with it is refused.
    assert other_key.identity
    assert not pattern_ok(server, sid, 0, 4096, 0, creds=other)
    # The owner reads the whole snapshot as before.
    rc = MidRead(server, sid).finish()
    assert rc[0] == 0 and rc[1] == 1 << 30, rc[2]
    # Deleted once: a second deletion says so.
    p = delete_account(server, other.account_id)
    assert p.returncode != 0 and "ResourceNotFoundException" in p.stderr and "already deleted" in p.stderr, p.stderr
