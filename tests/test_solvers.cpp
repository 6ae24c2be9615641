// LSQR, LSMR and CGLS against closed-form references (known SVD) and dense factorizations,
// for float, double, complex<float>, complex<double>; tall, wide, square, rank-deficient,
// damped, warm-started and preconditioned problems; the Harwell–Boeing problems.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <Eigen/SparseCore>
#include <difflsq/difflsq.hpp>
#include <filesystem>

#include "matrix_market.hpp"
#include "test_problems.hpp"

using namespace difflsq;
using namespace difflsq::test;

#define SCALARS float, double, std::complex<float>, std::complex<double>

namespace {

/// Tight tolerances for the precision: atol = btol = 10ε.
template <class Scalar>
Options<Scalar> tight() {
  using Real = RealOf<Scalar>;
  Options<Scalar> o;
  o.atol = o.btol = 10 * std::numeric_limits<Real>::epsilon();
  o.conlim = 0;
  o.max_iterations = 1000;
  return o;
}

/// Forward-error bound for a least-squares solve stopped at atol = btol = 10ε:
/// ‖δx‖/‖x‖ ≲ c·κ·ε + c·κ²·ε·‖r‖/(‖A‖‖x‖) [Golub & Van Loan, Thm 5.3.1]; c = 100 covers the
/// stopping tolerance and the accumulation over the iterations.
template <class Scalar>
double error_bound(double kappa, bool incompatible) {
  const double eps = std::numeric_limits<RealOf<Scalar>>::epsilon();
  return 100 * eps * kappa * (incompatible ? kappa : 1.0) + 100 * eps;
}

template <class Scalar>
void check_problem(Index m, Index n, double damp, Index zeros, unsigned seed) {
  const Index k = std::min(m, n);
  KnownSvdProblem<Scalar> p(m, n, spread(k, 10.0, zeros), seed);
  const auto ref = p.solution(damp);
  // With damping the effective condition number is that of [A; λI].
  const double smax = p.sigma.maxCoeff();
  const double smin_damped = std::sqrt(std::pow(zeros ? 0.0 : p.sigma.tail(1)[0], 2) + damp * damp);
  const double kappa = zeros && damp == 0 ? p.cond() : std::sqrt(smax * smax + damp * damp) /
                                                           (zeros ? damp : smin_damped);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    auto opts = tight<Scalar>();
    opts.damp = static_cast<RealOf<Scalar>>(damp);
    const auto res = solve(method, p.a, p.b, opts);
    CHECK(res.converged());
    CHECK(relative_error(res.x, ref) <= error_bound<Scalar>(kappa, m > n || damp > 0));
    // The reported residual norms agree with the true ones.
    const double r1 = (p.b.template cast<Wide<Scalar>>() - p.a_wide * res.x.template cast<Wide<Scalar>>()).norm();
    const double tol = 1e3 * std::numeric_limits<RealOf<Scalar>>::epsilon() * (1 + p.b.norm());
    CHECK(std::abs(static_cast<double>(res.r1norm) - r1) <= tol);
    const double r2 = std::sqrt(r1 * r1 + damp * damp * std::pow(double(res.x.norm()), 2));
    CHECK(std::abs(static_cast<double>(res.r2norm) - r2) <= tol);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("tall, wide and square problems match the known-SVD solution", Scalar, SCALARS) {
  SUBCASE("tall 60 x 20") { check_problem<Scalar>(60, 20, 0.0, 0, 1); }
  SUBCASE("wide 20 x 60: minimum-norm solution") { check_problem<Scalar>(20, 60, 0.0, 0, 2); }
  SUBCASE("square 30 x 30") { check_problem<Scalar>(30, 30, 0.0, 0, 3); }
  SUBCASE("tall, damped") { check_problem<Scalar>(60, 20, 0.7, 0, 4); }
  SUBCASE("wide, damped") { check_problem<Scalar>(20, 60, 0.7, 0, 5); }
  SUBCASE("rank-deficient, damped") { check_problem<Scalar>(50, 30, 0.5, 5, 6); }
  SUBCASE("rank-deficient, undamped: minimum-norm") { check_problem<Scalar>(50, 30, 0.0, 5, 7); }
}

TEST_CASE_TEMPLATE("a dense QR solve agrees (independent reference)", Scalar, double,
                   std::complex<double>) {
  std::mt19937_64 gen(11);
  const Mat<Scalar> a = random_matrix<Scalar>(80, 25, gen);
  const Vector<Scalar> b = random_vector<Scalar>(80, gen);
  const Vector<Scalar> ref = a.colPivHouseholderQr().solve(b);
  // Minimum norm, wide: complete orthogonal decomposition.
  const Mat<Scalar> w = a.adjoint();
  const Vector<Scalar> bw = random_vector<Scalar>(25, gen);
  const Vector<Scalar> ref_w = w.completeOrthogonalDecomposition().solve(bw);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    CHECK(relative_error(solve(method, a, b, tight<Scalar>()).x, ref) < 1e-10);
    CHECK(relative_error(solve(method, w, bw, tight<Scalar>()).x, ref_w) < 1e-10);
  }
}

TEST_CASE_TEMPLATE("x0: damping acts on x - x0, as in SciPy", Scalar, SCALARS) {
  KnownSvdProblem<Scalar> p(40, 15, spread(15, 10.0), 21);
  std::mt19937_64 gen(5);
  const Vector<Wide<Scalar>> x0 = random_vector<Wide<Scalar>>(15, gen);
  for (double damp : {0.0, 0.8}) {
    const auto ref = p.solution(damp, &x0);
    for (Method method : kMethods) {
      const std::string method_name = name(method);
    CAPTURE(method_name);
      CAPTURE(damp);
      auto opts = tight<Scalar>();
      opts.damp = static_cast<RealOf<Scalar>>(damp);
      opts.x0 = x0.template cast<Scalar>();
      const auto res = solve(method, p.a, p.b, opts);
      CHECK(res.converged());
      CHECK(relative_error(res.x, ref) <= error_bound<Scalar>(10.0, true));
    }
  }
}

TEST_CASE_TEMPLATE("column scaling does not change the solution and speeds up bad scaling",
                   Scalar, double, std::complex<double>) {
  KnownSvdProblem<Scalar> p(60, 20, spread(20, 5.0), 31);
  // Scale columns over six orders of magnitude: A S, whose solution is S⁻¹ x.
  Eigen::VectorXd s(20);
  for (Index j = 0; j < 20; ++j) s[j] = std::pow(10.0, double(j % 7) - 3);
  const Mat<Scalar> as = p.a * s.cast<Scalar>().asDiagonal();
  for (double damp : {0.0, 0.3}) {
    // Reference: the damped problem on A S, by dense least squares on [A S; λ I].
    Mat<Scalar> aug(80, 20);
    aug << as, Mat<Scalar>::Identity(20, 20) * Scalar(damp);
    Vector<Scalar> baug(80);
    baug << p.b, Vector<Scalar>::Zero(20);
    const Vector<Scalar> ref = aug.colPivHouseholderQr().solve(baug);
    const auto d = column_scaling(as);
    for (Method method : kMethods) {
      const std::string method_name = name(method);
    CAPTURE(method_name);
      CAPTURE(damp);
      auto plain = tight<Scalar>();
      plain.damp = damp;
      plain.max_iterations = 20000;
      auto pre = plain;
      pre.column_scaling = d;
      const auto r_plain = solve(method, as, p.b, plain);
      const auto r_pre = solve(method, as, p.b, pre);
      CHECK(r_pre.converged());
      CHECK(relative_error(r_pre.x, ref) < 1e-8);
      CHECK(r_pre.iterations < r_plain.iterations);
      // Reported norms refer to the original problem.
      const double r1 = (p.b - as * r_pre.x).norm();
      CHECK(std::abs(double(r_pre.r1norm) - r1) < 1e-8 * (1 + r1));
    }
  }
}

TEST_CASE("column scaling of a tiny matrix: the stopping tests use one coordinate system") {
  // Regression: with A = 1e-9·M and d = 1/‖columns‖, ‖A D‖ ≈ 1 while ‖x‖ ≈ 1e9; mixing
  // ‖A D‖ with the unscaled ‖x‖ in test 1 stopped LSMR and CGLS after one iteration.
  KnownSvdProblem<double> p(40, 10, spread(10, 4.0), 41);
  const Eigen::MatrixXd a = p.a * 1e-9;
  const Eigen::VectorXd ref = a.colPivHouseholderQr().solve(p.b);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    Options<double> o;
    o.column_scaling = column_scaling(a);
    o.max_iterations = 200;
    const auto r = solve(method, a, p.b, o);
    CHECK(r.converged());
    CHECK(relative_error(r.x, ref) < 1e-4);
  }
}

