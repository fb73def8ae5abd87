"""HTTPS on the API listener (`serve --tls-cert --tls-key`): the real AWS CLI and boto3 over TLS,
verified against a private CA (as a CA bundle) or with --no-verify-ssl; plain HTTP is not
served on that port; a key that does not fit the certificate stops `serve` with a clear message."""
from __future__ import annotations

import json
import os
import socket
import subprocess

import boto3
import pytest
import requests
from botocore.config import Config

from conftest import Server, blocksnap_bin

pytestmark = pytest.mark.blocksnap_only


def make_cert(d, name="server"):
    """A private CA and a P-256 server certificate it signed for 127.0.0.1 and localhost:
    (CA certificate, server certificate, server key), PEM files."""
    ca, ca_key = d / f"{name}-ca.pem", d / f"{name}-ca-key.pem"
    cert, key, csr = d / f"{name}.pem", d / f"{name}-key.pem", d / f"{name}.csr"
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
                 "-subj", f"/CN=blocksnap-e2e {name} CA"],
                ["openssl", "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"],
                ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)]):
        subprocess.run(cmd, check=True, capture_output=True)
    return ca, cert, key


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("https")
    ca, cert, key = make_cert(d)
    srv = Server(kind="blocksnap", workdir=d, extra_args=["--tls-cert", str(cert), "--tls-key", str(key)])
    srv.start()
    srv.ca = ca
    yield srv
    srv.stop()


def aws(srv, *args, ca=None, no_verify=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": srv.creds.access_key, "AWS_SECRET_ACCESS_KEY": srv.creds.secret_key,
                "AWS_DEFAULT_REGION": srv.region, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1"})
    tls = ["--ca-bundle", str(ca)] if ca else (["--no-verify-ssl"] if no_verify else [])
    return subprocess.run(["aws", "--endpoint-url", f"https://127.0.0.1:{srv.port}", "--output", "json", *tls,
                           *args], capture_output=True, text=True, env=env, timeout=120)


def test_aws_cli_over_https(https_server):
    srv = https_server
    out = aws(srv, "ec2", "create-volume", "--availability-zone", f"{srv.region}a", "--size", "1",
              ca=srv.ca)
    assert out.returncode == 0, out.stderr
    vid = json.loads(out.stdout)["VolumeId"]
    out = aws(srv, "ec2", "describe-volumes", "--volume-ids", vid, ca=srv.ca)
    assert out.returncode == 0, out.stderr
    assert [v["VolumeId"] for v in json.loads(out.stdout)["Volumes"]] == [vid]
    # The JSON front ends too, and without verification (the CLI warns, the call works).
    out = aws(srv, "lightsail", "get-regions", no_verify=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["regions"], out.stdout


def test_boto3_verifies_the_certificate(https_server, tmp_path):
    srv = https_server
    session = boto3.session.Session(aws_access_key_id=srv.creds.access_key,
                                    aws_secret_access_key=srv.creds.secret_key, region_name=srv.region)
    cfg = Config(retries={"max_attempts": 1, "mode": "standard"})
    ec2 = session.client("ec2", endpoint_url=f"https://127.0.0.1:{srv.port}", verify=str(srv.ca), config=cfg)
    assert "AvailabilityZones" in ec2.describe_availability_zones()
    # Another CA's certificate does not verify this server.
    other, _, _ = make_cert(tmp_path, "other")
    bad = session.client("ec2", endpoint_url=f"https://127.0.0.1:{srv.port}", verify=str(other), config=cfg)
    with pytest.raises(Exception, match="(?i)certificate|ssl"):
        bad.describe_availability_zones()


def test_plain_http_is_not_served(https_server):
    srv = https_server
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"http://127.0.0.1:{srv.port}/", data="Action=DescribeVolumes", timeout=10)
    # The listener keeps serving TLS clients after a plaintext one.
    out = aws(srv, "ec2", "describe-availability-zones", ca=srv.ca)
    assert out.returncode == 0, out.stderr


def test_silent_clients_hold_up_nobody(https_server):
    """Connections that never start their TLS handshake (or stop half-way) do not delay others."""
    srv = https_server
    silent = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(8)]
    half = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
    try:
        out = aws(srv, "ec2", "describe-availability-zones", ca=srv.ca)
        assert out.returncode == 0, out.stderr
    finally:
        for s in silent + [half]:
            s.close()


def test_https_from_the_config_file(tmp_path):
    """`tls_cert`/`tls_key` in the --config file serve HTTPS too; only one of them is refused."""
    ca, cert, key = make_cert(tmp_path)
    cfg = tmp_path / "blocksnap.toml"
    cfg.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_args=["--config", str(cfg)])
    srv.start()
    try:
        srv.ca = ca
        out = aws(srv, "ec2", "describe-availability-zones", ca=ca)
        assert out.returncode == 0, out.stderr
    finally:
        srv.stop()
    cfg.write_text(f'tls_cert = "{cert}"\n')
    p = subprocess.run([str(blocksnap_bin()), "serve", "--data-dir", str(tmp_path / "data2"), "--config", str(cfg),
                        "--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0", "--metrics-listen", "off"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "set both" in p.stderr, p.stderr


def test_mismatched_key_refuses_to_start(tmp_path):
    _, cert, _ = make_cert(tmp_path, "a")
    _, _, key = make_cert(tmp_path, "b")
    p = subprocess.run([str(blocksnap_bin()), "serve", "--data-dir", str(tmp_path / "data"),
                        "--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0", "--metrics-listen", "off",
                        "--tls-cert", str(cert), "--tls-key", str(key)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "do not fit together" in p.stderr, p.stderr
    assert not (tmp_path / "data" / "catalog.db").exists(), "nothing is created before the check"
    p = subprocess.run([str(blocksnap_bin()), "serve", "--data-dir", str(tmp_path / "data"), "--tls-cert",
                        str(cert)], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "--tls-key" in p.stderr, p.stderr


def test_nbd_credentials_over_https(https_server, tmp_path):
    """`blocksnap nbd-credentials` reaches an HTTPS endpoint and verifies it with AWS_CA_BUNDLE (or
    --ca-bundle), like the AWS CLI; without it the self-signed certificate is refused."""
    srv = https_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": srv.creds.access_key, "AWS_SECRET_ACCESS_KEY": srv.creds.secret_key,
                "AWS_DEFAULT_REGION": srv.region, "AWS_ENDPOINT_URL": f"https://127.0.0.1:{srv.port}",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"})
    cmd = [str(blocksnap_bin()), "nbd-credentials"]
    p = subprocess.run(cmd + ["--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=60,
                       env={**env, "AWS_CA_BUNDLE": str(srv.ca)})
    assert p.returncode == 0, p.stderr
    identity, key = (tmp_path / "a" / "keys.psk").read_text().strip().split(":")
    assert identity and len(key) == 64
    p = subprocess.run(cmd + ["--list", "--ca-bundle", str(srv.ca)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0 and identity in p.stdout, p.stdout + p.stderr
    p = subprocess.run(cmd + ["--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode != 0 and "certificate" in p.stderr.lower(), p.stderr
    assert not (tmp_path / "b" / "keys.psk").exists()
