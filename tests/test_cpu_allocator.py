"""The CPU allocator setting: freed blocks reused without page faults, a user's choice kept, recorded."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from visbench import cli, cpu_allocator, results

# One "train step": tensors of 10.4 and 6.4 MB (the 1-D bodies' activations) and one of 40 MB (above
# glibc's 32 MiB ceiling for its own mmap threshold), written, multiplied and freed, repeated. Prints the
# page faults of the median one of 8 steps and the setting in force.
_STEPS_SCRIPT = """
import json, resource, torch
from visbench.cpu_allocator import keep_freed_memory
setting = keep_freed_memory()
def step():
    tensors = [torch.ones(n) for n in (2_600_000, 1_600_000, 10_000_000)]
    product = tensors[0] * 2
    del tensors, product
for _ in range(4):
    step()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(faults)[len(faults) // 2]  # the median step: one step that grows the heap is not the rule
print(json.dumps({"setting": setting, "faults": faults}))
"""
_PAGES_PER_STEP = (2 * 2_600_000 + 1_600_000 + 10_000_000) * 4 // 4096  # 16406 pages touched per step


def _run_steps(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", cpu_allocator.OPT_OUT_VARIABLE)}
    clean = {k: v for k, v in clean.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", _STEPS_SCRIPT],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    system = _run_steps(**{cpu_allocator.OPT_OUT_VARIABLE: "1"})
    assert system["setting"].startswith("system default")
    if system["faults"] < _PAGES_PER_STEP // 2:
        pytest.skip(f"this glibc reuses the blocks by itself ({system['faults']} faults in a step)")
    kept = _run_steps()
    assert kept["setting"].startswith("glibc, freed memory kept"), kept
    # Every step faulted its pages in again under the system default; once the heap holds them, none do.
    assert kept["faults"] < _PAGES_PER_STEP // 20, (kept, system)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (cpu_allocator.OPT_OUT_VARIABLE, "1", "system default (VISBENCH_SYSTEM_MALLOC is set)"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "jemalloc (LD_PRELOAD)"),
        ("MALLOC_TRIM_THRESHOLD_", "1000000", "glibc as the user set it (MALLOC_TRIM_THRESHOLD_)"),
        ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2", "glibc as the user set it (GLIBC_TUNABLES)"),
    ],
)
def test_a_users_own_choice_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setattr(cpu_allocator, "_setting", cpu_allocator._setting)
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(cpu_allocator.ctypes, "CDLL", _no_libc)
    assert cpu_allocator.keep_freed_memory() == expected
    assert cpu_allocator.allocator_setting() == expected


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_allocator, "_setting", cpu_allocator._setting)
    for name in ("LD_PRELOAD", cpu_allocator.OPT_OUT_VARIABLE, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(cpu_allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.setattr(cpu_allocator.ctypes, "CDLL", _no_libc)
    assert cpu_allocator.keep_freed_memory() == "system default (the C library is not glibc)"


def _no_libc(*args: object, **kwargs: object) -> None:
    raise AssertionError("the allocator was to be left alone, but libc was loaded to change it")


def test_the_visbench_command_applies_it_and_result_files_record_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_allocator, "_setting", cpu_allocator._setting)
    monkeypatch.setenv(cpu_allocator.OPT_OUT_VARIABLE, "1")  # the test process keeps its allocator
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    expected = "system default (VISBENCH_SYSTEM_MALLOC is set)"
    assert cpu_allocator.allocator_setting() == expected
    assert results.environment_info("cpu")["environment"]["cpu_allocator"] == expected


def test_worker_processes_take_the_setting_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench's isolated workers and the study's spawned workers do not run through the command."""
    from visbench import bench, study

    calls: list[str] = []
    monkeypatch.setattr(bench, "keep_freed_memory", lambda: calls.append("bench"))
    monkeypatch.setattr(study, "keep_freed_memory", lambda: calls.append("study"))
    monkeypatch.setattr(bench, "measure_group", lambda members, size, **kwargs: [])
    spec = {"members": [["gated_cnn_tiny", "none"]], "size": [32, 32], "kwargs": {}}
    assert bench._worker(json.dumps(spec)) == 0
    study._worker_init(None)
    assert calls == ["bench", "study"]
