"""`visbench scan-bench`: time the selective-scan back ends against `ref` and measure their peak memory.

Cases (issue 3, section 5), batch 2, dim 192, N 16, mamba-ssm's input distributions:
  forward at L 3136, every back end against ref (and mamba-ssm's own selective_scan_ref on CPU);
  forward + backward at L 784 (where ref's backward still finishes), every back end against ref;
  the fast path alone, forward + backward at L 3136 and L 16384.
On CPU the run ends with the floor of the forward (issue 13): the exponentials and multiply-adds it
must do and the bytes it must move, at this machine's exp rate, multiply-add rate and memory
bandwidth measured in the same run, next to the measured time.
``--quick`` runs the forward case, a short forward + backward (L 196) and the fast path at L 3136
(one to two minutes on an idle 2-core machine).

Each measurement runs in a fresh subprocess, so that one case's allocations cannot hide another's:
the worker builds the inputs, warms the back end up on a tiny problem (numba's compile or cache
load is not timed), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the case
(at least ``--repeats`` times and MIN_SECONDS), and reports the wall time (the best run) and the peak
resident memory above the level right before the run (``VmHWM - VmRSS`` from ``/proc/self/status``):
this counts every allocation, torch's or numba's, in RAM. Where /proc is missing, memory reads "n/a".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

# The `cpu` back end in its two implementations: numba kernels (the default) and the fallback;
# `mamba-ref` is mamba-ssm's own selective_scan_ref (the PyTorch reference its users run on CPU).
VARIANTS = {
    "ref": ("ref", None),
    "cpu": ("cpu", "numba"),
    "cpu-torch": ("cpu", "torch"),
    "mamba-ref": ("mamba-ref", None),
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
    others = ("mamba-ref",) if device == "cpu" else ()
    if quick:
        return [
            BenchCase("forward", "fwd", 2, 192, 16, 3136, ("ref", *fast, *others), 10.0),
            # The target of 50x is for L 784; at L 196 ref's L^2 backward has not yet blown up.
            BenchCase("forward+backward", "fwd+bwd", 2, 192, 16, 196, ("ref", *fast, *others)),
            BenchCase("fast path forward+backward", "fwd+bwd", 2, 192, 16, 3136, fast[:1]),
        ]
    return [
        BenchCase("forward", "fwd", 2, 192, 16, 3136, ("ref", *fast, *others), 10.0),
        BenchCase("forward+backward", "fwd+bwd", 2, 192, 16, 784, ("ref", *fast, *others), 50.0),
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


def mamba_selective_scan_ref():
    """mamba-ssm's ``selective_scan_ref``, or None when mamba-ssm is not installed.

    Its module imports the compiled ``selective_scan_cuda`` at import; where that build is absent a
    placeholder module stands in (the reference itself is plain PyTorch). Call in a worker process.
    """
    from visbench.kernels.checks import import_without_cuda_extensions

    try:
        return import_without_cuda_extensions("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    except Exception:  # not installed, or broken in this environment: the variant is skipped
        return None


def _run_once(inputs: dict, backend: str, mode: str, device: str) -> None:
    import functools

    import torch

    from visbench.kernels import selective_scan

    if backend == "mamba-ref":
        scan = mamba_selective_scan_ref()
    else:
        scan = functools.partial(selective_scan, backend=backend)
    if mode == "fwd":
        with torch.no_grad():
            scan(**inputs, delta_softplus=True)
    else:
        out = scan(**inputs, delta_softplus=True)
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
    while not times or _keep_repeating(len(times), time.perf_counter() - start, repeats, time_budget):
        t0 = time.perf_counter()
        _run_once(inputs, backend, case["mode"], device)
        times.append(time.perf_counter() - t0)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        hwm = _proc_status("VmHWM")
        peak = None if base is None or hwm is None else max(0, hwm - base)
    return {"seconds": min(times), "runs": len(times), "peak_bytes": peak}


# A measurement runs at least ``repeats`` times and for at least this long (as timeit's autorange does),
# unless the budget ends it first: three runs of a 5 ms kernel in a fresh process time its first runs'
# page faults and cold caches (the forward read 7.0 ms that way, 5.0 ms in a warm loop), while the
# floor it is held against is a best of 20.
MIN_SECONDS = 1.0


def _keep_repeating(runs: int, elapsed: float, repeats: int, time_budget: float) -> bool:
    """Whether a measurement with ``runs`` runs in ``elapsed`` seconds goes on."""
    return elapsed < time_budget and (runs < repeats or elapsed < MIN_SECONDS)


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


# ----------------------------------------------------------------------------- the floor


def _best_time(fn, repeats: int) -> float:
    import time as _time

    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = _time.perf_counter()
        fn()
        best = min(best, _time.perf_counter() - t0)
    return best


def _kernel_exp_seconds(x, y, repeats: int) -> float | None:
    """Best time of the cpu kernels' own exponential over x (None without numba)."""
    import torch

    from visbench.kernels import scan_cpu

    kern = scan_cpu._numba_module()
    if kern is None:
        return None
    kern.set_threads(torch.get_num_threads())
    exp_into = kern.kernel("exp_into", x.numpy().dtype)
    return _best_time(lambda: exp_into(x.numpy(), y.numpy()), repeats)


