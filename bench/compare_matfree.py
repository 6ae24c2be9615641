"""difflsq.torch.lstsq vs the JAX library matfree (matfree.lstsq.lsmr, custom VJP): values,
gradients, iteration counts and times on the same float64 problems. Not part of `make test`.

    /usr/bin/python3 -m venv /work/venv-matfree && /work/venv-matfree/bin/pip install jax matfree
    /usr/bin/python3 bench/compare_matfree.py --venv /work/venv-matfree [--repeat 5]

The driver (this file, run with NumPy only) writes the problems to a temporary .npz, runs one
worker process per library and thread setting (difflsq: `python3` with PYTHONPATH=build/python;
matfree: the venv's Python, float64 enabled), reads their .npz results and prints the tables.
Loss L = <w, x>; gradients w.r.t. the operator's parameters (the entries of a dense A, or the
kernel of a convolution: for difflsq once as a torch callable, once as its built-in
Convolution1d), b and damp, compared with a dense NumPy reference:
x = (AᵀA + λ²I)⁻¹Aᵀb, y = (AᵀA + λ²I)⁻¹w, r = b - Ax, ∂L/∂b = Ay, ∂L/∂A = r yᵀ - (Ay) xᵀ,
∂L/∂λ = -2λ<x, y>. Both solve with LSMR, atol = btol = 1e-8, conlim = 1e8 (ctol = 1e-8).
Times: best of --repeat after one warm-up call (for JAX: the jit compilation), in ms.
--callable-costs: where the callable convolution's time goes (its products inside a solve and
alone), difflsq only: PYTHONPATH=build/python /usr/bin/python3 bench/compare_matfree.py
--callable-costs --repeat 3.
--threads 1: one thread (torch.set_num_threads(1), OMP_NUM_THREADS=1, XLA_FLAGS, and the worker
pinned to one CPU); default: each library's own choice. cpu/wall = CPU time / wall time.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

TOL, MAXITER = 1e-8, 20_000
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- problems and reference
def make_problems(seed=0):
    rng = np.random.default_rng(seed)

    def spread(m, n):  # random singular vectors, singular values log-spaced in [1e-2, 1]
        k = min(m, n)
        u, _ = np.linalg.qr(rng.standard_normal((m, k)))
        v, _ = np.linalg.qr(rng.standard_normal((n, k)))
        return (u * np.logspace(-2, 0, k)) @ v.T

    tall, wide = spread(2000, 500), spread(500, 2000)
    bt, bw = rng.standard_normal(2000), rng.standard_normal(500)
    wt, ww = rng.standard_normal(500), rng.standard_normal(2000)
    kern = np.exp(-0.5 * (np.arange(31) - 15.0) ** 2 / 2.0 ** 2)
    kern = kern / kern.sum() + 0.01 * rng.standard_normal(31)
    bc, wc = rng.standard_normal(2030), rng.standard_normal(2000)
    return [
        dict(name="tall 2000x500 damp=0", kind="dense", A=tall, b=bt, w=wt, damp=0.0),
        dict(name="tall 2000x500 damp=0.1", kind="dense", A=tall, b=bt, w=wt, damp=0.1),
        dict(name="wide 500x2000 damp=0.1", kind="dense", A=wide, b=bw, w=ww, damp=0.1),
        dict(name="conv n=2000 K=31 damp=0.02", kind="conv", A=kern, b=bc, w=wc, damp=0.02),
        # The same problem; difflsq through its built-in Convolution1d (products in C++).
        dict(name="  same, Convolution1d", kind="conv", builtin=True, A=kern, b=bc, w=wc,
             damp=0.02),
    ]


def dense_operator(p):
    if p["kind"] == "dense":
        return p["A"]
    k, m = p["A"], len(p["b"])  # full convolution: A[i, l] = k[i - l]
    n = m - len(k) + 1
    i, l = np.arange(m)[:, None], np.arange(n)[None, :]
    return np.where((i - l >= 0) & (i - l < len(k)), k[np.clip(i - l, 0, len(k) - 1)], 0.0)


def reference(p):
    A, b, w, lam = dense_operator(p), p["b"], p["w"], p["damp"]
    M = A.T @ A + lam ** 2 * np.eye(A.shape[1])
    x, y = np.linalg.solve(M, A.T @ b), np.linalg.solve(M, w)
    gA = np.outer(b - A @ x, y) - np.outer(A @ y, x)
    if p["kind"] == "conv":  # ∂L/∂k_j = sum of the j-th subdiagonal of ∂L/∂A
        gA = np.array([np.trace(gA, offset=-j) for j in range(len(p["A"]))])
    return dict(x=x, gtheta=gA, gb=A @ y, gdamp=np.array(-2 * lam * x @ y))


# ---------------------------------------------------------------- workers
def best_of(fn, repeat):
    out = fn()  # warm-up (and JIT compilation)
    best, cpu, wall = np.inf, 0.0, 0.0
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        dt = time.perf_counter() - t
        best, cpu, wall = min(best, dt), cpu + time.process_time() - c, wall + dt
    return 1e3 * best, cpu / wall, out


def torch_convolution(K):
    """The convolution as a user writes it for difflsq.torch.lstsq: full, A(k) v of length
    len(v) + K - 1, by torch's conv1d (which correlates: hence the flip)."""
    import torch.nn.functional as F

    def conv(v, k):
        return F.conv1d(v.view(1, 1, -1), k.flip(0).view(1, 1, -1), padding=K - 1).view(-1)
    return conv


