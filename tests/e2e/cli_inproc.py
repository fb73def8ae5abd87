"""The real AWS CLI (v1) run in this process: `awscli.clidriver.create_clidriver().main(argv)` is what the
`aws` executable runs (argument parsing, customisations, serialisers, paginators, waiters, formatters),
without a Python start (~1-2 s on a busy machine) per call. One driver per call (a driver keeps
per-command state); all share one botocore loader, so each service model is parsed once."""
from __future__ import annotations

import contextlib
import io
import os

from awscli.clidriver import create_clidriver

_loader = None


def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `aws <argv>` with `env` laid over the process environment; (exit code, stdout, stderr)."""
    global _loader
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    try:
        driver = create_clidriver()
        if _loader is None:
            _loader = driver.session.get_component("data_loader")
        else:
            driver.session.register_component("data_loader", _loader)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = driver.main(list(argv))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rc, out.getvalue(), err.getvalue()
