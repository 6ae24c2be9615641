// The null-space step (nullspace.hpp) against dense linear algebra, optimizers under
// constraints against the KKT solution, and the projections against brute force.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <difflsq/difflsq.hpp>
#include <random>

#include "test_problems.hpp"

using namespace difflsq;

namespace {
using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;

Mat random_mat(Index m, Index n, unsigned seed) {
  std::mt19937_64 gen(seed);
  return test::random_matrix<double>(m, n, gen);
}
Vec random_vec(Index n, unsigned seed) { return random_mat(n, 1, seed).col(0); }

/// The Euclidean projection of v onto range(Cᵀ), C⁺C v.
Vec pinv_project(const Mat& c, const Vec& v) {
  return c.completeOrthogonalDecomposition().pseudoInverse() * (c * v);
}

NullSpaceOptions<double> tight() {
  NullSpaceOptions<double> o;
  o.tolerances = {.atol = 1e-14, .btol = 1e-14, .conlim = 0, .max_iterations = 1000};
  return o;
}
}  // namespace

TEST_CASE("null-space step: one step against dense projections") {
  const Index k = 4, p = 12;
  const Mat c = random_mat(k, p, 1);
  const Vec d = random_vec(k, 2), theta = random_vec(p, 3), g = random_vec(p, 4);
  const LinearConstraint con(c, d);
  NullSpaceStep<double> step(tight());
  const auto r = step(con, theta, g);
  CHECK(r.converged());
  const auto cod = c.completeOrthogonalDecomposition();
  const Mat pinv = cod.pseudoInverse();
  const Vec pg = g - pinv * (c * g);
  const Vec z = c.transpose().completeOrthogonalDecomposition().solve(g);
  const Vec delta = pinv * (c * theta - d);
  CHECK((r.projected - pg).norm() < 1e-10 * g.norm());
  CHECK((r.multipliers - z).norm() < 1e-10 * z.norm());
  CHECK((r.correction - delta).norm() < 1e-10 * delta.norm());
  CHECK((r.direction - (pg + delta)).norm() < 1e-10 * g.norm());
  CHECK(r.constraint_norm == doctest::Approx((c * theta - d).norm()));
  CHECK(r.projected_norm == doctest::Approx(pg.norm()));
  CHECK((c * r.projected).norm() < 1e-10 * g.norm());  // Pg ∈ N(J)
  // Feasible θ: the correction solve is skipped.
  const Vec feasible = pinv * d;
  const LinearConstraint con0(c, Vec(c * feasible));
  const auto r0 = step(con0, feasible, g);
  CHECK(r0.solves.size() == 1);
  CHECK(r0.correction.norm() == 0);
}

TEST_CASE("constrained gradient descent converges to the KKT point of a quadratic") {
  // min ½θᵀQθ − qᵀθ s.t. Cθ = d. KKT: Qθ + Cᵀν = q, Cθ = d; multipliers z = −ν (g = Jᵀz).
  const Index k = 3, p = 10;
  Mat q_mat = random_mat(p, p, 5);
  q_mat = q_mat * q_mat.transpose() / double(p) + Mat::Identity(p, p);
  const Vec q = random_vec(p, 6), d = random_vec(k, 7);
  const Mat c = random_mat(k, p, 8);
  Mat kkt = Mat::Zero(p + k, p + k);
  kkt << q_mat, c.transpose(), c, Mat::Zero(k, k);
  Vec rhs(p + k);
  rhs << q, d;
  const Vec sol = kkt.fullPivLu().solve(rhs);
  const Vec theta_star = sol.head(p), nu = sol.tail(k);

  const LinearConstraint con(c, d);
  const double lr = 1.0 / Eigen::SelfAdjointEigenSolver<Mat>(q_mat).eigenvalues().maxCoeff();
  NullSpaceOptions<double> o = tight();
  o.gamma = 1.0 / lr;  // lr·γ = 1: a full Gauss–Newton correction
  ConstrainedSgd<double> sgd(lr, o);
  Vec theta = random_vec(p, 9);
  std::vector<double> cnorm, pgnorm;
  NullSpaceResult<double> last;
  for (int it = 0; it < 400; ++it) {
    const Vec g = q_mat * theta - q;
    last = sgd.step(con, theta, g);
    cnorm.push_back(last.constraint_norm);
    pgnorm.push_back(last.projected_norm);
  }
  CHECK((theta - theta_star).norm() < 1e-8 * theta_star.norm());
  CHECK((last.multipliers + nu).norm() < 1e-7 * nu.norm());
  CHECK((c * theta - d).norm() < 1e-10);
  // Primal feasibility after the first (full Gauss–Newton) step, stationarity → 0.
  CHECK(cnorm[0] > 1e-3);
  CHECK(cnorm[1] < 1e-10);
  CHECK(pgnorm.back() < 1e-8 * pgnorm.front());
}

