"""Helpers that drive blocksnap's NBD exports with the real qemu tools."""
from __future__ import annotations

import subprocess

MiB = 1 << 20


def url(server, export: str) -> str:
    return f"nbd://127.0.0.1:{server.nbd_port}/{export}"


def qemu_io(server, export: str, *commands: str, check: bool = True, read_only: bool = False) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-f", "raw"] + (["-r"] if read_only else [])
    for c in commands:
        args += ["-c", c]
    args.append(url(server, export))
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    # qemu-io reports pattern mismatches on stdout and may still exit 0.
    failed = p.returncode != 0 or "Pattern verification failed" in p.stdout or "failed" in p.stderr.lower()
    if check and failed:
        raise AssertionError(f"qemu-io {commands} on {export} failed:\n{p.stdout}\n{p.stderr}")
    return p


def pattern_ok(server, export: str, offset: int, length: int, pattern: int) -> bool:
    p = qemu_io(server, export, f"read -P {pattern:#x} {offset} {length}", check=False, read_only=True)
    return p.returncode == 0 and "Pattern verification failed" not in p.stdout


def compare(server, a: str, b: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", url(server, a), url(server, b)],
                          capture_output=True, text=True, timeout=300)


class QemuIo:
    """A long-lived interactive qemu-io on one export: each command waits for its acknowledgement."""

    def __init__(self, server, export: str):
        self.p = subprocess.Popen(["qemu-io", "-f", "raw", url(server, export)], stdin=subprocess.PIPE,
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
