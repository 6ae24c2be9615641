"""difflsq as a PyTorch layer: a least-squares solve with forward and backward passes.

    x = difflsq.torch.lstsq(A, b, damp)

solves ``min ||A x - b||^2 + damp^2 ||x||^2`` (minimum-norm where the solution is not unique)
with LSMR, LSQR or CGLS in C++, and differentiates it by the adjoint method
(docs/gradients.md): the backward pass is two more least-squares solves (three for an undamped
rank-deficient A), whatever the number of iterations, and stores no iterate.

``A`` is a tensor of shape (m, n) or a callable ``A(v, *params)`` returning A(θ) v for v of
length n (linear in v), given with ``shape=(m, n)``; its adjoint products come from torch
autograd, and gradients flow to the tensors in ``params``. Gradients also flow to ``b`` and to
``damp`` when it is a tensor. CPU tensors, float32 or float64 (kept).
"""

import math
import warnings

import numpy as np
import torch

from . import _core

__all__ = ["lstsq", "SolveError", "SolveWarning"]

#: Raised when a forward or backward solve did not converge (``on_failure="raise"``).
SolveError = _core.SolveError


class SolveWarning(RuntimeWarning):
    """Issued when a solve did not converge and ``on_failure="warn"``."""


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _check_device(name, t):
    if torch.is_tensor(t) and t.device.type != "cpu":
        raise ValueError(f"difflsq.torch: {name} is on device '{t.device}', but this build of "
                         f"difflsq runs on the CPU only; move it with .cpu()")


def _numpy(t):
    return t.detach().contiguous().numpy()


class _Lstsq(torch.autograd.Function):
    # Inputs: (config, A or None, b, damp tensor, *params). Output: x.

    @staticmethod
    def forward(ctx, cfg, A, b, damp, *params):
        dtype = b.dtype
        m, n = cfg["shape"]
        B = b.reshape(m, -1)
        damp_value = float(damp)
        if A is not None:
            a_np = _numpy(A)
            fwds = [cfg["layer"].forward_dense(a_np, _numpy(B[:, j]), damp_value)
                    for j in range(B.shape[1])]
        else:
            matvec, rmatvec = _callbacks(cfg["op"], params, m, n, dtype)
            fwds = [cfg["layer"].forward_callback(m, n, matvec, rmatvec, _numpy(B[:, j]),
                                                  damp_value) for j in range(B.shape[1])]
        cfg["info"]["forward"] = [f.report for f in fwds]
        ctx.cfg, ctx.fwds = cfg, fwds
        ctx.save_for_backward(*params)
        X = torch.stack([torch.from_numpy(f.x) for f in fwds], dim=1)
        return X.reshape((n,) + tuple(b.shape[1:])).to(dtype)

    @staticmethod
    def backward(ctx, grad_x):
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            grads = _Lstsq._backward(ctx, grad_x.detach())
        return _no_double_backward(grads) if create_graph else grads

    @staticmethod
    def _backward(ctx, grad_x):
        cfg, fwds = ctx.cfg, ctx.fwds
        m, n = cfg["shape"]
        dtype = grad_x.dtype
        G = grad_x.reshape(n, -1)
        layer = cfg["layer"]
        grad_b_cols, grad_damp, terms, abar = [], 0.0, [], None
        records = cfg["info"].setdefault("backward", [])
        for j, f in enumerate(fwds):
            bbar, dbar, pairs, recs, theta = layer.backward(f, _numpy(G[:, j]))
            records.append(recs)
            grad_b_cols.append(torch.from_numpy(bbar))
            grad_damp += dbar
            if theta is not None:  # dense A: θ̄ is Ā in row-major order
                t = torch.from_numpy(theta).reshape(m, n)
                abar = t if abar is None else abar + t
            else:
                terms.extend(pairs)
        needs = ctx.needs_input_grad
        grad_A = abar.to(dtype) if (needs[1] and abar is not None) else None
        grad_b = torch.stack(grad_b_cols, dim=1).reshape((m,) + tuple(grad_x.shape[1:])).to(dtype)
        grad_damp_t = torch.tensor(grad_damp, dtype=dtype) if needs[3] else None
        params = ctx.saved_tensors
        grad_params = [None] * len(params)
        want = [i for i, p in enumerate(params) if needs[4 + i]]
        if want and terms:
            grad_params = _parameter_gradients(cfg["op"], params, want, terms, dtype)
        return (None, grad_A, grad_b if needs[2] else None, grad_damp_t, *grad_params)

    @staticmethod
    def jvp(ctx, cfg_t, A_t, b_t, damp_t, *params_t):
        cfg, fwds = ctx.cfg, ctx.fwds
        m, n = cfg["shape"]
        if any(t is not None for t in params_t):
            raise NotImplementedError(
                "difflsq.torch: forward-mode AD with respect to the params of a callable "
                "operator is not supported; use reverse mode (backward) for them")
        layer = cfg["layer"]
        Bt = None if b_t is None else b_t.reshape(m, -1)
        dl = 0.0 if damp_t is None else float(damp_t)
        cols = []
        for j, f in enumerate(fwds):
            bt = None if Bt is None else _numpy(Bt[:, j])
            if A_t is not None:
                xdot, _ = layer.jvp(f, _numpy(A_t).reshape(-1), bt, dl)
            elif cfg["op"] is None:
                xdot, _ = layer.jvp(f, None, bt, dl)
            else:
                xdot, _ = layer.jvp(f, bt, dl)
            cols.append(torch.from_numpy(xdot))
        out = torch.stack(cols, dim=1)
        return out.reshape((n,) + tuple(cfg["b_shape"][1:])).to(cfg["dtype"])