TEST_CASE("column scaling with many solutions: the smallest |D^-1 (x - x0)|, as documented") {
  // Undamped, a wide A: the scaled solve returns the solution nearest x0 in the D⁻¹ norm, not
  // the minimum-norm one (docs/solvers.md); both solve Ax = b. Reference: pinv(A D) in y.
  Eigen::MatrixXd a(2, 3);
  a << 1, 0, 100, 0, 1, 0;
  // Dynamic vectors: GCC 12 reports a false -Warray-bounds on fixed-size ones copied here.
  Eigen::VectorXd b(2), x0(3), d_expected(3), x_expected(3);
  b << 1, 1;
  x0 << 0.3, -2, 0.1;
  d_expected << 1, 1, 0.01;
  x_expected << 0.5, 1, 0.005;
  const Eigen::VectorXd d = column_scaling(a);
  CHECK((d - d_expected).norm() < 1e-15);
  const Eigen::MatrixXd ad = a * d.asDiagonal();
  for (const bool with_x0 : {false, true}) {
    const Eigen::VectorXd start = with_x0 ? x0 : Eigen::VectorXd::Zero(3);
    const Eigen::VectorXd y = ad.completeOrthogonalDecomposition().solve(b - a * start);
    const Eigen::VectorXd ref = start + d.asDiagonal() * y;
    for (Method method : kMethods) {
      CAPTURE(name(method));
      CAPTURE(with_x0);
      Options<double> o{.atol = 1e-12, .btol = 1e-12};
      o.column_scaling = d;
      if (with_x0) o.x0 = x0;
      const auto r = solve(method, a, b, o);
      CHECK(r.converged());
      CHECK((r.x - ref).norm() < 1e-10);
      if (!with_x0) CHECK((r.x - x_expected).norm() < 1e-10);
    }
  }
}

