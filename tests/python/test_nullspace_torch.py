"""difflsq.torch.NullSpaceOptimizer against the dense KKT solution, on the unit sphere, with
Adam on several tensors; the torch projections against brute force."""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import difflsq.torch as dt  # noqa: E402

F64 = torch.float64


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, dtype=F64, generator=g).requires_grad_(),
            torch.randn(5, dtype=F64, generator=g).requires_grad_()]


def flat(params):
    return torch.cat([p.reshape(-1) for p in params])


def quadratic_problem(seed=1, k=4, n=17):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    Q = torch.tensor(m @ m.T / n + np.eye(n))
    q = torch.tensor(rng.standard_normal(n))
    C = torch.tensor(rng.standard_normal((k, n)))
    d = torch.tensor(rng.standard_normal(k))
    kkt = torch.zeros(n + k, n + k, dtype=F64)
    kkt[:n, :n], kkt[:n, n:], kkt[n:, :n] = Q, C.T, C
    sol = torch.linalg.solve(kkt, torch.cat([q, d]))
    return Q, q, C, d, sol[:n], sol[n:]


def test_sgd_converges_to_the_kkt_point_and_logs_feasibility_and_stationarity():
    Q, q, C, d, theta_star, nu = quadratic_problem()
    params = make_params()
    lr = 1.0 / float(torch.linalg.eigvalsh(Q).max())
    opt = dt.NullSpaceOptimizer(params, torch.optim.SGD(params, lr=lr),
                                lambda: C @ flat(params) - d, gamma=1.0 / lr)
    log = []
    for _ in range(400):
        opt.zero_grad()
        x = flat(params)
        (0.5 * x @ Q @ x - q @ x).backward()
        opt.step()
        log.append((opt.diagnostics["constraint_norm"], opt.diagnostics["projected_grad_norm"]))
    x = flat(params).detach()
    assert torch.allclose(x, theta_star, rtol=1e-8, atol=1e-10)
    assert torch.allclose(opt.diagnostics["multipliers"], -nu, rtol=1e-7, atol=1e-9)
    assert log[0][0] > 1e-2 and log[1][0] < 1e-10          # feasible after one full GN step
    assert log[-1][1] < 1e-8 * log[0][1]                  # stationarity: ‖Pg‖ → 0
    assert all(status in (0, 1, 2, 4, 5) for status in opt.diagnostics["istop"])


def test_gradient_mode_equals_step_mode_with_sgd():
    Q, q, C, d, _, _ = quadratic_problem(seed=2)
    results = []
    for mode in ("gradient", "step"):
        params = make_params(seed=3)
        opt = dt.NullSpaceOptimizer(params, torch.optim.SGD(params, lr=0.05),
                                    lambda: C @ flat(params) - d, gamma=4.0, mode=mode)
        for _ in range(20):
            opt.zero_grad()
            x = flat(params)
            (0.5 * x @ Q @ x - q @ x).backward()
            opt.step()
        results.append(flat(params).detach())
    assert torch.allclose(results[0], results[1], rtol=1e-9, atol=1e-12)


def test_unit_sphere_finds_the_smallest_eigenvector():
    g = torch.Generator().manual_seed(4)
    S = torch.randn(8, 8, dtype=F64, generator=g)
    S = S + S.T
    evals, evecs = torch.linalg.eigh(S)
    theta = (1.3 * torch.randn(8, dtype=F64, generator=g)).requires_grad_()
    lr = 0.5 / float(evals[-1] - evals[0])
    opt = dt.NullSpaceOptimizer([theta], torch.optim.SGD([theta], lr=lr),
                                lambda: (theta @ theta - 1).reshape(1), gamma=1.0 / lr)
    for _ in range(3000):
        opt.zero_grad()
        (theta @ S @ theta).backward()
        opt.step()
    t = theta.detach()
    assert abs(float(t.norm()) - 1) < 1e-8
    assert abs(abs(float(t @ evecs[:, 0])) - 1) < 1e-6


def test_adam_on_several_tensors_keeps_the_constraints():
    Q, q, C, d, _, _ = quadratic_problem(seed=5)
    params = make_params(seed=6)
    lr = 1e-2
    opt = dt.NullSpaceOptimizer(params, torch.optim.Adam(params, lr=lr),
                                lambda: C @ flat(params) - d, gamma=1.0 / lr)
    worst, losses = 0.0, []
    for it in range(500):
        opt.zero_grad()
        x = flat(params)
        loss = 0.5 * x @ Q @ x - q @ x
        loss.backward()
        losses.append(float(loss))
        opt.step()
        if it > 0:
            worst = max(worst, float((C @ flat(params) - d).norm()))
    assert worst < 1e-6
    assert losses[-1] < losses[1]


