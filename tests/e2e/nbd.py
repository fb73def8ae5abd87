"""Helpers that drive blocksnap's NBD exports with the real qemu and libnbd tools.

Every NBD client in the e2e tests gets its arguments from here, so the transport (TLS, credentials)
is decided in one place:

- `qemu_io(server, export, *commands)`, `pattern_ok(...)`, `compare(server, a, b)`, `QemuIo(...)`;
- `qemu_img(server, sub, *args)` runs `qemu-img <sub>` with the `--object` arguments the transport
  needs; name NBD images in `args` with `--image-opts` and `image_opts(server, export)` (a local file
  in the same command is `file_opts(path)`), or use `to_file` / `from_file`;
- `uri(server, export)` is the libnbd URI for `nbdinfo` / `nbdcopy` (`uri(server)` lists exports).

`creds=` (a conftest `Creds`) selects another account; the default is the server's root account.
NBD is TLS with a pre-shared key: `credentials(server, creds)` gets the account's key once per server
with `blocksnap nbd-credentials` (the real CLI, over SigV4) and caches it. A server started with
`--nbd-insecure-plaintext` is spoken to in plaintext.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


@dataclass
class NbdCreds:
    identity: str
    dir: Path

    @property
    def psk_file(self) -> Path:
        return self.dir / "keys.psk"


def plaintext(server) -> bool:
    return "--nbd-insecure-plaintext" in getattr(server, "extra_args", [])


def fetch_credentials(server, creds=None, out: Path | None = None, rotate: bool = False,
                      check: bool = True, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `blocksnap nbd-credentials` as `creds` (default: root) against `server`."""
    from conftest import blocksnap_bin
    c = creds or server.creds
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": c.access_key, "AWS_SECRET_ACCESS_KEY": c.secret_key,
                "AWS_DEFAULT_REGION": server.region, "AWS_ENDPOINT_URL": server.endpoint.rstrip("/"),
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"})
    out = out or server.workdir / f"nbd-{c.access_key}"
    cmd = [str(blocksnap_bin()), "nbd-credentials", "--out", str(out)] + (["--rotate"] if rotate else []) \
        + (extra or [])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"nbd-credentials failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def credentials(server, creds=None) -> NbdCreds:
    """The NBD credential of an account on this server (fetched once, then cached)."""
    c = creds or server.creds
    cache = server.__dict__.setdefault("_nbd_creds", {})
    if c.access_key not in cache:
        out = server.workdir / f"nbd-{c.access_key}"
        fetch_credentials(server, c, out)
        identity = (out / "keys.psk").read_text().split(":", 1)[0]
        cache[c.access_key] = NbdCreds(identity, out)
    return cache[c.access_key]


def tls_objects(server, creds=None) -> list[str]:
    """The qemu `--object` arguments the NBD transport needs (none for plaintext)."""
    if plaintext(server):
        return []
    k = credentials(server, creds)
    return ["--object", f"tls-creds-psk,id=tls0,endpoint=client,dir={k.dir},username={k.identity}"]


def image_opts(server, export: str, creds=None) -> str:
    """A qemu `--image-opts` string naming one export."""
    tls = "" if plaintext(server) else ",tls-creds=tls0"
    return f"driver=nbd,host=127.0.0.1,port={server.nbd_port},export={export}{tls}"


def file_opts(path) -> str:
    """A local raw file as a qemu `--image-opts` string (to mix with NBD images in one command)."""
    return f"driver=file,filename={path}"


def uri(server, export: str = "", creds=None) -> str:
    """The libnbd URI (nbdinfo, nbdcopy) of one export, or of the server with no export."""
    if plaintext(server):
        return f"nbd://127.0.0.1:{server.nbd_port}/{export}"
    k = credentials(server, creds)
    return f"nbds://{k.identity}@127.0.0.1:{server.nbd_port}/{export}?tls-psk-file={k.psk_file}"


def qemu_img(server, sub: str, *args: str, creds=None, check: bool = False,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """`qemu-img <sub> <transport objects> <args>`; output captured as text."""
    cmd = ["qemu-img", sub, *tls_objects(server, creds), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def to_file(server, export: str, path, creds=None) -> None:
    """Copy a whole export into a raw file."""
    qemu_img(server, "convert", "--image-opts", "-O", "raw", image_opts(server, export, creds), str(path),
             creds=creds, check=True)


def from_file(server, path, export: str, creds=None) -> None:
    """Write a raw file over the start of an export."""
    qemu_img(server, "convert", "-n", "-f", "raw", "--target-image-opts", str(path),
             image_opts(server, export, creds), creds=creds, check=True)


def qemu_io_args(server, export: str, creds=None, read_only: bool = False) -> list[str]:
    return ["qemu-io", *tls_objects(server, creds)] + (["-r"] if read_only else []) + [
        "--image-opts", image_opts(server, export, creds)]


def qemu_io(server, export: str, *commands: str, check: bool = True, read_only: bool = False,
            creds=None) -> subprocess.CompletedProcess:
    args = qemu_io_args(server, export, creds, read_only)
    for c in commands:
        args += ["-c", c]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    # qemu-io reports pattern mismatches on stdout and may still exit 0.
    failed = p.returncode != 0 or "Pattern verification failed" in p.stdout or "failed" in p.stderr.lower()
    if check and failed:
        raise AssertionError(f"qemu-io {commands} on {export} failed:\n{p.stdout}\n{p.stderr}")
    return p


def pattern_ok(server, export: str, offset: int, length: int, pattern: int, creds=None) -> bool:
    p = qemu_io(server, export, f"read -P {pattern:#x} {offset} {length}", check=False, read_only=True,
                creds=creds)
    return p.returncode == 0 and "Pattern verification failed" not in p.stdout


def compare(server, a: str, b: str, creds=None) -> subprocess.CompletedProcess:
    """`qemu-img compare` of two exports (returncode 0: identical)."""
    return qemu_img(server, "compare", "--image-opts", image_opts(server, a, creds), image_opts(server, b, creds),
                    creds=creds)


class QemuIo:
    """A long-lived interactive qemu-io on one export: each command waits for its acknowledgement."""

    def __init__(self, server, export: str, creds=None):
        self.p = subprocess.Popen(qemu_io_args(server, export, creds), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def run(self, command: str) -> str:
        """Send one command and return its output up to the `ops/sec` summary line."""
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        out = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise AssertionError(f"qemu-io exited during {command!r}: {''.join(out)}")
            out.append(line)
            if "ops/sec" in line or "failed" in line.lower():
                return "".join(out)

    def write(self, offset: int, length: int, pattern: int) -> None:
        out = self.run(f"write -P {pattern:#x} {offset} {length}")
        if "wrote" not in out:
            raise AssertionError(out)

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                assert self.p.stdin
                self.p.stdin.write("quit\n")
                self.p.stdin.flush()
                self.p.wait(timeout=10)
            except Exception:
                self.p.kill()
