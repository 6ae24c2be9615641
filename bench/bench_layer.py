"""Cost of the differentiable layer (difflsq.torch.lstsq), measured side by side in one run.

    PYTHONPATH=build/python /usr/bin/python3 bench/bench_layer.py [--repeat 5] [--threads 1]

1. Backward time / forward time of the layer (goal <= 2.5) on a dense 3000 x 1000 problem with
   singular values in [1e-2, 1], damp 1e-2 and 0, tolerances 1e-8 (forward and backward).
2. Against differentiating through the iterations: CGLS unrolled in plain torch, run to the
   same accuracy as difflsq (the first iteration count whose error against a dense solve is no
   larger than difflsq's), forward + backward time and the accuracy of both gradients.
3. Memory: the bytes autograd keeps for the backward pass besides A (saved-tensor hooks: exact),
   and the resident memory a fresh process holds between forward and backward, as the unrolled
   iteration count grows; difflsq's does not depend on its iteration count.
4. Forward mode: (x, ẋ) from dual A and b (torch.autograd.forward_ad) against x alone, time
   and ẋ's error against forward AD through the dense normal equations.
"""
import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time

import torch
import torch.autograd.forward_ad as fwad

import difflsq.torch as dt

M, N, DAMP, TOL = 3000, 1000, 1e-2, 1e-8


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(M, N, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, -2, N, dtype=torch.float64)
    a = (u * sigma) @ v.T
    b = torch.randn(M, generator=g, dtype=torch.float64)
    w = torch.randn(N, generator=g, dtype=torch.float64)
    return a, b, w


def dense(a, b, w):
    """x and the gradients of <w, x> w.r.t. A and b from the damped normal equations."""
    normal = a.T @ a + DAMP ** 2 * torch.eye(N, dtype=a.dtype)
    x = torch.linalg.solve(normal, a.T @ b)
    y = torch.linalg.solve(normal, w)
    r = b - a @ x
    return x, torch.outer(r, y) - torch.outer(a @ y, x), a @ y


def cgls_unrolled(a, b, k):
    """k CGLS iterations on the damped problem, differentiable by torch (stores every iterate)."""
    x = torch.zeros(N, dtype=a.dtype)
    r = b.clone()
    s = a.T @ r
    p, gamma = s, s @ s
    for _ in range(k):
        q = a @ p
        alpha = gamma / (q @ q + DAMP ** 2 * (p @ p))
        x = x + alpha * p
        r = r - alpha * q
        s = a.T @ r - DAMP ** 2 * x
        gamma_new = s @ s
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    return x


def difflsq_solve(a, b, method="lsmr"):
    return dt.lstsq(a, b, DAMP, method=method, atol=TOL, btol=TOL, conlim=0, maxiter=20000)


def best(fn, repeat):
    t = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def fwd_bwd(solve, a0, b0, w):
    a = a0.clone().requires_grad_()
    b = b0.clone().requires_grad_()
    (solve(a, b) @ w).backward()
    return a.grad, b.grad


def rel(x, y):
    return float((x - y).norm() / y.norm())


def saved_bytes(solve, a0, b0, w):
    """Bytes of the tensors autograd saves for backward (each storage counted once), other than
    A itself (which both keep by reference)."""
    seen = {}
    a = a0.clone().requires_grad_()

    def pack(t):
        if t.storage().data_ptr() != a.storage().data_ptr():
            seen[t.storage().data_ptr()] = t.storage().nbytes()
        return t

    b = b0.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x = solve(a, b)
    (x @ w).backward()
    return sum(seen.values())


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def child(kind, k):
    """Resident memory held between forward and backward, in this fresh process (--child)."""
    torch.set_num_threads(1)
    a, b, w = problem()
    a.requires_grad_()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages: growth shows in RSS
    before = rss_mb()
    solve = (lambda a, b: cgls_unrolled(a, b, k)) if kind == "unrolled" else difflsq_solve
    x = solve(a, b)
    held = rss_mb() - before
    (x @ w).backward()
    print(json.dumps({"held_mb": held}))


