"""difflsq.torch.lstsq: values and gradients against dense references computed by torch itself
(damped normal equations, pseudo-inverse), torch.autograd.gradcheck, and the error paths."""
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
import torch.autograd.forward_ad as fwAD  # noqa: E402

import difflsq.torch as dt  # noqa: E402

F64 = torch.float64
TIGHT = dict(atol=1e-13, btol=1e-13, conlim=0, maxiter=5000)


@pytest.fixture(autouse=True)
def _reproducible():
    """Tests that draw from torch's global generator get the same numbers in every run (torch
    seeds it afresh in each process)."""
    torch.manual_seed(0)


def dense_reference(A, b, damp):
    """argmin |Ax - b|^2 + damp^2 |x|^2 (minimum-norm), differentiable by torch autograd; real
    or complex."""
    n = A.shape[1]
    if float(damp) > 0:
        return torch.linalg.solve(A.mH @ A + damp ** 2 * torch.eye(n, dtype=A.dtype), A.mH @ b)
    return torch.linalg.pinv(A) @ b


def with_singular_values(m, n, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=F64))
    return u @ torch.diag(torch.as_tensor(sigma, dtype=F64)) @ v.T


CASES = [
    ("tall", 9, 5, [3.0, 2.0, 1.5, 1.0, 0.5], 0.0),
    ("tall damped", 9, 5, [3.0, 2.0, 1.5, 1.0, 0.5], 0.3),
    ("wide", 5, 9, [3.0, 2.0, 1.5, 1.0, 0.5], 0.0),
    ("wide damped", 5, 9, [3.0, 2.0, 1.5, 1.0, 0.5], 0.3),
    ("square", 6, 6, [4.0, 3.0, 2.0, 1.5, 1.0, 0.5], 0.0),
    ("square damped", 6, 6, [4.0, 3.0, 2.0, 1.5, 1.0, 0.5], 0.5),
    ("tall rank-deficient damped", 10, 6, [3.0, 2.0, 1.0, 0.5, 0.0, 0.0], 0.4),
    ("wide rank-deficient damped", 6, 10, [3.0, 2.0, 1.0, 0.5, 0.0, 0.0], 0.4),
]


