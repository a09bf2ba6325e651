"""contrib/: the systemd unit passes systemd-analyze verify; the logrotate file rotates and signals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "contrib" / "systemd" / "gsitransfer.service"
LOGROTATE = REPO / "contrib" / "logrotate" / "gsitransfer"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit as shipped, its ExecStart pointed at this environment's twistd: no warning, exit 0."""
    twistd = Path(sys.executable).parent / "twistd"
    text = UNIT.read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text and "NoNewPrivileges=yes" in text
    assert "ProtectSystem=strict" in text and "--logfile=-" in text
    unit = tmp_path / "gsitransfer.service"
    unit.write_text(text.replace("/opt/gsitransfer/bin/twistd", str(twistd)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_the_logrotate_file_rotates_and_runs_its_postrotate(tmp_path: Path) -> None:
    """Forced once on a copy aimed at a temporary file: the log is moved to .1 and the postrotate command runs."""
    log = tmp_path / "audit.log"
    log.write_text('{"event": "upload"}\n')
    marker = tmp_path / "signalled"
    conf = tmp_path / "conf"
    conf.write_text(
        LOGROTATE.read_text()
        .replace("/var/log/gsitransfer/audit.log", str(log))
        .replace("create 0640 gsitransfer gsitransfer", "create 0640 root root")
        .replace("systemctl kill -s USR1 --kill-whom=main gsitransfer.service", f"touch {marker}")
    )
    result = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "audit.log.1").read_text() == '{"event": "upload"}\n' and marker.exists()