def held_rss(kind, k):
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(k)], check=True,
                         capture_output=True, text=True, env=dict(os.environ))
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    torch.set_num_threads(args.threads)
    a, b, w = problem()
    x_ref, ga_ref, gb_ref = dense(a, b, w)
    print(f"dense {M} x {N}, singular values in [1e-2, 1], damp {DAMP}, tolerances {TOL}, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeat}\n")

    print("1. backward / forward (time; iterations of the forward and the backward solves)")
    for damp in (DAMP, 0.0):
        for method in ("lsmr", "lsqr", "cgls"):
            solve = (lambda a, b: dt.lstsq(a, b, damp, method=method, atol=TOL, btol=TOL,
                                           conlim=0, maxiter=20000, return_info=True))
            t_fwd = best(lambda: solve(a, b), args.repeat)
            ar = a.clone().requires_grad_()

            def backward_only():
                xx, info = solve(ar, b)
                t0 = time.perf_counter()
                (xx @ w).backward()
                return time.perf_counter() - t0, info

            runs = [backward_only() for _ in range(args.repeat)]
            t_bwd, info = min(runs, key=lambda t: t[0])
            fwd_its = info["forward"][0]["itn"]
            bwd_its = [rec[2] for rec in info["backward"][0]]
            print(f"  damp {damp:<5g} {method}: forward {t_fwd * 1e3:7.1f} ms ({fwd_its} it), "
                  f"backward {t_bwd * 1e3:7.1f} ms ({' + '.join(map(str, bwd_its))} it), "
                  f"time ratio {t_bwd / t_fwd:.2f}, iteration ratio "
                  f"{sum(bwd_its) / fwd_its:.2f}")

    print("\n2. against CGLS unrolled in torch, to the same accuracy")
    x = difflsq_solve(a, b).detach()
    err = rel(x, x_ref)
    k = 0
    with torch.no_grad():  # the first k whose error is no larger than difflsq's
        xs, r = torch.zeros(N, dtype=a.dtype), b.clone()
        s = a.T @ r
        p, gamma = s, s @ s
        while rel(xs, x_ref) > err and k < 20000:
            q = a @ p
            alpha = gamma / (q @ q + DAMP ** 2 * (p @ p))
            xs, r = xs + alpha * p, r - alpha * q
            s = a.T @ r - DAMP ** 2 * xs
            gamma_new = s @ s
            p, gamma, k = s + (gamma_new / gamma) * p, gamma_new, k + 1
    unrolled = (lambda a, b: cgls_unrolled(a, b, k))
    t_d = best(lambda: fwd_bwd(difflsq_solve, a, b, w), args.repeat)
    t_u = best(lambda: fwd_bwd(unrolled, a, b, w), args.repeat)
    ga_d, gb_d = fwd_bwd(difflsq_solve, a, b, w)
    ga_u, gb_u = fwd_bwd(unrolled, a, b, w)
    print(f"  x error vs dense: difflsq {err:.1e}; unrolled CGLS needs {k} iterations")
    print(f"  forward+backward: difflsq {t_d * 1e3:.1f} ms, unrolled {t_u * 1e3:.1f} ms, "
          f"speed-up {t_u / t_d:.1f}x")
    print(f"  gradient error vs dense (A, b): difflsq {rel(ga_d, ga_ref):.1e}, "
          f"{rel(gb_d, gb_ref):.1e}; unrolled {rel(ga_u, ga_ref):.1e}, {rel(gb_u, gb_ref):.1e}")

    print("\n3. memory for the backward pass")
    print("  iterations | autograd-saved MB besides A: unrolled, difflsq | resident MB held "
          "between forward and backward (fresh process): unrolled, difflsq")
    d_saved = saved_bytes(difflsq_solve, a, b, w) / 2 ** 20
    d_rss = held_rss("difflsq", 0)["held_mb"]
    for kk in sorted({50, 100, 200, 400, 800, k}):
        u_saved = saved_bytes(lambda a, b: cgls_unrolled(a, b, kk), a, b, w) / 2 ** 20
        u_rss = held_rss("unrolled", kk)["held_mb"]
        print(f"  {kk:10d} | {u_saved:10.1f} {d_saved:8.1f} | {u_rss:10.1f} {d_rss:8.1f}")
    print(f"  (difflsq's C++ context adds x, r and b: {8 * (2 * M + N) / 2 ** 20:.2f} MB, "
          f"whatever its iteration count)")

    print("\n4. forward mode: (x, ẋ) for tangents Ȧ, ḃ (dual tensors) against x alone")
    g = torch.Generator().manual_seed(1)
    a_dot = torch.randn(M, N, generator=g, dtype=a.dtype) / M ** 0.5
    b_dot = torch.randn(M, generator=g, dtype=a.dtype)

    def with_tangents(solve):
        with fwad.dual_level():
            x = solve(fwad.make_dual(a, a_dot), fwad.make_dual(b, b_dot))
            return fwad.unpack_dual(x).tangent

    dense_x = (lambda a, b: torch.linalg.solve(a.T @ a + DAMP ** 2 * torch.eye(N, dtype=a.dtype),
                                               a.T @ b))
    dx_ref = with_tangents(dense_x)
    for method in ("lsmr", "lsqr", "cgls"):
        solve = (lambda a, b: dt.lstsq(a, b, DAMP, method=method, atol=TOL, btol=TOL, conlim=0,
                                       maxiter=20000))
        t_fwd = best(lambda: solve(a, b), args.repeat)
        t_jvp = best(lambda: with_tangents(solve), args.repeat)
        print(f"  {method}: forward {t_fwd * 1e3:7.1f} ms, forward with tangents "
              f"{t_jvp * 1e3:7.1f} ms, ratio {t_jvp / t_fwd:.2f}, ẋ error vs dense "
              f"{rel(with_tangents(solve), dx_ref):.1e}")


if __name__ == "__main__":
    main()