@pytest.mark.parametrize("name,m,n,sigma,lam", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("method", ["lsmr", "lsqr", "cgls"])
def test_values_and_gradients_match_dense_reference(name, m, n, sigma, lam, method):
    A0 = with_singular_values(m, n, sigma, seed=m * 10 + n)
    b0 = torch.randn(m, dtype=F64, generator=torch.Generator().manual_seed(1))
    w = torch.randn(n, dtype=F64, generator=torch.Generator().manual_seed(2))
    out = {}
    for key, solve in (("difflsq", lambda A, b, d: dt.lstsq(A, b, d, method=method, **TIGHT)),
                       ("dense", dense_reference)):
        A = A0.clone().requires_grad_()
        b = b0.clone().requires_grad_()
        d = torch.tensor(lam, dtype=F64, requires_grad=True)
        x = solve(A, b, d)
        (x @ w).backward()
        out[key] = (x.detach(), A.grad, b.grad, d.grad)
    x, ga, gb, gd = out["difflsq"]
    rx, rga, rgb, rgd = out["dense"]
    assert torch.allclose(x, rx, rtol=1e-9, atol=1e-11)
    assert torch.allclose(ga, rga, rtol=1e-7, atol=1e-9)
    assert torch.allclose(gb, rgb, rtol=1e-7, atol=1e-9)
    if lam > 0:
        assert torch.allclose(gd, rgd, rtol=1e-7, atol=1e-9)
    else:
        assert float(gd) == 0.0


@pytest.mark.parametrize("m,n,lam", [(7, 4, 0.0), (7, 4, 0.2), (4, 7, 0.0), (4, 7, 0.2),
                                     (5, 5, 0.1)])
def test_gradcheck_reverse_and_forward_mode(m, n, lam):
    g = torch.Generator().manual_seed(3)
    A = (torch.randn(m, n, dtype=F64, generator=g) + 2 * torch.eye(m, n, dtype=F64))
    b = torch.randn(m, dtype=F64, generator=g)
    d = torch.tensor(lam + 0.05, dtype=F64)  # gradcheck perturbs damp: keep it away from 0
    inputs = (A.requires_grad_(), b.requires_grad_(), d.requires_grad_())
    assert torch.autograd.gradcheck(lambda A, b, d: dt.lstsq(A, b, d, **TIGHT), inputs,
                                    check_forward_ad=True)


def test_several_right_hand_sides_are_independent_solves():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(8, 5, dtype=F64, generator=g, requires_grad=True)
    B = torch.randn(8, 3, dtype=F64, generator=g, requires_grad=True)
    X = dt.lstsq(A, B, 0.1, **TIGHT)
    assert X.shape == (5, 3)
    ref = torch.stack([dense_reference(A, B[:, j], 0.1) for j in range(3)], dim=1)
    assert torch.allclose(X, ref, rtol=1e-9)
    assert torch.autograd.gradcheck(lambda A, B: dt.lstsq(A, B, 0.1, **TIGHT), (A, B))


def test_zero_right_hand_side_gives_zero_and_finite_gradients():
    for m, n in ((8, 5), (5, 8)):
        A = with_singular_values(m, n, [2.0, 1.5, 1.0, 0.7, 0.5], seed=5).requires_grad_()
        b = torch.zeros(m, dtype=F64, requires_grad=True)
        d = torch.tensor(0.3, dtype=F64, requires_grad=True)
        x = dt.lstsq(A, b, d, **TIGHT)
        assert torch.count_nonzero(x) == 0
        w = torch.randn(n, dtype=F64)
        (x @ w).backward()
        for grad in (A.grad, b.grad, d.grad):
            assert torch.isfinite(grad).all()
        # x = 0 for every A and damp when b = 0; b's gradient is (A^T A + damp^2 I)^-1 ... applied
        assert torch.count_nonzero(A.grad) == 0 and float(d.grad) == 0.0
        A2 = A.detach().clone().requires_grad_()
        b2 = b.detach().clone().requires_grad_()
        (dense_reference(A2, b2, 0.3) @ w).backward()
        assert torch.allclose(b.grad, b2.grad, rtol=1e-8)


def test_empty_shapes_give_empty_results_and_zero_gradients():
    for m, n, k in ((3, 0, None), (0, 3, None), (0, 0, None), (3, 2, 0), (4, 3, 2)):
        A = torch.randn(m, n, dtype=F64, requires_grad=True)
        shape = (m,) if k is None else (m, k)
        b = torch.randn(*shape, dtype=F64, requires_grad=True)
        x = dt.lstsq(A, b, 0.1, **TIGHT)
        assert x.shape == ((n,) if k is None else (n, k)) and x.dtype == F64
        x.sum().backward()
        assert A.grad.shape == (m, n) and b.grad.shape == shape
        if x.numel() == 0 or b.numel() == 0:
            assert torch.count_nonzero(A.grad) == 0 and torch.count_nonzero(b.grad) == 0
        else:  # the dense reference (a non-empty case beside the empty ones)
            A2, b2 = A.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
            ref = torch.stack([dense_reference(A2, b2[:, j], 0.1) for j in range(k)], dim=1)
            ref.sum().backward()
            assert torch.allclose(A.grad, A2.grad, rtol=1e-7) and torch.allclose(b.grad, b2.grad)


def test_float32_is_kept_and_close_to_float64():
    A = with_singular_values(20, 8, torch.linspace(2, 0.5, 8).tolist(), seed=6)
    b = torch.randn(20, dtype=F64, generator=torch.Generator().manual_seed(7))
    A32 = A.float().requires_grad_()
    b32 = b.float().requires_grad_()
    x = dt.lstsq(A32, b32, 0.1, atol=1e-6, btol=1e-6, maxiter=100)
    assert x.dtype == torch.float32
    x.sum().backward()
    assert A32.grad.dtype == torch.float32 and b32.grad.dtype == torch.float32
    A64 = A.clone().requires_grad_()
    b64 = b.clone().requires_grad_()
    dense_reference(A64, b64, 0.1).sum().backward()
    assert torch.allclose(x.double(), dense_reference(A, b, 0.1), rtol=1e-4, atol=1e-5)
    assert torch.allclose(A32.grad.double(), A64.grad, rtol=1e-3, atol=1e-4)


def toeplitz(kernel, n):
    """The (n + p - 1) x n matrix of the full convolution with `kernel`, differentiably."""
    p = kernel.shape[0]
    cols = [torch.nn.functional.pad(kernel, (j, n - 1 - j)) for j in range(n)]
    return torch.stack(cols, dim=1).reshape(n + p - 1, n)


def conv(v, kernel):
    """Full 1-D convolution kernel * v (a structured operator; kernel is the parameter)."""
    p = kernel.shape[0]
    return torch.nn.functional.conv1d(v.reshape(1, 1, -1), kernel.flip(0).reshape(1, 1, -1),
                                      padding=p - 1).reshape(-1)


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_structured_operator_with_parameter(lam):
    g = torch.Generator().manual_seed(8)
    kernel = torch.tensor([1.0, -0.5, 0.25], dtype=F64, requires_grad=True)
    n = 10
    b = torch.randn(n + 2, dtype=F64, generator=g, requires_grad=True)
    x = dt.lstsq(conv, b, lam, params=(kernel,), shape=(n + 2, n), **TIGHT)
    w = torch.randn(n, dtype=F64, generator=g)
    (x @ w).backward()
    k2 = kernel.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    ref = dense_reference(toeplitz(k2, n), b2, lam)
    (ref @ w).backward()
    assert torch.allclose(x, ref, rtol=1e-9)
    assert torch.allclose(kernel.grad, k2.grad, rtol=1e-7)
    assert torch.allclose(b.grad, b2.grad, rtol=1e-7)
    d = torch.tensor(lam + 0.05, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda k, b, d: dt.lstsq(conv, b, d, params=(k,), shape=(n + 2, n), **TIGHT),
        (kernel.detach().requires_grad_(), b.detach().requires_grad_(), d))


WINDOW = {"full": lambda p, n: slice(0, n + p - 1), "same": lambda p, n: slice((p - 1) // 2,
          (p - 1) // 2 + n), "valid": lambda p, n: slice(p - 1, n)}


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_builtin_convolution_values_match_scipy_signal_convolve(mode):
    signal = pytest.importorskip("scipy.signal")
    g = torch.Generator().manual_seed(3)
    for p in (1, 4, 5, 12, 13):  # 12, 13 > n: "same" keeps n values (numpy.convolve: p)
        if mode == "valid" and p > 9:
            continue
        v, k = torch.randn(9, dtype=F64, generator=g), torch.randn(p, dtype=F64, generator=g)
        op = dt.Convolution1d(9, p, mode)
        ref = torch.from_numpy(signal.convolve(v.numpy(), k.numpy(), mode, method="direct"))
        assert op.shape == (len(ref), 9)
        assert torch.allclose(op(v, k), ref, rtol=1e-13, atol=1e-14)
        # The C++ operator (through a solve's residual): x = A⁺b for b = A v with A of full
        # column rank is v, whose residual is zero, so the C++ products must be these too.
        if op.shape[0] >= 9:
            x = dt.lstsq(op, ref, params=(k,), **TIGHT)
            assert torch.allclose(op(x, k), ref, rtol=1e-8, atol=1e-10)


def test_builtin_convolution_several_right_hand_sides():
    g = torch.Generator().manual_seed(12)
    op = dt.Convolution1d(10, 4, "full")
    k0 = torch.tensor([1.0, 0.4, -0.3, 0.1], dtype=F64)
    B0 = torch.randn(13, 3, dtype=F64, generator=g)
    W = torch.randn(10, 3, dtype=F64, generator=g)
    k, B = k0.clone().requires_grad_(), B0.clone().requires_grad_()
    X = dt.lstsq(op, B, 0.2, params=(k,), **TIGHT)
    assert X.shape == (10, 3)
    (X * W).sum().backward()
    # Column by column, each a separate solve.
    kc = k0.clone().requires_grad_()
    cols = [dt.lstsq(op, B0[:, j].clone().requires_grad_(), 0.2, params=(kc,), **TIGHT)
            for j in range(3)]
    assert torch.allclose(X.detach(), torch.stack(cols, 1).detach(), rtol=1e-10, atol=1e-12)
    sum(c @ W[:, j] for j, c in enumerate(cols)).backward()
    assert torch.allclose(k.grad, kc.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_builtin_convolution_runs_in_cpp_with_the_same_values_and_gradients(mode, lam):
    g = torch.Generator().manual_seed(9)
    n = 12
    kernel0 = torch.tensor([1.0, -0.5, 0.25, 0.3], dtype=F64)
    op = dt.Convolution1d(n, 4, mode)
    m = op.shape[0]
    b0, w = torch.randn(m, dtype=F64, generator=g), torch.randn(n, dtype=F64, generator=g)
    calls = []

    def counting(v, k):  # the same operator as a plain callable: autograd adjoint, Python calls
        calls.append(1)
        return op(v, k)

    def run(A, **kw):
        k, b = kernel0.clone().requires_grad_(), b0.clone().requires_grad_()
        d = torch.tensor(lam, dtype=F64, requires_grad=True)
        x = dt.lstsq(A, b, d, params=(k,), **kw, **TIGHT)
        (x @ w).backward()
        return x.detach(), k.grad, b.grad, d.grad

    x1, k1, b1, d1 = run(op)
    assert not calls
    x2, k2, b2, d2 = run(counting, shape=op.shape)
    assert calls
    # Dense reference through torch autograd: the window of the full Toeplitz matrix.
    kd, bd = kernel0.clone().requires_grad_(), b0.clone().requires_grad_()
    dd = torch.tensor(lam, dtype=F64, requires_grad=True)
    full = toeplitz(kd, n)[WINDOW[mode](4, n)]
    xd = dense_reference(full, bd, dd) if lam > 0 else torch.linalg.pinv(full) @ bd
    (xd @ w).backward()
    for got, ref in ((x1, xd.detach()), (k1, kd.grad), (b1, bd.grad), (x2, x1), (k2, k1)):
        assert torch.allclose(got, ref, rtol=1e-7, atol=1e-10)
    assert torch.allclose(b2, b1, rtol=1e-7, atol=1e-10)
    if lam > 0:
        assert torch.allclose(d1, dd.grad, rtol=1e-7)


def test_builtin_convolution_gradcheck_forward_mode_and_float32():
    g = torch.Generator().manual_seed(10)
    op = dt.Convolution1d(8, 3, "same")
    k = torch.tensor([0.9, 0.3, -0.2], dtype=F64, requires_grad=True)
    b = torch.randn(8, dtype=F64, generator=g, requires_grad=True)
    d = torch.tensor(0.05, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda k, b, d: dt.lstsq(op, b, d, params=(k,), **TIGHT), (k, b, d),
        check_forward_ad=True)
    k32, b32 = k.detach().float(), b.detach().float()
    x32 = dt.lstsq(op, b32, 0.05, params=(k32,))
    assert x32.dtype == torch.float32
    x64 = dt.lstsq(op, b.detach(), 0.05, params=(k.detach(),), **TIGHT)
    assert torch.allclose(x32.double(), x64, rtol=1e-4, atol=1e-5)


def test_builtin_convolution_bad_input():
    op = dt.Convolution1d(6, 3)
    b = torch.ones(8, dtype=F64)
    with pytest.raises(ValueError, match="params=\\(kernel,\\)"):
        dt.lstsq(op, b)
    with pytest.raises(ValueError, match="length 3"):
        dt.lstsq(op, b, params=(torch.ones(4, dtype=F64),))
    with pytest.raises(ValueError, match="shape"):
        dt.lstsq(op, b, params=(torch.ones(3, dtype=F64),), shape=(7, 6))
    with pytest.raises(ValueError, match="mode"):
        dt.Convolution1d(6, 3, "circular")
    with pytest.raises(ValueError, match="kernel_size"):
        dt.Convolution1d(2, 3, "valid")
    with pytest.raises(TypeError, match="that of the kernel"):
        dt.lstsq(op, b.float(), params=(torch.ones(3, dtype=F64),))


C128 = torch.complex128


@pytest.mark.parametrize("m,n,lam", [(9, 5, 0.0), (9, 5, 0.3), (5, 9, 0.0), (5, 9, 0.3)])
@pytest.mark.parametrize("kind", ["tensor", "callable"])
def test_complex_values_and_gradients_match_dense_reference(m, n, lam, kind):
    g = torch.Generator().manual_seed(21)
    A0, b0 = torch.randn(m, n, dtype=C128, generator=g), torch.randn(m, dtype=C128, generator=g)
    w = torch.randn(n, dtype=C128, generator=g)

    def run(solve):
        A, b = A0.clone().requires_grad_(), b0.clone().requires_grad_()
        d = torch.tensor(lam, dtype=F64, requires_grad=True)
        x = solve(A, b, d)
        torch.vdot(w, x).real.backward()  # a real loss of a complex x
        return x.detach(), A.grad, b.grad, d.grad

    if kind == "tensor":
        got = run(lambda A, b, d: dt.lstsq(A, b, d, **TIGHT))
    else:
        got = run(lambda A, b, d: dt.lstsq(lambda v, M: M @ v, b, d, params=(A,), shape=(m, n),
                                           **TIGHT))
    ref = run(lambda A, b, d: dense_reference(A, b, d))
    assert got[0].dtype == C128
    for a, r in zip(got[:3], ref[:3]):
        assert torch.allclose(a, r, rtol=1e-8, atol=1e-10)
    if lam > 0:
        assert torch.allclose(got[3], ref[3], rtol=1e-8)


def test_complex_gradcheck_convolution_and_complex64():
    g = torch.Generator().manual_seed(22)
    A = torch.randn(6, 4, dtype=C128, generator=g, requires_grad=True)
    b = torch.randn(6, dtype=C128, generator=g, requires_grad=True)
    d = torch.tensor(0.2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda A, b, d: dt.lstsq(A, b, d, **TIGHT), (A, b, d),
                                    check_forward_ad=True)
    # The built-in convolution with a complex kernel against its dense matrix.
    op = dt.Convolution1d(10, 3, "same")
    k0 = torch.randn(3, dtype=C128, generator=g)
    b0, w = torch.randn(10, dtype=C128, generator=g), torch.randn(10, dtype=C128, generator=g)
    k1, k2 = k0.clone().requires_grad_(), k0.clone().requires_grad_()
    torch.vdot(w, dt.lstsq(op, b0, 0.1, params=(k1,), **TIGHT)).real.backward()
    dense = toeplitz(k2, 10)[WINDOW["same"](3, 10)]
    torch.vdot(w, dense_reference(dense, b0, 0.1)).real.backward()
    assert torch.allclose(k1.grad, k2.grad, rtol=1e-8, atol=1e-10)
    # complex64 stays complex64; damp's gradient is real.
    A32 = A.detach().to(torch.complex64).requires_grad_()
    d32 = torch.tensor(0.2, requires_grad=True)
    x32 = dt.lstsq(A32, b.detach().to(torch.complex64), d32)
    x32.abs().sum().backward()
    assert x32.dtype == torch.complex64 and A32.grad.dtype == torch.complex64
    assert d32.grad.dtype == torch.float32
    x64 = dt.lstsq(A.detach(), b.detach(), 0.2, **TIGHT)
    assert torch.allclose(x32.to(C128), x64, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="real"):
        dt.lstsq(A.detach(), b.detach(), torch.tensor(0.1 + 0j))


def test_complex_conjugate_views():
    # Conjugate views of A and b, a loss through x.conj() (its gradient arrives as a conjugate
    # view) and a callable whose products are conjugate views: the same as torch's autograd.
    g = torch.Generator().manual_seed(23)
    M0 = torch.randn(8, 4, dtype=C128, generator=g)
    c0, w = torch.randn(8, dtype=C128, generator=g), torch.randn(4, dtype=C128, generator=g)

    def grads(solve):
        M, c = M0.clone().requires_grad_(), c0.clone().requires_grad_()
        torch.vdot(w, solve(M, c).conj()).real.backward()
        return M.grad, c.grad

    ours = grads(lambda M, c: dt.lstsq(M.conj(), c.conj(), 0.2, **TIGHT))
    ref = grads(lambda M, c: dense_reference(M.conj(), c.conj(), 0.2))
    conj_op = grads(lambda M, c: dt.lstsq(lambda v, M: M.conj().mv(v.conj()).conj(), c, 0.2,
                                          params=(M,), shape=(8, 4), **TIGHT))
    ref_op = grads(lambda M, c: dense_reference(M, c, 0.2))
    for got, want in zip(ours + conj_op, ref + ref_op):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)


def test_callable_matches_tensor_and_unused_parameters_get_zeros():
    g = torch.Generator().manual_seed(9)
    W = torch.randn(7, 4, dtype=F64, generator=g, requires_grad=True)
    unused = torch.randn(3, dtype=F64, requires_grad=True)
    b = torch.randn(7, dtype=F64, generator=g)
    x = dt.lstsq(lambda v, W, u: W @ v, b, 0.2, params=(W, unused), shape=(7, 4), **TIGHT)
    x.sum().backward()
    W2 = W.detach().clone().requires_grad_()
    dt.lstsq(W2, b, 0.2, **TIGHT).sum().backward()
    assert torch.allclose(W.grad, W2.grad, rtol=1e-10)
    assert torch.count_nonzero(unused.grad) == 0


def test_failure_policies_forward_and_backward():
    A = with_singular_values(30, 20, torch.logspace(0, -4, 20).tolist(), seed=10)
    b = torch.randn(30, dtype=F64, generator=torch.Generator().manual_seed(11))
    with pytest.raises(dt.SolveError, match="forward"):
        dt.lstsq(A, b, maxiter=2)
    with pytest.warns(dt.SolveWarning, match="iteration limit"):
        x = dt.lstsq(A, b, maxiter=2, on_failure="warn")
    assert torch.isfinite(x).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dt.lstsq(A, b, maxiter=2, on_failure="ignore")
    # A backward solve that fails.
    Ar = A.clone().requires_grad_()
    x, info = dt.lstsq(Ar, b, **TIGHT, backward_tol=(1e-13, 1e-13, 0, 2), return_info=True)
    assert info["forward"][0]["istop"] in (1, 2, 4, 5)
    with pytest.raises(dt.SolveError, match="backward"):
        x.sum().backward()
    Ar.grad = None
    x, info = dt.lstsq(Ar, b, **TIGHT, backward_tol=(1e-13, 1e-13, 0, 2), on_failure="ignore",
                       return_info=True)
    x.sum().backward()
    assert [rec[1] for rec in info["backward"][0]] == [7, 7]

    # The warning names the caller's line, not the layer's (forward and backward).
    with pytest.warns(dt.SolveWarning) as caught:
        dt.lstsq(A, b, maxiter=2, on_failure="warn")
    assert caught[0].filename == __file__
    Ar.grad = None
    x = dt.lstsq(Ar, b, **TIGHT, backward_tol=(1e-13, 1e-13, 0, 2), on_failure="warn")
    with pytest.warns(dt.SolveWarning, match="backward") as caught:
        x.sum().backward()
    assert caught[0].filename == __file__


def test_square_rank_deficient_tiny_damping_gradients_and_tangents():
    # The one backward solve (G12) reaches its iteration limit before test 2 or conlim here;
    # it used to raise (or give a wrong gradient and tangent under "warn"); the layer now
    # splits (G5). Reference: the SVD, y = V diag(1/(s^2 + lam^2)) V^T g.
    g = torch.Generator().manual_seed(0)
    lam = 1e-6
    for _ in range(3):
        U, _ = torch.linalg.qr(torch.randn(5, 5, dtype=F64, generator=g))
        V, _ = torch.linalg.qr(torch.randn(5, 5, dtype=F64, generator=g))
        S, Vh = torch.tensor([4.0, 2.0, 1.0, 0.0, 0.0], dtype=F64), V.T
        A = U @ torch.diag(S) @ Vh
        b, w, Adot = (torch.randn(*shape, dtype=F64, generator=g) for shape in ((5,), (5,), (5, 5)))
        inv = 1 / (S ** 2 + lam ** 2)
        x = Vh.T @ (S * inv * (U.T @ b))
        r = U @ (lam ** 2 * inv * (U.T @ b))
        y = Vh.T @ (inv * (Vh @ w))
        bbar = U @ (S * inv * (Vh @ w))
        xdot = Vh.T @ (inv * (Vh @ (A.T @ (-Adot @ x) + Adot.T @ r)))
        for method in ("lsmr", "lsqr", "cgls"):
            Ar, br = A.clone().requires_grad_(), b.clone().requires_grad_()
            sol = dt.lstsq(Ar, br, lam, method=method, atol=1e-8, btol=1e-8)
            (sol @ w).backward()
            ref_a = torch.outer(r, y) - torch.outer(bbar, x)
            assert torch.linalg.norm(Ar.grad - ref_a) <= 1e-6 * torch.linalg.norm(ref_a)
            assert torch.linalg.norm(br.grad - bbar) <= 1e-6 * torch.linalg.norm(bbar)
            with fwAD.dual_level():
                out = dt.lstsq(fwAD.make_dual(A, Adot), b, lam, method=method, atol=1e-8,
                               btol=1e-8)
                tangent = fwAD.unpack_dual(out).tangent
            assert torch.linalg.norm(tangent - xdot) <= 1e-6 * torch.linalg.norm(xdot)


def test_callable_without_right_hand_sides_gives_zero_parameter_gradients():
    W = torch.randn(6, 4, dtype=F64, requires_grad=True)
    x = dt.lstsq(lambda v, W: W @ v, torch.zeros(6, 0, dtype=F64), params=(W,), shape=(6, 4))
    x.sum().backward()
    assert W.grad is not None and torch.count_nonzero(W.grad) == 0


def test_callable_dtype_with_integer_b_and_errors_inside_the_callable():
    A = torch.randn(5, 3, dtype=F64)
    b = torch.arange(5)
    # An integer b takes the dtype of the first floating param, as a tensor A gives its own.
    for grad in (True, False):
        M = A.clone().requires_grad_(grad)
        x = dt.lstsq(lambda v, M: M @ v, b, 0.1, params=(M,), shape=(5, 3), atol=1e-12,
                     btol=1e-12)
        assert x.dtype == F64
        torch.testing.assert_close(x, dt.lstsq(A, b, 0.1, atol=1e-12, btol=1e-12))
    # A callable whose own tensors do not match b's dtype: its error, with a note on the dtype.
    for mode in (torch.enable_grad, torch.no_grad):
        with mode(), pytest.raises(RuntimeError) as err:
            dt.lstsq(lambda v: A @ v, b.float(), 0.1, shape=(5, 3))
        assert any("v of dtype torch.float32" in note for note in err.value.__notes__)
    with pytest.raises(TypeError, match="b must be float32, float64, complex64 or complex128, "
                                        "got torch.float16"):
        dt.lstsq(lambda v: A @ v, b.half(), 0.1, shape=(5, 3))


def test_bad_input_and_unsupported_device():
    A = torch.randn(5, 3, dtype=F64)
    with pytest.raises(ValueError, match="shape"):
        dt.lstsq(A, torch.ones(4, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        dt.lstsq(A, torch.ones(5, dtype=torch.float32))
    with pytest.raises(ValueError, match="damp"):
        dt.lstsq(A, torch.ones(5, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="maxiter"):
        dt.lstsq(A, torch.ones(5, dtype=F64), maxiter=0)
    with pytest.raises(ValueError, match="shape"):
        dt.lstsq(lambda v: v, torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="device"):
        dt.lstsq(torch.empty(5, 3, device="meta"), torch.ones(5))
    with pytest.raises(ValueError, match="returned 4 values"):
        dt.lstsq(lambda v: torch.ones(4, dtype=F64), torch.ones(5, dtype=F64), shape=(5, 3))
    with pytest.raises(ValueError, match="method"):
        dt.lstsq(A, torch.ones(5, dtype=F64), method="qr")
    with pytest.raises(ValueError, match="on_failure"):
        dt.lstsq(A, torch.ones(5, dtype=F64), on_failure="maybe")
    with pytest.raises(ValueError, match="backward_tol"):
        dt.lstsq(A, torch.ones(5, dtype=F64), backward_tol=(1e-8, 1e-8))


def test_double_backward_raises_a_clear_error():
    A = torch.randn(6, 3, dtype=F64, requires_grad=True)
    b = torch.randn(6, dtype=F64)
    x = dt.lstsq(A, b, 0.1, **TIGHT)
    (g,) = torch.autograd.grad(x.sum(), A, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()
    # The paths that reach the gradients through torch.autograd.grad, not through .backward():
    # a Hessian with respect to b, and a gradient of Ā with respect to A. Neither may come back
    # as zeros (b̄ depends on b through x̄ = 2x; Ā on A).
    bb = b.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.functional.hessian(lambda v: (dt.lstsq(A, v, 0.1) ** 2).sum(), bb)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.sum(), A, allow_unused=True)
    # torch.autograd.functional.jvp is reverse-over-reverse: the message names forward mode.
    with pytest.raises(RuntimeError, match="forward_ad"):
        torch.autograd.functional.jvp(lambda v: dt.lstsq(A, v, 0.1), bb, torch.ones_like(bb))
    # First-order gradients taken with create_graph=True are still the exact ones.
    gA, gb = torch.autograd.grad((dt.lstsq(A, bb, 0.1, **TIGHT) ** 2).sum(), (A, bb),
                                 create_graph=True)
    rA, rb = torch.autograd.grad((dense_reference(A, bb, 0.1) ** 2).sum(), (A, bb))
    assert torch.allclose(gA, rA, rtol=1e-8, atol=1e-10)
    assert torch.allclose(gb, rb, rtol=1e-8, atol=1e-10)


def test_inputs_are_not_modified():
    A = torch.randn(6, 4, dtype=F64, requires_grad=True)
    b = torch.randn(6, dtype=F64, requires_grad=True)
    A0, b0 = A.detach().clone(), b.detach().clone()
    dt.lstsq(A, b, 0.1).sum().backward()
    assert torch.equal(A.detach(), A0) and torch.equal(b.detach(), b0)


def test_in_place_change_of_A_before_backward_is_caught():
    A = torch.randn(6, 3, dtype=F64, requires_grad=True)
    x = dt.lstsq(A, torch.randn(6, dtype=F64), 0.1, **TIGHT)
    with torch.no_grad():
        A.mul_(2)
    with pytest.raises(RuntimeError, match="inplace"):
        x.sum().backward()


@pytest.mark.parametrize("kind", ["dense", "callable", "sparse"])
@pytest.mark.parametrize("bshape", [(8,), (8, 1), (8, 3)])
def test_the_solution_may_be_changed_in_place(kind, bshape):
    # x used to be a view of the stacked columns, which autograd forbids changing in place.
    A = torch.randn(8, 5, dtype=F64, requires_grad=True)
    b = torch.randn(*bshape, dtype=F64)
    if kind == "dense":
        x = dt.lstsq(A, b, 0.1, **TIGHT)
    elif kind == "sparse":
        x = dt.lstsq(A.detach().to_sparse().requires_grad_(), b, 0.1, **TIGHT)
    else:
        x = dt.lstsq(lambda v, M: M @ v, b, 0.1, params=(A,), shape=(8, 5), **TIGHT)
    ref = x.detach().clone()
    x.mul_(2)
    x[0] = 0
    assert torch.equal(x[1:], 2 * ref[1:])
    x.sum().backward()  # the in-place changes are differentiated through, as for any output
    if kind != "sparse":
        assert torch.isfinite(A.grad).all()


def test_a_callable_under_non_reentrant_checkpointing():
    # The graph difflsq records for Aᵀu must not go through the caller's saved-tensor hooks
    # (checkpointing's refuse a backward pass inside its forward: "never exposed").
    from torch.utils.checkpoint import checkpoint
    W = torch.randn(8, 5, dtype=F64, requires_grad=True)
    b = torch.randn(8, dtype=F64)

    def f(M):
        return dt.lstsq(lambda v, K: K @ v, b, 0.1, params=(M,), shape=(8, 5), **TIGHT)

    (w,) = torch.autograd.grad(checkpoint(f, W, use_reentrant=False).sum(), W)
    (ref,) = torch.autograd.grad(f(W).sum(), W)
    torch.testing.assert_close(w, ref, rtol=1e-10, atol=1e-12)


def test_callable_with_a_non_tensor_parameter():
    g = torch.Generator().manual_seed(12)
    W = torch.randn(7, 4, dtype=F64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=F64, generator=g)
    x = dt.lstsq(lambda v, W, s: s * (W @ v), b, 0.2, params=(W, 2.0), shape=(7, 4), **TIGHT)
    x.sum().backward()
    W2 = (2.0 * W.detach()).requires_grad_()
    dt.lstsq(W2, b, 0.2, **TIGHT).sum().backward()
    assert torch.allclose(W.grad, 2.0 * W2.grad, rtol=1e-9)


def test_forward_mode_with_a_callable_whose_params_have_no_tangent():
    # torch hands a custom Function zeros for inputs without a tangent unless told otherwise;
    # a callable's params without tangents must not be taken for params with one.
    import torch.autograd.forward_ad as fwAD
    g = torch.Generator().manual_seed(21)
    W = torch.randn(7, 4, dtype=F64, generator=g)
    b, bdot = torch.randn(7, dtype=F64, generator=g), torch.randn(7, dtype=F64, generator=g)
    with fwAD.dual_level():
        x = dt.lstsq(lambda v, W: W @ v, fwAD.make_dual(b, bdot), 0.2, params=(W,), shape=(7, 4),
                     **TIGHT)
        xdot = fwAD.unpack_dual(x).tangent
    ref = torch.linalg.solve(W.T @ W + 0.04 * torch.eye(4, dtype=F64), W.T @ bdot)
    assert torch.allclose(xdot, ref, rtol=1e-9, atol=1e-12)


def test_forward_mode_refuses_a_callable_that_captures_a_dual_tensor():
    # The tangent of a tensor the callable closes over (instead of taking it in params) would be
    # lost inside the Function: an error, not a silently zero tangent.
    import torch.autograd.forward_ad as fwAD
    g = torch.Generator().manual_seed(22)
    W, Wdot = torch.randn(7, 4, dtype=F64, generator=g), torch.randn(7, 4, dtype=F64, generator=g)
    b = torch.randn(7, dtype=F64, generator=g)
    with fwAD.dual_level():
        Wd = fwAD.make_dual(W, Wdot)
        with pytest.raises(ValueError, match="captured by the callable"):
            dt.lstsq(lambda v: Wd @ v, b, 0.2, shape=(7, 4))
        x = dt.lstsq(lambda v, W: W @ v, b, 0.2, params=(Wd,), shape=(7, 4), **TIGHT)
        assert fwAD.unpack_dual(x).tangent is not None


def test_reverse_mode_refuses_a_callable_that_captures_a_tensor_requiring_grad():
    # W's gradient would be lost inside the Function (the dense reference gives it a nonzero
    # one): an error. Without grad mode, or with W detached or in params, the solve goes on.
    g = torch.Generator().manual_seed(24)
    W = torch.randn(7, 4, dtype=F64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=F64, generator=g)
    with pytest.raises(ValueError, match="captured by the callable"):
        dt.lstsq(lambda v: W @ v, b, 0.2, shape=(7, 4))
    with torch.no_grad():
        x0 = dt.lstsq(lambda v: W @ v, b, 0.2, shape=(7, 4), **TIGHT)
    Wc = W.detach()
    x1 = dt.lstsq(lambda v: Wc @ v, b, 0.2, shape=(7, 4), **TIGHT)
    x2 = dt.lstsq(lambda v, W: W @ v, b, 0.2, params=(W,), shape=(7, 4), **TIGHT)
    ref = dense_reference(W.detach(), b, 0.2)
    for x in (x0, x1, x2):
        assert torch.allclose(x, ref, rtol=1e-10)
    with torch.inference_mode():  # the adjoint by autograd works there too
        x3 = dt.lstsq(lambda v, W: W @ v, b, 0.2, params=(W.detach(),), shape=(7, 4), **TIGHT)
    assert torch.allclose(x3, ref, rtol=1e-10)
    # Autograd inside the callable (a Jacobian of sin(W x) at z by the double-backward trick)
    # creates tensors requiring grad afresh in each call: not captured, solved, and b gets the
    # gradient of the dense problem with that Jacobian.
    z = torch.randn(4, dtype=F64, generator=g)
    Wc = W.detach()

    def jacobian_product(v):
        with torch.enable_grad():
            x = z.clone().requires_grad_()
            y = torch.sin(Wc @ x)
            u = torch.zeros_like(y, requires_grad=True)
            (gx,) = torch.autograd.grad(y, x, u, create_graph=True)
            (jv,) = torch.autograd.grad(gx, u, v, create_graph=True)
        return jv

    bb = b.clone().requires_grad_()
    x4 = dt.lstsq(jacobian_product, bb, 0.2, shape=(7, 4), **TIGHT)
    x4.sum().backward()
    jac = torch.cos(Wc @ z)[:, None] * Wc
    bref = b.clone().requires_grad_()
    dense_reference(jac, bref, 0.2).sum().backward()
    assert torch.allclose(x4, dense_reference(jac, b, 0.2), rtol=1e-10)
    assert torch.allclose(bb.grad, bref.grad, rtol=1e-9)


def test_tangents_and_gradients_are_not_differentiated_silently():
    # Reverse mode through a forward-mode tangent (its value is exact, its derivative would be
    # zeros: the tangent is computed outside autograd), and forward mode through a gradient
    # taken with create_graph=True: both raise.
    import torch.autograd.forward_ad as fwAD
    g = torch.Generator().manual_seed(25)
    A = torch.randn(6, 4, dtype=F64, generator=g, requires_grad=True)
    Adot, b = torch.randn(6, 4, dtype=F64, generator=g), torch.randn(6, dtype=F64, generator=g)
    with fwAD.dual_level():
        x = dt.lstsq(fwAD.make_dual(A, Adot), b, 0.2, **TIGHT)
        xdot = fwAD.unpack_dual(x).tangent
        Ad = A.detach().requires_grad_()
        ref = fwAD.unpack_dual(dense_reference(fwAD.make_dual(Ad, Adot), b, 0.2)).tangent
    assert torch.allclose(xdot, ref, rtol=1e-9)
    with pytest.raises(RuntimeError, match="forward-mode tangents"):
        xdot.sum().backward()
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(dt.lstsq(fwAD.make_dual(A, Adot), b, 0.2).sum(), A,
                                create_graph=True)


def test_statuses_of_the_forward_mode_solves_are_reported_and_follow_the_policy():
    import torch.autograd.forward_ad as fwAD
    A = with_singular_values(30, 20, torch.logspace(0, -4, 20).tolist(), seed=10)
    Adot = torch.randn(30, 20, dtype=F64, generator=torch.Generator().manual_seed(12))
    b = torch.randn(30, dtype=F64, generator=torch.Generator().manual_seed(11))
    limits = dict(**TIGHT, backward_tol=(1e-13, 1e-13, 0, 2))
    with fwAD.dual_level():
        with pytest.raises(dt.SolveError, match="iteration limit"):
            dt.lstsq(fwAD.make_dual(A, Adot), b, **limits)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            x, info = dt.lstsq(fwAD.make_dual(A, Adot), b, **limits, on_failure="ignore",
                               return_info=True)
        assert torch.isfinite(fwAD.unpack_dual(x).tangent).all()
        assert any(rec[1] == 7 for rec in info["jvp"][0])
        _, info = dt.lstsq(fwAD.make_dual(A, Adot), b, **TIGHT, return_info=True)
    assert info["jvp"][0] and all(rec[1] in (1, 2, 4, 5) for rec in info["jvp"][0])


@pytest.mark.parametrize("m,n,lam,dtype", [(7, 4, 0.0, F64), (7, 4, 0.2, F64), (4, 7, 0.0, F64),
                                           (4, 7, 0.2, F64), (7, 4, 0.2, C128), (4, 7, 0.0, C128)])
def test_forward_mode_along_a_callables_params(m, n, lam, dtype):
    # Ȧv and Ȧᴴu by reverse mode twice through the callable; gradcheck compares the jvp with
    # finite differences, and a dense reference with torch's own forward mode.
    import torch.autograd.forward_ad as fwAD
    g = torch.Generator().manual_seed(23)
    W = torch.randn(m, n, dtype=dtype, generator=g) + 2 * torch.eye(m, n, dtype=dtype)
    b = torch.randn(m, dtype=dtype, generator=g)
    d = torch.tensor(lam + 0.05, dtype=F64)  # gradcheck perturbs damp: keep it away from 0
    scale = torch.tensor(1.5, dtype=F64)  # a second parameter, with or without a tangent

    def solve(W, s, b, d):
        return dt.lstsq(lambda v, W, s: s * (W @ v), b, d, params=(W, s), shape=(m, n), **TIGHT)

    inputs = (W.clone().requires_grad_(), scale.clone().requires_grad_(),
              b.clone().requires_grad_(), d.clone().requires_grad_())
    assert torch.autograd.gradcheck(solve, inputs, check_forward_ad=True)
    Wdot = torch.randn(m, n, dtype=dtype, generator=g)
    with fwAD.dual_level():
        x = solve(fwAD.make_dual(W, Wdot), scale, b, torch.tensor(lam, dtype=F64))
        xdot = fwAD.unpack_dual(x).tangent
        A = fwAD.make_dual(1.5 * W, 1.5 * Wdot)
        ref = torch.linalg.pinv(A) @ b if lam == 0 else torch.linalg.solve(
            A.mH @ A + lam ** 2 * torch.eye(n, dtype=dtype), A.mH @ b)
        rdot = fwAD.unpack_dual(ref).tangent
    assert torch.allclose(xdot, rdot, rtol=1e-8, atol=1e-10)


def test_a_callable_that_is_not_linear_is_refused():
    g = torch.Generator().manual_seed(22)
    P = torch.randn(6, 4, dtype=F64, generator=g)
    b = torch.randn(6, dtype=F64, generator=g)
    c = torch.ones(6, dtype=F64)
    for fn, what in [(lambda v: P @ v + c, "A\\(0\\) is not 0"), (lambda v: P @ v ** 2, "dot test"),
                     (lambda v: torch.tanh(P @ v), "dot test")]:
        with pytest.raises(ValueError, match=what):
            dt.lstsq(fn, b, 0.1, shape=(6, 4))
    with pytest.raises(TypeError, match="returned dtype torch.float32"):
        dt.lstsq(lambda v: (P @ v).float(), b, 0.1, shape=(6, 4))
    # The check draws from its own generator: torch's global state is untouched.
    state = torch.get_rng_state()
    dt.lstsq(lambda v: P @ v, b, 0.1, shape=(6, 4))
    assert torch.equal(state, torch.get_rng_state())


def test_non_finite_A_is_refused_whatever_the_policy():
    A = torch.randn(6, 4, dtype=F64)
    A[2, 1] = float("nan")
    for policy in ("raise", "ignore"):
        with pytest.raises(ValueError, match="A is not finite"):
            dt.lstsq(A, torch.ones(6, dtype=F64), 0.1, on_failure=policy)


def test_negative_views_are_read_as_their_values():
    z = torch.randn(6, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(23))
    bz = torch.randn(6, dtype=torch.complex128, generator=torch.Generator().manual_seed(24))
    A, b = z.conj().imag, bz.conj().imag  # negative-bit views
    assert A.is_neg() and b.is_neg()
    x = dt.lstsq(A, b, 0.1, **TIGHT)
    assert torch.allclose(x, dense_reference(A.clone(), b.clone(), 0.1), rtol=1e-10)


# ------------------------------------------------------------------------------------------
# Sparse A (COO or CSR): products in C++, the stored entries are the parameters.

def random_sparse_pattern(m, n, g):
    """Indices (2, nnz) of about half of an m x n matrix, the diagonal among them (full rank
    in practice), in a shuffled order with two duplicated entries (an uncoalesced COO)."""
    keep = torch.rand(m, n, generator=g) < 0.5
    keep[torch.arange(min(m, n)), torch.arange(min(m, n))] = True
    idx = keep.nonzero().T
    idx = idx[:, torch.randperm(idx.shape[1], generator=g)]
    return torch.cat([idx, idx[:, :2]], dim=1)


SPARSE_CASES = [(12, 7, 0.0), (12, 7, 0.25), (7, 12, 0.0), (7, 12, 0.25)]


@pytest.mark.parametrize("m,n,lam", SPARSE_CASES)
@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("dtype", [F64, C128], ids=["float64", "complex128"])
@pytest.mark.parametrize("method", ["lsmr", "lsqr", "cgls"])
def test_sparse_A_values_and_gradients_match_dense_reference(m, n, lam, layout, dtype, method):
    g = torch.Generator().manual_seed(31 + m)
    idx = random_sparse_pattern(m, n, g)
    vals = torch.randn(idx.shape[1], dtype=dtype, generator=g)
    b0 = torch.randn(m, dtype=dtype, generator=g)
    w = torch.randn(n, dtype=dtype, generator=g)
    A_coo = torch.sparse_coo_tensor(idx, vals, (m, n))
    A = (A_coo.coalesce() if layout == "coo" else A_coo.to_sparse_csr()).requires_grad_()
    b = b0.clone().requires_grad_()
    d = torch.tensor(lam, dtype=F64, requires_grad=True)
    x = dt.lstsq(A, b, d, method=method, **TIGHT)
    torch.vdot(w, x).real.backward()
    # The reference: the same matrix, dense, through torch's own dense algebra.
    D = A_coo.to_dense().requires_grad_()
    rb = b0.clone().requires_grad_()
    rd = torch.tensor(lam, dtype=F64, requires_grad=True)
    rx = dense_reference(D, rb, rd)
    torch.vdot(w, rx).real.backward()
    assert x.dtype == dtype
    assert torch.allclose(x.detach(), rx.detach(), rtol=1e-9, atol=1e-11)
    assert torch.allclose(b.grad, rb.grad, rtol=1e-7, atol=1e-9)
    if lam > 0:
        assert torch.allclose(d.grad, rd.grad, rtol=1e-7, atol=1e-9)
    # The gradient is sparse, of A's layout and pattern: Ā at the stored entries.
    assert A.grad.layout == A.layout
    G = A.grad.to_dense()
    stored = A_coo.coalesce().to_dense() != 0
    assert torch.count_nonzero(G[~stored]) == 0
    assert torch.allclose(G[stored], D.grad[stored], rtol=1e-7, atol=1e-9)
    if layout == "csr":
        assert torch.equal(A.grad.crow_indices(), A.crow_indices())
        assert torch.equal(A.grad.col_indices(), A.col_indices())
    else:
        assert torch.equal(A.grad.coalesce().indices(), A.indices())


def test_sparse_A_built_from_values_uncoalesced_gradcheck_and_float32():
    """The usual way to learn a sparse matrix: A = sparse_coo_tensor(indices, values) with the
    values requiring grad; duplicated indices add up, and each duplicate gets that entry's
    gradient."""
    g = torch.Generator().manual_seed(5)
    m, n = 10, 6
    idx = random_sparse_pattern(m, n, g)
    vals = torch.randn(idx.shape[1], dtype=F64, generator=g)
    b = torch.randn(m, 2, dtype=F64, generator=g)

    def solve(v, rhs):
        return dt.lstsq(torch.sparse_coo_tensor(idx, v, (m, n)), rhs, 0.1, **TIGHT)

    assert torch.autograd.gradcheck(solve, (vals.clone().requires_grad_(),
                                            b.clone().requires_grad_()))
    # The two duplicates (the first two entries, repeated at the end) get equal gradients.
    v = vals.clone().requires_grad_()
    solve(v, b).sum().backward()
    assert torch.equal(v.grad[:2], v.grad[-2:])
    # float32 in, float32 out and gradients, close to float64.
    v32 = vals.float().requires_grad_()
    x32 = dt.lstsq(torch.sparse_coo_tensor(idx, v32, (m, n)), b.float(), 0.1)
    x32.sum().backward()
    assert x32.dtype == torch.float32 and v32.grad.dtype == torch.float32
    assert torch.allclose(x32.double(), solve(vals, b), rtol=1e-4, atol=1e-5)
    assert torch.allclose(v32.grad.double(), v.grad, rtol=1e-3, atol=1e-4)


def test_sparse_A_forward_mode_along_b_and_damp():
    """torch 1.13 has no forward-mode AD of sparse tensors; tangents of b and damp work."""
    g = torch.Generator().manual_seed(6)
    m, n = 9, 5
    idx = random_sparse_pattern(m, n, g)
    A = torch.sparse_coo_tensor(idx, torch.randn(idx.shape[1], dtype=F64, generator=g), (m, n))
    b, tb = torch.randn(m, dtype=F64, generator=g), torch.randn(m, dtype=F64, generator=g)
    with fwAD.dual_level():
        x = dt.lstsq(A, fwAD.make_dual(b, tb),
                     fwAD.make_dual(torch.tensor(0.2, dtype=F64), torch.tensor(0.5, dtype=F64)),
                     **TIGHT)
        xdot = fwAD.unpack_dual(x).tangent
    with fwAD.dual_level():
        r = dense_reference(A.to_dense(), fwAD.make_dual(b, tb),
                            fwAD.make_dual(torch.tensor(0.2, dtype=F64),
                                           torch.tensor(0.5, dtype=F64)))
        rdot = fwAD.unpack_dual(r).tangent
    assert torch.allclose(xdot, rdot, rtol=1e-8, atol=1e-10)


def test_sparse_A_bad_input_and_inputs_not_modified():
    i = torch.tensor([[0, 1, 2], [0, 1, 1]])
    b = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="no dense"):
        dt.lstsq(torch.sparse_coo_tensor(i, torch.ones(3, 2, dtype=F64), (3, 2, 2)), b)
    with pytest.raises(ValueError, match="no dense"):  # 2-D, one sparse dimension
        dt.lstsq(torch.sparse_coo_tensor(i[:1], torch.ones(3, 2, dtype=F64), (3, 2)), b)
    # Indices out of range or (CSR) out of order, in tensors torch did not check: an error
    # before anything reads them.
    for idx in ([[0, 1, 9], [0, 1, 1]], [[0, 1, 2], [0, -3, 1]]):
        bad = torch._sparse_coo_tensor_unsafe(torch.tensor(idx), torch.ones(3, dtype=F64), (3, 2))
        with pytest.raises(ValueError, match="malformed sparse A"):
            dt.lstsq(bad, b)
    for crow, col in (([0, 1, 2, 3], [0, 5, 1]), ([0, 2, 2, 3], [1, 0, 1])):
        bad = torch._sparse_csr_tensor_unsafe(torch.tensor(crow), torch.tensor(col),
                                              torch.ones(3, dtype=F64), (3, 2))
        with pytest.raises(ValueError, match="malformed sparse A"):
            dt.lstsq(bad, b)
    # Flagged coalesced but not sorted: solved as the matrix it is.
    j = torch.tensor([[1, 0], [0, 1]])
    unsorted = torch.sparse_coo_tensor(j, torch.tensor([1.0, 2.0], dtype=F64), (2, 2))
    unsorted._coalesced_(True)
    assert torch.allclose(dt.lstsq(unsorted, torch.ones(2, dtype=F64), **TIGHT),
                          torch.tensor([1.0, 0.5], dtype=F64))
    with pytest.raises(ValueError, match="not finite"):
        dt.lstsq(torch.sparse_coo_tensor(i, torch.tensor([1.0, math.nan, 2.0], dtype=F64),
                                         (3, 2)), b)
    with pytest.raises(TypeError, match="layout"):
        dt.lstsq(torch.sparse_coo_tensor(i, torch.ones(3, dtype=F64), (3, 2)).to_sparse_csc(), b)
    with pytest.raises(TypeError, match="dtype"):
        dt.lstsq(torch.sparse_coo_tensor(i, torch.ones(3, dtype=F64), (3, 2)), b.float())
    with pytest.raises(ValueError, match="params"):
        dt.lstsq(torch.sparse_coo_tensor(i, torch.ones(3, dtype=F64), (3, 2)), b,
                 params=(torch.ones(1),))
    # An empty pattern: A = 0, x = 0, zero gradients of A's layout.
    A0 = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0, dtype=F64),
                                 (3, 2)).requires_grad_()
    x = dt.lstsq(A0, b, 0.1)
    x.sum().backward()
    assert torch.equal(x.detach(), torch.zeros(2, dtype=F64))
    assert A0.grad.layout == torch.sparse_coo and A0.grad._nnz() == 0
    # Nothing the caller passed changes.
    A = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0, 3.0], dtype=F64), (3, 2))
    before = A.clone()
    dt.lstsq(A, b, 0.1)
    assert torch.equal(A._indices(), before._indices())
    assert torch.equal(A._values(), before._values())


