"""effnets.allocator: glibc keeps freed memory for reuse (oracle: the kernel's page-fault and
resident-size counters, in fresh processes, since the setting lasts for the process)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

import effnets.allocator as allocator
from effnets.cli import main

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

_PROBE = r"""
import json, resource, sys, torch
import effnets.allocator as A
applied = A.keep_freed_memory() if sys.argv[1] == "keep" else None

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def cycle():  # 64 MiB: above glibc's largest dynamic mmap threshold (32 MiB)
    t = torch.empty(16 * 2**20)
    t.fill_(1.0)
    del t

for _ in range(24):  # steady state: torch's 64-byte-aligned blocks do not fit the chunk just freed
    cycle()          # at first, so glibc grows its heap a few times (here up to 8 x 64 MiB) until they do
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cycle()
cycle()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 2
held = rss_mib()
released = A.release_freed_memory()
print(json.dumps(dict(applied=applied, faults=faults, held=held, after_release=rss_mib(), released=released)))
"""


def _probe(setting: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, setting], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_keep_freed_memory_reuses_large_buffers_without_page_faults():
    default, keep = _probe("default"), _probe("keep")
    assert keep["applied"] is True
    # 64 MiB = 16384 pages of 4 KiB: glibc maps them afresh each time by default ...
    assert default["faults"] > 8000, default
    # ... and, once told to keep freed memory, hands the same pages back
    assert keep["faults"] < 1000, keep


@glibc_only
def test_release_freed_memory_returns_the_kept_pages():
    keep = _probe("keep")
    assert keep["released"] is True
    assert keep["held"] - keep["after_release"] > 32, keep  # MiB: the 64 MiB buffer went back


def test_not_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False
    assert allocator.release_freed_memory() is False


def test_train_cli_keeps_freed_memory_unless_told_not_to(monkeypatch, tmp_path):
    calls = []  # not the real call: the setting would last for the rest of the test process
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    import effnets.train as train_pkg
    monkeypatch.setattr(train_pkg, "fit", lambda *a, **k: {"done": True})
    assert main(["train", "--recipe", "demo", "--data", "synthetic", "--out", str(tmp_path / "a")]) == 0
    assert len(calls) == 1
    assert main(["train", "--recipe", "demo", "--data", "synthetic", "--out", str(tmp_path / "b"),
                 "--no-keep-freed-memory"]) == 0
    assert len(calls) == 1
    assert main(["train", "--recipe", "demo", "--show-recipe"]) == 0  # prints, trains nothing
    assert len(calls) == 1
