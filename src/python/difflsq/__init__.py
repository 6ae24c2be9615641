"""difflsq: matrix-free least squares (LSQR, LSMR, CGLS) in C++.

``lsqr`` and ``lsmr`` are drop-in replacements for ``scipy.sparse.linalg.lsqr`` and
``scipy.sparse.linalg.lsmr``: same arguments, same defaults, same return tuples and ``istop``
codes. Dense NumPy arrays and SciPy sparse matrices iterate entirely in C++: dense arrays in
place, sparse CSR/CSC in place above 2**20 nonzeros and below that over a copy of A and of Aᵀ in
sliced ELLPACK (about twice the matrix's memory, for faster products); other formats and dtypes
are converted first. Anything ``scipy.sparse.linalg.aslinearoperator`` accepts calls back into
Python for its products.

Differences from SciPy, all deliberate:

* float32 (complex64) problems are solved in single precision and return float32 (complex64);
  tolerances below single-precision machine epsilon are raised to it.
* Bad input raises ``ValueError`` (shapes, non-finite ``b``/``x0``/``damp``, negative tolerances);
  an operator that produces Inf/NaN raises :class:`NonFiniteError` (a ``FloatingPointError``)
  carrying the last finite iterate, instead of returning NaN. A negative iteration limit is a
  ``ValueError`` (SciPy runs no iteration and reports istop 0); long double is a ``TypeError``.
* With an iteration limit of 0, istop is 7 (SciPy's 0 would say that x0 solves the problem)
  unless it does, and LSMR's ``normx`` is ‖x0‖ (SciPy leaves 0).
* An ``np.matrix`` right-hand side is accepted (SciPy raises).
* Where SciPy's answer depends on the scale of A (docs/solvers.md): LSQR and LSMR keep their
  norm estimates by hypot, not as sums of squares, and solve A·s as they solve A for s from
  1e-100 to 1e200 (float64) where SciPy reports a false convergence or NaN beyond ‖A‖ ≈ 1e154;
  LSQR's test2 has no ``+ eps`` (which stops SciPy early for ‖A‖‖r‖ < 1e-14); LSMR's cond(A)
  estimate is invariant under A → sA (SciPy's starts from constants: istop 3 after one
  iteration for ‖A‖ = 1e-9). A recurrence that still overflows raises :class:`NonFiniteError`.
"""

import math

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from . import _core

__all__ = ["lsqr", "lsmr", "cgls", "NonFiniteError", "STATUS_NON_FINITE"]

#: The ``istop`` value difflsq adds to SciPy's 0–7: the operator produced Inf or NaN.
STATUS_NON_FINITE = 8