def test_sparse_binding_reads_strided_arrays_by_value_and_refuses_malformed_ones():
    """The binding behind sparse A (internal API) is given arrays by the Python layer; a strided
    or broadcast array must be read by its values, never as raw memory, and malformed arrays
    must be an error, not an out-of-bounds read."""
    import numpy as np
    from difflsq import _core
    layer = _core.Layer_f64("lsqr", 1e-12, 1e-12, 0.0, 0, None, "raise", None)
    indptr, indices = np.array([0, 1, 2, 3]), np.array([0, 1, 1])
    values = np.array([2.0, -1.0, 4.0, -1.0, 2.0, -1.0])[::2]  # [2, 4, 2], strided
    b = np.array([2.0, 4.0, 2.0])
    b_strided = np.array([2.0, 99.0, 4.0, 99.0, 2.0, 99.0])[::2]
    (f,) = layer.forward_sparse(3, 2, indptr, indices, values, [b_strided], 0.0)
    assert np.allclose(f.x, [1.0, 1.0])
    xbar = np.array([1.0, 7.0, -2.0, 7.0])
    bbar_strided = layer.backward(f, xbar[::2])[0]
    assert np.allclose(bbar_strided, layer.backward(f, xbar[::2].copy())[0])
    assert np.allclose(bbar_strided, [0.5, -0.4, -0.2])  # A⁺ᵀ x̄ for A = [[2, 0], [0, 4], [0, 2]]
    (g,) = layer.forward_sparse(3, 2, indptr, indices, np.broadcast_to(2.0, (3,)), [b], 0.0)
    assert np.allclose(g.x, [1.0, 1.5])
    for args in ((-1, 2, np.array([], dtype=np.int64), indices[:0], values[:0]),
                 (3, 2, indptr.reshape(2, 2), indices, values),
                 (3, 2, np.array([0, 1, 2, 4]), indices, values),
                 (3, 2, indptr, np.array([0, 1, 2]), values),
                 (3, 2, np.array([1, 1, 2, 3]), indices, values)):
        with pytest.raises(ValueError):
            layer.forward_sparse(*args, [b], 0.0)