TEST_CASE("minimizing a quadratic form on the unit sphere finds the smallest eigenvector") {
  const Index p = 8;
  Mat s = random_mat(p, p, 10);
  s = (s + s.transpose()).eval();
  const Eigen::SelfAdjointEigenSolver<Mat> eig(s);
  const Vec v_min = eig.eigenvectors().col(0);
  // c(θ) = ‖θ‖² − 1, J = 2θᵀ.
  auto sphere = make_constraint(
      1, p, [](const auto& th, auto& c) { c[0] = th.squaredNorm() - 1; },
      [](const auto& th, const auto& v, auto& y) { y[0] = 2 * th.dot(v); },
      [](const auto& th, const auto& u, auto& w) { w = 2 * u[0] * th; });
  static_assert(Constraint<decltype(sphere)>);
  const double spread = eig.eigenvalues().maxCoeff() - eig.eigenvalues().minCoeff();
  const double lr = 0.5 / spread;
  NullSpaceOptions<double> o = tight();
  o.gamma = 1.0 / lr;
  ConstrainedSgd<double> sgd(lr, o);
  Vec theta = random_vec(p, 11).normalized() * 1.3;
  for (int it = 0; it < 3000; ++it) sgd.step(sphere, theta, Vec(2 * s * theta));
  CHECK(std::abs(theta.norm() - 1) < 1e-8);
  CHECK(std::abs(std::abs(theta.dot(v_min)) - 1) < 1e-6);
}

TEST_CASE("null-space step in a metric D against the dense oblique projection") {
  const Index k = 4, p = 12;
  const Mat c = random_mat(k, p, 21);
  const Vec d = random_vec(k, 22), theta = random_vec(p, 23), v = random_vec(p, 24);
  const Vec metric = (random_vec(p, 25).array().abs() * 10 + 0.01).matrix();  // cond(D) ~ 1e3
  const LinearConstraint con(c, d);
  NullSpaceStep<double> step(tight());
  const auto r = step(con, theta, v, metric);
  CHECK(r.converged());
  // P_D v = v − D⁻¹Cᵀ(C D⁻¹ Cᵀ)⁻¹ C v, the D-closest point of N(C) to v.
  const Mat dinv_ct = metric.cwiseInverse().asDiagonal() * c.transpose();
  const Vec mu = (c * dinv_ct).ldlt().solve(c * v);
  const Vec ref = v - dinv_ct * mu;
  CHECK((r.projected - ref).norm() < 1e-10 * v.norm());
  CHECK((r.multipliers - mu).norm() < 1e-10 * mu.norm());
  CHECK((c * r.projected).norm() < 1e-10 * v.norm());
  CHECK((r.projected - (v - pinv_project(c, v))).norm() > 1e-3 * v.norm());  // not Euclidean
  CHECK_THROWS_AS((void)step(con, theta, v, Vec(-metric)), std::invalid_argument);
  CHECK_THROWS_AS((void)step(con, theta, v, Vec(metric.head(5))), std::invalid_argument);
}

