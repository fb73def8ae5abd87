"""Helpers that drive blocksnap's NBD exports with the real qemu and libnbd tools.

Every NBD client in the e2e tests gets its arguments from here, so the transport (TLS, credentials)
is decided in one place:

- `qemu_io(server, export, *commands)`, `pattern_ok(...)`, `compare(server, a, b)`, `QemuIo(...)`;
- `qemu_img(server, sub, *args)` runs `qemu-img <sub>` with the `--object` arguments the transport
  needs; name NBD images in `args` with `--image-opts` and `image_opts(server, export)` (a local file
  in the same command is `file_opts(path)`), or use `to_file` / `from_file`;
- `uri(server, export)` is the libnbd URI for `nbdinfo` / `nbdcopy` (`uri(server)` lists exports).

`creds=` (a conftest `Creds`) selects another account; the default is the server's root account.
"""
from __future__ import annotations

import subprocess

MiB = 1 << 20


def tls_objects(server, creds=None) -> list[str]:
    """The qemu `--object` arguments the NBD transport needs (none for plaintext)."""
    return []


def image_opts(server, export: str, creds=None) -> str:
    """A qemu `--image-opts` string naming one export."""
    return f"driver=nbd,host=127.0.0.1,port={server.nbd_port},export={export}"


def file_opts(path) -> str:
    """A local raw file as a qemu `--image-opts` string (to mix with NBD images in one command)."""
    return f"driver=file,filename={path}"


def uri(server, export: str = "", creds=None) -> str:
    """The libnbd URI (nbdinfo, nbdcopy) of one export, or of the server with no export."""
    return f"nbd://127.0.0.1:{server.nbd_port}/{export}"


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