def test_lsqr_when_the_first_step_ends_the_bidiagonalization():
    # A 1 × 5 A: β₂ = 0 after LSQR's first step; its ‖A‖ estimate stayed 0 (as in lsqr.py) and
    # the layer took that for strong damping: ẋ and the gradients were O(1) off at λ = 1e-8.
    # Reference: forward and reverse AD through x = Aᵀ(AAᵀ + λ²)⁻¹b.
    gen = torch.Generator().manual_seed(5)
    lam = 1e-8
    for _ in range(8):
        A, Ad = (torch.randn(1, 5, dtype=F64, generator=gen) for _ in range(2))
        b = torch.randn(1, dtype=F64, generator=gen)

        def closed(M):
            G = M @ M.T + lam ** 2 * torch.eye(1, dtype=F64)
            return M.T @ torch.linalg.solve(G, b[:, None])[:, 0]

        with fwAD.dual_level():
            x = dt.lstsq(fwAD.make_dual(A, Ad), b, lam, method="lsqr", atol=1e-12, btol=1e-12)
            xdot = fwAD.unpack_dual(x).tangent
            ref = fwAD.unpack_dual(closed(fwAD.make_dual(A, Ad))).tangent
        torch.testing.assert_close(xdot, ref, rtol=1e-7, atol=0)
        Ag = A.clone().requires_grad_()
        dt.lstsq(Ag, b, lam, method="lsqr", atol=1e-12, btol=1e-12).sum().backward()
        Ar = A.clone().requires_grad_()
        closed(Ar).sum().backward()
        torch.testing.assert_close(Ag.grad, Ar.grad, rtol=1e-7, atol=0)