TEST_CASE("sparse (row- and column-major), dense (both orders) and callbacks agree") {
  std::mt19937_64 gen(3);
  std::uniform_real_distribution<double> unif(-1, 1);
  std::bernoulli_distribution keep(0.1);
  std::vector<Eigen::Triplet<double>> t;
  for (int i = 0; i < 300; ++i) {
    t.emplace_back(i, i % 100, 2.0);
    for (int j = 0; j < 100; ++j)
      if (keep(gen)) t.emplace_back(i, j, unif(gen));
  }
  Eigen::SparseMatrix<double, Eigen::ColMajor> csc(300, 100);
  csc.setFromTriplets(t.begin(), t.end());
  const Eigen::SparseMatrix<double, Eigen::RowMajor> csr = csc;
  const Eigen::MatrixXd dense = Eigen::MatrixXd(csc);
  const Eigen::Matrix<double, -1, -1, Eigen::RowMajor> dense_rm = dense;
  Eigen::VectorXd b(300);
  for (auto& v : b) v = unif(gen);
  const Eigen::VectorXd ref = dense.colPivHouseholderQr().solve(b);
  auto op = make_operator(300, 100, [&](const auto& x, auto& y) { y.noalias() = csr * x; },
                          [&](const auto& u, auto& v) { v.noalias() = csr.transpose() * u; });
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    const auto o = tight<double>();
    const auto r1 = solve(method, csc, b, o), r2 = solve(method, csr, b, o),
               r3 = solve(method, dense, b, o), r4 = solve(method, dense_rm, b, o),
               r5 = solve(method, op, b, o);
    for (const auto* r : {&r1, &r2, &r3, &r4, &r5}) {
      CHECK(r->converged());
      CHECK(relative_error(r->x, ref) < 1e-10);
      CHECK(std::abs(r->iterations - r1.iterations) <= 2);
    }
  }
}

