"""difflsq as a PyTorch layer: a least-squares solve with forward and backward passes.

    x = difflsq.torch.lstsq(A, b, damp)

solves ``min ||A x - b||^2 + damp^2 ||x||^2`` (minimum-norm where the solution is not unique)
with LSMR, LSQR or CGLS in C++, and differentiates it by the adjoint method
(docs/gradients.md): the backward pass is one more least-squares solve with damping (a tall A,
or strong damping), two otherwise (three for an undamped rank-deficient A), whatever the number
of iterations, and stores no iterate.

``A`` is a tensor of shape (m, n), a callable ``A(v, *params)`` returning A(θ) v for v of
length n (linear in v), given with ``shape=(m, n)`` — its adjoint products come from torch
autograd, and gradients flow to the tensors in ``params`` — or a built-in
:class:`Convolution1d` whose kernel is the parameter (products in C++). Gradients also flow to ``b`` and to
``damp`` when it is a tensor. CPU tensors, float32, float64, complex64 or complex128 (kept;
damp stays real; complex gradients in PyTorch's convention, dL/dRe z + i dL/dIm z).
"""

import math
import os
import sys
import warnings

import numpy as np
import torch
import torch.autograd.forward_ad as _fwad

from . import _core

__all__ = ["lstsq", "Convolution1d", "SolveError", "SolveWarning", "NullSpaceOptimizer", "project_box",
           "project_nonnegative", "project_simplex", "project_ball"]

#: Raised when a forward or backward solve did not converge (``on_failure="raise"``).
SolveError = _core.SolveError


class SolveWarning(RuntimeWarning):
    """Issued when a solve did not converge and ``on_failure="warn"``."""


_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.complex64: "c64",
           torch.complex128: "c128"}
_DTYPES = "float32, float64, complex64 or complex128"


def _real(dtype):
    """The real dtype of the same precision (damp and its gradient are real)."""
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def _check_device(name, t):
    if torch.is_tensor(t) and t.device.type != "cpu":
        raise ValueError(f"difflsq.torch: {name} is on device '{t.device}', but this build of "
                         f"difflsq runs on the CPU only; move it with .cpu()")


def _numpy(t):
    return t.detach().resolve_conj().resolve_neg().contiguous().numpy()


def _ncols(t):
    """The number of right-hand sides of b (m,) or (m, k) (k may be 0, as may m)."""
    return math.prod(t.shape[1:])


def _stack(columns, rows):
    """The columns side by side, (rows, len(columns)), also when there are none."""
    if not columns:
        return torch.zeros(rows, 0, dtype=torch.float64)
    return torch.stack(columns, dim=1)


class _Lstsq(torch.autograd.Function):
    # Inputs: (config, A or None, b, damp tensor, *params). Output: x.

    @staticmethod
    def forward(ctx, cfg, A, b, damp, *params):
        dtype = b.dtype
        m, n = cfg["shape"]
        B = b.reshape(m, _ncols(b))
        damp_value = float(damp)
        if A is not None and A.layout != torch.strided:  # θ = the stored values, CSR order
            indptr, indices, values = _csr_arrays(A)
            cfg["pattern"] = (indptr, indices)
            # One operator (and one copy of A in the products' layout) for all columns.
            fwds = cfg["layer"].forward_sparse(m, n, indptr.numpy(), indices.numpy(),
                                               _numpy(values),
                                               [_numpy(B[:, j]) for j in range(B.shape[1])],
                                               damp_value)
        elif A is not None:
            a_np = _numpy(A)
            fwds = [cfg["layer"].forward_dense(a_np, _numpy(B[:, j]), damp_value)
                    for j in range(B.shape[1])]
        elif isinstance(cfg["op"], Convolution1d):
            kernel = _numpy(params[0])
            fwds = [cfg["layer"].forward_convolution(kernel, n, cfg["op"].mode, _numpy(B[:, j]),
                                                     damp_value) for j in range(B.shape[1])]
        else:
            matvec, rmatvec = _callbacks(cfg["op"], params, m, n, dtype)
            fwds = [cfg["layer"].forward_callback(m, n, matvec, rmatvec, _numpy(B[:, j]),
                                                  damp_value) for j in range(B.shape[1])]
        cfg["info"]["forward"] = [f.report for f in fwds]
        ctx.cfg, ctx.fwds = cfg, fwds
        # Absent tangents (forward mode) stay None instead of zeros: a zero Ȧ would cost
        # solves, and a zero tangent of a callable's params is no tangent at all.
        ctx.set_materialize_grads(False)
        # A is saved (its memory is what the C++ context reads) so that autograd's version
        # check catches an in-place change of A between forward and backward.
        # Non-tensor params are kept on ctx (save_for_backward takes tensors only).
        ctx.param_slots = [torch.is_tensor(p) for p in params]
        ctx.other_params = [p for p in params if not torch.is_tensor(p)]
        ctx.save_for_backward(A, b, damp, *[p for p in params if torch.is_tensor(p)])
        ctx.jvp_params = [p.detach() if torch.is_tensor(p) else p for p in params]
        ctx.jvp_inputs = (A, b, damp, *params)
        X = _stack([torch.from_numpy(f.x) for f in fwds], n)
        x = X.reshape((n,) + tuple(b.shape[1:])).to(dtype)
        # Not a view: autograd forbids in-place changes of a Function's view outputs.
        return x if x._base is None else x.clone()

    @staticmethod
    def backward(ctx, grad_x):
        if grad_x is None:  # not materialized: no gradient flows
            return (None,) * (4 + len(ctx.param_slots))
        if torch.is_grad_enabled():  # create_graph=True: the gradients become a graph node
            return _Gradients.apply(ctx, grad_x, *ctx.saved_tensors)
        return _Lstsq._backward(ctx, grad_x)

    @staticmethod
    def _backward(ctx, grad_x):
        cfg, fwds = ctx.cfg, ctx.fwds
        m, n = cfg["shape"]
        dtype = grad_x.dtype
        G = grad_x.reshape(n, _ncols(grad_x))
        layer = cfg["layer"]
        conv = isinstance(cfg["op"], Convolution1d)
        grad_b_cols, grad_damp, terms, abar, kbar = [], 0.0, [], None, None
        records = cfg["info"].setdefault("backward", [])
        for j, f in enumerate(fwds):
            bbar, dbar, pairs, recs, theta = layer.backward(f, _numpy(G[:, j]))
            records.append(recs)
            grad_b_cols.append(torch.from_numpy(bbar))
            grad_damp += dbar
            if conv:  # θ̄ is the kernel's gradient
                t = torch.from_numpy(theta)
                kbar = t if kbar is None else kbar + t
            elif theta is not None:  # dense A: θ̄ is Ā in row-major order; sparse: its values
                t = torch.from_numpy(theta)
                t = t if "pattern" in cfg else t.reshape(m, n)
                abar = t if abar is None else abar + t
            else:
                terms.extend(pairs)
        needs = ctx.needs_input_grad
        pattern = cfg.get("pattern")
        if needs[1] and abar is None:  # no right-hand side (k = 0) or an empty A
            abar = torch.zeros(m, n, dtype=dtype) if pattern is None else \
                torch.zeros(pattern[1].numel(), dtype=dtype)
        grad_A = None
        if needs[1]:
            A = ctx.saved_tensors[0]
            grad_A = abar.to(dtype) if pattern is None else _with_values(A, *pattern,
                                                                          abar.to(dtype))
        grad_b = _stack(grad_b_cols, m).reshape((m,) + tuple(grad_x.shape[1:])).to(dtype)
        grad_damp_t = torch.tensor(grad_damp, dtype=_real(dtype)) if needs[3] else None
        tensors, others = iter(ctx.saved_tensors[3:]), iter(ctx.other_params)
        params = [next(tensors) if is_tensor else next(others) for is_tensor in ctx.param_slots]
        grad_params = [None] * len(params)
        want = [i for i, p in enumerate(params) if needs[4 + i]]
        if conv and want:
            grad_params = [(torch.zeros_like(params[0]) if kbar is None else kbar.to(dtype))]
        elif want and terms:
            grad_params = _parameter_gradients(cfg["op"], params, want, terms, dtype)
        elif want:  # no right-hand side (k = 0): zero gradients, as for a matrix A
            grad_params = [torch.zeros_like(p) if i in want and torch.is_tensor(p) else None
                           for i, p in enumerate(params)]
        return (None, grad_A, grad_b if needs[2] else None, grad_damp_t, *grad_params)

    @staticmethod
    def jvp(ctx, cfg_t, A_t, b_t, damp_t, *params_t):
        cfg, fwds = ctx.cfg, ctx.fwds
        m, n = cfg["shape"]
        conv = isinstance(cfg["op"], Convolution1d)
        products = None
        if not conv and any(t is not None for t in params_t):
            products = _tangent_products(cfg["op"], ctx.jvp_params, params_t, m, n,
                                         cfg["dtype"])
        layer = cfg["layer"]
        Bt = None if b_t is None else b_t.reshape(m, _ncols(b_t))
        dl = 0.0 if damp_t is None else float(damp_t)
        cols = []
        records = cfg["info"].setdefault("jvp", [])
        for j, f in enumerate(fwds):
            bt = None if Bt is None else _numpy(Bt[:, j])
            if conv:
                kt = None if params_t[0] is None else _numpy(params_t[0])
                xdot, recs = layer.jvp(f, kt, bt, dl)
            elif A_t is not None:
                xdot, recs = layer.jvp(f, _numpy(A_t).reshape(-1), bt, dl)
            elif cfg["op"] is None:
                xdot, recs = layer.jvp(f, None, bt, dl)
            elif products:
                xdot, recs = layer.jvp(f, *products, bt, dl)
            else:
                xdot, recs = layer.jvp(f, bt, dl)
            records.append(recs)
            cols.append(torch.from_numpy(xdot))
        out = _stack(cols, n).reshape((n,) + tuple(cfg["b_shape"][1:])).to(cfg["dtype"])
        # ẋ depends on the inputs and on their tangents, but is computed outside autograd:
        # differentiating it in reverse mode must fail, not give zeros.
        deps = [t for t in (*ctx.jvp_inputs, A_t, b_t, damp_t, *params_t) if torch.is_tensor(t)]
        return _NoReverse.apply(out, *deps)


