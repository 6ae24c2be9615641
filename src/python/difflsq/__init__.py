"""difflsq: matrix-free least squares (LSQR, LSMR, CGLS) in C++.

``lsqr`` and ``lsmr`` are drop-in replacements for ``scipy.sparse.linalg.lsqr`` and
``scipy.sparse.linalg.lsmr``: same arguments, same defaults, same return tuples and ``istop``
codes. Dense NumPy arrays and SciPy sparse matrices iterate entirely in C++ (no copy beyond a
format or dtype conversion); anything ``scipy.sparse.linalg.aslinearoperator`` accepts calls back
into Python for its products.

Differences from SciPy, all deliberate:

* float32 (complex64) problems are solved in single precision and return float32 (complex64);
  tolerances below single-precision machine epsilon are raised to it.
* Bad input raises ``ValueError`` (shapes, non-finite ``b``/``x0``/``damp``, negative tolerances);
  an operator that produces Inf/NaN raises :class:`NonFiniteError` (a ``FloatingPointError``)
  carrying the last finite iterate, instead of returning NaN.
"""

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from . import _core

__all__ = ["lsqr", "lsmr", "cgls", "NonFiniteError", "STATUS_NON_FINITE"]

#: The ``istop`` value difflsq adds to SciPy's 0–7: the operator produced Inf or NaN.
STATUS_NON_FINITE = 8


class NonFiniteError(FloatingPointError):
    """The operator produced Inf or NaN during the iteration.

    ``result`` holds the SciPy-style tuple with the last finite iterate.
    """

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


_SUFFIX = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
    np.dtype(np.complex64): "c64",
    np.dtype(np.complex128): "c128",
}


def _working_dtype(*dtypes):
    """float32/complex64 when every input is single precision, else float64/complex128."""
    dt = np.result_type(*dtypes)
    if dt in (np.float32, np.complex64):
        return dt
    return np.result_type(dt, np.float64)


def _prepare_vector(v, name, dtype, size):
    v = np.asarray(v)
    if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
        raise ValueError(f"difflsq: {name} must be numeric, got dtype {v.dtype}")
    v = np.atleast_1d(v)
    if v.ndim > 1:
        v = v.squeeze()
        v = np.atleast_1d(v)
    if v.ndim != 1 or v.shape[0] != size:
        raise ValueError(
            f"difflsq: {name} has shape {np.shape(v)} but a vector of length {size} is required")
    return np.ascontiguousarray(v, dtype=dtype)


def _solve(method, A, b, damp, atol, btol, conlim, maxiter, show, calc_var, x0):
    b_arr = np.asarray(b)
    x0_arr = None if x0 is None else np.asarray(x0)
    if not np.isscalar(damp) and np.ndim(damp) != 0:
        raise ValueError(f"difflsq: damp must be a scalar, got shape {np.shape(damp)}")
    damp = float(damp)
    if maxiter is not None:
        maxiter = int(maxiter)
        if maxiter < 0:
            raise ValueError(f"difflsq: the iteration limit must be >= 0, got {maxiter}")

    if isinstance(A, np.ndarray) or isinstance(A, np.matrix):
        kind = "dense"
        A = np.asarray(A)
        if A.ndim != 2:
            raise ValueError(f"difflsq: A must be 2-D, got shape {A.shape}")
        a_dtype = A.dtype if A.dtype.kind in "fc" else np.float64
    elif scipy.sparse.issparse(A):
        kind = "sparse"
        a_dtype = A.dtype if A.dtype.kind in "fc" else np.float64
    else:
        kind = "operator"
        A = scipy.sparse.linalg.aslinearoperator(A)
        a_dtype = A.dtype if (A.dtype is not None and np.dtype(A.dtype).kind in "fc") \
            else np.float64
    m, n = A.shape
    dtypes = [a_dtype, b_arr.dtype if b_arr.dtype.kind in "fc" else np.float64]
    if x0_arr is not None:
        dtypes.append(x0_arr.dtype if x0_arr.dtype.kind in "fc" else np.float64)
    dtype = _working_dtype(*dtypes)
    suffix = _SUFFIX[np.dtype(dtype)]

    b_vec = _prepare_vector(b_arr, "b", dtype, m)
    x0_vec = None if x0_arr is None else _prepare_vector(x0_arr, "x0", dtype, n)
    # A limit of 0 iterations is a valid request; the C++ side reads <= 0 as "default".
    limit = -1 if maxiter is None else maxiter
    if limit == 0:
        return _zero_iterations(method, A, kind, b_vec, x0_vec, n, dtype)
    args = _core.SolveArgs(method, damp, float(atol), float(btol), float(conlim),
                           limit if limit > 0 else 0, bool(show), bool(calc_var))

    if show:
        _print_header(method, m, n, damp, atol, btol, conlim, limit, calc_var)
    if kind == "dense":
        if not (A.flags.c_contiguous or A.flags.f_contiguous) or A.dtype != dtype:
            A = np.ascontiguousarray(A, dtype=dtype)
        out = getattr(_core, "_solve_dense_" + suffix)(A, b_vec, x0_vec, args)
    elif kind == "sparse":
        if A.format not in ("csr", "csc"):
            A = A.tocsr()
        data = A.data if A.data.dtype == dtype else A.data.astype(dtype)
        idx = "i64" if A.indices.dtype == np.int64 or A.indptr.dtype == np.int64 else "i32"
        itype = np.int64 if idx == "i64" else np.int32
        fn = getattr(_core, f"_solve_sparse_{suffix}_{idx}")
        out = fn(A.format == "csr", m, n, np.ascontiguousarray(data),
                 np.ascontiguousarray(A.indices, dtype=itype),
                 np.ascontiguousarray(A.indptr, dtype=itype), b_vec, x0_vec, args)
    else:
        def matvec(v):
            return np.asarray(A.matvec(v)).reshape(-1)

        def rmatvec(v):
            return np.asarray(A.rmatvec(v)).reshape(-1)

        out = getattr(_core, "_solve_callback_" + suffix)(m, n, matvec, rmatvec, b_vec, x0_vec,
                                                         args)
    x, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, var = out[:10]
    if show:
        _print_footer(method, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm)
    result = (x, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, var)
    if istop == STATUS_NON_FINITE:
        raise NonFiniteError(
            f"difflsq.{method}: the operator produced a non-finite value (Inf or NaN) "
            f"after {itn} iterations", _shape(method, result))
    return _shape(method, result)


