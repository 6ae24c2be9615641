"""Cost of a NullSpaceOptimizer step (difflsq.torch) relative to a plain optimizer step.

    PYTHONPATH=build/python /usr/bin/python3 bench/bench_nullspace.py --case main [--repeat 5]
    PYTHONPATH=build/python /usr/bin/python3 bench/bench_nullspace.py --case sweep \
        --sizes 1e4,1e5,1e6,1e7,5e7 [--repeat 3]
    PYTHONPATH=build/python /usr/bin/python3 bench/bench_nullspace.py --case main --threads 2
    PYTHONPATH=build/python /usr/bin/python3 bench/bench_nullspace.py --profile sparsity --size 1e7

Timed: the optimizer's step() only. loss.backward() (which both need) is not timed. Before
every repetition θ is reset to the same start, so each timed step starts from the same point.
The figure is the best of --repeat steps, after one untimed warm-up step. "c(θ)" is one
evaluation of the constraint without autograd, a unit for the cost of a J product. float32
unless --dtype float64. torch.set_num_threads(--threads), 1 by default. Null-space steps use
mode="step" and gamma = 1/lr, i.e. a full Gauss-Newton correction, so ‖c‖ after a step is at
rounding level for the linear constraints (float32 rounding: ~1e-2 for the dense case, whose
entries of Cθ are ~10^3) and second order in the step for the nonlinear one.

Cases (main, ~10^6 parameters):
  sparsity  c = θ[mask] over 4 tensors of P/4, mask ~50 % (J selects entries, JJᵀ = I). The
            mask is a precomputed int64 index; --bool-mask indexes with the bool mask instead
            (slower: autograd redoes mask.nonzero() in every J product)
  dense     c = Cθ − d, C a dense 100 × 10^6 matrix (400 MB in float32)
  nonlinear c_i = ‖W_i‖² − 1 for the 1000 rows of a 1000 × 1000 W (rows of norm ~1)
Loss: 0.5‖θ − t‖² with random t. "feasible" starts with c(θ) = 0 (up to rounding for the
nonlinear case), so the correction solve is skipped when c is exactly 0; "infeasible" starts at
a random θ. The LSQR iteration counts are (correction, stationarity, projection).
sweep: sparsity with SGD, infeasible start, for each size in a fresh subprocess. "setup RSS"
is the resident set after building the problem (θ, its start copy, targets, indices, torch
itself); "peak extra" is the step's own peak: VmHWM after step() minus VmRSS before it, the
peak being reset (/proc/self/clear_refs) just before, max over repetitions. Not part of
`make test`.
"""
import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import time

import torch

import difflsq.torch as dt

LR = {"SGD": 1e-2, "Adam": 1e-3}
BOOL_MASK = False  # --bool-mask: c = θ[bool mask] instead of θ[int64 index]


