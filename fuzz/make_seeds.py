#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target (fuzz/corpus/<target>/seed-*, beside the minimized corpus): well-formed requests and
objects the fuzzers mutate from. Real SigV4 requests come from the botocore fixtures of crates/sigv4.
Re-run after a format change; the files are checked in."""
import base64
import json
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def write(target: str, name: str, data: bytes) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# SigV4: "METHOD URI\nname: value\n...\n\nbody", from real botocore-signed requests.
fixtures = json.loads((ROOT / "crates/sigv4/tests/fixtures/botocore_requests.json").read_text())["requests"]
for f in fixtures:
    url = f["url"]
    path = url.split("://", 1)[1]
    path = path[path.index("/"):] if "/" in path else "/"
    head = f"{f['method']} {path}\n" + "".join(f"{k}: {v}\n" for k, v in f["headers"])
    write("sigv4", f["name"], head.encode() + b"\n" + base64.b64decode(f["body_b64"]))

# EC2 Query bodies.
ec2 = {
    "describe-volumes": "Action=DescribeVolumes&Version=2016-11-15&VolumeId.1=vol-0123456789abcdef0"
                        "&Filter.1.Name=tag%3Aenv&Filter.1.Value.1=prod&Filter.1.Value.2=d%2A&MaxResults=5",
    "describe-snapshots": "Action=DescribeSnapshots&Version=2016-11-15&Owner.1=self&RestorableBy.1=all"
                          "&NextToken=bsnt1abcdef&SnapshotId.1=snap-0123456789abcdef0",
    "create-volume": "Action=CreateVolume&Version=2016-11-15&AvailabilityZone=us-east-1a&Size=8&VolumeType=gp3"
                     "&Iops=3000&Throughput=125&Encrypted=true&KmsKeyId=alias%2Faws%2Febs"
                     "&TagSpecification.1.ResourceType=volume&TagSpecification.1.Tag.1.Key=k"
                     "&TagSpecification.1.Tag.1.Value=v",
    "create-snapshots": "Action=CreateSnapshots&Version=2016-11-15&InstanceSpecification.InstanceId=i-0123456789abcdef0"
                        "&InstanceSpecification.ExcludeBootVolume=true&CopyTagsFromSource=volume",
    "modify-snapshot-attribute": "Action=ModifySnapshotAttribute&Version=2016-11-15&SnapshotId=snap-0123456789abcdef0"
                                 "&Attribute=createVolumePermission&CreateVolumePermission.Add.1.UserId=123456789012",
    "copy-snapshot": "Action=CopySnapshot&Version=2016-11-15&SourceRegion=us-west-2"
                     "&SourceSnapshotId=snap-0123456789abcdef0&PresignedUrl=https%3A%2F%2Fh%2F%3FX-Amz-Algorithm%3D1",
    "run-instances": "Action=RunInstances&Version=2016-11-15&ImageId=ami-0b5e4c3d2a1f00001&MinCount=1&MaxCount=1"
                     "&BlockDeviceMapping.1.DeviceName=%2Fdev%2Fsdf&BlockDeviceMapping.1.Ebs.VolumeSize=4",
    "describe-tags": "Action=DescribeTags&Version=2016-11-15&Filter.1.Name=resource-type&Filter.1.Value.1=volume",
}
for name, body in ec2.items():
    write("ec2_query", name, body.encode())

# JSON 1.1: first byte selects the operation (index into api::fuzz::json_targets(), read-only ops).
json_seeds = {
    0: {"pageToken": "abc"},
    1: {"diskName": "d1"},
    3: {"pageToken": "bsnt1ff"},
    10: {"resourceName": "d1", "pageToken": "x"},
    17: {"KeyId": "alias/aws/ebs", "Plaintext": base64.b64encode(b"hello").decode(),
         "EncryptionContext": {"a": "b"}},
    18: {"CiphertextBlob": base64.b64encode(b"\x01\x02" * 40).decode(), "EncryptionContext": {"a": "b"}},
    20: {"KeyId": "alias/aws/ebs", "KeySpec": "AES_256", "NumberOfBytes": 32},
    22: {"NumberOfBytes": 64},
    14: {"Limit": 10, "Marker": "m"},
    16: {"KeyId": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"},
}
for sel, body in json_seeds.items():
    write("json", f"op{sel}", bytes([sel]) + json.dumps(body).encode())

# NBD: fixed newstyle client flags, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_GO "fuzz", then requests.
NBD_OPT_MAGIC = 0x49484156454F5054
REQ_MAGIC = 0x25609513


def opt(code: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", NBD_OPT_MAGIC, code, len(data)) + data


def go(name: bytes, infos=()) -> bytes:
    return opt(7, struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
               + b"".join(struct.pack(">H", i) for i in infos))


def req(typ: int, offset: int, length: int, flags: int = 0, payload: bytes = b"", cookie: int = 1) -> bytes:
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, offset, length) + payload


hello = struct.pack(">I", 3)
write("nbd", "list", hello + opt(3) + opt(2))
write("nbd", "info-go", hello + opt(8) + opt(6, struct.pack(">I", 4) + b"fuzz" + struct.pack(">HH", 1, 3))
      + go(b"fuzz", (3,)) + req(0, 0, 4096) + req(2, 0, 0))
meta = struct.pack(">I", 4) + b"fuzz" + struct.pack(">I", 1) + struct.pack(">I", 14) + b"base:allocation"
write("nbd", "rw", hello + opt(8) + opt(10, meta) + go(b"fuzz")
      + req(1, 4096, 512, 0, b"\xab" * 512) + req(0, 4096, 512) + req(3, 0, 0) + req(4, 0, 4096)
      + req(6, 0, 8192) + req(7, 0, 65536) + req(5, 0, 4096) + req(0, 1 << 20, 512) + req(2, 0, 0))
write("nbd", "ro-write", hello + go(b"ro") + req(1, 0, 16, 1, b"x" * 16) + req(2, 0, 0))
write("nbd", "export-name", hello + opt(1, b"fuzz") + req(0, 0, 512) + req(2, 0, 0))

# NBD_OPT_STARTTLS (5), for the TLS-only server the nbd harness also serves: first; after refused
# options; with data (invalid); twice; after EXPORT_NAME (ends the connection); ABORT instead; and
# followed by data the TLS handshake reads (garbage, a truncated record, a recorded ClientHello).
starttls = opt(5)
write("nbd", "starttls-first", hello + starttls + b"\x16\x03\x01\x00\x05hello")
write("nbd", "starttls-after-options", hello + opt(3) + opt(8) + go(b"fuzz") + opt(6, b"\0\0\0\0\0\0")
      + starttls + b"\x16\x03\x03\x40\x00")
write("nbd", "starttls-with-data", hello + opt(5, b"x") + starttls)
write("nbd", "starttls-twice", hello + opt(5, b"\0\0") + starttls + starttls)
write("nbd", "starttls-export-name", hello + opt(1, b"fuzz") + starttls)
write("nbd", "starttls-abort", hello + opt(3) + opt(2) + starttls)
write("nbd", "starttls-no-zeroes", struct.pack(">I", 1) + starttls + b"\x15\x03\x03\x00\x02\x02\x28")


def capture_client_hello() -> bytes:
    """What libnbd (nbdinfo, gnutls) sends after the server acks STARTTLS, with the harness's PSK
    (identity `fuzz`, key 0x42 x 32): a TLS 1.3 ClientHello whose PSK binder verifies."""
    import os
    import socket
    import subprocess
    import tempfile
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        keys = os.path.join(d, "keys.psk")
        with open(keys, "w") as f:
            f.write("fuzz:" + "42" * 32 + "\n")
        client = subprocess.Popen(["nbdinfo", f"nbds://fuzz@127.0.0.1:{port}/fuzz?tls-psk-file={keys}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conn, _ = srv.accept()
        conn.settimeout(5)
        conn.sendall(struct.pack(">QQH", 0x4E42444D41474943, NBD_OPT_MAGIC, 3))
        sent = conn.recv(4)
        header = conn.recv(16)
        assert struct.unpack(">QII", header)[1] == 5, "the client did not start with STARTTLS"
        conn.sendall(struct.pack(">QIII", 0x3E889045565A9, 5, 1, 0))
        record = b""
        while len(record) < 5 or len(record) < 5 + struct.unpack(">H", record[3:5])[0]:
            chunk = conn.recv(65536)
            if not chunk:
                break
            record += chunk
        conn.close()
        client.wait()
    return sent + header + record


hello_file = HERE / "corpus" / "nbd" / "seed-starttls-clienthello"
if not hello_file.exists():
    # Recorded once (random per run): keep the checked-in one stable.
    hello_file.write_bytes(capture_client_hello())

# Store objects (formats in crates/store: chunk.rs, segment.rs, manifest.rs).
plain = b"block " * 100
chunk = b"BSNC" + struct.pack("<HBBIII", 1, 0, 0, len(plain), len(plain), 0) + plain
write("store_chunk", "plain", chunk)
write("store_chunk", "encrypted-flags", b"BSNC" + struct.pack("<HBBIII", 1, 2, 1, 16, 44, 0) + b"\x00" * 56)
write("store_chunk", "zstd-flag", b"BSNC" + struct.pack("<HBBIII", 1, 1, 0, 524288, 13, 0)
      + bytes.fromhex("28b52ffd2000650000626c6f636b"))
ids = b"".join(bytes([i]) * 32 for i in range(3))
write("store_segment", "plain", b"BSNS" + struct.pack("<HHI", 1, 0, 3) + ids)
write("store_segment", "zstd-flag", b"BSNS" + struct.pack("<HHI", 1, 1, 1024) + b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
body = {"snapshot_id": "snap-0123456789abcdef0", "volume_id": "vol-0123456789abcdef0", "volume_size": 1 << 20,
        "block_size": 524288, "block_count": 2, "segment_blocks": 1024,
        "encryption": {"encrypted": True, "kms_key_arn": "arn:aws:kms:us-east-1:1:key/k", "wrapped_key_hex": "00ff"},
        "parent": None, "created_unix_ms": 1, "description": "d", "segments": ["ab" * 32]}
body_bytes = json.dumps(body, separators=(",", ":")).encode()
write("store_manifest", "body", b"\x01" + body_bytes)
import hashlib
outer = {"format": 1, "kind": "blocksnap.manifest", "sha256": hashlib.sha256(body_bytes).hexdigest()}
whole = json.dumps(outer, separators=(",", ":"))[:-1].encode() + b',"body":' + body_bytes + b"}\n"
write("store_manifest", "whole", b"\x00" + whole)
# Recycle Bin requests (past authentication): "METHOD URI\n\nbody".
ARN = "arn%3Aaws%3Arbin%3Aus-east-1%3A123456789012%3Arule%2Fabcdefghijk"
rbin = {
    "create-tag-level": ("POST /rules", {"ResourceType": "EBS_SNAPSHOT", "Description": "keep",
                                         "RetentionPeriod": {"RetentionPeriodValue": 7, "RetentionPeriodUnit": "DAYS"},
                                         "ResourceTags": [{"ResourceTagKey": "keep", "ResourceTagValue": "yes"}],
                                         "Tags": [{"Key": "team", "Value": "storage"}]}),
    "create-locked": ("POST /rules", {"ResourceType": "EBS_SNAPSHOT",
                                      "RetentionPeriod": {"RetentionPeriodValue": 1, "RetentionPeriodUnit": "DAYS"},
                                      "ExcludeResourceTags": [{"ResourceTagKey": "temp"}],
                                      "LockConfiguration": {"UnlockDelay": {"UnlockDelayValue": 7,
                                                                            "UnlockDelayUnit": "DAYS"}}}),
    "list": ("POST /list-rules", {"ResourceType": "EBS_SNAPSHOT", "LockState": "locked", "MaxResults": 5,
                                  "NextToken": "rbin16162636465666768696a6b"}),
    "update": ("PATCH /rules/abcdefghijk", {"Description": "d", "ResourceTags": []}),
    "lock": ("PATCH /rules/abcdefghijk/lock", {"LockConfiguration": {"UnlockDelay": {"UnlockDelayValue": 30,
                                                                                   "UnlockDelayUnit": "DAYS"}}}),
    "get": ("GET /rules/abcdefghijk", None),
    "tag": (f"POST /tags/{ARN}", {"Tags": [{"Key": "k", "Value": "v"}]}),
    "untag": (f"DELETE /tags/{ARN}?tagKeys=k&tagKeys=j", None),
    "list-tags": (f"GET /tags/{ARN}", None),
}
for name, (head, body) in rbin.items():
    write("rbin_rest", name, head.encode() + b"\n\n" + (json.dumps(body).encode() if body is not None else b""))
print("seeds written under", HERE / "corpus")