_DOUBLE_BACKWARD = (b"difflsq.torch.lstsq does not support double backward (differentiating "
                    b"its gradients); the first-order gradients are exact")


def _no_double_backward(grads):
    """With create_graph=True, return gradients whose own backward raises a clear error
    (the first-order values are unchanged), as torch's once_differentiable does."""
    tensors = [g for g in grads if torch.is_tensor(g)]
    if not tensors:
        return grads
    err = torch._C._functions.DelayedError(_DOUBLE_BACKWARD, len(tensors))
    wrapped = err(*[g.detach().requires_grad_() for g in tensors])
    if torch.is_tensor(wrapped):
        wrapped = (wrapped,)
    it = iter(wrapped)
    return tuple(next(it) if torch.is_tensor(g) else g for g in grads)


def _callbacks(op, params, m, n, dtype):
    """matvec and rmatvec (NumPy in, NumPy out) for A(v, *params); Aᵀu by autograd through one
    application of A at v = 0 (valid for every u since A is linear in v)."""
    detached = [p.detach() if torch.is_tensor(p) else p for p in params]

    def matvec(v):
        with torch.no_grad():
            y = op(torch.from_numpy(v), *detached)
        return _as_output(y, m, "A(v, *params)").numpy()

    v0 = torch.zeros(n, dtype=dtype, requires_grad=True)
    with torch.enable_grad():
        out0 = _as_output(op(v0, *detached), m, "A(v, *params)")

    def rmatvec(u):
        if not out0.requires_grad:  # A does not depend on v at all: A = 0
            return np.zeros(n, dtype=u.dtype)
        (g,) = torch.autograd.grad(out0, v0, grad_outputs=torch.from_numpy(u).to(out0.dtype),
                                   retain_graph=True, allow_unused=True)
        return np.zeros(n, dtype=u.dtype) if g is None else g.detach().numpy()

    return matvec, rmatvec


def _as_output(y, m, what):
    if not torch.is_tensor(y):
        raise TypeError(f"difflsq.torch: {what} must return a tensor, got {type(y).__name__}")
    _check_device(what, y)
    if y.numel() != m:
        raise ValueError(f"difflsq.torch: {what} returned {y.numel()} values, expected {m}")
    return y.reshape(-1)


def _parameter_gradients(op, params, want, terms, dtype):
    """θ̄ = ∇_θ Σ ⟨u, A(θ) v⟩ over the terms of Ā = Σ u vᵀ (one autograd pass)."""
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_(i in want) if torch.is_tensor(p) else p
                  for i, p in enumerate(params)]
        total = 0
        for u, v in terms:
            y = op(torch.from_numpy(v).to(dtype), *leaves).reshape(-1)
            total = total + torch.dot(torch.from_numpy(u).to(y.dtype), y)
        grads = torch.autograd.grad(total, [leaves[i] for i in want], allow_unused=True)
    out = [None] * len(params)
    for i, g in zip(want, grads):
        out[i] = torch.zeros_like(params[i]) if g is None else g
    return out