def measure_rates(repeats: int = 20) -> dict:
    """This machine's rates now, with torch's thread count (best of ``repeats``).

    ``exp_per_s``: the faster of torch.exp and the cpu kernels' own SIMD exponential over a
    cache-resident float32 array (1 MiB, so it measures the arithmetic, not memory), named in
    ``exp_source`` (a floor at the slower one would not be a floor); ``madd_per_s``: multiply-adds of
    a 512 x 512 float32 matmul (the FMA units at their best); ``bytes_per_s``: bytes read plus bytes
    written by a 128 MiB copy.
    """
    import torch

    x = -4.0 * torch.rand(1 << 18)
    y = torch.empty_like(x)
    exp_s, exp_source = _best_time(lambda: torch.exp(x, out=y), repeats), "torch.exp"
    kernel_exp_s = _kernel_exp_seconds(x, y, repeats)
    if kernel_exp_s is not None and kernel_exp_s < exp_s:
        exp_s, exp_source = kernel_exp_s, "the kernels' exp"
    m = torch.randn(512, 512)
    prod = torch.empty_like(m)
    mm_s = _best_time(lambda: torch.mm(m, m, out=prod), repeats)
    src = torch.ones(1 << 25)
    dst = torch.zeros_like(src)
    copy_s = _best_time(lambda: dst.copy_(src), max(3, repeats // 4))
    return {
        "exp_per_s": x.numel() / exp_s,
        "exp_source": exp_source,
        "madd_per_s": 512**3 / mm_s,
        "bytes_per_s": 2 * src.numel() * src.element_size() / copy_s,
    }


def forward_work(batch: int, dim: int, dstate: int, length: int, has_z: bool = True) -> dict:
    """What the float32 forward (softplus time step, D skip, z gate as in the benchmark) must do.

    Per state and step: exp(dt A), and the multiply-adds dt * A, decay * x, + (dt u) B, + C x. Per
    step of a chain: one exponential for softplus and one for the gate's sigmoid. Bytes: u, delta,
    z read and out written once ((b, d, L) each), B and C read once ((b, N, L) each); nothing else
    need leave the cache.
    """
    steps = batch * dim * length
    rows = 3 + int(has_z)
    return {
        "exps": steps * dstate + steps * (1 + int(has_z)),
        "madds": 4 * steps * dstate,
        "bytes": 4 * (rows * steps + 2 * batch * dstate * length),
    }


def floor_seconds(work: dict, rates: dict) -> dict:
    """Compute time (exponentials, then multiply-adds, on the same units) and memory time; the floor is
    the larger, as the two can overlap."""
    compute = work["exps"] / rates["exp_per_s"] + work["madds"] / rates["madd_per_s"]
    memory = work["bytes"] / rates["bytes_per_s"]
    return {"compute_s": compute, "memory_s": memory, "floor_s": max(compute, memory)}


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def floor_report(case: BenchCase, measured_s: float, rates: dict, target: float = 3.0) -> tuple[str, dict]:
    """One paragraph: the forward's floor at the measured rates, next to the measured time."""
    work = forward_work(case.batch, case.dim, case.dstate, case.length)
    floor = floor_seconds(work, rates)
    ratio = measured_s / floor["floor_s"]
    bound = "compute" if floor["compute_s"] >= floor["memory_s"] else "memory"
    exp_source = rates.get("exp_source", "torch.exp")
    text = (
        f"floor of the cpu forward ({case.batch}, {case.dim}, {case.dstate}, {case.length}): "
        f"{_si(work['exps'], '')} exps at {_si(rates['exp_per_s'], '/s')} ({exp_source}) = "
        f"{1e3 * work['exps'] / rates['exp_per_s']:.1f} ms, "
        f"{_si(work['madds'], '')} multiply-adds at {_si(rates['madd_per_s'], '/s')} (matmul) = "
        f"{1e3 * work['madds'] / rates['madd_per_s']:.1f} ms, "
        f"{work['bytes'] / 2**20:.1f} MiB at {rates['bytes_per_s'] / 2**30:.1f} GiB/s (copy) = "
        f"{1e3 * floor['memory_s']:.1f} ms; floor {1e3 * floor['floor_s']:.1f} ms ({bound}-bound). "
        f"Measured {1e3 * measured_s:.1f} ms = {ratio:.1f}x the floor "
        f"(target <= {target:.0f}x: {'met' if ratio <= target else 'NOT met'})."
    )
    return text, {**work, **rates, **floor, "measured_s": measured_s, "floor_ratio": ratio}


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
    if device == "cpu" and importlib.util.find_spec("mamba_ssm") is not None:
        found.add("mamba-ref")
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
        f"time: best of at least {repeats} runs and {MIN_SECONDS:.0f} s (fewer past --budget); "
        "memory: peak RSS above the level",
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
    notes = []
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
        case_rows = [r for r in rows if r["case"] == case.name and r["shape"][3] == case.length]
        notes.extend(_case_notes(case, case_rows))
    if device == "cpu":
        forward = next(
            (r for r in rows if r["mode"] == "fwd" and r["variant"] == "cpu" and "error" not in r), None
        )
        if forward is not None:
            case = next(c for c in cases(quick, device) if c.mode == "fwd")
            text, floor = floor_report(case, forward["seconds"], measure_rates())
            rows.append({"case": "floor", "mode": "fwd", "variant": "floor", **floor})
            notes.append(text)
    for note in notes:
        print("\n" + note, file=out)
    return rows


def _case_notes(case: BenchCase, rows: list[dict]) -> list[str]:
    """The fast path against mamba-ssm's selective_scan_ref, when both ran in this case."""
    times = {r["variant"]: r["seconds"] for r in rows if "error" not in r}
    fast = case.variants[1] if len(case.variants) > 1 else None
    if "mamba-ref" not in times or fast not in times:
        return []
    return [
        f"{case.name} (L {case.length}): {fast} {1e3 * times[fast]:.1f} ms, mamba-ssm's selective_scan_ref "
        f"{1e3 * times['mamba-ref']:.1f} ms: {times['mamba-ref'] / times[fast]:.1f}x faster than it."
    ]


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller cases, about a minute on 2 CPU cores")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help=f"least runs per measurement (and {MIN_SECONDS:g} s); the best is kept",
    )
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
