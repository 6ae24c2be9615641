"""Iterations and operator products of the null-space solves with and without the row
equilibration of difflsq.torch.NullSpaceOptimizer (docs/nullspace.md, "Rows of very different
norms"), on the multiplier solve min ‖S Jᵀμ − S⁻¹v‖ for several J and metrics S = D^{-1/2}.

    PYTHONPATH=build/python /usr/bin/python3 bench/bench_equilibration.py

LSQR, float32, tolerances 1e-10 (clamped to float32's ε), the default iteration limit. "none"
disables the equilibration (a trial longer than any limit); products count every
application of A and Aᵀ, the 8 probes included; "istop" marks a solve that did not converge. Deterministic (fixed seeds), not timed.
"""
import types
import warnings

import numpy as np
import scipy.sparse.linalg as sla

import difflsq.torch as dt


def problems(rng):
    for name, k, n, density in [("dense", 1000, 4000, 1.0), ("sparse, ~10 per row", 500, 5000, 0.002),
                                ("sparse, ~3 per row", 500, 5000, 0.0006),
                                ("rows over 6 decades", 200, 2000, 1.0),
                                ("selection", 500, 2000, None), ("pairs θi − θj", 500, 2000, None)]:
        if name == "selection":
            J = np.zeros((k, n))
            J[np.arange(k), rng.choice(n, k, replace=False)] = 1
        elif name.startswith("pairs"):
            J = np.zeros((k, n))
            idx = rng.choice(n, 2 * k, replace=False)
            J[np.arange(k), idx[:k]], J[np.arange(k), idx[k:]] = 1, -1
        else:
            J = rng.standard_normal((k, n)) * (rng.random((k, n)) < density)
            J = J[np.abs(J).sum(1) > 0]
        if name.startswith("rows"):
            J *= np.logspace(-3, 3, J.shape[0])[:, None]
        yield name, J, rng.standard_normal(n)


def counted(M):
    count = [0]

    def mv(x):
        count[0] += 1
        return M @ x

    def rmv(u):
        count[0] += 1
        return M.T @ u
    return sla.LinearOperator(M.shape, matvec=mv, rmatvec=rmv, dtype=M.dtype), count


def main():
    solver = types.SimpleNamespace(maxiter=None, method="lsqr", atol=1e-10, btol=1e-10,
                                   on_failure="ignore")
    solver._lsq = types.MethodType(dt.NullSpaceOptimizer._lsq, solver)
    trial = dt._TRIAL
    print("| J | metric | none: its / products | equilibrated: its / products |")
    print("| --- | --- | ---: | ---: |")
    for name, J, v in problems(np.random.default_rng(1)):
        for metric in ("identity", "Adam's first step"):
            s = np.ones(J.shape[1]) if metric == "identity" else 1 / np.sqrt(np.abs(v) + 1e-8)
            A = (s[:, None] * J.T).astype(np.float32)
            rhs = (v / s).astype(np.float32)
            cells = []
            for t in (10**9, trial):
                dt._TRIAL = t
                op, count = counted(A)
                records = []
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dt.NullSpaceOptimizer._solve(solver, op, rhs, records, "columns")
                istop, its = records[0]
                cells.append(f"{its} / {count[0]}" + ("" if istop in dt._CONVERGED else f" (istop {istop})"))
            dt._TRIAL = trial
            print(f"| {name} | {metric} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