def lstsq(A, b, damp=0.0, *, params=(), shape=None, method="lsmr", atol=1e-6, btol=1e-6,
          conlim=1e8, maxiter=None, backward_tol=None, on_failure="raise", return_info=False):
    """Differentiable ``argmin_x ||A x - b||^2 + damp^2 ||x||^2`` (minimum-norm if not unique).

    Parameters
    ----------
    A : Tensor (m, n) or callable
        A matrix, or ``A(v, *params)`` computing A(θ)·v for a vector v of length n, linear in v
        (then ``shape=(m, n)`` is required).
    b : Tensor (m,) or (m, k)
        Right-hand side(s); k columns are k independent solves.
    damp : float or 0-d Tensor
        Tikhonov damping λ ≥ 0; a tensor that requires grad receives ∂L/∂λ.
    params : sequence of Tensors
        The tensors a callable A depends on; they receive gradients.
    method : "lsmr", "lsqr" or "cgls"
    atol, btol, conlim, maxiter :
        Stopping rules of the forward solve (SciPy's meaning; maxiter None: the method's
        default).
    backward_tol : tuple (atol, btol, conlim, maxiter) or None
        Stopping rules of the backward solves; None: the forward ones.
    on_failure : "raise", "warn" or "ignore"
        What a forward or backward solve that does not converge does: raise
        :class:`SolveError`, issue a :class:`SolveWarning`, or nothing.
    return_info : bool
        Also return a dict: ``info["forward"]`` the reports of the forward solves (SciPy's
        istop, itn, r1norm, ...), and after backward ``info["backward"]`` the (role, istop, itn)
        of each backward solve.

    Double backward is not supported (raises). Forward-mode AD works for tensor A, b and damp.
    """
    if on_failure not in ("raise", "warn", "ignore"):
        raise ValueError(f"difflsq.torch: on_failure must be 'raise', 'warn' or 'ignore', "
                         f"got {on_failure!r}")
    if method not in ("lsmr", "lsqr", "cgls"):
        raise ValueError(f"difflsq.torch: method must be 'lsmr', 'lsqr' or 'cgls', got {method!r}")
    if torch.is_tensor(A):
        if A.dim() != 2:
            raise ValueError(f"difflsq.torch: A must be 2-D, got shape {tuple(A.shape)}")
        if shape is not None and tuple(shape) != tuple(A.shape):
            raise ValueError(f"difflsq.torch: shape={tuple(shape)} but A has shape "
                             f"{tuple(A.shape)}")
        m, n = A.shape
        if A.dtype not in _SUFFIX:
            raise TypeError(f"difflsq.torch: A must be float32 or float64, got {A.dtype}")
        dtype = A.dtype
        op = None
        _check_device("A", A)
    elif callable(A):
        if shape is None or len(shape) != 2:
            raise ValueError("difflsq.torch: a callable A needs shape=(m, n)")
        m, n = (int(s) for s in shape)
        op = A
        dtype = None
    else:
        raise TypeError(f"difflsq.torch: A must be a tensor or a callable, got {type(A).__name__}")
    if not torch.is_tensor(b):
        b = torch.as_tensor(b, dtype=dtype)
    _check_device("b", b)
    if dtype is None:
        dtype = b.dtype if b.dtype in _SUFFIX else torch.get_default_dtype()
    if b.dtype != dtype:
        if b.is_floating_point() or b.is_complex():
            raise TypeError(f"difflsq.torch: b has dtype {b.dtype} but A has {dtype}")
        b = b.to(dtype)
    if b.dim() not in (1, 2) or b.shape[0] != m:
        raise ValueError(f"difflsq.torch: b must have shape ({m},) or ({m}, k), got "
                         f"{tuple(b.shape)}")
    if torch.is_tensor(damp):
        _check_device("damp", damp)
        if damp.numel() != 1:
            raise ValueError(f"difflsq.torch: damp must be a scalar, got shape {tuple(damp.shape)}")
        damp_t = damp.reshape(())
    else:
        damp_t = torch.tensor(float(damp), dtype=dtype)
    if not math.isfinite(float(damp_t)) or float(damp_t) < 0:
        raise ValueError(f"difflsq.torch: damp must be finite and >= 0, got {float(damp_t)}")
    params = tuple(params)
    for i, p in enumerate(params):
        _check_device(f"params[{i}]", p)
    if op is None and params:
        raise ValueError("difflsq.torch: params are only used with a callable A")

    def warn(msg):
        warnings.warn(msg, SolveWarning, stacklevel=3)

    limit = 0 if maxiter is None else int(maxiter)
    if limit < 0:
        raise ValueError(f"difflsq.torch: maxiter must be >= 0, got {maxiter}")
    btuple = None
    if backward_tol is not None:
        ba, bb, bc, bk = backward_tol
        btuple = (float(ba), float(bb), float(bc), 0 if bk is None else int(bk))
    layer = getattr(_core, "Layer_" + _SUFFIX[dtype])(method, float(atol), float(btol),
                                                     float(conlim), limit, btuple, on_failure,
                                                     warn)
    info = {}
    cfg = {"layer": layer, "shape": (m, n), "op": op, "info": info, "dtype": dtype,
           "b_shape": tuple(b.shape)}
    x = _Lstsq.apply(cfg, A if op is None else None, b, damp_t, *params)
    return (x, info) if return_info else x
