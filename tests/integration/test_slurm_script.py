"""scripts/slurm.sh starts a daemon whose first exec is slow (cold cache on a fresh machine).

The first `make up` on a fresh Debian machine failed with "munged exited while waiting for the munge
socket" while munged was in fact running: `start_daemon` recorded `$!` at once, and until
`setsid nohup` had exec'd the daemon, /proc/PID/exe was still the launcher. These tests slow that
exec down on purpose with a `setsid` (or `nohup`) on PATH that sleeps before it execs the real one,
and start a real munged under a private prefix and socket (it does not touch the running cluster).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm.sh"

# Sources slurm.sh (which then only defines its functions), starts munged as `up` does, waits for
# its socket, and stops it again.
_DRIVER = """
source "$1"
prepare_dirs
DEADLINE=$(( $(date +%s) + TIMEOUT ))
start_daemon munged munged -F --key-file="$ETC/munge.key" --socket="$MUNGE_SOCK" \\
  --pid-file="$PREFIX/munge/munged.pid" --log-file="$LOG/munged.log" \\
  --seed-file="$PREFIX/munge/munged.seed"
wait_for munged "the munge socket" test -S "$MUNGE_SOCK"
echo "munged up as pid $(pid_of munged)"
stop_daemon munged
"""


def _needs_munged() -> None:
    if shutil.which("munged") is None or os.geteuid() != 0:
        reason = "munged is not installed (make system-deps) or not root"
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def _private_dir() -> tempfile.TemporaryDirectory[str]:
    tmp = tempfile.TemporaryDirectory(prefix="hpcb-slow-exec-")
    Path(tmp.name).chmod(0o755)  # munged wants every directory above its socket searchable
    return tmp


def _slow_launcher(bin_dir: Path, name: str, delay_s: float) -> None:
    real = shutil.which(name)
    assert real is not None
    wrapper = bin_dir / name
    wrapper.write_text(f'#!/bin/sh\nsleep {delay_s}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)


def _start_munged(prefix: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HPCB_SLURM_PREFIX": str(prefix),
        "HPCB_SLURM_TIMEOUT": "30",
    }
    return subprocess.run(
        ["bash", "-c", _DRIVER, "driver", str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.parametrize("launcher", ["setsid", "nohup"])
def test_a_daemon_whose_exec_is_slow_is_waited_for_not_reported_as_exited(launcher: str) -> None:
    # GIVEN a launcher on PATH that takes 1.5 s before it execs the real one
    _needs_munged()
    with _private_dir() as tmp:
        bin_dir = Path(tmp) / "bin"
        bin_dir.mkdir()
        _slow_launcher(bin_dir, launcher, 1.5)

        # WHEN slurm.sh starts munged through it and waits for the munge socket
        result = _start_munged(Path(tmp) / "prefix", bin_dir)

        # THEN it waits for the exec instead of reporting munged as exited
        assert result.returncode == 0, result.stderr
        assert "munged up as pid" in result.stdout
        assert "exited" not in result.stderr


def test_a_daemon_that_really_exits_at_start_is_still_reported() -> None:
    # GIVEN a munged that cannot start (its key file is missing)
    _needs_munged()
    with _private_dir() as tmp:
        bin_dir = Path(tmp) / "bin"
        bin_dir.mkdir()
        _slow_launcher(bin_dir, "setsid", 0.5)
        driver = _DRIVER.replace('--key-file="$ETC/munge.key"', '--key-file="$ETC/missing.key"')
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "HPCB_SLURM_PREFIX": str(Path(tmp) / "prefix"),
            "HPCB_SLURM_TIMEOUT": "30",
        }

        # WHEN slurm.sh starts it
        result = subprocess.run(
            ["bash", "-c", driver, "driver", str(SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

        # THEN the start fails with the daemon's own log, not a hang until the deadline
        assert result.returncode != 0
        assert "munged exited" in result.stderr


@pytest.mark.slurm
def test_a_non_root_user_can_submit_while_the_cluster_secrets_stay_root_only(
    slurm: dict[str, str],
) -> None:
    # GIVEN the running local Slurm (jobs run as their callers' own users, never root)
    etc = Path(slurm["SLURM_CONF"]).parent

    # WHEN an unprivileged user asks sbatch whether a job would be accepted
    probe = subprocess.run(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            "env",
            f"SLURM_CONF={slurm['SLURM_CONF']}",
            "sbatch",
            "--test-only",
            "--wrap",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    # THEN sbatch can read the configuration, and the secrets beside it are root's alone
    assert probe.returncode == 0, probe.stderr
    assert "to start at" in probe.stderr
    for secret in ("munge.key", "db.pass", "slurmdbd.conf"):
        mode = (etc / secret).stat().st_mode & 0o777
        assert mode == 0o600, f"{secret} is {oct(mode)}"
