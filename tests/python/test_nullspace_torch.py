"""difflsq.torch.NullSpaceOptimizer against the dense KKT solution, on the unit sphere, with
Adam on several tensors; the torch projections against brute force."""
import copy
import itertools
import warnings

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
    projected step (the applied update before its scaling to the length of Δ), the dense
    oblique projection of the SGD step, and the optimizer."""
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
    applied = flat(params).detach() - x0
    # Never longer than the proposal Δ: scaled as a whole when P_D Δ is longer.
    scale = opt.diagnostics["step_scale"]
    assert abs(scale - min(1.0, float(delta.norm() / ref.norm()))) < 1e-9
    assert float(applied.norm()) <= float(delta.norm()) * (1 + 1e-12)
    return applied / scale, ref, C, opt


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
        flags.append((opt.diagnostics["warmup"], opt.diagnostics["step_scale"]))
    assert flags == [(True, None)] * 3 + [(False, 1.0)] * 2
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


def _two_group_run(make_optimizer, steps, mode="step"):
    """The quadratic under Cθ = d on two tensors in two parameter groups; returns θ, the KKT
    solution and ‖c‖."""
    Q, q, C, d, theta_star, _ = quadratic_problem(seed=12)
    params = make_params(seed=13)
    opt = dt.NullSpaceOptimizer(params, make_optimizer(params), lambda: C @ flat(params) - d,
                                gamma=1.0, mode=mode, track_stationarity=False)
    for _ in range(steps):
        opt.zero_grad()
        x = flat(params)
        (0.5 * x @ Q @ x - q @ x).backward()
        opt.step()
    return flat(params).detach(), theta_star, float((C @ flat(params) - d).norm())


def test_groups_with_different_learning_rates_converge_to_the_kkt_point():
    # The step −L·g (L: each group's lr) projected euclidean stops where P(L g) = 0, not at a KKT
    # point (distance 1.4 from it before the fix); projected in the metric L⁻¹ it stops where
    # g ∈ range(Jᵀ).
    def sgd(params):
        return torch.optim.SGD([{"params": [params[0]], "lr": 0.2},
                                {"params": [params[1]], "lr": 0.05}])

    theta, theta_star, cnorm = _two_group_run(sgd, 600)
    assert cnorm < 1e-10
    assert torch.allclose(theta, theta_star, rtol=1e-8, atol=1e-10)
    # Adam with a decaying rate: its metric is D/lr (1.6 from the KKT point with D alone).
    Q, q, C, d, _, _ = quadratic_problem(seed=12)
    params = make_params(seed=13)
    adam = torch.optim.Adam([{"params": [params[0]], "lr": 0.05},
                             {"params": [params[1]], "lr": 0.025}])
    opt = dt.NullSpaceOptimizer(params, adam, lambda: C @ flat(params) - d, gamma=20.0,
                                track_stationarity=False)
    sched = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.996)
    for _ in range(1200):
        opt.zero_grad()
        x = flat(params)
        (0.5 * x @ Q @ x - q @ x).backward()
        opt.step()
        sched.step()
    assert float((C @ flat(params) - d).norm()) < 1e-10
    assert float((flat(params).detach() - theta_star).norm()) < 1e-3 * float(theta_star.norm())


def test_gradient_mode_warns_where_the_optimizer_leaves_the_null_space():
    def sgd_groups(params):
        return torch.optim.SGD([{"params": [params[0]], "lr": 0.1},
                                {"params": [params[1]], "lr": 0.01}])

    with pytest.warns(RuntimeWarning, match="different learning rates"):
        _, _, cnorm = _two_group_run(sgd_groups, 30, mode="gradient")
    assert cnorm > 1e-3  # what the warning is about
    with pytest.warns(RuntimeWarning, match="weight decay"):
        _two_group_run(lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=0.1), 2,
                       mode="gradient")
    with pytest.warns(RuntimeWarning, match="Adam rescales"):
        _two_group_run(lambda ps: torch.optim.Adam(ps, lr=0.05), 2, mode="gradient")


def test_gradient_mode_with_maximize_still_moves_towards_the_constraint_set():
    # maximize=True ascends along the gradient handed over: the correction's sign must flip
    # (‖c‖ grew 2 → 120 in 10 steps before). Maximizing −f equals minimizing f.
    Q, q, C, d, _, _ = quadratic_problem(seed=14)
    results = []
    for maximize in (False, True):
        params = make_params(seed=15)
        opt = dt.NullSpaceOptimizer(params, torch.optim.SGD(params, lr=0.05, maximize=maximize),
                                    lambda: C @ flat(params) - d, gamma=20.0, mode="gradient")
        for _ in range(10):
            opt.zero_grad()
            x = flat(params)
            f = 0.5 * x @ Q @ x - q @ x
            (-f if maximize else f).backward()
            opt.step()
        results.append(flat(params).detach())
    assert torch.allclose(results[0], results[1], rtol=1e-12, atol=1e-14)
    assert float((C @ results[1] - d).norm()) < 1e-10


@pytest.mark.parametrize("mode", ["step", "gradient"])
def test_a_failed_step_leaves_parameters_and_optimizer_state_unchanged(mode):
    Q, q, C, d, _, _ = quadratic_problem(seed=16)

    def loss_of(params):
        x = flat(params)
        return 0.5 * x @ Q @ x - q @ x

    def run(inject):
        params = make_params(seed=17)
        adam = torch.optim.Adam(params, lr=0.05)
        opt = dt.NullSpaceOptimizer(params, adam, lambda: C @ flat(params) - d, gamma=20.0,
                                    mode=mode)
        for it in range(3):
            opt.zero_grad()
            loss_of(params).backward()
            if it == 1 and inject:
                before = [p.detach().clone() for p in params]
                state = {k: v.clone() for k, v in adam.state[params[0]].items()}
                params[1].grad[0] = float("nan")  # a bad batch
                with pytest.raises(FloatingPointError, match=r"gradient of params\[1\]"):
                    opt.step()
                opt.maxiter = 1  # a solve that cannot converge
                opt.zero_grad()
                loss_of(params).backward()
                with pytest.raises(dt.SolveError):
                    opt.step()
                opt.maxiter = None
                assert all(torch.equal(p, b) for p, b in zip(params, before))
                assert all(torch.equal(v, state[k]) for k, v in adam.state[params[0]].items())
                opt.zero_grad()
                loss_of(params).backward()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # gradient mode with Adam
                opt.step()
        return flat(params).detach()

    assert torch.equal(run(True), run(False))


def test_state_dict_resumes_warmup_and_closures_work():
    Q, q, C, d, _, _ = quadratic_problem(seed=18)

    def make(params, warmup=2):
        return dt.NullSpaceOptimizer(params, torch.optim.Adam(params, lr=0.05),
                                     lambda: C @ flat(params) - d, gamma=20.0, warmup=warmup)

    def closure_for(opt, params):
        def closure():
            opt.zero_grad()
            x = flat(params)
            loss = 0.5 * x @ Q @ x - q @ x
            loss.backward()
            return loss
        return closure

    params = make_params(seed=19)
    opt = make(params)
    for _ in range(1):
        opt.step(closure_for(opt, params))
    # (deepcopy, as torch.save would: a state_dict holds the live state tensors)
    saved, theta = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    for _ in range(3):
        loss = opt.step(closure_for(opt, params))
    assert torch.is_tensor(loss)
    reference = flat(params).detach().clone()
    resumed = [t.clone().requires_grad_() for t in theta]
    opt2 = make(resumed)
    opt2.load_state_dict(saved)
    for _ in range(3):
        opt2.step(closure_for(opt2, resumed))
    assert torch.equal(flat(resumed).detach(), reference)
    # LBFGS needs its closure; in step mode its whole step is projected.
    params = make_params(seed=20)
    lbfgs = dt.NullSpaceOptimizer(params, torch.optim.LBFGS(params, lr=0.5, max_iter=5),
                                  lambda: C @ flat(params) - d, gamma=2.0)
    for _ in range(3):
        lbfgs.step(closure_for(lbfgs, params))
    assert float((C @ flat(params) - d).norm()) < 1e-10


def test_misuse_gets_clear_errors():
    params = make_params()
    sgd = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        dt.NullSpaceOptimizer([params[0], params[0]], sgd, lambda: flat(params)[:1])
    z = torch.zeros(3, dtype=torch.complex128, requires_grad=True)
    with pytest.raises(ValueError, match="complex128"):
        dt.NullSpaceOptimizer([z], torch.optim.SGD([z], lr=0.1), lambda: z.real)
    opt = dt.NullSpaceOptimizer(params, sgd, lambda: torch.ones(2, dtype=F64))
    flat(params).sum().backward()
    with pytest.raises(ValueError, match="does not depend"):
        opt.step()
    with pytest.raises(ValueError, match="not finite"):
        dt.project_simplex(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="radius"):
        dt.project_ball(torch.ones(3), float("nan"))
    lo, hi = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(dt.project_box(torch.tensor([-1.0, 1.5, 9.0]), lo, hi),
                       torch.tensor([0.0, 1.5, 3.0]))
    with pytest.raises(ValueError, match="lo <= hi"):
        dt.project_box(torch.zeros(3), hi, lo)


def test_row_norm_estimate():
    import scipy.sparse.linalg as sla
    rng = np.random.default_rng(3)
    # A selection (one nonzero per row of J): exact. A = S·Jᵀ, the norms of J's rows are A's
    # column norms.
    s = 10 ** rng.uniform(-2, 2, 50)
    cols = rng.choice(50, 20, replace=False)
    jt = np.zeros((50, 20))
    jt[cols, np.arange(20)] = 1
    est = dt._row_norms(sla.aslinearoperator(s[:, None] * jt), "columns")
    assert np.allclose(est, s[cols], rtol=1e-12)
    # Dense rows of one norm: within the estimate's noise, so not worth rescaling.
    assert dt._row_norms(sla.aslinearoperator(rng.standard_normal((30, 400))), "rows") is None
    # Rows over six decades: each within a factor of 3 (8 probes).
    J = rng.standard_normal((30, 400)) * np.logspace(-3, 3, 30)[:, None]
    est = dt._row_norms(sla.aslinearoperator(J), "rows")
    ratio = est / np.linalg.norm(J, axis=1)
    assert ratio.min() > 1 / 3 and ratio.max() < 3


def test_constraints_of_very_different_scales_are_equilibrated():
    # Rows of c over eight decades (the same constraint set as the unscaled rows): without
    # equilibration LSQR reached its iteration limit on every solve. One SGD step from an
    # infeasible start against the dense formulas: update = −lr·(Pg) − J⁺c (γ = 1/lr), z = (Jᵀ)⁺g.
    rng = np.random.default_rng(4)
    k, n = 60, 400
    C = rng.standard_normal((k, n)) * (rng.random((k, n)) < 0.02)
    C[np.arange(k), rng.choice(n, k, replace=False)] = 1.0  # no zero row
    J = torch.tensor(np.logspace(-4, 4, k)[:, None] * C)
    d = torch.tensor(rng.standard_normal(k))
    theta = torch.tensor(rng.standard_normal(n), requires_grad=True)
    target = torch.tensor(rng.standard_normal(n))
    x0 = theta.detach().clone()
    lr = 0.1
    opt = dt.NullSpaceOptimizer([theta], torch.optim.SGD([theta], lr=lr),
                                lambda: J @ theta - d, gamma=1 / lr)
    (0.5 * ((theta - target) ** 2).sum()).backward()
    g = theta.grad.detach().clone()
    opt.step()
    pinv = torch.linalg.pinv(J)
    z = pinv.T @ g
    ref = -lr * (g - J.T @ z) - pinv @ (J @ x0 - d)
    assert float((theta.detach() - x0 - ref).norm()) <= 1e-8 * float(ref.norm())
    assert float((opt.diagnostics["multipliers"] - z).norm()) <= 1e-7 * float(z.norm())
    assert all(status in (0, 1, 2, 4, 5) for status in opt.diagnostics["istop"])
    assert max(opt.diagnostics["iterations"]) < 60, opt.diagnostics["iterations"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_metric_projection_of_a_sparsity_mask_is_fast(dtype):
    # c = θ[mask]: P_D Δ is Δ with the masked entries zeroed, whatever D. Adam's D = √v̂ + ε
    # spreads over decades, which made the metric solve take 100-3000 LSQR iterations; the
    # equilibrated rows of S·Jᵀ are orthonormal, so it ends one or two iterations after the
    # 8-iteration trial.
    g = torch.Generator().manual_seed(5)
    params = [torch.randn(2000, dtype=dtype, generator=g).requires_grad_() for _ in range(2)]
    masks = [torch.nonzero(torch.rand(2000, generator=g) < 0.5).ravel() for _ in range(2)]
    with torch.no_grad():
        for p, m in zip(params, masks):
            p[m] = 0
    targets = [torch.randn(2000, dtype=dtype, generator=g) for _ in range(2)]
    opt = dt.NullSpaceOptimizer(params, torch.optim.Adam(params, lr=1e-2),
                                lambda: torch.cat([p[m] for p, m in zip(params, masks)]))
    plain = [p.detach().clone().requires_grad_() for p in params]
    adam = torch.optim.Adam(plain, lr=1e-2)
    for _ in range(3):
        for ps, o in ((params, opt), (plain, adam)):
            o.zero_grad()
            sum(0.5 * ((p - t) ** 2).sum() for p, t in zip(ps, targets)).backward()
            o.step()
        # The masked entries stay 0 (to rounding) and the others move as plain Adam's.
        tol = 2e-6 if dtype == torch.float32 else 1e-14
        for p, q, m in zip(params, plain, masks):
            keep = torch.ones(2000, dtype=torch.bool)
            keep[m] = False
            assert float(p.detach()[m].abs().max()) <= tol
            assert torch.allclose(p.detach()[keep], q.detach()[keep], rtol=tol, atol=tol)
            with torch.no_grad():
                q[m] = 0
        assert opt.diagnostics["iterations"][-1] <= 10, opt.diagnostics["iterations"]


def test_adam_first_step_is_no_longer_than_its_proposal():
    # Rows of W of unit norm (c_i = ‖W_i‖² − 1), Adam's first step: D = |g| + ε spreads over
    # decades and P_D Δ came out 4.5× longer than Δ (7.5× at 10⁶ parameters, one entry moving
    # 1200·lr, ‖c‖ after 4.3 against 0.02 for the Euclidean projection). It is scaled down to
    # ‖Δ‖, staying in N(J).
    g = torch.Generator().manual_seed(6)
    w = torch.randn(100, 100, dtype=F64, generator=g)
    w = (w / w.norm(dim=1, keepdim=True)).requires_grad_()
    target = torch.randn(100, 100, dtype=F64, generator=g) / 10
    lr = 1e-3
    opt = dt.NullSpaceOptimizer([w], torch.optim.Adam([w], lr=lr),
                                lambda: (w * w).sum(dim=1) - 1, gamma=1 / lr)
    w0 = w.detach().clone()
    (0.5 * ((w - target) ** 2).sum()).backward()
    proposal = -lr * torch.sign(w.grad)  # Adam's first step, up to ε
    opt.step()
    step = w.detach() - w0
    scale = opt.diagnostics["step_scale"]
    assert scale < 0.5
    assert float(step.norm()) <= float(proposal.norm()) * (1 + 1e-6)
    # In N(J) to first order: J·step = 2 Σⱼ W_ij step_ij = 0 (c = 0 before: no correction).
    assert float((2 * (w0 * step).sum(dim=1)).abs().max()) < 1e-10 * float(step.norm())


def test_steps_keep_no_graph_alive():
    # The Jacobian products keep c's graph for the step (create_graph); an op that saves its own
    # output (exp) must not make it outlive the step, as identity saved-tensor hooks did.
    import gc
    n = 50000
    torch.manual_seed(0)
    theta = torch.randn(n, dtype=torch.float64, requires_grad=True)
    opt = dt.NullSpaceOptimizer([theta], torch.optim.SGD([theta], lr=1e-3),
                                lambda: (torch.exp(theta).sum() - n).reshape(1))

    def live():
        gc.collect()
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o) and o.numel() >= n)

    counts = []
    for k in range(12):
        theta.grad = None
        theta.sum().backward()
        opt.step()
        if k in (3, 11):
            counts.append(live())
    assert counts[0] == counts[1]
