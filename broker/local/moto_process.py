"""moto's server in a process of its own: ``python -m broker.local.moto_process --port N``.

The local stack runs the API, the workers, the pollers and the sweeper as threads of one Python
process; with moto in that process too, every emulated AWS call competes for the same GIL (a
10,000-job burst spent most of its time there). In its own process moto gets its own core, as AWS
is elsewhere for Lambda. It prints ``moto listening on 127.0.0.1:<port>`` once it accepts
connections, and exits when its parent dies (Linux ``PR_SET_PDEATHSIG``), so it never outlives
the stack that started it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from broker.local.moto_patches import patch_moto

READY_PREFIX = "moto listening on 127.0.0.1:"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent thread exits (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(port: int = 0) -> tuple[subprocess.Popen[str], int]:
    """Start the moto process on 127.0.0.1; return it and the port it listens on."""
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.local.moto_process", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no locks taken
        cwd=Path(__file__).resolve().parents[2],
    )
    # The child prints its line once listening, or exits (EOF: an empty line).
    line = process.stdout.readline().strip() if process.stdout else ""
    if not line.startswith(READY_PREFIX):
        process.kill()
        raise RuntimeError(f"moto process did not start: {line!r} (exit {process.wait()})")
    return process, int(line.removeprefix(READY_PREFIX))


def cpu_seconds(process: subprocess.Popen[Any]) -> float:
    """User + system CPU seconds the process has used (Linux /proc)."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415 - local only
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server  # noqa: PLC0415

    patch_moto()

    class QuietMotoRequestHandler(MotoRequestHandler):
        # Pollers long-poll once a second: an access-log line each would drown everything else.
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    app = DomainDispatcherApplication(create_backend_app)
    # Never 0.0.0.0: moto answers anything without authentication.
    server = make_server("127.0.0.1", args.port, app, threaded=True,
                         request_handler=QuietMotoRequestHandler)  # fmt: skip
    print(f"{READY_PREFIX}{server.server_port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
