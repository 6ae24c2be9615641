"""A sparse A in the differentiable layer: difflsq.torch.lstsq on a sparse COO tensor (products
in C++, gradient on the pattern) against the same matrix as a torch callable (each product a
Python call into torch.sparse.mm, the adjoint by autograd), side by side in one run.

    PYTHONPATH=build/python /usr/bin/python3 bench/bench_sparse_layer.py [--repeat 5] [--threads 1]

Three ways to give A: a sparse COO tensor built from the values (the values receive the
gradient, through torch's backward of sparse_coo_tensor), a coalesced sparse COO leaf (A.grad),
and a callable. Problem: a random m x n matrix with `--per-row` nonzeros per row (uniform columns, normal
values), b normal, damp 0.05, LSMR, atol = btol = 1e-8 for the forward and backward solves,
float64, loss <w, x>; gradients with respect to the stored values and b. Reports the forward
and forward+backward times (best of --repeat), the iteration counts, and the largest relative
difference between the two ways' x and gradients (both solve the same problem to the same
tolerance, so they agree to about that tolerance).
"""
import argparse
import os
import time

import torch

import difflsq.torch as dt

TOL = dict(atol=1e-8, btol=1e-8)


def problem(m, n, per_row, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(m).repeat_interleave(per_row)
    cols = torch.randint(0, n, (m * per_row,), generator=g)
    idx = torch.stack([rows, cols])
    vals = torch.randn(m * per_row, dtype=torch.float64, generator=g)
    b = torch.randn(m, dtype=torch.float64, generator=g)
    w = torch.randn(n, dtype=torch.float64, generator=g)
    return idx, vals, b, w


def run(kind, idx, vals, b, w, m, n, damp, backward):
    """x, ∂<w, x>/∂vals and ∂/∂b, and the iteration counts of the forward and backward solves."""
    v = vals.clone().requires_grad_(backward)
    bb = b.clone().requires_grad_(backward)
    if kind == "sparse":
        x, info = dt.lstsq(torch.sparse_coo_tensor(idx, v, (m, n)), bb, damp, return_info=True,
                           **TOL)
    elif kind == "leaf":  # a coalesced leaf: A.grad directly, no constructor to differentiate
        A = torch.sparse_coo_tensor(idx, vals, (m, n)).coalesce().requires_grad_(backward)
        x, info = dt.lstsq(A, bb, damp, return_info=True, **TOL)
    else:
        def op(u, values):
            A = torch.sparse_coo_tensor(idx, values, (m, n))
            return torch.sparse.mm(A, u[:, None])[:, 0]
        x, info = dt.lstsq(op, bb, damp, params=(v,), shape=(m, n), return_info=True, **TOL)
    if not backward:
        return x.detach(), None, None, info
    (x @ w).backward()
    return x.detach(), A.grad if kind == "leaf" else v.grad, bb.grad, info


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--m", type=int, default=20000)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--per-row", type=int, default=5)
    ap.add_argument("--damp", type=float, default=0.05)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    m, n = args.m, args.n
    idx, vals, b, w = problem(m, n, args.per_row)
    print(f"random sparse {m} x {n}, {args.per_row} per row ({m * args.per_row} stored entries), "
          f"damp {args.damp}, LSMR, tolerances 1e-8, {args.threads} thread(s), best of "
          f"{args.repeat}")
    out = {}
    print(f"{'A given as':<34} {'fwd it':>7} {'bwd it':>7} {'fwd ms':>9} {'fwd+bwd ms':>11}")
    for kind, label in (("sparse", "sparse COO of the values"),
                        ("leaf", "sparse COO leaf, coalesced"),
                        ("callable", "callable, torch.sparse.mm")):
        x, gv, gb, info = run(kind, idx, vals, b, w, m, n, args.damp, True)
        fwd = best(lambda: run(kind, idx, vals, b, w, m, n, args.damp, False), args.repeat)
        both = best(lambda: run(kind, idx, vals, b, w, m, n, args.damp, True), args.repeat)
        its = info["forward"][0]["itn"]
        bits = "+".join(str(rec[2]) for rec in info["backward"][0])
        print(f"{label:<34} {its:>7} {bits:>7} {1e3 * fwd:>9.1f} {1e3 * both:>11.1f}")
        out[kind] = (x, gv, gb, fwd, both)
    # The leaf's gradient is on the coalesced pattern; the values' one per given entry (the
    # generator draws no duplicates in practice, but compare at the entries either way).
    leaf_grad = out["leaf"][1].coalesce().to_dense()[idx[0], idx[1]]
    print(f"leaf vs values: x {rel(out['leaf'][0], out['sparse'][0]):.1e}, "
          f"gradient at the entries {rel(leaf_grad, out['sparse'][1]):.1e}")
    xs, gvs, gbs, fs, bs = out["sparse"]
    xc, gvc, gbc, fc, bc = out["callable"]
    print(f"ratios callable / sparse: forward {fc / fs:.1f}x, forward+backward {bc / bs:.1f}x")
    print(f"relative differences sparse vs callable: x {rel(xs, xc):.1e}, "
          f"d/dvalues {rel(gvs, gvc):.1e}, d/db {rel(gbs, gbc):.1e}")


if __name__ == "__main__":
    main()