def _adam_run(metric, amsgrad=False, steps=1500):
    """Adam (decaying rate) on the quadratic under Cθ = d, two tensors; returns θ and the KKT
    solution."""
    Q, q, C, d, theta_star, _ = quadratic_problem(seed=7)
    params = make_params(seed=8)
    lr = 5e-2
    adam = torch.optim.Adam(params, lr=lr, amsgrad=amsgrad)
    sched = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.995)
    opt = dt.NullSpaceOptimizer(params, adam, lambda: C @ flat(params) - d, gamma=1.0 / lr,
                                metric=metric, track_stationarity=False)
    for _ in range(steps):
        opt.zero_grad()
        x = flat(params)
        (0.5 * x @ Q @ x - q @ x).backward()
        opt.step()
        sched.step()
    return flat(params).detach(), theta_star, float((C @ flat(params) - d).norm())


def test_adam_step_mode_converges_to_the_kkt_point_in_its_own_metric():
    theta, theta_star, cnorm = _adam_run("auto")
    assert cnorm < 1e-8
    assert torch.allclose(theta, theta_star, rtol=1e-6, atol=1e-8)
    theta, _, _ = _adam_run("auto", amsgrad=True)
    assert torch.allclose(theta, theta_star, rtol=1e-6, atol=1e-8)
    # The Euclidean projection of Adam's step keeps c = 0 but stops elsewhere.
    theta, _, cnorm = _adam_run("euclidean")
    assert cnorm < 1e-8
    assert float((theta - theta_star).norm()) > 1e-2 * float(theta_star.norm())


def metric_step(D, **solver):
    """One SGD step of NullSpaceOptimizer in the metric D on quadratic_problem(9): returns the
    applied update, the dense oblique projection of the SGD step, and the optimizer."""
    Q, q, C, d, _, _ = quadratic_problem(seed=9)
    params = make_params(seed=10)
    sgd = torch.optim.SGD(params, lr=0.1)
    opt = dt.NullSpaceOptimizer(params, sgd, lambda: C @ flat(params) - d, gamma=0.0,
                                metric=lambda ps: [D[:12].reshape(3, 4), D[12:]], **solver)
    x0 = flat(params).detach().clone()
    opt.zero_grad()
    x = flat(params)
    (0.5 * x @ Q @ x - q @ x).backward()
    g = flat([p.grad for p in params]).detach().clone()
    opt.step()
    delta = -0.1 * g
    dinv_ct = C.T / D[:, None]
    ref = delta - dinv_ct @ torch.linalg.solve(C @ dinv_ct, C @ delta)
    return flat(params).detach() - x0, ref, C, opt


@pytest.mark.parametrize("seed", range(12))
def test_step_metric_against_the_dense_oblique_projection(seed):
    # D spread over four decades. The update is P_D Δ = S·r with S = D^(-1/2) and r the
    # residual of the solve min ‖S Jᵀμ − S⁻¹Δ‖, which stops (istop 2, Paige & Saunders) once
    # ‖(SJᵀ)ᵀr‖ <= atol·‖SJᵀ‖_F·‖r‖. Then ‖r − r*‖ <= atol·‖SJᵀ‖_F/σ_min(SJᵀ)·‖r‖ and
    # ‖update − ref‖ <= (max S / min S)·atol·‖SJᵀ‖_F/σ_min·‖update‖: the bound asserted.
    g = torch.Generator().manual_seed(100 + seed)
    D = 10 ** (4 * torch.rand(17, dtype=F64, generator=g) - 2)
    update, ref, C, opt = metric_step(D)
    assert opt.diagnostics["istop"][-1] == 2
    s = D.rsqrt()
    sv = torch.linalg.svdvals(s[:, None] * C.T)
    bound = float(s.max() / s.min()) * opt.atol * float(sv.norm() / sv.min())
    assert float((update - ref).norm()) <= 2 * bound * float(update.norm()) + 1e-14
    assert float((C @ update).norm()) <= 1e-8 * float(update.norm())
    # With the solver tolerances at rounding level, entry by entry.
    update, ref, _, _ = metric_step(D, atol=1e-15, btol=1e-15)
    assert torch.allclose(update, ref, rtol=1e-11, atol=1e-14)