class NonFiniteError(FloatingPointError):
    """Inf or NaN during the iteration: produced by the operator, or a norm estimate that
    overflowed (A or b scaled near the limits of the precision, e.g. ‖A‖ ≈ 1e155 in float64),
    where SciPy would report convergence or NaN.

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


def _check_numeric(dtype, name):
    # An object array would be read element by element by float(): strings parsed, complex
    # entries a bare TypeError.
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise ValueError(f"difflsq: {name} must be numeric, got dtype {dtype}")


def _prepare_vector(v, name, dtype, size):
    v = np.asarray(v)
    _check_numeric(v.dtype, name)
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
    # float() would read a string, and a complex damp's real part (with a warning only).
    if isinstance(damp, (str, bytes)) or _is_complex(damp):
        raise ValueError(f"difflsq: damp must be a real number, got {damp!r}")
    damp = float(damp)
    maxiter = _iteration_limit(maxiter)

    if isinstance(A, np.ndarray) or isinstance(A, np.matrix):
        kind = "dense"
        A = np.asarray(A)
        if A.ndim != 2:
            raise ValueError(f"difflsq: A must be 2-D, got shape {A.shape}")
        _check_numeric(A.dtype, "A")
        a_dtype = A.dtype if A.dtype.kind in "fc" else np.float64
    elif scipy.sparse.issparse(A):
        kind = "sparse"
        _check_numeric(A.dtype, "A")
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
    if np.dtype(dtype) not in _SUFFIX:
        raise TypeError(f"difflsq: inputs of dtype {np.dtype(dtype)} are not supported (float32, "
                        f"float64, complex64, complex128); convert them, e.g. .astype(np.float64)")
    suffix = _SUFFIX[np.dtype(dtype)]

    b_vec = _prepare_vector(b_arr, "b", dtype, m)
    x0_vec = None if x0_arr is None else _prepare_vector(x0_arr, "x0", dtype, n)
    # A limit of 0 iterations is a valid request; the C++ side reads <= 0 as "default".
    limit = -1 if maxiter is None else maxiter
    _check_scalars(dtype, damp, atol, btol, conlim)
    if show or limit == 0:  # the C++ checks, before anything is printed or when no solve runs
        _check_inputs(b_vec, x0_vec, damp, atol, btol, conlim)
        initial = _initial_residual(A, kind, b_vec, x0_vec, n, dtype)
    if show:
        # SciPy's default limits, as the C++ methods' default_max_iterations.
        shown = limit if limit >= 0 else (min(m, n) if method == "lsmr" else 2 * n)
        _print_header(method, m, n, damp, atol, btol, conlim, shown, calc_var)
        x, rn, arn, alpha = initial
        # As SciPy: when Aᴴr0 = 0, one line says so and nothing follows (no progress, no
        # footer); else the column heads and the line for iteration 0.
        show = rn != 0 and alpha != 0  # a NaN goes on to the solve: NonFiniteError
        if not show:
            print("The exact solution is  x = 0                              " if method == "lsqr"
                  else "The exact solution is x = 0, or x = x0, if x0 was given  ")
        else:
            _print_line(method, 0, x[0], rn, rn, arn, 1.0, alpha / rn, None, None)
    if limit == 0:
        result = _zero_iterations(method, initial, n, dtype)
        if show:
            _print_footer(method, *result[1:9], result[0], _norm(b_vec))
        return _shape(method, result)
    args = _core.SolveArgs(method, damp, float(atol), float(btol), float(conlim),
                           limit if limit > 0 else 0, bool(show), bool(calc_var))
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
        _print_footer(method, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, x,
                      _norm(b_vec))
    result = (x, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, var)
    if istop == STATUS_NON_FINITE:
        _raise_non_finite(method, itn, (r2norm, anorm, acond, xnorm), _shape(method, result))
    return _shape(method, result)


def _is_complex(v):
    """Whether v is a complex scalar (Python, NumPy, a 0-d array or tensor)."""
    dtype = getattr(v, "dtype", None)
    if dtype is None:
        return isinstance(v, complex)
    if hasattr(dtype, "is_complex"):  # a torch dtype
        return bool(dtype.is_complex)
    return np.dtype(dtype).kind == "c"


def _iteration_limit(maxiter):
    """The number of iterations SciPy's `while itn < maxiter` makes: ceil(maxiter); None, inf
    and anything beyond 2^62 mean no practical limit (None: the method's default)."""
    if maxiter is None:
        return None
    try:
        if isinstance(maxiter, (str, bytes)):  # SciPy's loop compares numbers only
            raise TypeError
        value = float(maxiter)
    except (TypeError, ValueError):
        raise ValueError(f"difflsq: the iteration limit must be a number, got {maxiter!r}") \
            from None
    if not value >= 0:  # NaN too
        raise ValueError(f"difflsq: the iteration limit must be >= 0, got {maxiter}")
    return int(min(math.ceil(value) if math.isfinite(value) else value, 2 ** 62))


def _norm(v):
    """‖v‖₂ without over- or underflow of the squares (BLAS nrm2 scales; np.linalg.norm does
    not: ‖1e-170 b‖ = 0)."""
    return float(scipy.linalg.norm(v, check_finite=False)) if v.size else 0.0


def _raise_non_finite(method, itn, estimates, result):
    # The C++ loop stops at the first Inf/NaN, from the operator's products or from its own
    # recurrences; the estimates at that point help tell which.
    rnorm, anorm, acond, xnorm = estimates
    raise NonFiniteError(
        f"difflsq.{method}: a non-finite value (Inf or NaN) after {itn} iterations: the operator "
        f"produced one, or the recurrences overflowed because A or b is scaled near the limits "
        f"of the precision (then rescale them); estimates so far: |r| = {rnorm:.3g}, "
        f"|A| = {anorm:.3g}, cond(A) = {acond:.3g}, |x| = {xnorm:.3g}", result)


def _check_inputs(b, x0, damp, atol, btol, conlim):
    """The checks of the C++ solvers (workspace.hpp, Options::validate), naming the same
    quantities."""
    for name, v in (("b", b), ("x0", x0)):
        if v is not None and not np.isfinite(v).all():
            i = int(np.flatnonzero(~np.isfinite(v))[0])
            raise ValueError(f"difflsq: {name} must be finite, got {name}[{i}] = {v[i]}")
    _check_scalars(b.dtype, damp, atol, btol, conlim)


def _check_scalars(dtype, damp, atol, btol, conlim):
    """damp and the tolerances, also as the solver's real type will hold them (float32 for a
    float32 problem: 1e39 is finite, but not there)."""
    real = np.zeros(0, dtype=dtype).real.dtype
    for name, t in (("damp", damp), ("atol", atol), ("btol", btol)):
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"difflsq: {name} must be finite and >= 0, got {t}")
        with np.errstate(over="ignore"):
            if not np.isfinite(real.type(t)):
                raise ValueError(f"difflsq: {name} = {t} is beyond the range of {real.name}, "
                                 f"the precision of this problem")
    if not conlim >= 0:
        raise ValueError(f"difflsq: conlim must be >= 0 (0 disables), got {conlim}")