TEST_CASE("null-space solves equilibrate rows of J of very different norms") {
  std::mt19937_64 gen(31);
  std::uniform_real_distribution<double> unif(0, 1);
  SUBCASE("estimate_column_norms") {
    // One nonzero per column: exact. Dense columns over six decades: within a factor of 3.
    Mat sel = Mat::Zero(50, 15);
    for (Index j = 0; j < 15; ++j) sel(3 * j + 1, j) = std::pow(10.0, 4 * unif(gen) - 2);
    const Vec exact = sel.colwise().norm().transpose();
    CHECK((estimate_column_norms(sel) - exact).norm() <= 1e-14 * exact.norm());
    Mat dense = random_mat(300, 20, 32);
    for (Index j = 0; j < 20; ++j) dense.col(j) *= std::pow(10.0, 6.0 * j / 19 - 3);
    const Vec ratio =
        estimate_column_norms(dense).cwiseQuotient(dense.colwise().norm().transpose());
    CHECK(ratio.minCoeff() > 1.0 / 3);
    CHECK(ratio.maxCoeff() < 3);
    CHECK_THROWS_AS((void)estimate_column_norms(dense, 0), std::invalid_argument);
    // float near the ends of its range: the squares would overflow (3e19) or underflow (1e-25).
    Eigen::MatrixXf extreme = Eigen::MatrixXf::Zero(3, 2);
    extreme(0, 0) = 3e19f;
    extreme(2, 1) = 1e-25f;
    const Eigen::VectorXf en = estimate_column_norms(extreme);
    CHECK(en[0] == doctest::Approx(3e19f).epsilon(1e-6));
    CHECK(en[1] == doctest::Approx(1e-25f).epsilon(1e-6));
  }
  SUBCASE("rows over eight decades, against dense formulas") {
    // Without equilibration every solve reached its iteration limit (SolveError).
    const Index k = 60, p = 400;
    Mat c = Mat::Zero(k, p);
    for (Index i = 0; i < k; ++i) {
      for (Index j = 0; j < p; ++j)
        if (unif(gen) < 0.02) c(i, j) = 2 * unif(gen) - 1;
      c(i, (7 * i) % p) = 1;  // no zero row
      c.row(i) *= std::pow(10.0, -4 + 8.0 * i / (k - 1));
    }
    const Vec d = random_vec(k, 33), theta = random_vec(p, 34), g = random_vec(p, 35);
    const LinearConstraint con(c, d);
    NullSpaceOptions<double> o;
    o.tolerances = {.atol = 1e-12, .btol = 1e-12, .conlim = 0};
    NullSpaceStep<double> step(o);
    const auto r = step(con, theta, g);
    CHECK(r.converged());
    const Mat pinv = c.completeOrthogonalDecomposition().pseudoInverse();
    const Vec z = pinv.transpose() * g, delta = pinv * (c * theta - d);
    CHECK((r.multipliers - z).norm() < 1e-8 * z.norm());
    CHECK((r.projected - (g - c.transpose() * z)).norm() < 1e-8 * g.norm());
    CHECK((r.correction - delta).norm() < 1e-8 * delta.norm());
    for (const auto& s : r.solves) CHECK(s.report.iterations < 60);
    // The correction solve ran on W·J; its report's residual is that of Jδ = c itself.
    CHECK(r.solves.back().report.r1norm ==
          doctest::Approx((c * r.correction - (c * theta - d)).norm()).epsilon(1e-6));
  }
  SUBCASE("a selection in a metric spread over six decades (Adam's)") {
    // P_D v zeroes the selected entries whatever D; S·Jᵀ has orthonormal columns once
    // equilibrated, so the solve ends one or two iterations after the 8-iteration trial.
    const Index k = 200, p = 500;
    Mat c = Mat::Zero(k, p);
    for (Index i = 0; i < k; ++i) c(i, (13 * i) % p) = 1;
    Vec metric(p);
    for (Index j = 0; j < p; ++j) metric[j] = std::pow(10.0, 6 * unif(gen) - 3);
    const Vec v = random_vec(p, 36);
    const LinearConstraint con(c, Vec::Zero(k));
    NullSpaceStep<double> step(tight());
    const auto r = step(con, Vec::Zero(p), v, metric);
    CHECK(r.converged());
    CHECK(r.solves.back().report.iterations <= 10);
    Vec ref = v;
    for (Index i = 0; i < k; ++i) ref[(13 * i) % p] = 0;
    CHECK((r.projected - ref).norm() < 1e-12 * v.norm());
  }
}

TEST_CASE("constrained Adam keeps linear constraints to 1e-6 and converges to the KKT point") {
  const Index k = 5, p = 30;
  const Mat c = random_mat(k, p, 12);
  const Vec d = random_vec(k, 13);
  // An ill-scaled quadratic ½‖W(θ − target)‖², so that Adam's metric differs from the identity.
  const Vec target = random_vec(p, 14);
  const Vec w = (random_vec(p, 15).array().abs() * 3 + 0.1).matrix();
  const LinearConstraint con(c, d);
  NullSpaceOptions<double> o = tight();
  const double lr0 = 5e-2;
  o.gamma = 1.0 / lr0;
  ConstrainedAdam<double> adam({.lr = lr0}, o);
  Vec theta = Vec::Zero(p);
  double worst = 0;
  for (int it = 0; it < 8000; ++it) {
    adam.set_lr(lr0 * std::pow(0.999, it));  // Adam with a fixed rate hovers at a distance ~lr
    const Vec g = w.cwiseAbs2().cwiseProduct(theta - target);
    adam.step(con, theta, g);
    worst = std::max(worst, (c * theta - d).norm());
  }
  CHECK(worst < 1e-6);
  // The constrained minimizer from the KKT system [Q Cᵀ; C 0][θ; ν] = [Q target; d].
  Mat kkt = Mat::Zero(p + k, p + k);
  kkt.topLeftCorner(p, p) = w.cwiseAbs2().asDiagonal();
  kkt.topRightCorner(p, k) = c.transpose();
  kkt.bottomLeftCorner(k, p) = c;
  Vec rhs(p + k);
  rhs << w.cwiseAbs2().cwiseProduct(target), d;
  const Vec best = kkt.fullPivLu().solve(rhs).head(p);
  MESSAGE("Adam: |theta - best| = " << (theta - best).norm() << ", |best| = " << best.norm());
  CHECK((theta - best).norm() < 1e-3 * best.norm());
}