def callable_costs(repeat):
    """Where the time of the callable convolution goes (difflsq only, no venv, one thread):
    the two callbacks the solver calls (A·v by the callable under no_grad, Aᵀu by autograd),
    timed inside one forward LSMR solve and alone, and torch's conv1d alone."""
    import torch
    import difflsq.torch as dt
    from difflsq import _core
    torch.set_num_threads(1)
    p = make_problems()[3]
    K, m = len(p["A"]), len(p["b"])
    n = m - K + 1
    conv, kernel = torch_convolution(K), torch.from_numpy(p["A"])
    matvec, rmatvec = dt._callbacks(conv, (kernel,), m, n, torch.float64)
    for _ in range(repeat):
        spent = {"matvec": 0.0, "rmatvec": 0.0}

        def timed(name, f):
            def call(w):
                t = time.perf_counter()
                out = f(w)
                spent[name] += time.perf_counter() - t
                return out
            return call

        layer = _core.Layer_f64("lsmr", TOL, TOL, 1 / TOL, MAXITER, None, "raise", None)
        t = time.perf_counter()
        fwd = layer.forward_callback(m, n, timed("matvec", matvec), timed("rmatvec", rmatvec),
                                     p["b"], p["damp"])
        total, itn = time.perf_counter() - t, fwd.report["itn"]
        rest = total - spent["matvec"] - spent["rmatvec"]
        print(f"in a solve of {itn} iterations, µs per call: A·v {spent['matvec'] / itn * 1e6:.1f}, "
              f"Aᵀu {spent['rmatvec'] / itn * 1e6:.1f}, the rest of the iteration {rest / itn * 1e6:.1f}")
    rng = np.random.default_rng(1)
    v, u = rng.standard_normal(n), rng.standard_normal(m)
    vt = torch.from_numpy(v)

    def conv_alone():
        with torch.no_grad():
            conv(vt, kernel)
    for name, f in (("A·v", lambda: matvec(v)), ("Aᵀu", lambda: rmatvec(u)),
                     ("F.conv1d", conv_alone)):
        calls = 500
        best = min(_seconds(f, calls) for _ in range(repeat)) / calls
        print(f"alone, best of {repeat} x {calls} calls: {name} {best * 1e6:.1f} µs")


def _seconds(f, calls):
    t = time.perf_counter()
    for _ in range(calls):
        f()
    return time.perf_counter() - t