_DOUBLE_BACKWARD = ("difflsq.torch.lstsq does not support double backward (differentiating "
                    "its gradients, e.g. a Hessian or a gradient penalty); the first-order "
                    "gradients are exact. For Jacobian-vector products use forward mode "
                    "(torch.autograd.forward_ad), not torch.autograd.functional.jvp, which "
                    "differentiates twice")


class _Gradients(torch.autograd.Function):
    """The first-order gradients under create_graph=True, as a node whose inputs are the
    cotangent x̄ and the saved A, b, damp and params: differentiating the gradients reaches
    this node, whose backward raises. (torch's once_differentiable hangs its error on detached
    copies instead, so a Hessian with respect to b or A came out as zeros, silently.)"""

    @staticmethod
    def forward(ctx, lstsq_ctx, grad_x, *saved):
        with torch.no_grad():
            return _Lstsq._backward(lstsq_ctx, grad_x.detach())  # one entry per input of _Lstsq

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(_DOUBLE_BACKWARD)

    @staticmethod
    def jvp(ctx, *_):  # forward-over-reverse differentiates the gradients too
        raise RuntimeError(_DOUBLE_BACKWARD)


class _NoReverse(torch.autograd.Function):
    """The tangent ẋ of forward mode, as a node whose inputs are what ẋ depends on: reverse
    mode through ẋ (reverse-over-forward) reaches this node and raises."""

    @staticmethod
    def forward(ctx, tangent, *deps):
        return tangent

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError("difflsq.torch.lstsq does not support reverse mode through its "
                           "forward-mode tangents (differentiating a tangent); the tangents "
                           "themselves are exact")


def _caller_level():
    """The stacklevel of warnings.warn, called by the caller of this function, that names the
    first frame outside difflsq and torch: the user's call of lstsq or of backward()."""
    inside = (os.path.dirname(os.path.abspath(__file__)),
              os.path.dirname(os.path.abspath(torch.__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _graph_leaves(y):
    """The ids of the tensors requiring grad at the leaves of y's autograd graph."""
    leaves, seen, stack = set(), set(), [y.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):  # AccumulateGrad: a leaf
            leaves.add(id(fn.variable))
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


def _check_sparse_pattern(A):
    """Refuses indices out of range or out of order before any torch operation reads them (a
    tensor built with check_invariants=False or _sparse_coo_tensor_unsafe is not checked)."""
    try:
        if A.layout == torch.sparse_coo:
            torch._validate_sparse_coo_tensor_args(A._indices(), A._values(), A.shape)
        else:
            torch._validate_sparse_csr_tensor_args(A.crow_indices(), A.col_indices(), A.values(),
                                                   A.shape)
    except RuntimeError as e:
        raise ValueError(f"difflsq.torch: malformed sparse A: {e}") from None


def _csr_arrays(A):
    """(indptr, indices, values) of a sparse COO or CSR matrix A in CSR order, indices as int64;
    a COO matrix is coalesced first (sorted by row, then column, duplicates summed: the matrix
    they add up to is what is solved, and each duplicate gets that entry's gradient)."""
    A = A.detach()
    if A.layout == torch.sparse_coo:
        A = A.coalesce()
        rows, cols = A.indices()
        key = rows * A.shape[1] + cols
        if key.numel() > 1 and not bool((key[1:] > key[:-1]).all()):
            # Flagged coalesced but not sorted (torch trusts the flag): coalesce a fresh copy.
            A = torch.sparse_coo_tensor(A.indices(), A.values(), A.shape).coalesce()
            rows, cols = A.indices()
        counts = torch.bincount(rows, minlength=A.shape[0])
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)]), cols.contiguous(), A.values()
    return A.crow_indices().to(torch.int64), A.col_indices().to(torch.int64), A.values()


def _with_values(A, indptr, indices, values):
    """The sparse matrix of A's layout with the pattern (indptr, indices) and these values."""
    if A.layout == torch.sparse_coo:
        rows = torch.repeat_interleave(torch.arange(A.shape[0]), indptr.diff())
        return torch.sparse_coo_tensor(torch.stack([rows, indices]), values, A.shape)._coalesced_(
            True)
    return torch.sparse_csr_tensor(indptr.to(A.crow_indices().dtype),
                                   indices.to(A.col_indices().dtype), values, A.shape)


def _vdot(a, b):
    """⟨a, b⟩ = Σ conj(a_i) b_i. Not torch.vdot: Debian's torch 1.13 returns 0 for complex
    vectors (its value; the gradients, which difflsq uses, are right)."""
    return (a.conj() * b).sum()