TEST_CASE("LSQR and LSMR count operator applications: one A and one A^H per iteration") {
  KnownSvdProblem<double> p(50, 20, spread(20, 30.0), 9);
  for (Method method : kMethods) {
    const auto r = solve(method, p.a, p.b, tight<double>());
    const std::string method_name = name(method);
    CAPTURE(method_name);
    CHECK(r.matvecs == r.iterations);
    CHECK(r.rmatvecs == r.iterations + 1);
  }
}

TEST_CASE("calc_var estimates diag((A^T A + damp^2 I)^-1) (LSQR)") {
  // The estimate is exact once the Krylov space is complete, after n iterations.
  KnownSvdProblem<double> p(40, 12, spread(12, 5.0), 17);
  for (double damp : {0.0, 0.5}) {
    Options<double> o{.damp = damp, .atol = 0, .btol = 0, .conlim = 0, .max_iterations = 12};
    o.calc_var = true;
    const auto r = lsqr(p.a, p.b, o);
    CHECK(r.iterations == 12);
    const Eigen::MatrixXd n =
        p.a.transpose() * p.a + damp * damp * Eigen::MatrixXd::Identity(12, 12);
    const Eigen::VectorXd ref = n.inverse().diagonal();
    CHECK((r.var - ref).norm() <= 1e-6 * ref.norm());
  }
}

#ifdef DIFFLSQ_HB_DATA_DIR
TEST_CASE("Harwell-Boeing least-squares problems against a dense QR solve") {
  namespace fs = std::filesystem;
  const fs::path dir = DIFFLSQ_HB_DATA_DIR;
  for (const char* name_ : {"well1033", "illc1033", "well1850", "illc1850"}) {
    const fs::path a_path = dir / (std::string(name_) + ".mtx.gz");
    const fs::path b_path = dir / (std::string(name_) + "_rhs1.mtx.gz");
    if (!fs::exists(a_path) || !fs::exists(b_path)) continue;
    CAPTURE(name_);
    const auto a = io::read_matrix_market(a_path.string()).real;
    const Eigen::VectorXd b =
        io::to_real_vector(io::read_matrix_market(b_path.string()), b_path.string());
    const Eigen::MatrixXd dense(a);
    const Eigen::VectorXd ref = dense.colPivHouseholderQr().solve(b);
    const Eigen::JacobiSVD<Eigen::MatrixXd> svd(dense);
    const double kappa = svd.singularValues()(0) / svd.singularValues().tail(1)(0);
    const Eigen::SparseMatrix<double, Eigen::RowMajor> csr = a;
    for (Method method : {Method::Lsqr, Method::Lsmr}) {
      const std::string method_name = name(method);
    CAPTURE(method_name);
      Options<double> o;
      o.atol = o.btol = 1e-14;
      o.conlim = 1e12;
      o.max_iterations = 20 * a.cols();
      const auto r = solve(method, csr, b, o);
      CHECK(r.status != Status::NonFinite);
      // Normal-equations residual relative to ‖A‖‖r‖ is what atol controls; the forward error
      // is then bounded by κ times it (κ ≈ 1e4 for illc).
      const Eigen::VectorXd res = b - csr * r.x;
      const double normal_residual = (csr.transpose() * res).norm() /
                                     (svd.singularValues()(0) * res.norm());
      CHECK(normal_residual < 1e-10);
      CHECK(relative_error(r.x, ref) < 1e-12 * kappa * kappa + 1e-10);
    }
  }
}
#endif
