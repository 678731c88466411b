"""systemd/ollama-vllm-proxy.service: systemd itself accepts it (``systemd-analyze verify``),
it agrees with the code (notify, reload, stop timeout above the drain), and the exposure
score the README reports is the one ``systemd-analyze security`` gives."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "ollama-vllm-proxy.service"
ANALYZE = shutil.which("systemd-analyze")
# .ci/run installs systemd when systemd-analyze is missing, so CI always runs these.
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def _installed(tmp_path: Path) -> Path:
    """The unit with its binary pointed at one that exists here (verify checks ExecStart=)."""
    binary = Path(sys.executable).with_name("ollama-vllm-proxy")
    assert binary.exists(), binary
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ollama-vllm-proxy", str(binary)))
    return unit


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "verify", str(_installed(tmp_path))], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_analyze
def test_the_readme_reports_the_exposure_score_systemd_analyze_security_gives(tmp_path: Path) -> None:
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "security", "--offline=yes", str(_installed(tmp_path))],
                          capture_output=True, text=True, check=False)  # fmt: skip
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert score is not None, done.stdout + done.stderr
    assert f"exposure score {score.group(1)}" in (REPO / "README.md").read_text()
    assert float(score.group(1)) <= 2.0  # "OK" in systemd's words; hardening must not regress


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("Type", "notify", id="notify"),
        pytest.param("NotifyAccess", "main", id="only-the-main-process-notifies"),
        pytest.param("ExecReload", "/bin/kill -HUP $MAINPID", id="reload-is-sighup"),
        pytest.param("KillMode", "mixed", id="children-never-outlive"),
        pytest.param("ProtectSystem", "strict", id="read-only-system"),
        pytest.param("SystemCallFilter", "@system-service", id="syscalls"),
        pytest.param("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK", id="address-families"),
        pytest.param("CapabilityBoundingSet", "", id="no-capabilities"),
        pytest.param("NoNewPrivileges", "yes", id="no-new-privileges"),
    ],
)
def test_the_unit_sets(key: str, value: str) -> None:
    assert value in _directives().get(key, []), (key, _directives().get(key))


def test_the_unit_agrees_with_the_code() -> None:
    unit = _directives()
    [start] = unit["ExecStart"]
    [check] = unit["ExecStartPre"]
    assert check == start.replace(" serve ", " check ")  # checks the very config it serves
    drain = yaml.safe_load((REPO / "config.yaml").read_text())["drain_timeout"]
    assert int(unit["TimeoutStopSec"][0]) >= drain + 20  # the drain, the cut, managed vLLM's exit, then SIGKILL
    assert int(unit["WatchdogSec"][0]) > 0
    assert "MemoryDenyWriteExecute" not in unit  # PyTorch's JIT needs writable+executable memory
    [hf_home] = [v for v in unit["Environment"] if v.startswith("HF_HOME=")]
    assert hf_home.startswith("HF_HOME=/var/cache/ollama-vllm-proxy")  # inside CacheDirectory=, writable