def _own_graph():
    """A context for the graph of Aᵀu that _callbacks records in the caller's forward pass: its
    saved tensors are kept as they are, whatever saved-tensor hooks the caller has set for its
    own graph (non-reentrant checkpointing's refuse a backward pass inside its forward).
    Identity hooks hold a saved tensor with its history, which is a reference cycle where an op
    saves its own output (exp, tanh, norm, ...): a leak once the graph is kept. The ops recorded
    here are linear in v and save no output of theirs; difflsq's graphs of θ (θ̄, Ȧ, the null-
    space optimizer's J) are not recorded under these hooks."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)


def _first_call(op, v, params):
    """op(v, *params), the first call of a user's callable: an error raised inside it (often a
    dtype mismatch with its params) is kept, with a note naming the dtype difflsq passed."""
    try:
        return op(v, *params)
    except Exception as e:
        if hasattr(e, "add_note"):  # Python 3.11 (Debian 12's)
            e.add_note(f"difflsq.torch: raised by A(v, *params) with v of dtype {v.dtype}, the "
                       f"solve's dtype: b's, or for an integer b that of the first floating "
                       f"params")
        raise


def _callbacks(op, params, m, n, dtype):
    """matvec and rmatvec (NumPy in, NumPy out) for A(v, *params); Aᵀu by autograd through one
    application of A at v = 0 (valid for every u since A is linear in v). Checks linearity
    first: A(0) = 0 and the dot test ⟨u, A v⟩ = ⟨Aᵀu, v⟩ for one random pair (two products),
    so that an affine or nonlinear callable is an error, not a silently wrong solution."""
    what = "A(v, *params)"
    # The adjoint needs autograd, also under torch.inference_mode (whose tensors it refuses).
    with torch.inference_mode(False):
        detached = [(p.clone() if p.is_inference() else p.detach()) if torch.is_tensor(p) else p
                    for p in params]
        v0 = torch.zeros(n, dtype=dtype, requires_grad=True)
        with torch.enable_grad(), _own_graph():
            out0 = _as_output(_first_call(op, v0, detached), m, what, dtype)

    def matvec(v):
        with torch.no_grad():
            y = op(torch.from_numpy(v), *detached)
        return _as_output(y, m, what, dtype).numpy()

    def rmatvec(u):
        if not out0.requires_grad:  # A does not depend on v at all: A = 0
            return np.zeros(n, dtype=u.dtype)
        with torch.inference_mode(False):
            (g,) = torch.autograd.grad(out0, v0,
                                       grad_outputs=torch.from_numpy(u).to(out0.dtype),
                                       retain_graph=True, allow_unused=True)
        return np.zeros(n, dtype=u.dtype) if g is None else _numpy(g)

    if m and n:
        _check_linear(matvec, rmatvec, out0, m, n, dtype)
    return matvec, rmatvec


def _tangent_products(op, params, tangents, m, n, dtype):
    """Ȧv and Ȧᴴu (NumPy in, NumPy out) for the tangents θ̇ of a callable's params, by reverse
    mode twice (torch 1.13 runs a Function's jvp with forward-mode AD off): with
    s(u, v) = Σ_k Re⟨∇_θk Re⟨u, A(θ)v⟩, θ̇_k⟩ = Re⟨u, Ȧv⟩ = Re⟨Ȧᴴu, v⟩, Ȧv = ∇_u s and
    Ȧᴴu = ∇_v s (s is bilinear: the other vector may be anything, e.g. 0)."""
    what = "A(v, *params)"
    moving = [i for i, t in enumerate(tangents) if t is not None]

    def directional(u, v):  # s(u, v), recorded for one more differentiation
        leaves = _leaves(params, moving)
        y = _as_output(op(v, *leaves), m, what, dtype)
        inner = _vdot(u, y).real
        if not inner.requires_grad:  # A does not depend on the moving params or on v
            return None
        grads = torch.autograd.grad(inner, [leaves[i] for i in moving], create_graph=True,
                                    allow_unused=True)
        terms = [_vdot(g.reshape(-1), tangents[i].to(g.dtype).reshape(-1)).real
                 for i, g in zip(moving, grads) if g is not None]
        return sum(terms) if terms else None

    def product(size, wrt_u):
        def apply(w):
            with torch.enable_grad():
                u = torch.zeros(m, dtype=dtype, requires_grad=wrt_u)
                v = torch.zeros(n, dtype=dtype, requires_grad=not wrt_u)
                given = torch.from_numpy(w).to(dtype)
                s = directional(u, given) if wrt_u else directional(given, v)
                out = None
                if s is not None and s.requires_grad:
                    (out,) = torch.autograd.grad(s, u if wrt_u else v, allow_unused=True)
            return _numpy(torch.zeros(size, dtype=dtype) if out is None else out.to(dtype))
        return apply

    return product(m, True), product(n, False)


def _check_linear(matvec, rmatvec, out0, m, n, dtype):
    if not torch.isfinite(out0).all() or out0.abs().max() > 0:
        raise ValueError("difflsq.torch: A(v, *params) must be linear in v, but A(0) is not 0 "
                         "(an affine map, or non-finite params?)")
    rng = np.random.default_rng(20260521)  # its own generator: torch's and NumPy's stay as they were
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    v, u = rng.standard_normal(n), rng.standard_normal(m)
    if dtype.is_complex:
        v, u = v + 1j * rng.standard_normal(n), u + 1j * rng.standard_normal(m)
    v, u = v.astype(np_dtype), u.astype(np_dtype)
    av, atu = matvec(v), rmatvec(u)
    lhs, rhs = np.vdot(u, av), np.vdot(atu, v)  # ⟨u, A v⟩ and ⟨Aᴴu, v⟩
    scale = np.linalg.norm(u) * np.linalg.norm(av) + np.linalg.norm(atu) * np.linalg.norm(v)
    if not abs(lhs - rhs) <= 10 * np.sqrt(np.finfo(np_dtype).eps) * scale:
        show = complex if dtype.is_complex else float
        raise ValueError(f"difflsq.torch: A(v, *params) must be linear in v, but the dot test "
                         f"fails: <u, A v> = {show(lhs):.6g}, <A^H u, v> = {show(rhs):.6g} "
                         f"for random u, v (A^H u by autograd at v = 0)")


def _as_output(y, m, what, dtype):
    if not torch.is_tensor(y):
        raise TypeError(f"difflsq.torch: {what} must return a tensor, got {type(y).__name__}")
    _check_device(what, y)
    if y.numel() != m:
        raise ValueError(f"difflsq.torch: {what} returned {y.numel()} values, expected {m}")
    if y.dtype != dtype:
        raise TypeError(f"difflsq.torch: {what} returned dtype {y.dtype}, expected {dtype} "
                        f"(that of b)")
    if _fwad.unpack_dual(y).tangent is not None:  # the solve reads y's values: it would be lost
        raise ValueError(f"difflsq.torch: {what} returned a dual tensor (forward mode); pass the "
                         f"tensors with tangents in params, not captured by the callable")
    return y.reshape(-1).resolve_conj().resolve_neg()


def _leaves(params, want):
    """Detached copies of the tensor params, those with an index in want requiring grad."""
    return [p.detach().requires_grad_(i in want) if torch.is_tensor(p) else p
            for i, p in enumerate(params)]


def _parameter_gradients(op, params, want, terms, dtype):
    """θ̄ = ∇_θ Σ ⟨u, A(θ) v⟩ over the terms of Ā = Σ u vᵀ (one autograd pass)."""
    with torch.enable_grad():
        leaves = _leaves(params, want)
        total = 0
        for u, v in terms:
            y = op(torch.from_numpy(v).to(dtype), *leaves).reshape(-1)
            total = total + _vdot(torch.from_numpy(u).to(y.dtype), y).real  # Re⟨u, A v⟩
        grads = torch.autograd.grad(total, [leaves[i] for i in want], allow_unused=True)
    out = [None] * len(params)
    for i, g in zip(want, grads):
        out[i] = torch.zeros_like(params[i]) if g is None else g
    return out


class Convolution1d:
    """The 1-D convolution ``A(kernel) v = kernel * v`` as an operator for :func:`lstsq`.

    ``lstsq(Convolution1d(n, p, mode), b, damp, params=(kernel,))`` solves with every product
    in C++ (include/difflsq/convolution.hpp): no Python callback per iteration. Gradients flow
    to ``kernel`` (a 1-D tensor of length p), to b and to damp; forward mode works along
    kernel tangents too. ``mode`` is that of ``scipy.signal.convolve(v, kernel, mode)``: "full"
    (m = n + p - 1), "same" (m = n, also for p > n, where ``numpy.convolve`` gives p values) or
    "valid" (m = n - p + 1, needs n >= p). Calling the object, ``conv(v, kernel)``, computes
    the same product with torch, so it is also an ordinary callable operator.
    """

    def __init__(self, n, kernel_size, mode="full"):
        n, p = int(n), int(kernel_size)
        if mode not in ("full", "same", "valid"):
            raise ValueError(f"difflsq.torch: mode must be 'full', 'same' or 'valid', got "
                             f"{mode!r}")
        if n < 1 or p < 1 or (mode == "valid" and n < p):
            raise ValueError(f"difflsq.torch: Convolution1d needs n >= 1 and kernel_size >= 1 "
                             f"(and n >= kernel_size for 'valid'), got n={n}, "
                             f"kernel_size={p}")
        self.n, self.kernel_size, self.mode = n, p, mode
        self._offset, m = {"full": (0, n + p - 1), "same": ((p - 1) // 2, n),
                           "valid": (p - 1, n - p + 1)}[mode]
        self.shape = (m, n)

    def __call__(self, v, kernel):
        p = self.kernel_size
        full = torch.nn.functional.conv1d(v.reshape(1, 1, -1), kernel.flip(0).reshape(1, 1, -1),
                                          padding=p - 1).reshape(-1)
        return full[self._offset:self._offset + self.shape[0]]

    def __repr__(self):
        return f"Convolution1d(n={self.n}, kernel_size={self.kernel_size}, mode={self.mode!r})"


def lstsq(A, b, damp=0.0, *, params=(), shape=None, method="lsmr", atol=1e-6, btol=1e-6,
          conlim=1e8, maxiter=None, backward_tol=None, on_failure="raise", return_info=False):
    """Differentiable ``argmin_x ||A x - b||^2 + damp^2 ||x||^2`` (minimum-norm if not unique).

    Parameters
    ----------
    A : Tensor (m, n), callable or Convolution1d
        A matrix (dense, or sparse COO or CSR: products in C++, the stored entries are the
        parameters and its gradient is a sparse tensor of A's layout and pattern), or
        ``A(v, *params)`` computing A(θ)·v for a vector v of length n, linear in v (then
        ``shape=(m, n)`` is required), or a :class:`Convolution1d` with ``params=(kernel,)``
        (products in C++).
    b : Tensor (m,) or (m, k)
        Right-hand side(s); k columns are k independent solves.
    damp : float or 0-d Tensor
        Tikhonov damping λ ≥ 0; a tensor that requires grad receives ∂L/∂λ.
    params : sequence of Tensors
        The tensors a callable A depends on; they receive gradients, and forward-mode AD
        works along their tangents (the callable must then be twice differentiable by autograd).
    method : "lsmr", "lsqr" or "cgls"
    atol, btol, conlim, maxiter :
        Stopping rules of the forward solve (SciPy's meaning; maxiter None: 4 x min(m, n), at
        least 20 and SciPy's default, whose min(m, n) for LSMR stops ordinary problems short).
    backward_tol : tuple (atol, btol, conlim, maxiter) or None
        Stopping rules of the backward solves; None: the forward ones. Their maxiter None
        (or 0): max(2 x the forward iterations, the method's default for max(m, n)).
    on_failure : "raise", "warn" or "ignore"
        What a forward, backward or forward-mode solve that does not converge does: raise
        :class:`SolveError`, issue a :class:`SolveWarning`, or nothing ("ignore" is the
        caller's explicit choice to read the statuses in ``info`` instead).
    return_info : bool
        Also return a dict: ``info["forward"]`` the reports of the forward solves (SciPy's
        istop, itn, r1norm, ...), after backward ``info["backward"]`` and after a forward-mode
        product ``info["jvp"]`` the (role, istop, itn) of each of their solves (a (G12) solve
        that stops by test 2, conlim or its iteration limit is set aside for the split and not
        listed: docs/gradients.md).

    Forward-mode AD works for dense tensor A, b and damp, for the params of a callable and for
    the kernel of a Convolution1d (torch 1.13 has no forward-mode AD of sparse tensors; b's and
    damp's tangents work with a sparse A). Not supported, and an error rather than a wrong value:
    differentiating the gradients (double backward, forward-over-reverse) or the forward-mode
    tangents (reverse-over-forward), and a callable that captures a tensor requiring grad
    instead of taking it in ``params``. vmap-batched gradients (``is_grads_batched``,
    ``vectorize=True``) are not supported either.
    """
    if on_failure not in ("raise", "warn", "ignore"):
        raise ValueError(f"difflsq.torch: on_failure must be 'raise', 'warn' or 'ignore', "
                         f"got {on_failure!r}")
    if method not in ("lsmr", "lsqr", "cgls"):
        raise ValueError(f"difflsq.torch: method must be 'lsmr', 'lsqr' or 'cgls', got {method!r}")
    if torch.is_tensor(A):
        if A.layout not in (torch.strided, torch.sparse_coo, torch.sparse_csr):
            raise TypeError(f"difflsq.torch: A must be a dense, sparse COO or sparse CSR tensor, "
                            f"got layout {A.layout}")
        if A.layout == torch.sparse_coo and A.dense_dim() > 0:
            raise ValueError(f"difflsq.torch: a sparse COO A must have 2 sparse and no dense "
                             f"dimensions, got {A.sparse_dim()} sparse and {A.dense_dim()} dense "
                             f"(shape {tuple(A.shape)})")
        if A.dim() != 2:
            raise ValueError(f"difflsq.torch: A must be 2-D, got shape {tuple(A.shape)}")
        if shape is not None and tuple(shape) != tuple(A.shape):
            raise ValueError(f"difflsq.torch: shape={tuple(shape)} but A has shape "
                             f"{tuple(A.shape)}")
        m, n = A.shape
        if A.dtype not in _SUFFIX:
            raise TypeError(f"difflsq.torch: A must be {_DTYPES}, got {A.dtype}")
        dtype = A.dtype
        source = "A"
        op = None
        _check_device("A", A)  # a non-finite A is refused by the forward pass (in C++)
        if A.layout != torch.strided:
            _check_sparse_pattern(A.detach())
    elif isinstance(A, Convolution1d):
        if shape is not None and tuple(shape) != A.shape:
            raise ValueError(f"difflsq.torch: shape={tuple(shape)} but the convolution has "
                             f"shape {A.shape}")
        m, n = A.shape
        params = tuple(params)
        if len(params) != 1 or not torch.is_tensor(params[0]) or params[0].dim() != 1 or \
                params[0].numel() != A.kernel_size:
            raise ValueError(f"difflsq.torch: a Convolution1d needs params=(kernel,), a 1-D "
                             f"tensor of length {A.kernel_size}")
        op = A
        dtype = params[0].dtype
        source = "the kernel"
        if dtype not in _SUFFIX:
            raise TypeError(f"difflsq.torch: the kernel must be {_DTYPES}, got {dtype}")
    elif callable(A):
        if shape is None or len(shape) != 2:
            raise ValueError("difflsq.torch: a callable A needs shape=(m, n)")
        m, n = (int(s) for s in shape)
        op = A
        dtype = None
        source = "the params"  # for an integer b; else the solve takes b's dtype
    else:
        raise TypeError(f"difflsq.torch: A must be a tensor or a callable, got {type(A).__name__}")
    if not torch.is_tensor(b):
        b = torch.as_tensor(b, dtype=dtype)
    _check_device("b", b)
    params = tuple(params)
    if dtype is None:  # a callable: b's dtype, for an integer b the first floating param's
        if b.dtype not in _SUFFIX and (b.is_floating_point() or b.is_complex()):
            raise TypeError(f"difflsq.torch: b must be {_DTYPES}, got {b.dtype}")
        floating = [p.dtype for p in params if torch.is_tensor(p) and p.dtype in _SUFFIX]
        dtype = b.dtype if b.dtype in _SUFFIX else (floating + [torch.get_default_dtype()])[0]
    if b.dtype != dtype:
        if b.is_floating_point() or b.is_complex():
            raise TypeError(f"difflsq.torch: b has dtype {b.dtype}, expected {dtype} "
                            f"(that of {source})")
        b = b.to(dtype)
    if b.dim() not in (1, 2) or b.shape[0] != m:
        raise ValueError(f"difflsq.torch: b must have shape ({m},) or ({m}, k), got "
                         f"{tuple(b.shape)}")
    if torch.is_tensor(damp):
        _check_device("damp", damp)
        if damp.numel() != 1:
            raise ValueError(f"difflsq.torch: damp must be a scalar, got shape {tuple(damp.shape)}")
        if damp.is_complex():
            raise ValueError("difflsq.torch: damp must be real")
        damp_t = damp.reshape(())
    else:
        damp_t = torch.tensor(float(damp), dtype=_real(dtype))
    if not math.isfinite(float(damp_t)) or float(damp_t) < 0:
        raise ValueError(f"difflsq.torch: damp must be finite and >= 0, got {float(damp_t)}")
    for i, p in enumerate(params):
        _check_device(f"params[{i}]", p)
    if op is None and params:
        raise ValueError("difflsq.torch: params are only used with a callable A")

    def warn(msg):
        warnings.warn(msg, SolveWarning, stacklevel=_caller_level())

    limit = 0 if maxiter is None else int(maxiter)  # 0: the layer's default
    if maxiter is not None and limit < 1:
        raise ValueError(f"difflsq.torch: maxiter must be >= 1 or None, got {maxiter}")
    btuple = None
    if backward_tol is not None:
        if len(backward_tol) != 4:
            raise ValueError(f"difflsq.torch: backward_tol must be (atol, btol, conlim, maxiter), "
                             f"got {backward_tol!r}")
        ba, bb, bc, bk = backward_tol
        btuple = (float(ba), float(bb), float(bc), 0 if bk is None else int(bk))
    layer = getattr(_core, "Layer_" + _SUFFIX[dtype])(method, float(atol), float(btol),
                                                     float(conlim), limit, btuple, on_failure,
                                                     warn)
    user_callable = callable(op) and not isinstance(op, Convolution1d)
    if user_callable and m and n and (torch.is_grad_enabled() or _fwad._current_level >= 0):
        # The solve sees A only through products, inside the Function: a tensor the callable
        # captures instead of taking it in params would lose its gradient (reverse mode) or
        # its tangent (forward mode; _as_output raises). One product outside finds either.
        primals = [_fwad.unpack_dual(p).primal.detach() if torch.is_tensor(p) else p
                   for p in params]
        y = _first_call(op, torch.zeros(n, dtype=dtype), primals)
        _as_output(y, m, "A(v, *params)", dtype)
        # A tensor requiring grad at the leaves of y's graph in two calls is captured; one
        # made afresh in each call (autograd used inside the callable) is not.
        if y.requires_grad and _graph_leaves(y) & _graph_leaves(op(torch.zeros(n, dtype=dtype),
                                                                   *primals)):
            raise ValueError("difflsq.torch: A(v, *params) depends on a tensor that requires "
                             "grad but is not in params (captured by the callable, e.g. an "
                             "nn.Module's weights); its gradient would be lost: pass it in "
                             "params, or detach it, or solve under torch.no_grad()")
    info = {}
    cfg = {"layer": layer, "shape": (m, n), "op": op, "info": info, "dtype": dtype,
           "b_shape": tuple(b.shape)}
    x = _Lstsq.apply(cfg, A if op is None else None, b, damp_t, *params)
    return (x, info) if return_info else x


# ------------------------------------------------------------------------------------------
# The null-space step for equality-constrained training (docs/nullspace.md)

_CONVERGED = (0, 1, 2, 4, 5)
_TRIAL = 8     # iterations of a null-space solve before its rows are equilibrated
_PROBES = 8    # Rademacher probes of the row-norm estimate
_SPREAD = 100  # smallest max/min of the squared row norms worth equilibrating


def _row_norms(A, side):
    """Estimated norms of J's rows — A's columns (side "columns", A = S·Jᵀ) or rows (A = J) —
    or None when they differ by less than a factor of 10, where the estimate's noise would cost
    more than it saves. Hutchinson's estimator: for a Rademacher z, E[(Aᵀz)ⱼ²] = ‖A eⱼ‖²; exact
    for a row with one nonzero (a selection), within a factor of about 2 otherwise. Fixed seed:
    the same θ gives the same step."""
    rng = np.random.default_rng(20261203)
    product, size = (A.rmatvec, A.shape[0]) if side == "columns" else (A.matvec, A.shape[1])
    est = 0.0
    for _ in range(_PROBES):
        z = (2.0 * rng.integers(0, 2, size=size) - 1).astype(A.dtype)
        est = est + np.abs(product(z)).astype(np.float64) ** 2
    est = est / _PROBES
    positive = est[est > 0]
    if (positive.size == 0 or not np.isfinite(est).all()
            or positive.max() <= _SPREAD * positive.min()):
        return None
    # A row estimated 0 — a zero row, or two equal entries cancelling in every probe: the median.
    norms = np.sqrt(np.where(est > 0, est, np.median(positive)))
    return norms if np.isfinite(1 / norms.astype(A.dtype)).all() else None


def _scaled(A, w, side):
    """A·diag(w) (side "columns") or diag(w)·A as a LinearOperator."""
    import scipy.sparse.linalg as sla
    if side == "columns":
        return sla.LinearOperator(A.shape, matvec=lambda y: A.matvec(w * y),
                                  rmatvec=lambda u: w * A.rmatvec(u), dtype=A.dtype)
    return sla.LinearOperator(A.shape, matvec=lambda x: w * A.matvec(x),
                              rmatvec=lambda u: A.rmatvec(w * u), dtype=A.dtype)


class NullSpaceOptimizer:
    """Wraps a torch optimizer so that its updates keep equality constraints c(θ) = 0.

    ``params``: the tensors ``optimizer`` updates (any shapes); ``constraint()``: returns the
    1-D tensor c(θ) computed from them (it may close over a data batch). After
    ``loss.backward()``, ``step()``:

    * ``mode="gradient"`` (the paper's): the optimizer receives d = Pg + γ·J⁺c as the gradient
      (Pg − γ·J⁺c in groups with ``maximize=True``);
    * ``mode="step"`` (default): the optimizer proposes Δ from the raw gradient and the applied
      update is PΔ − lr·γ·J⁺c (lr of each parameter's group). With plain SGD (one learning
      rate, no weight decay) both modes coincide. Gradient mode leaves the null space wherever
      the optimizer rescales coordinates (Adam, weight decay, groups with different learning
      rates; a warning says so once); step mode keeps c(θ) = 0 with any optimizer.

    ``metric`` (step mode): the projection of Δ is orthogonal in the metric of the optimizer's
    rescaling, P_D Δ = argmin over Jw = 0 of (w − Δ)ᵀD(w − Δ), so that the iteration stops only
    where g ∈ range(Jᵀ) (the KKT condition). ``"auto"``: D = (√v̂ + ε)/lr from the state of
    torch.optim.Adam / AdamW (amsgrad too), 1/lr for other optimizers (lr of each parameter's
    group; the identity when all are equal); ``"euclidean"``: always the identity; or a callable
    returning one positive tensor per parameter (include 1/lr where groups differ). Euclidean
    projection of Adam's step keeps c(θ) = 0 but stops where P D⁻¹g = 0, not a KKT point.

    A step either completes or, when it raises (a non-finite gradient or c(θ), a failed solve
    under ``on_failure="raise"``), leaves the parameters and the optimizer's state as they were.
    ``step(closure)`` evaluates the loss as torch optimizers do (LBFGS too, in step mode) and
    returns it. ``state_dict()`` / ``load_state_dict()`` save the optimizer's state and the step
    count (warmup).

    P is the orthogonal projection onto N(J), J = ∂c/∂θ; z = argmin ‖Jᵀz − g‖ the least-squares
    multipliers; J⁺c the minimum-norm Gauss–Newton correction. J is never formed: Jᵀu is one
    backward pass, J·v the double-backward trick. Each projection and the correction is a
    difflsq least-squares solve (``method``, ``atol``, ``btol``, ``maxiter``); the correction is
    skipped when ‖c‖ <= ``feasibility_tol`` (default 0: only when c = 0). ``lr·γ = 1`` is a
    full Gauss–Newton correction. A solve not done after 8 iterations goes on with the rows of
    J·D^{-1/2} equilibrated (their norms estimated from 8 products) when they differ by more
    than a factor of 10: constraints in different units, or Adam's metric.

    In step mode P_D Δ is scaled down, if needed, to the length of Δ (``step_scale`` in the
    diagnostics): in a metric spread over decades (Adam's first steps) it can be far longer.

    ``diagnostics`` after each step: ``constraint_norm`` (‖c‖ before the step),
    ``multipliers`` (z), ``projected_grad_norm`` (‖Pg‖), ``iterations`` and ``istop`` of the
    solves, ``warmup`` (True while the first ``warmup`` steps run the plain optimizer). In step
    mode, z and ‖Pg‖ cost one more solve; ``track_stationarity=False`` skips it (they are then
    None).
    """

    def __init__(self, params, optimizer, constraint, gamma=1.0, mode="step", *,
                 method="lsqr", atol=1e-10, btol=1e-10, maxiter=None, warmup=0,
                 track_stationarity=True, feasibility_tol=0.0, on_failure="raise",
                 metric="auto"):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("difflsq.torch.NullSpaceOptimizer: no parameters")
        if mode not in ("step", "gradient"):
            raise ValueError(f"difflsq.torch.NullSpaceOptimizer: mode must be 'step' or "
                             f"'gradient', got {mode!r}")
        if on_failure not in ("raise", "warn", "ignore"):
            raise ValueError(f"difflsq.torch.NullSpaceOptimizer: on_failure must be 'raise', "
                             f"'warn' or 'ignore', got {on_failure!r}")
        for i, p in enumerate(self.params):
            _check_device(f"params[{i}]", p)
            if not p.requires_grad:
                raise ValueError(f"difflsq.torch.NullSpaceOptimizer: params[{i}] does not "
                                 f"require grad")
            if p.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"difflsq.torch.NullSpaceOptimizer: params[{i}] is {p.dtype}; "
                                 f"real float32 or float64 parameters are supported")
            if any(q is p for q in self.params[:i]):
                raise ValueError(f"difflsq.torch.NullSpaceOptimizer: params[{i}] is listed "
                                 f"twice")
        self.optimizer, self.constraint = optimizer, constraint
        self.gamma, self.mode = float(gamma), mode
        self.method, self.atol, self.btol, self.maxiter = method, atol, btol, maxiter
        self.warmup, self.track_stationarity = int(warmup), bool(track_stationarity)
        self.feasibility_tol = float(feasibility_tol)
        self.on_failure = on_failure
        if not (metric in ("auto", "euclidean") or callable(metric)):
            raise ValueError(f"difflsq.torch.NullSpaceOptimizer: metric must be 'auto', "
                             f"'euclidean' or a callable, got {metric!r}")
        self.metric = metric
        self.diagnostics = {}
        self._steps = 0
        self._warned = False
        self._groups = self._param_groups()

    def _param_groups(self):
        """The optimizer's group of each of self.params (by id)."""
        group_of = {id(p): group for group in self.optimizer.param_groups
                    for p in group["params"]}
        missing = [i for i, p in enumerate(self.params) if id(p) not in group_of]
        if missing:
            raise ValueError(f"difflsq.torch.NullSpaceOptimizer: params {missing} are not "
                             f"updated by the optimizer")
        return [group_of[id(p)] for p in self.params]

    def _per_entry(self, values, dtype):
        """A flat tensor with values[i] repeated over the entries of params[i]."""
        return torch.cat([torch.full((p.numel(),), float(v), dtype=dtype)
                          for p, v in zip(self.params, values)])

    def zero_grad(self, set_to_none=False):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def state_dict(self):
        """The wrapped optimizer's state_dict and the step count (for warmup)."""
        return {"optimizer": self.optimizer.state_dict(), "steps": self._steps}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self._steps = int(state["steps"])
        self._groups = self._param_groups()

    # --- flat views -------------------------------------------------------------------------
    def _flat(self, tensors):
        return torch.cat([t.reshape(-1) for t in tensors])

    def _unflat(self, v):
        out, i = [], 0
        for p in self.params:
            out.append(v[i:i + p.numel()].view_as(p))
            i += p.numel()
        return out

    # --- J products by autograd ---------------------------------------------------------------
    def _jacobian(self):
        """c(θ) and the products v ↦ J v, u ↦ Jᵀu at the current θ (NumPy in and out)."""
        import scipy.sparse.linalg as sla
        with torch.enable_grad():
            c = self.constraint()
            if not torch.is_tensor(c) or c.dim() != 1:
                raise ValueError("difflsq.torch.NullSpaceOptimizer: constraint() must return a "
                                 "1-D tensor")
            _check_device("constraint()", c)
            if not torch.isfinite(c).all():
                raise FloatingPointError("difflsq.torch.NullSpaceOptimizer: c(θ) is not finite")
            if not c.requires_grad:
                raise ValueError("difflsq.torch.NullSpaceOptimizer: constraint() does not "
                                 "depend on the parameters (its result does not require grad)")
            u0 = torch.zeros_like(c, requires_grad=True)
            jt_u0 = torch.autograd.grad(c, self.params, grad_outputs=u0, create_graph=True,
                                        allow_unused=True)
            jt_u0 = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, jt_u0)]
            flat_jt_u0 = self._flat(jt_u0)  # Jᵀu0, linear in u0 (step() runs under no_grad)
        dtype = self.params[0].dtype
        k, n = c.numel(), sum(p.numel() for p in self.params)

        buffer = torch.empty(n, dtype=dtype)  # reused: the caller copies each result out

        def jt(u):  # Jᵀu: one backward pass through c
            g = torch.autograd.grad(c, self.params, grad_outputs=torch.from_numpy(u).to(c.dtype),
                                    retain_graph=True, allow_unused=True)
            i = 0
            for p, x in zip(self.params, g):
                piece = buffer[i:i + p.numel()]
                if x is None:
                    piece.zero_()
                else:
                    piece.copy_(x.reshape(-1))
                i += p.numel()
            return buffer.numpy()

        def jv(v):  # J v = ∂(Jᵀu0)/∂u0 · v: the double-backward trick
            if not flat_jt_u0.requires_grad:  # c does not depend on θ
                return np.zeros(k, dtype=np.dtype(str(dtype).replace("torch.", "")))
            (g,) = torch.autograd.grad(flat_jt_u0, u0, grad_outputs=torch.from_numpy(v).to(dtype),
                                       retain_graph=True)
            return g.detach().numpy()

        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        J = sla.LinearOperator((k, n), matvec=jv, rmatvec=jt, dtype=np_dtype)
        return c.detach(), J

    def _lsq(self, A, rhs, maxiter, x0=None):
        from . import lsqr, lsmr, cgls
        kw = dict(atol=self.atol, btol=self.btol, conlim=0, x0=x0)
        if self.method == "lsqr":
            out = lsqr(A, rhs, iter_lim=maxiter, **kw)
        else:
            out = (lsmr if self.method == "lsmr" else cgls)(A, rhs, maxiter=maxiter, **kw)
        return out[0], int(out[1]), int(out[2])

    def _solve(self, A, rhs, records, side):
        """argmin ‖A x − rhs‖ (minimum norm). Rows of J of very different norms — constraints in
        different units, or Adam's metric spread over decades — slow the solve down: one that
        has not converged after _TRIAL iterations goes on from where it stopped with J's rows
        equilibrated (estimated, _row_norms), A's columns when ``side == "columns"`` (A = S·Jᵀ),
        its rows when ``side == "rows"`` (A = J; same solution when Jx = rhs is consistent)."""
        limit = self.maxiter
        if limit is None:  # the method's default (SciPy's)
            limit = min(A.shape) if self.method == "lsmr" else 2 * A.shape[1]
        x, istop, itn = self._lsq(A, rhs, min(limit, _TRIAL))
        if istop == 7 and itn < limit:
            # Rescaled only with another trial's budget left (the rescaled solve restarts).
            w = _row_norms(A, side) if limit - itn >= _TRIAL else None
            if w is None:  # rows of comparable norms: go on unscaled
                x, istop, more = self._lsq(A, rhs, limit - itn, x0=x)
            else:
                w = (1 / w).astype(x.dtype)
                if side == "columns":  # x = diag(w)·y, A·diag(w) has unit columns
                    y, istop, more = self._lsq(_scaled(A, w, side), rhs, limit - itn, x0=x / w)
                    x = w * y
                else:  # diag(w)·A x = diag(w)·rhs, unit rows
                    x, istop, more = self._lsq(_scaled(A, w, side), w * rhs, limit - itn, x0=x)
            itn += more
        records.append((istop, itn))
        if istop not in _CONVERGED:
            msg = (f"difflsq.torch.NullSpaceOptimizer: a least-squares solve did not converge "
                   f"(istop {istop} after {itn} iterations)")
            if self.on_failure == "raise":
                raise SolveError(msg)
            if self.on_failure == "warn":
                warnings.warn(msg, SolveWarning, stacklevel=3)
        return x

    def _project(self, J, v, records, metric=None):
        """(Pv, z): z = argmin ‖Jᵀz − v‖, Pv = v − Jᵀz. With a metric D (a positive vector):
        (P_D v, μ), μ = argmin ‖S Jᵀμ − S⁻¹v‖ with S = D^{-1/2}, P_D v = v − S²Jᵀμ."""
        import scipy.sparse.linalg as sla
        if metric is None:
            z = self._solve(J.adjoint(), v.numpy(), records, "columns")
            pv = v - torch.from_numpy(J.rmatvec(z)).to(v.dtype)
            return pv, torch.from_numpy(z).to(v.dtype)
        s = metric.rsqrt()  # 0 where D = ∞ (lr = 0): those entries do not move
        s_np = s.numpy()
        k, n = J.shape
        sjt = sla.LinearOperator((n, k), matvec=lambda mu: s_np * J.rmatvec(mu),
                                 rmatvec=lambda u: J.matvec(s_np * u), dtype=J.dtype)
        rhs = torch.where(s > 0, v / s, torch.zeros_like(v))
        mu = self._solve(sjt, rhs.numpy(), records, "columns")
        pv = v - s * s * torch.from_numpy(J.rmatvec(mu)).to(v.dtype)
        return pv, torch.from_numpy(mu).to(v.dtype)

    def _step_metric(self, dtype):
        """D for the projection of the optimizer's step (flat), or None for the identity."""
        if self.metric == "euclidean":
            return None
        if callable(self.metric):
            parts = self.metric(self.params)
            if len(parts) != len(self.params):
                raise ValueError("difflsq.torch.NullSpaceOptimizer: metric() must return one "
                                 "tensor per parameter")
            d = self._flat([torch.as_tensor(t, dtype=p.dtype).expand_as(p)
                            for t, p in zip(parts, self.params)])
            if not (torch.isfinite(d).all() and (d > 0).all()):
                raise ValueError("difflsq.torch.NullSpaceOptimizer: metric() must be finite "
                                 "and positive")
            return d
        # Per-group learning rates scale the step per coordinate, like Adam's denominator: the
        # step is −lr·D⁻¹(…), so the metric is D/lr (a constant factor does not change P_D).
        lrs = [float(group.get("lr", 1.0)) for group in self._groups]
        uniform = all(lr == lrs[0] for lr in lrs)
        adam = isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW))
        if not adam and uniform:
            return None
        inv_lr = self._per_entry([1 / lr if lr > 0 else math.inf for lr in lrs], dtype)
        if not adam:
            return inv_lr
        parts = []
        for p, group in zip(self.params, self._groups):  # Adam's √(v / (1 − β₂ᵗ)) + ε
            state = self.optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                parts.append(torch.ones_like(p))
                continue
            v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
            t = float(state["step"])
            parts.append((v / (1 - group["betas"][1] ** t)).sqrt() + group["eps"])
        d = self._flat(parts)
        return d if uniform else d * inv_lr

    def _snapshot(self):
        """Every parameter of the optimizer and its state (a failed step restores them)."""
        def copy(v):
            return v.clone() if torch.is_tensor(v) else v
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return [(p, p.detach().clone(),
                 {k: copy(v) for k, v in self.optimizer.state[p].items()}
                 if p in self.optimizer.state else None) for p in params]

    def _restore(self, snapshot):
        for p, data, state in snapshot:
            p.data.copy_(data)
            if state is None:
                self.optimizer.state.pop(p, None)
            else:
                self.optimizer.state[p] = state

    def _gradient(self):
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        for i, gi in enumerate(grads):
            if not torch.isfinite(gi).all():
                raise FloatingPointError(f"difflsq.torch.NullSpaceOptimizer: the gradient of "
                                         f"params[{i}] is not finite")
        return self._flat(grads).detach().clone()

    def _warn_gradient_mode(self):
        """Gradient mode hands the optimizer d ∈ N(J) (+ the correction); an optimizer that
        rescales coordinates takes its update out of N(J)."""
        if self._warned:
            return
        reasons = []
        if not isinstance(self.optimizer, torch.optim.SGD):
            reasons.append(f"{type(self.optimizer).__name__} rescales the gradient")
        if any(group.get("weight_decay", 0) for group in self._groups):
            reasons.append("weight decay adds θ to it")
        if len({float(group.get("lr", 0)) for group in self._groups}) > 1:
            reasons.append("the parameter groups have different learning rates")
        if reasons:
            self._warned = True
            warnings.warn("difflsq.torch.NullSpaceOptimizer: in mode='gradient' the updates "
                          "leave the constraint set (" + "; ".join(reasons) + "); "
                          "mode='step' keeps c(θ) = 0", RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def step(self, closure=None):
        """One constrained step (see the class). ``closure``: re-evaluates the loss and its
        gradient, as for torch optimizers; its loss is returned."""
        self._steps += 1
        self._groups = self._param_groups()
        records = []
        loss = None
        if self._steps <= self.warmup:
            cnorm = float(self.constraint().detach().norm())
            loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
            self.diagnostics = {"constraint_norm": cnorm, "multipliers": None,
                                "projected_grad_norm": None, "iterations": [], "istop": [],
                                "warmup": True, "step_scale": None}
            return loss
        # Step mode moves θ and the optimizer's state before its solves; gradient mode changes
        # nothing until its last line, the optimizer's own step.
        snapshot = self._snapshot() if self.mode == "step" else []
        step_scale = None
        try:
            if self.mode == "gradient":
                if closure is not None:
                    with torch.enable_grad():
                        loss = closure()
                g = self._gradient()
            else:
                # The optimizer's proposal Δ from the raw gradient; θ goes back to where it was
                # (through .data, so that the Jacobian below is built at the old θ).
                if closure is None:
                    g = self._gradient()  # before the optimizer reads a non-finite gradient
                    self.optimizer.step()
                else:
                    loss = self.optimizer.step(closure)
                    g = self._gradient()
                old = {id(p): data for p, data, _ in snapshot}
                old = [old[id(p)] for p in self.params]
                delta = self._flat([p.detach() - o for p, o in zip(self.params, old)])
                for p, o in zip(self.params, old):
                    p.data.copy_(o)
            c, J = self._jacobian()
            cnorm = float(c.norm())
            correction = (torch.from_numpy(self._solve(J, c.numpy(), records, "rows")).to(g.dtype)
                          if cnorm > self.feasibility_tol else torch.zeros_like(g))
            z = pg = None
            if self.mode == "gradient" or self.track_stationarity:
                pg, z = self._project(J, g, records)
            if self.mode == "gradient":
                self._warn_gradient_mode()
                # maximize=True ascends along d: the correction must still descend on ‖c‖.
                sign = self._per_entry([-1.0 if group.get("maximize") else 1.0
                                        for group in self._groups], g.dtype)
                d = pg + sign * self.gamma * correction
                for p, di in zip(self.params, self._unflat(d)):
                    if p.grad is None:
                        p.grad = di.clone()
                    else:
                        p.grad.copy_(di)
                del c, J  # the graph of c(θ) is not needed once the optimizer moves θ
                self.optimizer.step()
            else:
                pdelta, _ = self._project(J, delta, records, self._step_metric(g.dtype))
                # A projection in a metric D is shortest in D's norm only: where D is tiny
                # (Adam's first steps, v̂ ≈ 0) P_D Δ can be far longer than Δ itself. Like the
                # Euclidean projection, the step is never longer than the optimizer's proposal
                # (scaled as a whole: it stays in N(J) and its fixed points are P_D Δ = 0).
                step_scale = min(1.0, float(delta.norm()) / max(float(pdelta.norm()), 1e-300))
                pdelta = pdelta * step_scale
                lr = self._per_entry([group.get("lr", 0.0) for group in self._groups], g.dtype)
                update = pdelta - lr * self.gamma * correction
                del c, J
                for p, o, u in zip(self.params, old, self._unflat(update)):
                    p.copy_(o + u)
        except BaseException:
            self._restore(snapshot)
            self._steps -= 1
            raise
        self.diagnostics = {
            "constraint_norm": cnorm,
            "multipliers": z,
            "projected_grad_norm": None if pg is None else float(pg.norm()),
            "iterations": [r[1] for r in records],
            "istop": [r[0] for r in records],
            "warmup": False,
            "step_scale": step_scale,
        }
        return loss


# --- exact projections onto simple sets (for inequality constraints) --------------------------

def _check_finite(name, x):
    if not torch.isfinite(torch.as_tensor(x)).all():
        raise ValueError(f"difflsq.torch.{name} is not finite")


def project_box(x, lo, hi):
    """Clamp to lo <= y <= hi (numbers or tensors broadcasting with x)."""
    lo_t, hi_t = torch.as_tensor(lo, dtype=x.dtype), torch.as_tensor(hi, dtype=x.dtype)
    if torch.isnan(lo_t).any() or torch.isnan(hi_t).any() or not bool((lo_t <= hi_t).all()):
        raise ValueError("difflsq.torch.project_box: need lo <= hi")
    if torch.is_tensor(lo) or torch.is_tensor(hi):
        return torch.maximum(torch.minimum(x, hi_t), lo_t)
    return x.clamp(lo, hi)


def project_nonnegative(x):
    """The non-negative orthant."""
    return x.clamp_min(0)


def project_simplex(x, total=1.0):
    """Euclidean projection of a 1-D tensor onto {y >= 0, sum(y) = total}, sort-based,
    O(n log n)."""
    if not (total > 0 and math.isfinite(total)):
        raise ValueError("difflsq.torch.project_simplex: total must be finite and > 0")
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError("difflsq.torch.project_simplex: x must be a non-empty 1-D tensor")
    _check_finite("project_simplex: x", x)
    s, _ = torch.sort(x, descending=True)
    cum = torch.cumsum(s, 0) - total
    ks = torch.arange(1, x.numel() + 1, dtype=x.dtype)
    t = cum / ks
    rho = int(torch.nonzero(s > t).max())
    return (x - t[rho]).clamp_min(0)


def project_ball(x, radius=1.0):
    """The ball ||y|| <= radius."""
    if not radius >= 0:
        raise ValueError("difflsq.torch.project_ball: radius must be >= 0")
    _check_finite("project_ball: x", x)
    n = x.norm()
    return x if n <= radius else x * (radius / n)
