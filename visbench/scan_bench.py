"""`visbench scan-bench`: time the selective-scan back ends against `ref` and measure their peak memory.

Cases (issue 3, section 5), batch 2, dim 192, N 16, mamba-ssm's input distributions:
  forward at L 3136, every back end against ref;
  forward + backward at L 784 (where ref's backward still finishes), every back end against ref;
  the fast path alone, forward + backward at L 3136 and L 16384.
``--quick`` runs the forward case, a short forward + backward (L 196) and the fast path at L 3136
(one to two minutes on an idle 2-core machine).

Each measurement runs in a fresh subprocess, so that one case's allocations cannot hide another's:
the worker builds the inputs, warms the back end up on a tiny problem (numba's compile or cache
load is not timed), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the case,
and reports the wall time (best of the repeats) and the peak resident memory above the level right
before the run (``VmHWM - VmRSS`` from ``/proc/self/status``): this counts every allocation, torch's
or numba's, in RAM. Where /proc is missing, memory reads "n/a".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

# The `cpu` back end in its two implementations: numba kernels (the default) and the fallback.
VARIANTS = {
    "ref": ("ref", None),
    "cpu": ("cpu", "numba"),
    "cpu-torch": ("cpu", "torch"),
    "triton": ("triton", None),
    "cuda": ("cuda", None),
}


@dataclass(frozen=True)
class BenchCase:
    name: str
    mode: str  # "fwd" or "fwd+bwd"
    batch: int
    dim: int
    dstate: int
    length: int
    variants: tuple[str, ...]  # which back ends run it; "ref" first when it is the baseline
    target_speedup: float | None = None


def cases(quick: bool, device: str) -> list[BenchCase]:
    fast = ("cpu", "cpu-torch") if device == "cpu" else ("cuda", "triton")
    if quick:
        return [
            BenchCase("forward", "fwd", 2, 192, 16, 3136, ("ref", *fast), 10.0),
            # The target of 50x is for L 784; at L 196 ref's L^2 backward has not yet blown up.
            BenchCase("forward+backward", "fwd+bwd", 2, 192, 16, 196, ("ref", *fast)),
            BenchCase("fast path forward+backward", "fwd+bwd", 2, 192, 16, 3136, fast[:1]),
        ]
    return [
        BenchCase("forward", "fwd", 2, 192, 16, 3136, ("ref", *fast), 10.0),
        BenchCase("forward+backward", "fwd+bwd", 2, 192, 16, 784, ("ref", *fast), 50.0),
        BenchCase("fast path forward+backward", "fwd+bwd", 2, 192, 16, 3136, fast[:1]),
        BenchCase("fast path forward+backward", "fwd+bwd", 2, 192, 16, 16384, fast[:1]),
    ]


# ----------------------------------------------------------------------------- the worker


def _proc_status(field: str) -> int | None:
    """A memory field of /proc/self/status in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _inputs(batch: int, dim: int, dstate: int, length: int, device: str, grad: bool):
    import torch

    gen = torch.Generator().manual_seed(0)
    tensors = {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": 0.5 * torch.rand(batch, dim, length, generator=gen),
        "A": -0.5 * torch.rand(dim, dstate, generator=gen),
        "B": torch.randn(batch, dstate, length, generator=gen),
        "C": torch.randn(batch, dstate, length, generator=gen),
        "D": torch.randn(dim, generator=gen),
        "z": torch.randn(batch, dim, length, generator=gen),
        "delta_bias": 0.5 * torch.rand(dim, generator=gen),
    }
    return {k: v.to(device).requires_grad_(grad) for k, v in tensors.items()}


def _run_once(inputs: dict, backend: str, mode: str, device: str) -> None:
    import torch

    from visbench.kernels import selective_scan

    if mode == "fwd":
        with torch.no_grad():
            selective_scan(**inputs, delta_softplus=True, backend=backend)
    else:
        out = selective_scan(**inputs, delta_softplus=True, backend=backend)
        out.backward(torch.ones_like(out))
        for t in inputs.values():
            t.grad = None
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(variant: str, case: dict, device: str, repeats: int, time_budget: float) -> dict:
    """One measurement, in this process: {"seconds": best wall time, "peak_bytes": RSS peak or None}."""
    from visbench.kernels import scan_cpu

    backend, impl = VARIANTS[variant]
    scan_cpu.use_implementation(impl)
    try:
        return _measure(backend, case, device, repeats, time_budget)
    finally:
        scan_cpu.use_implementation(None)