def worker_difflsq(probs, repeat, threads):
    import torch
    import difflsq.torch as dt
    if threads == "1":
        torch.set_num_threads(1)
    kw = dict(method="lsmr", atol=TOL, btol=TOL, conlim=1 / TOL, maxiter=MAXITER)
    res = {}
    for i, p in enumerate(probs):
        theta0, b0, w = (torch.from_numpy(p[k]) for k in ("A", "b", "w"))
        if p["kind"] == "dense":
            def solve(th, b, d, **k):
                return dt.lstsq(th, b, d, **kw, **k)
        else:
            K, m = len(p["A"]), len(p["b"])
            op = dt.Convolution1d(m - K + 1, K, "full") if p.get("builtin") else \
                torch_convolution(K)

            def solve(th, b, d, **k):
                return dt.lstsq(op, b, d, params=(th,), shape=(m, m - K + 1), **kw, **k)

        def fwd():
            with torch.no_grad():
                return solve(theta0, b0, p["damp"])

        th, b, d = theta0.clone().requires_grad_(), b0.clone().requires_grad_(), \
            torch.tensor(p["damp"], dtype=torch.float64, requires_grad=True)

        def fwd_bwd():
            th.grad = b.grad = d.grad = None
            x, info = solve(th, b, d, return_info=True)
            torch.dot(w, x).backward()
            return x, info

        t_f, _, _ = best_of(fwd, repeat)
        t_fb, load, (x, info) = best_of(fwd_bwd, repeat)
        bwd_itn = "+".join(str(r[2]) for r in info["backward"][0])
        res.update({f"{i}_x": x.detach().numpy(), f"{i}_gtheta": th.grad.numpy(),
                    f"{i}_gb": b.grad.numpy(), f"{i}_gdamp": d.grad.numpy(),
                    f"{i}_meta": json.dumps(dict(t_f=t_f, t_fb=t_fb, load=load, bwd=bwd_itn,
                                                 fwd=info["forward"][0]["itn"]))})
    return res


def worker_matfree(probs, repeat, threads):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from importlib.metadata import version
    from matfree import lstsq
    run = lstsq.lsmr(atol=TOL, btol=TOL, ctol=TOL, maxiter=MAXITER, custom_vjp=True)
    res = {"version": f"matfree {version('matfree')}, jax {jax.__version__}"}
    for i, p in enumerate(probs):
        theta0, b0, w = (jnp.asarray(p[k]) for k in ("A", "b", "w"))
        damp0 = jnp.asarray(p["damp"])
        if p["kind"] == "dense":
            def vecmat(u, A):  # uᵀA = Aᵀu
                return u @ A
        else:
            def vecmat(u, k):  # adjoint of the full convolution: correlation, length n
                return jnp.correlate(u, k, mode="valid")

        fwd = jax.jit(lambda th, b, d: run(vecmat, b, th, damp=d))
        loss = jax.jit(jax.value_and_grad(lambda th, b, d: jnp.dot(w, run(vecmat, b, th, damp=d)[0]),
                                          argnums=(0, 1, 2)))
        t_f, _, (x, stats) = best_of(lambda: jax.block_until_ready(fwd(theta0, b0, damp0)), repeat)
        t_fb, load, (_, g) = best_of(lambda: jax.block_until_ready(loss(theta0, b0, damp0)), repeat)
        res.update({f"{i}_x": np.asarray(x), f"{i}_gtheta": np.asarray(g[0]),
                    f"{i}_gb": np.asarray(g[1]), f"{i}_gdamp": np.asarray(g[2]),
                    f"{i}_meta": json.dumps(dict(t_f=t_f, t_fb=t_fb, load=load, bwd="n/a",
                                                 fwd=int(stats["iteration_count"]),
                                                 istop=int(stats["istop"])))})
    return res