def _initial_residual(A, kind, b, x0, n, dtype):
    """x0 (or 0), ‖r0‖, ‖Aᴴr0‖ and α₁ = ‖Aᴴu‖ for r0 = b − A x0 and the unit u = r0/‖r0‖ (0 when
    r0 = 0, whatever A holds). As the solvers start: x0 is exact when ‖r0‖ = 0 or α₁ = 0, read
    off the factors, since ‖Aᴴr0‖ = α₁‖r0‖ underflows for a small A and b."""
    if x0 is None:  # r0 = b, as the solvers take it: no product with A (0·Inf would be NaN)
        x, r = np.zeros(n, dtype=dtype), b
    else:
        x = x0.copy()
        r = b - (A @ x if kind != "operator" else A.matvec(x))
    rn = _norm(r)
    if rn == 0:
        return x, 0.0, 0.0, 0.0
    u = r / rn
    alpha = _norm(np.asarray(A.T.conj() @ u if kind != "operator" else A.rmatvec(u)).reshape(-1))
    return x, rn, alpha * rn, alpha


def _zero_iterations(method, initial, n, dtype):
    """An iteration limit of 0: x = x0 (or 0), no iteration; SciPy's 10-tuple.

    SciPy reports istop 0 ("x = 0 is the exact solution") here whatever b is; difflsq reports 7
    (iteration limit) unless r0 = 0 or A^H r0 = 0, so that a non-solution never looks converged.
    """
    x, rn, arn, alpha = initial  # _initial_residual's (x0 or 0, ‖r0‖, ‖Aᴴr0‖, ‖Aᴴr0‖/‖r0‖)
    if not (np.isfinite(rn) and np.isfinite(arn)):  # A (times 0 or x0) is not finite
        raise NonFiniteError(f"difflsq.{method}: the operator produced a non-finite value (Inf "
                             f"or NaN) in b - A x0 or A^H (b - A x0), before any iteration",
                             _shape(method, (x, STATUS_NON_FINITE, 0, rn, rn, 0.0, 0.0, arn, 0.0,
                                             np.zeros(n, np.zeros(0, dtype).real.dtype))))
    istop = 0 if rn == 0 or alpha == 0 else 7
    real = np.zeros(0, dtype=dtype).real.dtype
    if method == "lsqr":  # SciPy's initial estimates; xnorm is ‖x − x0‖
        anorm, acond, xnorm = 0.0, 0.0, 0.0
    else:  # LSMR's: ‖A‖ ≈ α₁ = ‖Aᴴr0‖/‖r0‖, cond = 1; xnorm is ‖x‖
        anorm, acond, xnorm = alpha, 1.0, _norm(x)
    return (x, istop, 0, rn, rn, anorm, acond, arn, xnorm, np.zeros(n, real))


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
    "A non-finite value (Inf or NaN) from the operator or norms",
    "Stopped by the monitor                                    ",
)