def proc_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB -> bytes


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_problem(case, size, dtype, feasible, seed=0):
    """(start tensors, constraint(params), target tensors)."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    if case == "sparsity":
        n = size // 4
        masks = [torch.rand(n, generator=g) < 0.5 for _ in range(4)]
        start = [randn(n) for _ in range(4)]
        if feasible:
            for x, m in zip(start, masks):
                x[m] = 0
        if not BOOL_MASK:  # precomputed int64 indices: autograd then skips mask.nonzero()
            masks = [m.nonzero().squeeze(1) for m in masks]
        def constraint(ps):
            return torch.cat([p[m] for p, m in zip(ps, masks)])
    elif case == "dense":
        C = randn(100, size)
        x0 = randn(size)
        d = C @ x0
        start = [x0.clone() if feasible else randn(size)]
        def constraint(ps):
            return C @ ps[0] - d
    elif case == "nonlinear":
        rows = cols = int(round(size ** 0.5))
        w = randn(rows, cols) / cols ** 0.5  # rows of norm ~1 (±5 %)
        start = [w / w.norm(dim=1, keepdim=True) if feasible else w]
        def constraint(ps):
            return (ps[0] * ps[0]).sum(dim=1) - 1
    else:
        raise ValueError(case)
    scale = 1 / start[0].shape[-1] ** 0.5 if case == "nonlinear" else 1.0
    return start, constraint, [randn(*x.shape) * scale for x in start]


def bench(case, size, dtype, feasible, opt_name, kind, repeat, profile=False):
    """Best step time of kind 'plain', 'ns' or 'ns-nostat', plus diagnostics."""
    start, constraint, target = make_problem(case, size, dtype, feasible)
    params = [x.clone().requires_grad_() for x in start]
    lr = LR[opt_name]
    opt = getattr(torch.optim, opt_name)(params, lr=lr)
    if kind != "plain":
        opt = dt.NullSpaceOptimizer(params, opt, lambda: constraint(params), gamma=1 / lr,
                                    track_stationarity=(kind == "ns"))
    rss0 = proc_status("VmRSS")
    best, c_before, t_c, peak = float("inf"), None, float("inf"), 0
    for r in range(repeat + 1):
        with torch.no_grad():
            for p, x in zip(params, start):
                p.copy_(x)
            t0 = time.perf_counter()
            c_before = float(constraint(params).norm())
            t_c = min(t_c, time.perf_counter() - t0)
        opt.zero_grad(set_to_none=False)
        loss = sum(0.5 * ((p - t) ** 2).sum() for p, t in zip(params, target))
        loss.backward()
        prof = cProfile.Profile() if profile and r == repeat else None
        rss, _ = proc_status("VmRSS"), reset_peak()
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        opt.step()
        if prof:
            prof.disable()
        if r > 0:
            best = min(best, time.perf_counter() - t0)
        peak = max(peak, proc_status("VmHWM") - rss)  # the step's own peak, over its start
    with torch.no_grad():
        c_after = float(constraint(params).norm())
    diag = getattr(opt, "diagnostics", {})
    if profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    return dict(time=best, t_c=t_c, its=diag.get("iterations", []), c_before=c_before,
                c_after=c_after, peak=peak, rss0=rss0,
                bytes=sum(x.numel() * x.element_size() for x in start))


def main_tables(args, dtype):
    sizes = {"sparsity": 10**6, "dense": 10**6, "nonlinear": 10**6}
    print(f"\n## Step time at ~1e6 parameters ({args.dtype}, {args.threads} thread(s), best of "
          f"{args.repeat}; ms)\n")
    print("| case | start | optimizer | plain | null-space | ratio | no-stat | ratio "
          "| c(θ) | LSQR its (corr, stat, proj) | ‖c‖ before | ‖c‖ after |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for case in args.cases:
        for feasible in (True, False):
            for opt_name in ("SGD", "Adam"):
                res = {k: bench(case, sizes[case], dtype, feasible, opt_name, k, args.repeat)
                       for k in ("plain", "ns", "ns-nostat")}
                tp, tn, tq = (res[k]["time"] * 1e3 for k in ("plain", "ns", "ns-nostat"))
                ns = res["ns"]
                print(f"| {case} | {'feasible' if feasible else 'infeasible'} | {opt_name} "
                      f"| {tp:.3f} | {tn:.1f} | {tn / tp:.0f} | {tq:.1f} | {tq / tp:.0f} "
                      f"| {ns['t_c'] * 1e3:.2f} "
                      f"| {ns['its']} | {ns['c_before']:.2e} | {ns['c_after']:.1e} |",
                      flush=True)


def sweep_worker(args, dtype):
    out = {k: bench("sparsity", args.size, dtype, False, "SGD", k, args.repeat)
           for k in ("plain", "ns", "ns-nostat")}
    print(json.dumps(out))


def sweep(args):
    print(f"\n## Sparsity sweep: SGD, infeasible start ({args.dtype}, {args.threads} "
          f"thread(s), best of {args.repeat}; one fresh process per size)\n")
    print("| P | θ bytes | setup RSS | plain ms | null-space ms | ratio | no-stat ms | ratio "
          "| LSQR its | step peak extra: plain | NS | ‖c‖ after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    mb = lambda b: f"{b / 2**20:.0f} MB" if b >= 2**20 else f"{b / 2**10:.0f} KB"  # noqa
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--worker", "--size", str(size), "--repeat",
               str(args.repeat), "--threads", str(args.threads), "--dtype", args.dtype]
        cmd += ["--bool-mask"] if BOOL_MASK else []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"| {size:.0e} | failed (exit {proc.returncode} after {wall:.0f} s): "
                  f"{proc.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        p, n, q = r["plain"], r["ns"], r["ns-nostat"]
        print(f"| {size:.0e} | {mb(p['bytes'])} | {mb(p['rss0'])} | {p['time'] * 1e3:.3f} "
              f"| {n['time'] * 1e3:.1f} | {n['time'] / p['time']:.0f} | {q['time'] * 1e3:.1f} "
              f"| {q['time'] / p['time']:.0f} | {n['its']} | {mb(p['peak'])} | "
              f"{mb(max(n['peak'], q['peak']))} | {n['c_after']:.1e} |  (process {wall:.0f} s)",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="all", choices=["all", "main", "sweep"])
    ap.add_argument("--cases", default="sparsity,dense,nonlinear",
                    help="comma-separated subset of the main cases")
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1e7,5e7")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--profile", choices=["sparsity", "dense", "nonlinear"],
                    help="cProfile one null-space step (SGD, infeasible) of this case")
    ap.add_argument("--size", type=float, default=1e6)
    ap.add_argument("--bool-mask", action="store_true",
                    help="sparsity constraint as θ[bool mask] (default: θ[int64 index])")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.size = int(args.size)
    args.sizes = [int(float(s)) for s in args.sizes.split(",")]
    args.cases = args.cases.split(",")
    global BOOL_MASK
    BOOL_MASK = args.bool_mask
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.worker:
        return sweep_worker(args, dtype)
    if args.profile:
        r = bench(args.profile, args.size, dtype, False, "SGD", "ns", 1, profile=True)
        return print(f"step {r['time'] * 1e3:.1f} ms (under cProfile), iterations {r['its']}")
    if args.case in ("all", "main"):
        main_tables(args, dtype)
    if args.case in ("all", "sweep"):
        sweep(args)


if __name__ == "__main__":
    main()