TEST_CASE("constrained Adam: the first step is no longer than Adam's proposal") {
  // Rows of a 50 × 50 W of unit norm (c_i = ‖W_i‖² − 1, θ = W row-major). At the first step
  // D = |g| + ε spreads over decades and P_D Δ is several times longer than Δ (one entry moving
  // hundreds of lr at 10⁶ parameters); it is scaled down to ‖Δ‖, staying in N(J).
  const Index r = 50, p = r * r;
  using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto rows = make_constraint(
      r, p,
      [r](const auto& th, auto& c) {
        c = Eigen::Map<const RowMat>(th.data(), r, r).rowwise().squaredNorm().array() - 1;
      },
      [r](const auto& th, const auto& v, auto& y) {
        y = 2 * (Eigen::Map<const RowMat>(th.data(), r, r)
                     .cwiseProduct(Eigen::Map<const RowMat>(v.data(), r, r)))
                    .rowwise()
                    .sum();
      },
      [r](const auto& th, const auto& u, auto& w) {
        Eigen::Map<RowMat>(w.data(), r, r) =
            2 * u.asDiagonal() * Eigen::Map<const RowMat>(th.data(), r, r);
      });
  RowMat w0 = random_mat(r, r, 41);
  w0.rowwise().normalize();
  const Vec theta0 = Eigen::Map<const Vec>(w0.data(), p);
  const Vec grad = theta0 - random_vec(p, 42) / 10;
  const double lr = 1e-3;
  NullSpaceOptions<double> o = tight();
  o.gamma = 1 / lr;
  ConstrainedAdam<double> adam({.lr = lr}, o);
  Vec theta = theta0;
  const auto res = adam.step(rows, theta, grad);
  const Vec step = theta - theta0;
  const Vec proposal = -lr * grad.array().sign().matrix();  // Adam's first step, up to ε
  CHECK(res.step_scale < 0.5);
  CHECK(step.norm() <= proposal.norm() * (1 + 1e-6));
  CHECK((step - res.step_scale * res.projected).norm() < 1e-12 * step.norm());  // c ≈ 0
  Vec jstep(r);
  rows.jacobian(theta0, step, jstep);
  CHECK(jstep.norm() < 1e-10 * step.norm());
}

TEST_CASE("null-space step: bad input and failures") {
  const Mat c = random_mat(3, 6, 15);
  const LinearConstraint con(c, Vec::Zero(3));
  NullSpaceStep<double> step(tight());
  CHECK_THROWS_AS((void)step(con, Vec::Zero(5), Vec::Zero(6)), std::invalid_argument);
  Vec nan = Vec::Zero(6);
  nan[1] = std::nan("");
  CHECK_THROWS_AS((void)step(con, Vec::Zero(6), nan), std::invalid_argument);
  CHECK_THROWS_AS(LinearConstraint(c, Vec::Zero(2)), std::invalid_argument);
  NullSpaceOptions<double> limited = tight();
  limited.tolerances.max_iterations = 1;
  NullSpaceStep<double> short_step(limited);
  CHECK_THROWS_AS((void)short_step(con, random_vec(6, 16), random_vec(6, 17)), SolveError);
  try {
    (void)short_step(con, random_vec(6, 16), random_vec(6, 17));
  } catch (const SolveError& e) {  // the error lists the step's solves, the failed one last
    REQUIRE(!e.solves().empty());
    CHECK(!e.solves().back().converged);
    CHECK(e.solves().back().iterations >= 1);
    CHECK(e.solves().back().status == e.status());
  }
  // Adam: bad gradients are rejected, and a failed step leaves θ unchanged.
  ConstrainedAdam<double> adam({}, limited);
  Vec theta = random_vec(6, 18);
  const Vec theta0 = theta;
  CHECK_THROWS_AS((void)adam.step(con, theta, Vec::Zero(5)), std::invalid_argument);
  CHECK_THROWS_AS((void)adam.step(con, theta, random_vec(6, 19)), SolveError);
  CHECK(theta == theta0);
}