def _print_header(method, m, n, damp, atol, btol, conlim, limit, calc_var):
    """SciPy's header: lsqr.py's for LSQR, lsmr.py's for LSMR (and CGLS)."""
    print(" ")
    if method == "lsqr":
        print("LSQR            Least-squares solution of  Ax = b")
        print(f"The matrix A has {m} rows and {n} columns")
        print("damp = %20.14e   calc_var = %8g" % (damp, calc_var))
        print("atol = %8.2e                 conlim = %8.2e" % (atol, conlim))
        print("btol = %8.2e               iter_lim = %8g" % (btol, limit))
    else:
        print(f"{method.upper():16}Least-squares solution of  Ax = b\n")
        print(f"The matrix A has {m} rows and {n} columns")
        print("damp = %20.14e\n" % damp)
        print("atol = %8.2e                 conlim = %8.2e\n" % (atol, conlim))
        print("btol = %8.2e             maxiter = %8g\n" % (btol, limit))


def _print_line(method, itn, x0, r1norm, r2norm, arnorm, test1, test2, anorm, acond):
    """One progress line in SciPy's layout (the C++ printer in bindings.hpp writes the others);
    anorm None: the line for iteration 0, after the column heads and without ‖A‖, cond(A)."""
    if anorm is None:
        print(" ")
        print("   Itn      x[0]       r1norm     r2norm   Compatible    LS      Norm A   Cond A"
              if method == "lsqr" else
              "   itn      x(1)       norm r    norm Ar  compatible   LS      norm A   cond A")
    tail = "" if anorm is None else (" %8.1e %8.1e" % (anorm, acond))
    if method == "lsqr":
        print("%6g %12.5e  %10.3e %10.3e   %8.1e %8.1e" % (itn, x0.real, r1norm, r2norm, test1,
                                                          test2) + (" " + tail if tail else ""))
    else:
        print("%6g %12.5e %10.3e %10.3e  %8.1e %8.1e" % (itn, x0.real, r2norm, arnorm, test1,
                                                        test2) + tail)


def _print_footer(method, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, x, bnorm):
    print(" ")
    print(f"{method.upper()} finished")
    print(_MESSAGES[istop])
    if method == "lsqr":
        print(" ")
        print("istop =%8g   r1norm =%8.1e   anorm =%8.1e   arnorm =%8.1e" %
              (istop, r1norm, anorm, arnorm))
        print("itn   =%8g   r2norm =%8.1e   acond =%8.1e   xnorm  =%8.1e" %
              (itn, r2norm, acond, xnorm))
        print(" ")
    else:
        print("istop =%8g    normr =%8.1e" % (istop, r2norm))
        print("    normA =%8.1e    normAr =%8.1e" % (anorm, arnorm))
        print("itn   =%8g    condA =%8.1e" % (itn, acond))
        print("    normx =%8.1e" % xnorm)
        if itn > 0:  # lsmr.py repeats the last iteration's line, in two halves
            test1 = r2norm / bnorm if bnorm else 0.0
            test2 = arnorm / (anorm * r2norm) if anorm * r2norm else 0.0
            print("%6g %12.5e  %10.3e %10.3e" % (itn, x[0].real if x.size else 0.0, r2norm,
                                                 arnorm))
            print("  %8.1e %8.1e  %8.1e %8.1e" % (test1, test2, anorm, acond))


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