def test_metric_must_be_a_callable_or_a_known_name():
    params = make_params()
    sgd = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="metric"):
        dt.NullSpaceOptimizer(params, sgd, lambda: flat(params)[:1], metric="adam")


def test_warmup_runs_the_plain_optimizer_first():
    Q, q, C, d, _, _ = quadratic_problem(seed=7)
    params = make_params(seed=8)
    opt = dt.NullSpaceOptimizer(params, torch.optim.SGD(params, lr=0.05),
                                lambda: C @ flat(params) - d, gamma=20.0, warmup=3)
    flags = []
    for _ in range(5):
        opt.zero_grad()
        x = flat(params)
        (0.5 * x @ Q @ x - q @ x).backward()
        opt.step()
        flags.append(opt.diagnostics["warmup"])
    assert flags == [True, True, True, False, False]
    assert float((C @ flat(params) - d).norm()) < 1e-10


def test_bad_configuration_is_rejected():
    params = make_params()
    sgd = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="mode"):
        dt.NullSpaceOptimizer(params, sgd, lambda: flat(params)[:1], mode="other")
    other = torch.zeros(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="not updated"):
        dt.NullSpaceOptimizer(params + [other], sgd, lambda: flat(params)[:1])
    opt = dt.NullSpaceOptimizer(params, sgd, lambda: flat(params)[:2].reshape(1, 2))
    flat(params).sum().backward()
    with pytest.raises(ValueError, match="1-D"):
        opt.step()


def brute_simplex(x, total):
    n, best, best_d = len(x), None, np.inf
    for r in range(1, n + 1):
        for support in itertools.combinations(range(n), r):
            s = list(support)
            y = np.zeros(n)
            y[s] = x[s] - (x[s].sum() - total) / r
            if (y[s] >= -1e-15).all() and np.linalg.norm(y - x) < best_d:
                best, best_d = y, np.linalg.norm(y - x)
    return best


def test_projections_against_brute_force():
    rng = np.random.default_rng(9)
    for trial in range(100):
        n = 1 + trial % 7
        x = 2 * rng.standard_normal(n)
        total = 1.0 if trial % 2 else 0.3 + rng.random()
        y = dt.project_simplex(torch.tensor(x), total).numpy()
        assert np.allclose(y, brute_simplex(x, total), atol=1e-12)
        b = dt.project_box(torch.tensor(x), -0.5, 0.7).numpy()
        grid = np.linspace(-0.5, 0.7, 1201)
        nearest = grid[np.abs(grid[None, :] - x[:, None]).argmin(axis=1)]
        assert np.all(np.abs(b - nearest) <= 0.5e-3 + 1e-12)
        assert np.array_equal(dt.project_nonnegative(torch.tensor(x)).numpy(), np.maximum(x, 0))
        p = dt.project_ball(torch.tensor(x), 0.8).numpy()
        inside = rng.standard_normal((50, n))
        inside *= (0.8 * rng.random(50) ** (1 / n) / np.linalg.norm(inside, axis=1))[:, None]
        assert np.linalg.norm(p) <= 0.8 + 1e-12
        assert np.all(np.linalg.norm(p - x) <= np.linalg.norm(inside - x, axis=1) + 1e-12)
    with pytest.raises(ValueError):
        dt.project_simplex(torch.zeros(3), -1.0)


def test_feasibility_tolerance_skips_the_correction_solve():
    Q, q, C, d, _, _ = quadratic_problem(seed=10)
    counts = []
    for tol in (0.0, 1e3):
        params = make_params(seed=11)
        opt = dt.NullSpaceOptimizer(params, torch.optim.SGD(params, lr=0.05),
                                    lambda: C @ flat(params) - d, gamma=20.0, feasibility_tol=tol)
        x = flat(params)
        (0.5 * x @ Q @ x - q @ x).backward()
        before = float((C @ flat(params) - d).norm())
        opt.step()
        counts.append(len(opt.diagnostics["iterations"]))
        after = float((C @ flat(params) - d).norm())
        if tol == 0.0:
            assert after < 1e-10
        else:  # no correction: the projected step keeps c where it was
            assert abs(after - before) < 1e-9 * before
    assert counts == [3, 2]