# ---------------------------------------------------------------- driver
def run_worker(lib, python, args, tmp, threads, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if threads == "1":
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    out = os.path.join(tmp, f"{lib}-{threads}.npz")
    subprocess.run([python, os.path.abspath(__file__), "--worker", lib, "--threads", threads,
                    "--repeat", str(args.repeat), "--problems", os.path.join(tmp, "problems.npz"),
                    "--out", out], env=env, check=True)
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def rel(a, ref):
    d, r = np.linalg.norm(a - ref), np.linalg.norm(ref)
    return f"{d / r:8.1e}" if r > 0 else f"{d:8.1e}a"


def driver(args):
    probs = make_problems()
    modes = ["1", "default"] if args.threads == "both" else [args.threads]
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "problems.npz"), meta=json.dumps(
            [{k: v for k, v in p.items() if not isinstance(v, np.ndarray)} for p in probs]),
            **{f"{i}_{k}": p[k] for i, p in enumerate(probs) for k in ("A", "b", "w")})
        results = {}
        for t in modes:
            results["difflsq", t] = run_worker("difflsq", sys.executable, args, tmp, t, args.build)
            results["matfree", t] = run_worker("matfree", os.path.join(args.venv, "bin", "python"),
                                               args, tmp, t)
    print(f"\n{results['matfree', modes[0]]['version']}; threads: {modes[0]} (accuracy)\n")
    print(f"{'problem':28} {'solver':18} {'itn fwd':>7} {'itn bwd':>11} {'x':>9} {'dL/dA|k':>9} "
          f"{'dL/db':>9} {'dL/ddamp':>9}")
    for i, p in enumerate(probs):
        ref = reference(p)
        r = {lib: results[lib, modes[0]] for lib in ("difflsq", "matfree")}
        for lib in ("difflsq", "matfree"):
            meta = json.loads(str(r[lib][f"{i}_meta"]))
            print(f"{p['name']:28} {lib + ' vs dense':18} {meta['fwd']:7d} {meta['bwd']:>11} " +
                  " ".join(rel(r[lib][f"{i}_{k}"], ref[k]) for k in ("x", "gtheta", "gb", "gdamp")))
        print(f"{'':28} {'difflsq vs matfree':18} {'':7} {'':11} " + " ".join(
            rel(r["difflsq"][f"{i}_{k}"], r["matfree"][f"{i}_{k}"])
            for k in ("x", "gtheta", "gb", "gdamp")))
    print("\n(relative 2-norm differences; 'a' = absolute, when the reference is 0)\n")
    print(f"{'problem':28} {'threads':>7} {'difflsq fwd':>11} {'fwd+bwd':>9} {'cpu/wall':>8} "
          f"{'matfree fwd':>11} {'fwd+bwd':>9} {'cpu/wall':>8}   (ms, best of {args.repeat})")
    for i, p in enumerate(probs):
        for t in modes:
            cols = []
            for lib in ("difflsq", "matfree"):
                m = json.loads(str(results[lib, t][f"{i}_meta"]))
                cols.append(f"{m['t_f']:11.1f} {m['t_fb']:9.1f} {m['load']:8.2f}")
            print(f"{p['name']:28} {t:>7} {cols[0]} {cols[1]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", default="/work/venv-matfree", help="venv with jax and matfree")
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build", "python"),
                    help="directory holding the built difflsq package")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", choices=["1", "default", "both"], default="both")
    ap.add_argument("--callable-costs", action="store_true",
                    help="only time the callable convolution's products (no venv needed)")
    ap.add_argument("--worker", choices=["difflsq", "matfree"], help=argparse.SUPPRESS)
    ap.add_argument("--problems", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.callable_costs:
        return callable_costs(args.repeat)
    if args.worker is None:
        return driver(args)
    with np.load(args.problems) as z:
        probs = json.loads(str(z["meta"]))
        for i, p in enumerate(probs):
            p.update({k: z[f"{i}_{k}"] for k in ("A", "b", "w")})
    if args.threads == "1" and hasattr(os, "sched_setaffinity"):
        # XLA ignores its thread flags now and then and uses 2 threads: pin to one CPU.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    work = worker_difflsq if args.worker == "difflsq" else worker_matfree
    np.savez(args.out, **work(probs, args.repeat, args.threads))


if __name__ == "__main__":
    main()
