"""difflsq vs SciPy in one process: same problem, same iteration count, time per iteration.

    PYTHONPATH=build/python /usr/bin/python3 bench/compare_scipy.py [--repeat 5]

Both solvers run a fixed number of iterations (atol = btol = 0, conlim = 0, iteration limit k),
alternating, and the best of --repeat runs is reported. Problems: the Harwell-Boeing illc1850
(when ../shared/data is present), a random sparse 200k x 100k with 2M nonzeros, a dense
3000 x 800.
"""
import argparse
import gzip
import os
import time

import numpy as np
import scipy.io
import scipy.sparse
import scipy.sparse.linalg as sla

import difflsq

HB = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "harwell-boeing-lsq")


def problems():
    path = os.path.join(HB, "illc1850.mtx.gz")
    if os.path.exists(path):
        with gzip.open(path) as f:
            a = scipy.io.mmread(f).tocsr()
        with gzip.open(os.path.join(HB, "illc1850_rhs1.mtx.gz")) as f:
            b = np.asarray(scipy.io.mmread(f)).ravel()
        yield "illc1850 (1850 x 712, 8758 nnz, CSR)", a, b, 1000
    rng = np.random.default_rng(0)
    m, n, nnz = 200_000, 100_000, 2_000_000
    a = scipy.sparse.csr_matrix((rng.standard_normal(nnz), (rng.integers(0, m, nnz),
                                                            rng.integers(0, n, nnz))), (m, n))
    yield "random sparse 200k x 100k, 2M nnz (CSR)", a, rng.standard_normal(200_000), 50
    yield "dense 3000 x 800 (C order)", rng.standard_normal((3000, 800)), \
        rng.standard_normal(3000), 30


def best_time(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'problem':44} {'method':6} {'iters':>6} {'SciPy us/it':>12} {'difflsq us/it':>14} "
          f"{'speed-up':>9}")
    for name, a, b, k in problems():
        for method in ("lsqr", "lsmr"):
            lim = "iter_lim" if method == "lsqr" else "maxiter"
            kw = dict(atol=0, btol=0, conlim=0, **{lim: k})
            ts, ref = best_time(lambda: getattr(sla, method)(a, b, **kw), args.repeat)
            td, ours = best_time(lambda: getattr(difflsq, method)(a, b, **kw), args.repeat)
            assert ours[2] == ref[2] == k, (ours[2], ref[2])
            print(f"{name:44} {method:6} {k:6d} {1e6 * ts / k:12.1f} {1e6 * td / k:14.1f} "
                  f"{ts / td:8.2f}x")


if __name__ == "__main__":
    main()