def _measure(backend: str, case: dict, device: str, repeats: int, time_budget: float) -> dict:
    import gc

    import torch

    grad = case["mode"] == "fwd+bwd"
    # Warm-up on a tiny problem: JIT compile / cache load and lazy imports are not part of the timing.
    _run_once(_inputs(1, 4, case["dstate"], 16, device, grad), backend, case["mode"], device)
    inputs = _inputs(case["batch"], case["dim"], case["dstate"], case["length"], device, grad)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _proc_status("VmRSS") if _reset_peak_rss() else None
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < time_budget):
        t0 = time.perf_counter()
        _run_once(inputs, backend, case["mode"], device)
        times.append(time.perf_counter() - t0)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        hwm = _proc_status("VmHWM")
        peak = None if base is None or hwm is None else max(0, hwm - base)
    return {"seconds": min(times), "runs": len(times), "peak_bytes": peak}


def _measure_in_subprocess(variant: str, case: BenchCase, device: str, repeats: int, budget: float) -> dict:
    spec = json.dumps(
        {"variant": variant, "case": asdict(case), "device": device, "repeats": repeats, "budget": budget}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "visbench.scan_bench", "--worker", spec],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the table


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def _available_variants(device: str) -> set[str]:
    from visbench.kernels import available_backends

    names = set(available_backends(device))
    found = {v for v, (backend, _) in VARIANTS.items() if backend in names}
    if device == "cpu":
        from visbench.kernels import scan_cpu

        if scan_cpu._numba_module() is None:
            found.discard("cpu")  # it would silently be the fallback: do not report it twice
    return found


def run_benchmark(quick: bool, device: str, repeats: int, budget: float, out=sys.stdout) -> list[dict]:
    import torch

    from visbench.kernels import scan_cpu

    available = _available_variants(device)
    print(f"# selective scan benchmark ({'quick' if quick else 'full'})", file=out)
    print(
        f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, device {device}, "
        f"cpu implementation: {scan_cpu.implementation()}",
        file=out,
    )
    print(
        f"time: best of up to {repeats} runs (one run when it takes long); memory: peak RSS above the level",
        file=out,
    )
    print(
        "before the run, in a fresh process per measurement (GPU: torch.cuda.max_memory_allocated)\n",
        file=out,
    )
    rows = []
    columns = [
        "case",
        "shape (b, d, N, L)",
        "back end",
        "time",
        "speed-up vs ref",
        "peak memory",
        "memory vs ref",
    ]
    print("| " + " | ".join([*columns, "target"]) + " |", file=out)
    print("|" + "---|" * 8, file=out)
    for case in cases(quick, device):
        ref_result = None
        for variant in case.variants:
            if variant not in available:
                continue
            result = _measure_in_subprocess(variant, case, device, repeats, budget)
            row = {
                "case": case.name,
                "mode": case.mode,
                "shape": [case.batch, case.dim, case.dstate, case.length],
            }
            row.update(variant=variant, **result)
            rows.append(row)
            if variant == "ref" and "error" not in result:
                ref_result = result
            speedup = mem_ratio = verdict = ""
            if "error" in result:
                timing, memory = f"error: {result['error']}", ""
            else:
                timing, memory = f"{result['seconds']:.3f} s", _fmt_bytes(result["peak_bytes"])
                if ref_result is not None and variant != "ref":
                    ratio = ref_result["seconds"] / result["seconds"]
                    row["speedup"] = ratio
                    speedup = f"{ratio:.1f}x"
                    if result["peak_bytes"] and ref_result["peak_bytes"]:
                        row["memory_ratio"] = result["peak_bytes"] / ref_result["peak_bytes"]
                        mem_ratio = f"{row['memory_ratio']:.3f}"
                    if case.target_speedup is not None and variant == case.variants[1]:
                        ok = ratio >= case.target_speedup and row.get("memory_ratio", 0.0) <= 0.25
                        verdict = f"≥{case.target_speedup:.0f}x, ≤0.25 mem: {'met' if ok else 'NOT met'}"
            shape = f"{case.batch}, {case.dim}, {case.dstate}, {case.length}"
            cells = [case.name, shape, variant, timing, speedup, memory, mem_ratio, verdict]
            print("| " + " | ".join(cells) + " |", file=out, flush=True)
    return rows


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller cases, about a minute on 2 CPU cores")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is kept")
    parser.add_argument("--budget", type=float, default=10.0, help="stop repeating after this many seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.worker:
        spec = json.loads(args.worker)
        result = measure(spec["variant"], spec["case"], spec["device"], spec["repeats"], spec["budget"])
        print(json.dumps(result))
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    rows = run_benchmark(args.quick, args.device, args.repeats, args.budget)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if any("error" in row for row in rows) else 0


def main(argv: list[str] | None = None) -> int:
    """``visbench scan-bench ...`` (through ``visbench.cli.main``: a user's mistake is one line)."""
    from visbench.cli import main as visbench

    return visbench(["scan-bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