def _zero_iterations(method, A, kind, b, x0, n, dtype):
    """An iteration limit of 0: x = x0 (or 0), no iteration.

    SciPy reports istop 0 ("x = 0 is the exact solution") here whatever b is; difflsq reports 7
    (iteration limit) unless r0 = 0 or A^H r0 = 0, so that a non-solution never looks converged.
    """
    x = np.zeros(n, dtype=dtype) if x0 is None else x0.copy()
    r = b - (A @ x if kind != "operator" else A.matvec(x))
    rn = float(np.linalg.norm(r))
    arn = float(np.linalg.norm(A.T.conj() @ r if kind != "operator" else A.rmatvec(r)))
    istop = 0 if rn == 0 or arn == 0 else 7
    real = np.zeros(0, dtype=dtype).real.dtype
    result = (x, istop, 0, rn, rn, 0.0, 0.0, arn, float(np.linalg.norm(x)), np.zeros(n, real))
    return _shape(method, result)


def _shape(method, t):
    x, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, var = t
    if method == "lsqr":
        return x, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, var
    # lsmr / cgls: SciPy's lsmr tuple; normr is the damped residual norm.
    return x, istop, itn, r2norm, arnorm, anorm, acond, xnorm


_MESSAGES = (
    "The exact solution is  x = x0                             ",
    "Ax - b is small enough, given atol, btol                  ",
    "The least-squares solution is good enough, given atol     ",
    "The estimate of cond(Abar) has exceeded conlim            ",
    "Ax - b is small enough for this machine                   ",
    "The least-squares solution is good enough for this machine",
    "Cond(Abar) seems to be too large for this machine         ",
    "The iteration limit has been reached                      ",
    "The operator produced a non-finite value (Inf or NaN)     ",
    "Stopped by the monitor                                    ",
)


def _print_header(method, m, n, damp, atol, btol, conlim, limit, calc_var):
    print(" ")
    print(f"{method.upper():16}Least-squares solution of  Ax = b")
    print(f"The matrix A has {m} rows and {n} columns")
    print("damp = %20.14e   calc_var = %8g" % (damp, calc_var))
    print("atol = %8.2e                 conlim = %8.2e" % (atol, conlim))
    print("btol = %8.2e               iter_lim = %8g" % (btol, limit if limit > 0 else -1))
    print(" ")
    print("   Itn      x[0]       r1norm     r2norm   Compatible    LS      Norm A   Cond A")


def _print_footer(method, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm):
    print(" ")
    print(f"{method.upper()} finished")
    print(_MESSAGES[istop])
    print(" ")
    print("istop =%8g   r1norm =%8.1e   anorm =%8.1e   arnorm =%8.1e" %
          (istop, r1norm, anorm, arnorm))
    print("itn   =%8g   r2norm =%8.1e   acond =%8.1e   xnorm  =%8.1e" %
          (itn, r2norm, acond, xnorm))
    print(" ")


def lsqr(A, b, damp=0.0, atol=1e-6, btol=1e-6, conlim=1e8, iter_lim=None, show=False,
         calc_var=False, x0=None):
    """Drop-in replacement for ``scipy.sparse.linalg.lsqr``.

    Solves ``min ||A x - b||^2 + damp^2 ||x - x0||^2`` by LSQR (Paige & Saunders 1982).
    Returns ``(x, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, var)`` with SciPy's
    meanings: ``r1norm = ||b - Ax||``, ``r2norm = sqrt(r1norm^2 + damp^2 ||x - x0||^2)``,
    ``anorm``/``acond`` estimates of the Frobenius norm and condition of ``[A; damp I]``,
    ``arnorm = ||A^H r - damp^2 (x - x0)||``, ``xnorm`` (estimate of ``||x - x0||``) and ``var``
    (estimate of ``diag((A^H A + damp^2 I)^-1)`` when ``calc_var``).
    """
    return _solve("lsqr", A, b, damp, atol, btol, conlim, iter_lim, show, calc_var, x0)


def lsmr(A, b, damp=0.0, atol=1e-6, btol=1e-6, conlim=1e8, maxiter=None, show=False,
         x0=None):
    """Drop-in replacement for ``scipy.sparse.linalg.lsmr``.

    Solves ``min ||A x - b||^2 + damp^2 ||x - x0||^2`` by LSMR (Fong & Saunders 2011).
    Returns ``(x, istop, itn, normr, normar, norma, conda, normx)`` as SciPy does.
    """
    return _solve("lsmr", A, b, damp, atol, btol, conlim, maxiter, show, False, x0)


def cgls(A, b, damp=0.0, atol=1e-6, btol=1e-6, conlim=1e8, maxiter=None, show=False, x0=None):
    """CGLS (conjugate gradients on the normal equations) with LSMR's signature and return tuple.

    ``conda`` is not estimated (0) and ``conlim`` is not used.
    """
    return _solve("cgls", A, b, damp, atol, btol, conlim, maxiter, show, False, x0)
