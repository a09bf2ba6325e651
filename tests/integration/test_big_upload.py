"""1 GiB through the server with curl: memory stays flat, the bytes come back identical.

Run with ``pytest -m slow -s`` to see the figures (throughput, peak memory).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

from .ag_client import AGClient, file_md5, write_manifest
from .helpers import running, server_args, write_random_file

MiB = 1024 * 1024
GiB = 1024 * MiB
#: how much more the 1 GiB server may peak than the 1 MiB one
MEMORY_ALLOWANCE_KB = 64 * 1024


def vm_hwm_kb(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in kB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def curl(*args: str) -> tuple[str, float]:
    """Run curl (bounded in time); its stdout and the seconds it took."""
    started = time.monotonic()
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "600", *args], capture_output=True, text=True, timeout=700
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"curl {args} failed: {result.stderr}"
    return result.stdout, elapsed


def transfer(server: ServerProcess, source: Path, workdir: Path) -> dict[str, float]:
    """Upload ``source`` with curl, download it back; peaks and timings along the way."""
    client = AGClient(server.url(), timeout=600)
    answer = client.post_manifest(write_manifest([source]))
    key = answer.fields()["transfer_key"]
    base = f"{server.url()}/data"
    status, upload_s = curl(
        "-X", "POST", "-T", str(source), "-o", str(workdir / "answer.txt"),
        "-w", "%{http_code}", f"{base}/{key}/0",
    )
    assert status == "200", (workdir / "answer.txt").read_text()
    upload_peak = vm_hwm_kb(server.pid)
    downloaded = workdir / f"down-{source.name}"
    status, download_s = curl("-o", str(downloaded), "-w", "%{http_code}", f"{base}/{source.name}")
    assert status == "200"
    return {
        "upload_s": upload_s,
        "download_s": download_s,
        "upload_peak_kb": upload_peak,
        "peak_kb": vm_hwm_kb(server.pid),
    }


@pytest.mark.slow
def test_one_gib_upload_and_download_in_constant_memory(tmp_path: Path) -> None:
    """A 1 GiB upload and download peak within 64 MiB of a 1 MiB one's, and the bytes round-trip."""
    small_dir, big_dir = tmp_path / "small", tmp_path / "big"
    small_dir.mkdir()
    big_dir.mkdir()
    small = small_dir / "one-mib.bin"
    small_md5 = write_random_file(small, MiB)
    big = big_dir / "one-gib.bin"
    try:
        with running(ServerProcess(small_dir, server_args(small_dir / "store"))) as server:
            baseline = transfer(server, small, small_dir)
        assert file_md5(small_dir / f"down-{small.name}") == small_md5

        big_md5 = write_random_file(big, GiB)
        with running(ServerProcess(big_dir, server_args(big_dir / "store"))) as server:
            figures = transfer(server, big, big_dir)
        downloaded = big_dir / f"down-{big.name}"
        assert file_md5(big_dir / "store" / big.name) == big_md5
        assert file_md5(downloaded) == big_md5
        assert subprocess.run(["cmp", "-s", str(big), str(downloaded)], timeout=300).returncode == 0

        up_mbs = GiB / figures["upload_s"] / 1e6
        down_mbs = GiB / figures["download_s"] / 1e6
        print(
            f"\n1 GiB upload (curl -T): {figures['upload_s']:.2f} s, {up_mbs:.0f} MB/s"
            f"\n1 GiB download (curl -o): {figures['download_s']:.2f} s, {down_mbs:.0f} MB/s"
            f"\nVmHWM after 1 MiB upload: {baseline['upload_peak_kb']} kB,"
            f" after 1 MiB upload+download: {baseline['peak_kb']} kB"
            f"\nVmHWM after 1 GiB upload: {figures['upload_peak_kb']} kB,"
            f" after 1 GiB upload+download: {figures['peak_kb']} kB"
        )
        assert figures["upload_peak_kb"] < baseline["upload_peak_kb"] + MEMORY_ALLOWANCE_KB
        assert figures["peak_kb"] < baseline["peak_kb"] + MEMORY_ALLOWANCE_KB
    finally:
        for path in (big, big_dir / f"down-{big.name}", big_dir / "store" / big.name):
            path.unlink(missing_ok=True)