namespace {
/// Brute-force simplex projection: every support set S, y_S = x_S − (Σx_S − t)/|S|, keep the
/// feasible candidate closest to x.
Vec brute_simplex(const Vec& x, double total) {
  const Index n = x.size();
  Vec best;
  double best_d = 1e300;
  for (unsigned mask = 1; mask < (1u << n); ++mask) {
    double sum = 0;
    int count = 0;
    for (Index i = 0; i < n; ++i)
      if (mask & (1u << i)) sum += x[i], ++count;
    const double shift = (sum - total) / count;
    Vec y = Vec::Zero(n);
    bool ok = true;
    for (Index i = 0; i < n; ++i)
      if (mask & (1u << i)) {
        y[i] = x[i] - shift;
        ok = ok && y[i] >= -1e-15;
      }
    if (ok && (y - x).norm() < best_d) best_d = (y - x).norm(), best = y;
  }
  return best;
}
}  // namespace

TEST_CASE("projections against brute force") {
  std::mt19937_64 gen(18);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform;
  for (int trial = 0; trial < 200; ++trial) {
    const Index n = 1 + trial % 8;
    Vec x(n);
    for (Index i = 0; i < n; ++i) x[i] = 2 * normal(gen);
    const double total = trial % 3 == 0 ? 1.0 : 0.5 + std::abs(normal(gen));
    const Vec y = project_simplex(x, total);
    CHECK((y - brute_simplex(x, total)).norm() < 1e-12);
    CHECK(y.minCoeff() >= 0);
    CHECK(y.sum() == doctest::Approx(total));
    // Box and non-negative: clamp is optimal coordinate-wise; check against a grid search.
    const Vec b = project_box(x, -0.5, 0.7);
    for (Index i = 0; i < n; ++i) {
      double best = -0.5, bd = 1e300;
      for (int s = 0; s <= 1200; ++s) {
        const double t = -0.5 + 1.2 * s / 1200.0;
        if (std::abs(t - x[i]) < bd) bd = std::abs(t - x[i]), best = t;
      }
      CHECK(std::abs(b[i] - best) <= 0.5e-3 + 1e-12);
    }
    CHECK(project_nonnegative(x) == project_box(x, 0.0, 1e300));
    // Ball: the projection is on the segment to the origin; no point of the ball is closer.
    const Vec p = project_ball(x, 0.8);
    CHECK(p.norm() <= 0.8 + 1e-12);
    for (int s = 0; s < 20; ++s) {
      Vec q(n);
      for (Index i = 0; i < n; ++i) q[i] = normal(gen);
      const double radius = 0.8 * std::pow(uniform(gen), 1.0 / double(n));  // inside the ball
      q *= radius / std::max(q.norm(), 1e-300);
      CHECK((p - x).norm() <= (q - x).norm() + 1e-12);
    }
  }
  CHECK_THROWS_AS(project_simplex(Vec::Zero(3), -1.0), std::invalid_argument);
  CHECK_THROWS_AS(project_box(Vec::Zero(3), 1.0, 0.0), std::invalid_argument);
  CHECK_THROWS_AS(project_ball(Vec::Zero(3), -1.0), std::invalid_argument);
  // Any real vector expression, its scalar deduced and evaluated once: a row, a strided Map, a
  // block, a product, float, int bounds; a matrix is refused.
  const Eigen::MatrixXd M = Eigen::MatrixXd::Random(4, 5);
  const Vec row = M.row(2).transpose();
  CHECK(project_simplex(M.row(2)) == project_simplex(row));
  const Eigen::Map<const Vec, 0, Eigen::InnerStride<4>> strided(M.data() + 2, 5);  // = row 2
  CHECK(project_ball(strided, 0.5) == project_ball(row, 0.5));
  const Vec product = M * row;
  CHECK(project_simplex(M * row, 2.0) == project_simplex(product, 2.0));
  CHECK_THROWS_AS(project_box(M, 0, 1), std::invalid_argument);
  CHECK(project_box(M.col(1).head(3), 0, 1) == project_box(Vec(M.col(1).head(3)), 0.0, 1.0));
  const Eigen::VectorXf xf = row.cast<float>();
  const Eigen::VectorXf pf = project_ball(xf, 0.5);
  CHECK(pf.norm() == doctest::Approx(std::min(0.5, row.norm())).epsilon(1e-6));
  CHECK(project_nonnegative(xf) == project_box(xf, 0, 1e30f));
}
