// The differentiable layer (layer.hpp): reverse and forward mode against finite differences of
// a dense solve (complete orthogonal decomposition of [A; λI]) and against dense formulas.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <difflsq/difflsq.hpp>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "test_problems.hpp"

using namespace difflsq;
using difflsq::test::KnownSvdProblem;
using difflsq::test::kMethods;
using difflsq::test::name;
using difflsq::test::spread;

namespace {

using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;

template <class S>
using DMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using DVec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

/// argmin ‖Ax − b‖² + λ²‖x‖², minimum-norm: a dense reference independent of the Krylov code
/// (real or complex).
template <class S>
DVec<S> dense_solution(const DMat<S>& a, const std::type_identity_t<DVec<S>>& b, double lam) {
  if (lam == 0) return a.completeOrthogonalDecomposition().solve(b);
  DMat<S> aug(a.rows() + a.cols(), a.cols());
  aug << a, lam * DMat<S>::Identity(a.cols(), a.cols());
  DVec<S> rhs = DVec<S>::Zero(aug.rows());
  rhs.head(a.rows()) = b;
  return aug.colPivHouseholderQr().solve(rhs);
}

/// Central difference of x along (dA, db, dλ).
template <class S>
DVec<S> fd_direction(const DMat<S>& a, const std::type_identity_t<DVec<S>>& b, double lam,
                     const std::type_identity_t<DMat<S>>& da,
                     const std::type_identity_t<DVec<S>>& db, double dl, double h = 1e-6) {
  return (dense_solution<S>(a + h * da, b + h * db, lam + h * dl) -
          dense_solution<S>(a - h * da, b - h * db, lam - h * dl)) /
         (2 * h);
}

/// ∂⟨x̄, x⟩/∂A, ∂/∂b, ∂/∂λ by central differences, entry by entry.
struct FdGradient {
  Mat a;
  Vec b;
  double lam = 0;
};
FdGradient fd_gradient(const Mat& a, const Vec& b, double lam, const Vec& xbar) {
  FdGradient g{Mat(a.rows(), a.cols()), Vec(b.size()), 0};
  const Mat za = Mat::Zero(a.rows(), a.cols());
  const Vec zb = Vec::Zero(b.size());
  for (Index j = 0; j < a.cols(); ++j)
    for (Index i = 0; i < a.rows(); ++i) {
      Mat e = za;
      e(i, j) = 1;
      g.a(i, j) = xbar.dot(fd_direction(a, b, lam, e, zb, 0));
    }
  for (Index i = 0; i < b.size(); ++i) g.b[i] = xbar.dot(fd_direction(a, b, lam, za, Vec::Unit(b.size(), i), 0));
  if (lam > 0) g.lam = xbar.dot(fd_direction(a, b, lam, za, zb, 1));
  return g;
}

template <class Scalar>
Mat a_bar(const Gradients<Scalar>& g, Index m, Index n) {
  Mat out = Mat::Zero(m, n);
  for (const auto& [u, v] : g.a_terms) out += u.template cast<double>() * v.template cast<double>().transpose();
  return out;
}

double rel(const Mat& x, const Mat& ref) {
  const double nr = ref.norm();
  return nr > 0 ? (x - ref).norm() / nr : (x - ref).norm();
}

LeastSquaresOptions<double> tight(Method method) {
  LeastSquaresOptions<double> o;
  o.method = method;
  o.forward = {.atol = 1e-14, .btol = 1e-14, .conlim = 0, .max_iterations = 2000};
  return o;
}

Vec random_vec(Index n, unsigned seed) {
  std::mt19937_64 gen(seed);
  return difflsq::test::random_vector<double>(n, gen);
}

/// The matrix of a 1-D convolution by definition: the full convolution f_i = Σ_t k_t x_{i−t}
/// of each unit vector, windowed as NumPy's convolve modes do (full, same, valid).
template <class S>
DMat<S> convolution_matrix(const DVec<S>& k, Index n, ConvolutionMode mode) {
  const Index p = k.size(), full = n + p - 1;
  DMat<S> f = DMat<S>::Zero(full, n);
  for (Index s = 0; s < n; ++s)
    for (Index t = 0; t < p; ++t) f(s + t, s) += k[t];
  if (mode == ConvolutionMode::Full) return f;
  if (mode == ConvolutionMode::Same) return f.middleRows((p - 1) / 2, n);
  return f.middleRows(p - 1, n - p + 1);
}
static_assert(ParameterizedOperator<Convolution<double>>);
static_assert(ParameterizedOperator<Convolution<std::complex<float>>>);
static_assert(ParameterizedOperator<MatrixParameters<Mat>>);

/// The (total − |skip|) × total matrix S that keeps the indices not in skip: B S has zero
/// columns there and Sᵀ B zero rows, so the null space is exact in floating point.
Mat selection(Index total, std::initializer_list<Index> skip) {
  Mat s = Mat::Zero(total - Index(skip.size()), total);
  for (Index j = 0, k = 0; j < total; ++j)
    if (std::find(skip.begin(), skip.end(), j) == skip.end()) s(k++, j) = 1;
  return s;
}

struct Case {
  const char* name;
  Index m, n, rank;
  double lam;
};

}  // namespace

TEST_CASE("layer: reverse mode matches finite differences of a dense solve") {
  const Case cases[] = {
      {"tall", 9, 5, 5, 0.0},          {"tall damped", 9, 5, 5, 0.3},
      {"wide", 5, 9, 5, 0.0},          {"wide damped", 5, 9, 5, 0.3},
      {"square", 6, 6, 6, 0.0},        {"square damped", 6, 6, 6, 0.5},
      {"tall rank-deficient damped", 10, 6, 4, 0.4},
      {"wide rank-deficient damped", 6, 10, 4, 0.4},
      {"square rank-deficient damped", 7, 7, 5, 0.2},
  };
  for (const Case& c : cases) {
    const Index k = std::min(c.m, c.n);
    const KnownSvdProblem<double> p(c.m, c.n, spread(k, 10.0, k - c.rank), 11u + unsigned(c.m));
    const Vec xbar = random_vec(c.n, 5);
    const FdGradient ref = fd_gradient(p.a, p.b, c.lam, xbar);
    for (Method method : kMethods) {
      const std::string case_name = c.name;
    CAPTURE(case_name);
      CAPTURE(name(method));
      LeastSquares<double> layer(tight(method));
      auto op = parameterized(p.a);
      auto fwd = layer.forward(op, p.b, c.lam);
      CHECK(test::relative_error(fwd.x, dense_solution(p.a, p.b, c.lam)) < 1e-9);
      const auto g = layer.backward(fwd, xbar);
      CHECK(g.converged());
      CHECK(g.solves.size() <= 3);
      CHECK(rel(g.b, ref.b) < 1e-6);
      CHECK(rel(a_bar(g, c.m, c.n), ref.a) < 1e-6);
      // θ̄ of the dense adapter is Ā in column-major order.
      CHECK(rel(Eigen::Map<const Mat>(g.theta.data(), c.m, c.n), ref.a) < 1e-6);
      if (c.lam > 0) CHECK(std::abs(g.damp - ref.lam) < 1e-6 * (1 + std::abs(ref.lam)));
      else CHECK(g.damp == 0);
    }
  }
}

TEST_CASE("layer: at most two extra solves when A has full rank") {
  for (const Case& c : {Case{"tall", 12, 6, 6, 0.0}, Case{"tall damped", 12, 6, 6, 0.1},
                        Case{"wide", 6, 12, 6, 0.0}, Case{"wide damped", 6, 12, 6, 0.1}}) {
    const std::string case_name = c.name;
    CAPTURE(case_name);
    const KnownSvdProblem<double> p(c.m, c.n, spread(6, 20.0), 3u);
    LeastSquares<double> layer(tight(Method::Lsqr));
    auto op = parameterized(p.a);
    auto fwd = layer.forward(op, p.b, c.lam);
    const auto g = layer.backward(fwd, random_vec(c.n, 9));
    CHECK(g.solves.size() == (c.lam > 0 ? 1 : 2));  // (G12); wide: λ = 0.1 is strong damping (G11)
  }
}

namespace {
/// The reverse rule by dense linear algebra: y = (AᵀA + λ²I)⁻¹x̄ from the augmented system
/// [A; λI] y ≈ [0; x̄/λ] (accurate: its condition number is that of the damped problem).
struct DenseGradients {
  Mat a;
  Vec b;
  double lam;
};
DenseGradients dense_gradients(const Mat& a, const Vec& b, double lam, const Vec& xbar) {
  Mat aug(a.rows() + a.cols(), a.cols());
  aug << a, lam * Mat::Identity(a.cols(), a.cols());
  Vec rhs = Vec::Zero(aug.rows());
  rhs.tail(a.cols()) = xbar / lam;
  const auto qr = aug.colPivHouseholderQr();
  const Vec y = qr.solve(rhs);
  const Vec x = dense_solution(a, b, lam), r = b - a * x, bbar = a * y;
  return {r * y.transpose() - bbar * x.transpose(), bbar, -2 * lam * x.dot(y)};
}
}  // namespace

TEST_CASE("layer: ill-conditioned A with damping, and small damping of a rank-deficient A") {
  // A Gaussian blur (cond ≈ 3e13) with λ = 0.1: the damped problem is well conditioned, and the
  // gradient must be as accurate as the solves (one backward solve, G12).
  Mat blur(60, 30);
  for (Index i = 0; i < 60; ++i)
    for (Index j = 0; j < 30; ++j) {
      const double t = double(i) / 59, u = double(j) / 29;
      blur(i, j) = std::exp(-(t - u) * (t - u) / 0.02);
    }
  const Vec b = random_vec(60, 30), xbar = random_vec(30, 31);
  // Small damping of a rank-deficient A: y has a null-space part of size 1/λ², which the one
  // backward solve (G12) carries without dividing by λ².
  const KnownSvdProblem<double> p(10, 6, spread(6, 10.0, 2), 32u);
  struct Item {
    const char* name;
    Mat a;
    Vec b;
    double lam;
    double accuracy;  // 1e-7 at tolerances 1e-14; at the default 1e-6, 1e-2
  };
  // The blur at λ = 0.01 and default tolerances: a split of x̄ (G5) would need an undamped solve
  // with the blur and leave errors of 4e-2 (measured); the one solve with [Aᵀ λI] stays within
  // the forward solve's own error (its x is off by about 1e-2 on such a blur at these
  // tolerances, measured with SciPy's LSMR).
  for (const Item& c : {Item{"blur", blur, b, 0.1, 1e-7}, Item{"blur", blur, b, 0.01, 1e-2},
                        Item{"rank-deficient", p.a, p.b, 1e-3, 1e-7}}) {
    const std::string case_name = c.name;
    CAPTURE(case_name);
    CAPTURE(c.lam);
    const Vec w = c.name == std::string("blur") ? xbar : random_vec(6, 33);
    for (Method method : {Method::Lsqr, Method::Lsmr}) {
      LeastSquares<double> layer(c.accuracy < 1e-6 ? tight(method)
                                                   : LeastSquaresOptions<double>{.method = method});
      auto op = parameterized(c.a);
      auto fwd = layer.forward(op, c.b, c.lam);
      const auto g = layer.backward(fwd, w);
      CHECK(g.converged());
      const DenseGradients ref = dense_gradients(c.a, c.b, c.lam, w);
      CHECK(rel(a_bar(g, c.a.rows(), c.a.cols()), ref.a) < c.accuracy);
      CHECK(rel(g.b, ref.b) < c.accuracy);
      CHECK(g.solves.size() == 1);
      if (case_name == "blur") {
        // λ̄ = −2λ⟨x, y⟩ inherits the forward x's error (about 1e-2 at tolerance 1e-6 here).
        if (c.accuracy < 1e-6) CHECK(std::abs(g.damp - ref.lam) < c.accuracy * std::abs(ref.lam));
      } else {
        // λ̄ = −2λ⟨x, y⟩ from the known SVD (y's null-space part, of size 1/λ², is ⟂ x; the
        // dense y carries it with an absolute rounding error that swamps λ̄ here).
        Vec coef = p.v.transpose() * w;
        for (Index i = 0; i < coef.size(); ++i) coef[i] /= p.sigma[i] * p.sigma[i] + c.lam * c.lam;
        const double lam_bar = -2 * c.lam * p.solution(c.lam).dot(p.v * coef);
        CHECK(std::abs(g.damp - lam_bar) < 1e-7 * std::abs(lam_bar));
      }
    }
  }
}

TEST_CASE("layer: tiny damping of a rank-deficient tall A at default tolerances") {
  // y = (AᵀA + λ²I)⁻¹x̄ has a null-space part q/λ² that dominates Ā and ẋ. The one solve of
  // (G12) cannot resolve it: with atol = 1e-6 its test 2 stops at once (λ ≪ atol·‖A‖), at
  // λ = 1e-10 so may conlim; the split (G5) then finds q by subtraction. A = B S has three zero columns (S
  // selects B's 27 columns into 30), so that its null space is exact in floating point: an
  // A = UΣVᵀ with zero σ has σ ≈ 1e-15 instead, and σ/λ² would make b̄ ill-defined.
  const KnownSvdProblem<double> p(60, 27, spread(27, 10.0), 61u);
  const Mat sel = selection(30, {5, 17, 29});
  const Mat a = p.a * sel;
  std::mt19937_64 gen(62);
  const Vec xbar = test::random_vector<double>(30, gen), db = test::random_vector<double>(60, gen);
  const Mat da = test::random_matrix<double>(60, 30, gen);
  const double dl = 0.5;
  for (const double lam : {1e-5, 1e-6, 1e-10}) {
    CAPTURE(lam);
    // (AᵀA + λ²I)⁻¹g = Sᵀ V(Σ² + λ²)⁻¹Vᵀ S g + (I − SᵀS) g/λ², from B's known SVD.
    auto normal_inverse = [&](const Vec& g) {
      Vec coef = p.v.transpose() * (sel * g);
      for (Index i = 0; i < coef.size(); ++i) coef[i] /= p.sigma[i] * p.sigma[i] + lam * lam;
      return Vec(sel.transpose() * (p.v * coef) + (g - sel.transpose() * (sel * g)) / (lam * lam));
    };
    const Vec x = sel.transpose() * p.solution(lam), r = p.b - a * x, y = normal_inverse(xbar);
    Vec coef = p.v.transpose() * (sel * xbar);  // b̄ = A y = U Σ(Σ² + λ²)⁻¹Vᵀ S x̄
    for (Index i = 0; i < coef.size(); ++i)
      coef[i] *= p.sigma[i] / (p.sigma[i] * p.sigma[i] + lam * lam);
    const Vec bbar = p.u * coef;
    const Mat abar = r * y.transpose() - bbar * x.transpose();  // (G2)
    const double lam_bar = -2 * lam * x.dot(y);                 // (G4)
    // ẋ = (AᵀA + λ²I)⁻¹(Aᵀ(ḃ − Ȧx) + Ȧᵀr − 2λλ̇x) (G8).
    const Vec xdot =
        normal_inverse(a.transpose() * (db - da * x) + da.transpose() * r - 2 * lam * dl * x);
    for (Method method : kMethods) {
      CAPTURE(name(method));
      LeastSquares<double> layer({.method = method});  // atol = btol = 1e-6, conlim = 1e8
      auto op = parameterized(a);
      auto fwd = layer.forward(op, p.b, lam);
      const auto g = layer.backward(fwd, xbar);
      CHECK(g.converged());
      // At λ = 1e-6 and 1e-10 the split (G5), after a G12 solve that test 2 or conlim stopped
      // (not listed). At λ = 1e-5 the G12 solve's test 1 may pass by its atol term with a
      // residual far above btol‖x̄‖ (q/λ² then 12% wrong): it must go on to btol or split
      // (after it, when rounding swamps b̄).
      CHECK(g.solves.size() <= 3);
      CHECK(rel(a_bar(g, 60, 30), abar) < 1e-4);
      CHECK(rel(g.b, bbar) < 1e-4);
      CHECK(std::abs(g.damp - lam_bar) < 1e-4 * std::abs(lam_bar));
      const Vec theta_dot = Eigen::Map<const Vec>(da.data(), da.size());
      const auto t = layer.jvp(fwd, {.theta = theta_dot, .b = db, .damp = dl});
      CHECK(t.converged());
      CHECK(test::relative_error(t.x, xdot) < 1e-4);
    }
  }
}

TEST_CASE("layer: wide rank-deficient A, b outside range(A), tiny damping: λ̄ and λ̇") {
  // A = Sᵀ B has three zero rows, so r has a part r_N in N(Aᵀ) and z = r/λ² a part r_N/λ²;
  // that part is orthogonal to b̄ and invisible to A, and must not enter λ̄ = −2λ⟨z, b̄⟩ or
  // the jvp's right-hand side c − 2λλ̇z (G9): with a tiny λ its rounding alone is O(1).
  const KnownSvdProblem<double> p(27, 60, spread(27, 10.0), 71u);
  const Index zero_rows[] = {3, 11, 28};
  const Mat sel = selection(30, {zero_rows[0], zero_rows[1], zero_rows[2]});
  const Mat a = sel.transpose() * p.a;
  std::mt19937_64 gen(72);
  Vec b = sel.transpose() * p.b;
  for (const Index i : zero_rows) b[i] = 1.0 + double(i) / 10;
  const Vec xbar = test::random_vector<double>(60, gen);
  // λ ≥ 1e-3: z from (G13), with its part r_N/λ² (the jvp's tolerance scaling keeps that part
  // from stopping its solve early: ẋ was 66% wrong at 1e-3 without it); smaller λ: (G9).
  for (const double lam : {1e-1, 1e-3, 1e-6, 1e-8, 1e-10}) {
    CAPTURE(lam);
    // (BᵀB + λ²I)⁻¹ on range(Bᵀ) = V(Σ² + λ²)⁻¹Vᵀ; x lies there, so λ̄ and ẋ need no more.
    auto range_inverse = [&](const Vec& g) {
      Vec coef = p.v.transpose() * g;
      for (Index i = 0; i < coef.size(); ++i) coef[i] /= p.sigma[i] * p.sigma[i] + lam * lam;
      return Vec(p.v * coef);
    };
    const Vec x = p.solution(lam);
    const double lam_bar = -2 * lam * x.dot(range_inverse(xbar));  // (G4)
    const Vec xdot = -2 * lam * range_inverse(x);                  // (G8) with λ̇ = 1
    for (Method method : kMethods) {
      CAPTURE(name(method));
      LeastSquares<double> layer({.method = method});
      auto op = parameterized(a);
      auto fwd = layer.forward(op, b, lam);
      const auto g = layer.backward(fwd, xbar);
      CHECK(g.converged());
      // Default tolerances (1e-6): errors of about 1e-5; the N(Aᵀ) part gave 5× and O(1).
      CHECK(std::abs(g.damp - lam_bar) < 1e-4 * std::abs(lam_bar));
      const auto t = layer.jvp(fwd, {.damp = 1.0});
      CHECK(t.converged());
      CHECK(test::relative_error(t.x, xdot) < 1e-4);
    }
  }
}

TEST_CASE("layer: a dual solve that did not converge is reported by every rule that reuses it") {
  // Wide, cond(A) = 1e6, backward solves limited to 3 iterations: the dual solve (G13) stops
  // short. With x̄ = 0 and θ̇ = 0 the other solves converge at once. Under Warn, backward warns
  // and keeps z; a later jvp on the same forward pass must report that solve again, not claim
  // success.
  const KnownSvdProblem<double> p(20, 40, spread(20, 1e6), 81u);
  LeastSquaresOptions<double> o{.method = Method::Lsmr};
  o.backward = Tolerances<double>{.max_iterations = 3};
  std::vector<std::string> warnings;
  o.on_failure = FailurePolicy::Warn;
  o.warn = [&](const std::string& s) { warnings.push_back(s); };
  LeastSquares<double> layer(o);
  auto op = parameterized(p.a);
  auto fwd = layer.forward(op, p.b, 1e4);
  REQUIRE(fwd.report.converged());
  const auto g = layer.backward(fwd, Vec::Zero(40));
  REQUIRE(!g.converged());
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("dual") != std::string::npos);
  const auto t = layer.jvp(fwd, {.theta = Vec::Zero(20 * 40)});
  CHECK(!t.converged());
  CHECK(warnings.size() == 2);
  CHECK(std::string(t.solves.front().role).find("dual") != std::string::npos);
}

TEST_CASE("layer: wide ill-conditioned A, weak damping: the dual is as well conditioned as (1)") {
  // cond(A) = 1e6 and λ = 1e-2‖A‖: the damped problem has cond about 100 and the forward solve
  // takes some 13 iterations, while z_R = (Aᵀ)⁺x by an undamped solve (G9) needs cond(A) and
  // reached its iteration limit (SolveError by default). (G13) takes z from [A λI] w = b.
  const KnownSvdProblem<double> p(20, 40, spread(20, 1e6), 81u);
  const double lam = 1e4;
  std::mt19937_64 gen(82);
  const Vec xbar = test::random_vector<double>(40, gen);
  const DenseGradients ref = dense_gradients(p.a, p.b, lam, xbar);
  Vec coef = p.u.transpose() * p.b;  // ẋ along λ̇ = 1: V diag(−2λσ/(σ² + λ²)²) Uᵀb
  for (Index i = 0; i < coef.size(); ++i) {
    const double s = p.sigma[i], d = s * s + lam * lam;
    coef[i] *= -2 * lam * s / (d * d);
  }
  const Vec xdot = p.v * coef;
  for (Method method : kMethods) {
    CAPTURE(name(method));
    LeastSquares<double> layer({.method = method});  // default tolerances 1e-6, policy Raise
    auto op = parameterized(p.a);
    auto fwd = layer.forward(op, p.b, lam);
    const auto g = layer.backward(fwd, xbar);
    CHECK(g.converged());
    REQUIRE(g.solves.size() == 2);
    CHECK(std::string(g.solves[1].role).find("dual") != std::string::npos);
    CHECK(g.solves[1].report.iterations < 2 * fwd.report.iterations);
    CHECK(rel(a_bar(g, 20, 40), ref.a) < 1e-4);  // measured 1e-6
    CHECK(rel(g.b, ref.b) < 1e-4);                // 2e-5, the forward solve's level
    CHECK(std::abs(g.damp - ref.lam) < 1e-3 * std::abs(ref.lam));  // 1e-4
    const auto t = layer.jvp(fwd, {.damp = 1.0});
    CHECK(t.converged());
    CHECK(test::relative_error(t.x, xdot) < 1e-4);  // 2e-6
  }
}

TEST_CASE("layer: the forward solve's default iteration limit lets ordinary problems converge") {
  // Random square problems take up to 1.7·min(m, n) iterations in floating point; LSMR's
  // SciPy default min(m, n) stopped all of these, the layer's default 4·min(m, n) does not.
  Index most = 0;
  for (unsigned seed = 0; seed < 5; ++seed) {
    std::mt19937_64 gen(90 + seed);
    const Mat a = test::random_matrix<double>(100, 100, gen);
    const Vec b = test::random_vector<double>(100, gen);
    LeastSquares<double> layer({.method = Method::Lsmr});
    auto op = parameterized(a);
    const auto fwd = layer.forward(op, b, 0.0);
    CHECK(fwd.report.converged());
    CHECK(fwd.report.iterations <= 400);
    // Square and nonsingular: test 1 met, so ‖b − Ax‖ ≤ btol‖b‖ + atol‖A‖‖x‖ (1e-6 each).
    CHECK((b - a * fwd.x).norm() <= 2e-6 * (b.norm() + a.norm() * fwd.x.norm()));
    most = std::max(most, fwd.report.iterations);
  }
  CHECK(most > 100);
}

TEST_CASE("layer: undamped rank-deficient A, derivative along rank-preserving directions") {
  // x = A⁺b is differentiable along perturbations that keep the rank (A(I + tM), (I + tM)A);
  // the rule adds the Golub–Pereyra term with a third solve.
  for (const Case& c : {Case{"tall", 10, 6, 4, 0.0}, Case{"wide", 6, 10, 4, 0.0}}) {
    const std::string case_name = c.name;
    CAPTURE(case_name);
    const KnownSvdProblem<double> p(c.m, c.n, spread(6, 10.0, 2), 21u);
    const Vec xbar = random_vec(c.n, 6);
    LeastSquares<double> layer(tight(Method::Lsmr));
    auto op = parameterized(p.a);
    auto fwd = layer.forward(op, p.b, 0.0);
    const auto g = layer.backward(fwd, xbar);
    CHECK(g.converged());
    const Mat abar = a_bar(g, c.m, c.n);
    std::mt19937_64 gen(4);
    for (int trial = 0; trial < 3; ++trial) {
      const Mat right = p.a * test::random_matrix<double>(c.n, c.n, gen);
      const Mat left = test::random_matrix<double>(c.m, c.m, gen) * p.a;
      for (const Mat& da : {right, left}) {
        const double fd = xbar.dot(fd_direction(p.a, p.b, 0, da, Vec::Zero(c.m), 0));
        const double ad = (abar.array() * da.array()).sum();
        CHECK(std::abs(ad - fd) < 1e-6 * (1 + std::abs(fd)));
      }
    }
  }
}

TEST_CASE("layer: damping → 0 at full rank stays accurate") {
  for (const Case& c : {Case{"tall", 10, 6, 6, 1e-7}, Case{"wide", 6, 10, 6, 1e-7}}) {
    const std::string case_name = c.name;
    CAPTURE(case_name);
    const KnownSvdProblem<double> p(c.m, c.n, spread(6, 10.0), 8u);
    const Vec xbar = random_vec(c.n, 2);
    const FdGradient ref = fd_gradient(p.a, p.b, 0.0, xbar);  // the λ = 0 gradient
    LeastSquares<double> layer(tight(Method::Lsqr));
    auto op = parameterized(p.a);
    auto fwd = layer.forward(op, p.b, c.lam);
    const auto g = layer.backward(fwd, xbar);
    CHECK(rel(a_bar(g, c.m, c.n), ref.a) < 1e-6);
    CHECK(rel(g.b, ref.b) < 1e-6);
    CHECK(std::abs(g.damp) < 1e-5);
  }
}

TEST_CASE("layer: forward mode matches finite differences and is the transpose of reverse mode") {
  const Case cases[] = {
      {"tall", 9, 5, 5, 0.0},
      {"tall damped", 9, 5, 5, 0.3},
      {"wide", 5, 9, 5, 0.0},
      {"wide damped", 5, 9, 5, 0.3},
      {"square damped", 6, 6, 6, 0.5},
      {"tall rank-deficient damped", 10, 6, 4, 0.4},
      {"wide rank-deficient damped", 6, 10, 4, 0.4},
  };
  std::mt19937_64 gen(17);
  for (const Case& c : cases) {
    const Index k = std::min(c.m, c.n);
    const KnownSvdProblem<double> p(c.m, c.n, spread(k, 10.0, k - c.rank), 31u + unsigned(c.n));
    const Mat da = test::random_matrix<double>(c.m, c.n, gen);
    const Vec db = test::random_vector<double>(c.m, gen);
    const double dl = c.lam > 0 ? 0.7 : 0.0;
    const Vec ref = fd_direction(p.a, p.b, c.lam, da, db, dl);
    const Vec xbar = test::random_vector<double>(c.n, gen);
    for (Method method : kMethods) {
      const std::string case_name = c.name;
    CAPTURE(case_name);
      CAPTURE(name(method));
      LeastSquares<double> layer(tight(method));
      auto op = parameterized(p.a);
      auto fwd = layer.forward(op, p.b, c.lam);
      const Vec theta_dot = Eigen::Map<const Vec>(da.data(), da.size());
      const auto t = layer.jvp(fwd, {.theta = theta_dot, .b = db, .damp = dl});
      CHECK(t.converged());
      CHECK(test::relative_error(t.x, ref) < 1e-6);
      // ⟨x̄, ẋ⟩ = ⟨Ā, Ȧ⟩ + ⟨b̄, ḃ⟩ + λ̄λ̇
      const auto g = layer.backward(fwd, xbar);
      const double lhs = xbar.dot(t.x);
      const double rhs = g.theta.dot(theta_dot) + g.b.dot(db) + g.damp * dl;
      CHECK(std::abs(lhs - rhs) < 1e-7 * (1 + std::abs(lhs)));
    }
  }
}

TEST_CASE("layer: forward mode with only some tangents, and undamped rank-deficient A") {
  std::mt19937_64 gen(23);
  // Only ḃ: ẋ = (AᵀA + λ²I)⁺Aᵀḃ, one solve.
  const KnownSvdProblem<double> p(9, 5, spread(5, 10.0), 2u);
  LeastSquares<double> layer(tight(Method::Lsmr));
  auto op = parameterized(p.a);
  auto fwd = layer.forward(op, p.b, 0.2);
  const Vec db = test::random_vector<double>(9, gen);
  const auto t = layer.jvp(fwd, {.b = db});
  CHECK(t.solves.size() == 1);
  CHECK(test::relative_error(t.x, fd_direction(p.a, p.b, 0.2, Mat::Zero(9, 5), db, 0)) < 1e-6);
  // Only ḃ needs no dual solution either: one solve for wide A with weak damping (λ² below
  // √tol·‖A‖², no G11) and at λ = 0.
  for (const Case& c : {Case{"wide", 5, 9, 5, 1e-3}, Case{"wide", 5, 9, 5, 0.0},
                        Case{"tall", 9, 5, 5, 0.0}}) {
    const std::string case_name = c.name + std::string(" damp ") + std::to_string(c.lam);
    CAPTURE(case_name);
    const KnownSvdProblem<double> q(c.m, c.n, spread(5, 10.0), 7u);
    auto qop = parameterized(q.a);
    auto qf = layer.forward(qop, q.b, c.lam);
    const Vec dq = test::random_vector<double>(c.m, gen);
    const auto tq = layer.jvp(qf, {.b = dq});
    CHECK(tq.solves.size() == 1);
    CHECK(test::relative_error(tq.x, fd_direction(q.a, q.b, c.lam, Mat::Zero(c.m, c.n), dq, 0)) <
          1e-6);
  }
  // λ = 0, rank-deficient, along a rank-preserving direction.
  for (const Case& c : {Case{"tall", 10, 6, 4, 0.0}, Case{"wide", 6, 10, 4, 0.0}}) {
    const std::string case_name = c.name;
    CAPTURE(case_name);
    const KnownSvdProblem<double> q(c.m, c.n, spread(6, 10.0, 2), 41u);
    auto qop = parameterized(q.a);
    auto qf = layer.forward(qop, q.b, 0.0);
    const Mat da = q.a * test::random_matrix<double>(c.n, c.n, gen) +
                   0 * test::random_matrix<double>(c.m, c.n, gen);
    const Vec theta_dot = Eigen::Map<const Vec>(da.data(), da.size());
    const auto tq = layer.jvp(qf, {.theta = theta_dot});
    CHECK(tq.converged());
    CHECK(test::relative_error(tq.x, fd_direction(q.a, q.b, 0, da, Vec::Zero(c.m), 0)) < 1e-6);
  }
}

TEST_CASE("layer: forward mode with Ȧ given by its products, for any operator") {
  // Tangents::a_dot / a_dot_adjoint (what the PyTorch layer passes for a callable's params)
  // against θ̇ through MatrixParameters and finite differences: tall, wide, λ = 0 and λ > 0.
  std::mt19937_64 gen(29);
  for (const Case& c : {Case{"tall", 9, 5, 5, 0.2}, Case{"tall", 9, 5, 5, 0.0},
                        Case{"wide", 5, 9, 5, 0.2}, Case{"wide", 5, 9, 5, 0.0}}) {
    const std::string case_name = c.name + std::string(" damp ") + std::to_string(c.lam);
    CAPTURE(case_name);
    const KnownSvdProblem<double> q(c.m, c.n, spread(5, 10.0), 31u);
    const Mat da = test::random_matrix<double>(c.m, c.n, gen);
    const Vec db = test::random_vector<double>(c.m, gen);
    LeastSquares<double> layer(tight(Method::Lsqr));
    const Mat a = q.a;
    auto cb = make_operator(
        c.m, c.n, [&](Eigen::Ref<const Vec> v, Eigen::Ref<Vec> y) { y = a * v; },
        [&](Eigen::Ref<const Vec> u, Eigen::Ref<Vec> v) { v = a.transpose() * u; });
    auto f = layer.forward(cb, q.b, c.lam);
    Tangents<double> t{.b = db, .damp = 0.5};
    t.a_dot = [&](Eigen::Ref<const Vec> v, Eigen::Ref<Vec> y) { y = da * v; };
    t.a_dot_adjoint = [&](Eigen::Ref<const Vec> u, Eigen::Ref<Vec> v) { v = da.transpose() * u; };
    const auto tc = layer.jvp(f, t);
    CHECK(tc.converged());
    const Vec fd = fd_direction(q.a, q.b, c.lam, da, db, c.lam > 0 ? 0.5 : 0.0);
    CHECK(test::relative_error(tc.x, fd) < 1e-6);
    auto op = parameterized(q.a);
    auto fp = layer.forward(op, q.b, c.lam);
    const auto tp = layer.jvp(fp, {.theta = Vec(Eigen::Map<const Vec>(da.data(), da.size())),
                                   .b = db, .damp = 0.5});
    CHECK(test::relative_error(tc.x, tp.x) < 1e-9);
    // Both products or neither, and not with θ̇.
    Tangents<double> half{.b = db};
    half.a_dot = t.a_dot;
    CHECK_THROWS_AS((void)layer.jvp(f, half), std::invalid_argument);
    Tangents<double> both = t;
    both.theta = Vec::Zero(c.m * c.n);
    CHECK_THROWS_AS((void)layer.jvp(fp, both), std::invalid_argument);
  }
}

TEST_CASE("layer: zero right-hand side gives zero x and finite, consistent gradients") {
  for (double lam : {0.0, 0.5}) {
    for (const Case& c : {Case{"tall", 8, 5, 5, lam}, Case{"wide", 5, 8, 5, lam}}) {
      const std::string case_name = c.name;
    CAPTURE(case_name);
      CAPTURE(lam);
      const KnownSvdProblem<double> p(c.m, c.n, spread(5, 5.0), 7u);
      const Vec zero = Vec::Zero(c.m), xbar = random_vec(c.n, 3);
      LeastSquares<double> layer(tight(Method::Lsqr));
      auto op = parameterized(p.a);
      auto fwd = layer.forward(op, zero, lam);
      CHECK(fwd.x.norm() == 0);
      const auto g = layer.backward(fwd, xbar);
      CHECK(g.theta.allFinite());
      CHECK(g.b.allFinite());
      CHECK(g.theta.norm() == doctest::Approx(0).epsilon(1e-12));  // x ≡ 0 for every A
      CHECK(g.damp == 0);
      const FdGradient ref = fd_gradient(p.a, zero, lam, xbar);
      CHECK(rel(g.b, ref.b) < 1e-6);
    }
  }
}

TEST_CASE("Convolution: products, adjoint and parameter gradient against its matrix") {
  using C = std::complex<double>;
  std::mt19937_64 gen(41);
  const ConvolutionMode modes[] = {ConvolutionMode::Full, ConvolutionMode::Same,
                                   ConvolutionMode::Valid};
  for (const Index p : {1, 4, 5, 12}) {  // 12 > n: Same keeps n outputs, Valid is refused
    for (const ConvolutionMode mode : modes) {
      CAPTURE(p);
      CAPTURE(int(mode));
      const Index n = 9;
      const DVec<C> k = test::random_vector<C>(p, gen), kd = test::random_vector<C>(p, gen);
      if (mode == ConvolutionMode::Valid && p > n) {
        CHECK_THROWS_AS(Convolution<C>(k, n, mode), std::invalid_argument);
        continue;
      }
      const Convolution<C> conv(k, n, mode);
      const DMat<C> a = convolution_matrix(k, n, mode);
      REQUIRE(conv.rows() == a.rows());
      CHECK(check_adjoint(conv).passed);
      const DVec<C> x = test::random_vector<C>(n, gen), u = test::random_vector<C>(a.rows(), gen);
      DVec<C> y(a.rows()), v(n), g = DVec<C>::Zero(p);
      conv.apply(x, y);
      CHECK(test::relative_error(y, DVec<C>(a * x)) < 1e-14);
      conv.apply_adjoint(u, v);
      CHECK(test::relative_error(v, DVec<C>(a.adjoint() * u)) < 1e-14);
      // ∇_k Re⟨u, A(k)x⟩: the entries of u xᴴ summed over the cells where k_t appears.
      conv.add_parameter_gradient(u, x, g);
      const DMat<C> uxh = u * x.adjoint();
      for (Index t = 0; t < p; ++t) {
        DVec<C> et = DVec<C>::Zero(p);
        et[t] = 1;
        const DMat<C> pattern = convolution_matrix(et, n, mode);
        CHECK(std::abs(g[t] - (pattern.array() * uxh.array()).sum()) < 1e-13);
      }
      conv.apply_derivative(kd, x, y);
      CHECK(test::relative_error(y, DVec<C>(convolution_matrix(kd, n, mode) * x)) < 1e-14);
      conv.apply_derivative_adjoint(kd, u, v);
      CHECK(test::relative_error(v, DVec<C>(convolution_matrix(kd, n, mode).adjoint() * u)) <
            1e-14);
    }
  }
  const Vec k3 = Vec::Ones(3);
  CHECK_THROWS_AS(Convolution<double>(Vec(0), 5), std::invalid_argument);
  CHECK_THROWS_AS(Convolution<double>(k3, 2, ConvolutionMode::Valid), std::invalid_argument);
  CHECK_THROWS_AS(Convolution<double>(Vec::Constant(3, NAN), 5), std::invalid_argument);
  Convolution<double> conv(k3, 5);
  Vec g = Vec::Zero(2);
  CHECK_THROWS_AS(conv.add_parameter_gradient(Vec::Ones(7), Vec::Ones(5), g),
                  std::invalid_argument);
  CHECK_THROWS_AS(conv.set_kernel(Vec::Ones(4)), std::invalid_argument);
  CHECK_THROWS_AS(conv.set_kernel(Vec::Constant(3, INFINITY)), std::invalid_argument);
  CHECK(conv.kernel() == k3);  // a refused kernel leaves the operator as it was
  conv.set_kernel(2 * k3);
  CHECK(conv.kernel() == 2 * k3);
}

TEST_CASE("layer: a convolution whose kernel is the parameter") {
  const Vec kernel = (Vec(4) << 1.0, -0.5, 0.25, 0.3).finished();
  const Index n = 12;
  for (const ConvolutionMode mode :
       {ConvolutionMode::Full, ConvolutionMode::Same, ConvolutionMode::Valid}) {
    CAPTURE(int(mode));
    const Convolution<double> conv(kernel, n, mode);
    auto dense = [&](const Vec& k) { return convolution_matrix<double>(k, n, mode); };
    const Vec b = random_vec(conv.rows(), 8), xbar = random_vec(n, 9);
    for (double lam : {0.0, 0.1}) {
      CAPTURE(lam);
      LeastSquares<double> layer(tight(Method::Lsmr));
      auto fwd = layer.forward(conv, b, lam);
      CHECK(test::relative_error(fwd.x, dense_solution(dense(kernel), b, lam)) < 1e-9);
      const auto g = layer.backward(fwd, xbar);
      // θ̄ by finite differences of the dense solve with a perturbed kernel.
      for (Index t = 0; t < kernel.size(); ++t) {
        const double h = 1e-6;
        Vec kp = kernel, km = kernel;
        kp[t] += h;
        km[t] -= h;
        const double fd =
            xbar.dot(dense_solution(dense(kp), b, lam) - dense_solution(dense(km), b, lam)) /
            (2 * h);
        CHECK(g.theta[t] == doctest::Approx(fd).epsilon(1e-6));
      }
      // Forward mode along a kernel tangent.
      const Vec dk = random_vec(kernel.size(), 10);
      const auto tan = layer.jvp(fwd, {.theta = dk});
      const double h = 1e-6;
      const Vec fd = (dense_solution(dense(kernel + h * dk), b, lam) -
                      dense_solution(dense(kernel - h * dk), b, lam)) /
                     (2 * h);
      CHECK(test::relative_error(tan.x, fd) < 1e-6);
    }
  }
}

TEST_CASE("layer: callback parameterized operator and row-major matrix parameters") {
  const KnownSvdProblem<double> p(8, 5, spread(5, 10.0), 5u);
  const Mat& a = p.a;
  auto cb = make_parameterized_operator(
      8, 5, 40, [&](const auto& x, auto& y) { y.noalias() = a * x; },
      [&](const auto& u, auto& v) { v.noalias() = a.transpose() * u; },
      [&](const auto& u, const auto& v, auto& g) {
        Eigen::Map<Mat>(g.data(), 8, 5).noalias() += u * v.transpose();
      },
      [&](const auto& t, const auto& v, auto& y) {
        y.noalias() = Eigen::Map<const Mat>(t.data(), 8, 5) * v;
      },
      [&](const auto& t, const auto& u, auto& w) {
        w.noalias() = Eigen::Map<const Mat>(t.data(), 8, 5).transpose() * u;
      });
  static_assert(ParameterizedOperator<decltype(cb)>);
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> arow = a;
  const Vec xbar = random_vec(5, 1);
  LeastSquares<double> layer(tight(Method::Lsqr));
  auto op = parameterized(a);
  auto oprow = parameterized(arow);
  auto f1 = layer.forward(op, p.b, 0.1);
  auto f2 = layer.forward(cb, p.b, 0.1);
  auto f3 = layer.forward(oprow, p.b, 0.1);
  const auto g1 = layer.backward(f1, xbar);
  const auto g2 = layer.backward(f2, xbar);
  const auto g3 = layer.backward(f3, xbar);
  CHECK(rel(g2.theta, g1.theta) < 1e-12);
  // Row-major: θ̄ in row-major order.
  const Mat abar3 = Eigen::Map<const Eigen::Matrix<double, 8, 5, Eigen::RowMajor>>(g3.theta.data());
  CHECK(rel(abar3, Eigen::Map<const Mat>(g1.theta.data(), 8, 5)) < 1e-12);
}

namespace {
/// A random m × n sparse matrix with about half its entries stored, the diagonal among them
/// (full rank in practice).
template <class Sparse>
Sparse random_sparse(Index m, Index n, std::mt19937_64& gen) {
  using S = typename Sparse::Scalar;
  const DMat<S> values = test::random_matrix<S>(m, n, gen);
  std::bernoulli_distribution keep(0.5);
  std::vector<Eigen::Triplet<S>> entries;
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < m; ++i)
      if (i == j || keep(gen)) entries.emplace_back(int(i), int(j), values(i, j));
  Sparse a(m, n);
  a.setFromTriplets(entries.begin(), entries.end());
  return a;
}

/// θ̄ of a sparse adapter against Ā on its pattern: max over stored (i, j) of |θ̄_p − Ā(i, j)|
/// relative to ‖Ā‖ (entries outside the pattern are not parameters).
template <class Sparse, class S>
double pattern_error(const Sparse& a, const DVec<S>& theta, const DMat<S>& abar) {
  double err = 0;
  for (Index k = 0, p = 0; k < a.outerSize(); ++k)
    for (typename Sparse::InnerIterator it(a, k); it; ++it, ++p)
      err = std::max(err, std::abs(theta[p] - abar(it.row(), it.col())));
  return err / abar.norm();
}

/// The dense matrix with the pattern of a and the values t (storage order).
template <class Sparse, class S>
DMat<S> with_values(const Sparse& a, const DVec<S>& t) {
  DMat<S> out = DMat<S>::Zero(a.rows(), a.cols());
  for (Index k = 0, p = 0; k < a.outerSize(); ++k)
    for (typename Sparse::InnerIterator it(a, k); it; ++it, ++p) out(it.row(), it.col()) = t[p];
  return out;
}

template <class Sparse>
void check_sparse_parameters(const Sparse& a, double lam, std::mt19937_64& gen) {
  using S = typename Sparse::Scalar;
  const DMat<S> dense = DMat<S>(a);
  const DVec<S> b = test::random_vector<S>(a.rows(), gen);
  const DVec<S> xbar = test::random_vector<S>(a.cols(), gen);
  const DVec<S> theta_dot = test::random_vector<S>(a.nonZeros(), gen);
  // Independent references: finite differences of a dense solve, entry by entry on the pattern
  // (∂⟨x̄, x⟩/∂A_ij = ⟨x̄, ∂x/∂Re A_ij⟩ + i⟨x̄, ∂x/∂Im A_ij⟩ by PyTorch's convention), and along θ̇.
  DMat<S> abar = DMat<S>::Zero(a.rows(), a.cols());
  const DVec<S> zb = DVec<S>::Zero(a.rows());
  for (Index k = 0; k < a.outerSize(); ++k)
    for (typename Sparse::InnerIterator it(a, k); it; ++it) {
      DMat<S> e = DMat<S>::Zero(a.rows(), a.cols());
      e(it.row(), it.col()) = 1;
      S g = std::real(xbar.dot(fd_direction<S>(dense, b, lam, e, zb, 0)));
      if constexpr (!std::is_same_v<S, double>) {
        e(it.row(), it.col()) = S(0, 1);
        g += S(0, std::real(xbar.dot(fd_direction<S>(dense, b, lam, e, zb, 0))));
      }
      abar(it.row(), it.col()) = g;
    }
  const DVec<S> xdot = fd_direction<S>(dense, b, lam, with_values(a, theta_dot), zb, 0);
  for (Method method : kMethods) {
    CAPTURE(name(method));
    LeastSquaresOptions<S> o;
    o.method = method;
    o.forward = {.atol = 1e-14, .btol = 1e-14, .conlim = 0, .max_iterations = 2000};
    LeastSquares<S> layer(o);
    auto op = parameterized(a);
    static_assert(ParameterizedOperator<decltype(op)>);
    CHECK(op.parameter_count() == a.nonZeros());
    auto fwd = layer.forward(op, b, lam);
    CHECK(test::relative_error(fwd.x, dense_solution<S>(dense, b, lam)) < 1e-9);
    const auto g = layer.backward(fwd, xbar);
    CHECK(g.converged());
    REQUIRE(g.theta.size() == a.nonZeros());
    CHECK(pattern_error(a, g.theta, abar) < 1e-6);
    const auto t = layer.jvp(fwd, {.theta = theta_dot});
    CHECK(t.converged());
    CHECK(test::relative_error(t.x, xdot) < 1e-6);
  }
}
}  // namespace

TEST_CASE("layer: a sparse matrix whose stored values are the parameters") {
  using RowSparse = Eigen::SparseMatrix<double, Eigen::RowMajor>;
  std::mt19937_64 gen(77);
  for (const auto& [m, n, lam] : {std::tuple{14, 8, 0.0}, std::tuple{14, 8, 0.2},
                                  std::tuple{8, 14, 0.0}, std::tuple{8, 14, 0.2}}) {
    CAPTURE(m);
    CAPTURE(n);
    CAPTURE(lam);
    SUBCASE("column-major") {
      check_sparse_parameters(random_sparse<Eigen::SparseMatrix<double>>(m, n, gen), lam, gen);
    }
    SUBCASE("row-major") { check_sparse_parameters(random_sparse<RowSparse>(m, n, gen), lam, gen); }
    SUBCASE("a Map of CSR arrays with 64-bit indices (what the Python module passes)") {
      const Eigen::SparseMatrix<double, Eigen::RowMajor, std::int64_t> a =
          random_sparse<RowSparse>(m, n, gen).cast<double>();
      const Eigen::Map<const Eigen::SparseMatrix<double, Eigen::RowMajor, std::int64_t>> map(
          a.rows(), a.cols(), a.nonZeros(), a.outerIndexPtr(), a.innerIndexPtr(), a.valuePtr());
      check_sparse_parameters(map, lam, gen);
    }
    SUBCASE("complex") {
      check_sparse_parameters(
          random_sparse<Eigen::SparseMatrix<std::complex<double>, Eigen::RowMajor>>(m, n, gen), lam,
          gen);
    }
  }
}

TEST_CASE("layer: sparse parameters — bad input") {
  Eigen::SparseMatrix<double> a(4, 3);
  a.insert(0, 0) = 1;  // insert() leaves the matrix uncompressed
  a.insert(2, 1) = 2;
  CHECK_THROWS_AS(parameterized(a), std::invalid_argument);
  a.makeCompressed();
  auto op = parameterized(a);
  Vec g = Vec::Zero(3), y(4);
  CHECK_THROWS_AS(op.add_parameter_gradient(Vec::Ones(4), Vec::Ones(3), g), std::invalid_argument);
  CHECK_THROWS_AS(op.apply_derivative(Vec::Ones(5), Vec::Ones(3), y), std::invalid_argument);
  Vec g2 = Vec::Zero(2);
  op.add_parameter_gradient(Vec::LinSpaced(4, 1, 4), Vec::LinSpaced(3, 1, 3), g2);
  CHECK(g2[0] == 1.0);  // u_0 v_0
  CHECK(g2[1] == 6.0);  // u_2 v_1
}

TEST_CASE("layer: the gradient error shrinks with the solver tolerance") {
  const KnownSvdProblem<double> p(60, 30, spread(30, 100.0), 12u);
  const Vec xbar = random_vec(30, 4);
  LeastSquares<double> exact(tight(Method::Lsqr));
  auto op = parameterized(p.a);
  auto fe = exact.forward(op, p.b, 0.0);
  const Vec ref = exact.backward(fe, xbar).theta;
  double previous = 1e300;
  for (double tol : {1e-4, 1e-7, 1e-10}) {
    CAPTURE(tol);
    LeastSquaresOptions<double> o;
    o.method = Method::Lsqr;
    o.forward = {.atol = tol, .btol = tol, .conlim = 0, .max_iterations = 1000};
    LeastSquares<double> layer(o);
    auto f = layer.forward(op, p.b, 0.0);
    const double err = rel(layer.backward(f, xbar).theta, ref);
    MESSAGE("tolerance ", tol, ": relative error of the gradient ", err);
    CHECK(err < previous);
    CHECK(err < 1e4 * tol);
    previous = err;
  }
  CHECK(previous < 1e-7);
}

TEST_CASE("layer: failure policy for solves that do not converge") {
  const KnownSvdProblem<double> p(30, 20, spread(20, 1e4), 9u);
  auto op = parameterized(p.a);
  const Vec xbar = random_vec(20, 2);
  LeastSquaresOptions<double> o = tight(Method::Lsqr);
  o.backward = Tolerances<double>{.atol = 1e-14, .btol = 1e-14, .conlim = 0, .max_iterations = 2};
  {
    LeastSquares<double> layer(o);
    auto f = layer.forward(op, p.b, 0.0);
    CHECK(f.report.converged());
    try {
      (void)layer.backward(f, xbar);
      FAIL("expected SolveError");
    } catch (const SolveError& e) {
      CHECK(e.status() == Status::IterationLimit);
      CHECK(std::string(e.what()).find("backward") != std::string::npos);
      // The solves of the call, the failed one last with its iteration count.
      REQUIRE(!e.solves().empty());
      CHECK(e.solves().back().status == Status::IterationLimit);
      CHECK(e.solves().back().iterations == 2);
      CHECK(!e.solves().back().converged);
      CHECK(e.solves().back().role.find("backward") == 0);
    }
  }
  {
    o.on_failure = FailurePolicy::Warn;
    std::vector<std::string> warnings;
    o.warn = [&](const std::string& w) { warnings.push_back(w); };
    LeastSquares<double> layer(o);
    auto f = layer.forward(op, p.b, 0.0);
    const auto g = layer.backward(f, xbar);
    CHECK(!g.converged());
    CHECK(warnings.size() == g.solves.size());
    CHECK(warnings[0].find("iteration limit") != std::string::npos);
  }
  {
    o.on_failure = FailurePolicy::Ignore;
    o.forward.max_iterations = 1;
    LeastSquares<double> layer(o);
    auto f = layer.forward(op, p.b, 0.0);
    CHECK(f.report.status == Status::IterationLimit);
    const auto g = layer.backward(f, xbar);
    CHECK(g.solves[0].report.status == Status::IterationLimit);
  }
  {
    // Backward and jvp solves that converge do not make gradients of an unconverged forward
    // pass converged.
    LeastSquaresOptions<double> o2{.method = Method::Lsmr, .on_failure = FailurePolicy::Ignore};
    o2.forward.max_iterations = 2;
    o2.backward = Tolerances<double>{};  // else the forward limit of 2
    LeastSquares<double> layer(o2);
    const KnownSvdProblem<double> w(30, 20, spread(20, 10.0), 9u);  // cond 10: backward converges
    auto wop = parameterized(w.a);
    auto f = layer.forward(wop, w.b, 0.1);
    REQUIRE(!f.report.converged());
    const auto g = layer.backward(f, xbar);
    CHECK(all_converged(g.solves));
    CHECK(!g.forward_converged);
    CHECK(!g.converged());
    const auto t = layer.jvp(f, {.b = w.b});
    CHECK(all_converged(t.solves));
    CHECK(!t.converged());
    f.report.status = Status::ResidualSmall;  // the same context, had the forward converged
    CHECK(layer.backward(f, xbar).converged());
  }
  {
    LeastSquaresOptions<double> raise = tight(Method::Lsmr);
    raise.forward.max_iterations = 1;
    LeastSquares<double> layer(raise);
    CHECK_THROWS_AS((void)layer.forward(op, p.b, 0.0), SolveError);
  }
}

TEST_CASE("layer: bad input") {
  const KnownSvdProblem<double> p(8, 5, spread(5, 10.0), 1u);
  auto op = parameterized(p.a);
  LeastSquares<double> layer;
  CHECK_THROWS_WITH_AS((void)layer.forward(op, p.b, -1.0),
                       doctest::Contains("LeastSquares::forward: damp must be finite and >= 0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)layer.forward(op, p.b, std::nan("")),
                       doctest::Contains("LeastSquares::forward: damp"), std::invalid_argument);
  CHECK_THROWS_AS((void)layer.forward(op, Vec::Ones(7), 0.0), std::invalid_argument);
  auto f = layer.forward(op, p.b, 0.0);
  CHECK_THROWS_AS((void)layer.backward(f, Vec::Ones(4)), std::invalid_argument);
  Vec nan = Vec::Ones(5);
  nan[2] = std::nan("");
  CHECK_THROWS_AS((void)layer.backward(f, nan), std::invalid_argument);
  CHECK_THROWS_AS((void)layer.jvp(f, {.theta = Vec::Ones(3)}), std::invalid_argument);
  CHECK_THROWS_AS((void)layer.jvp(f, {.b = Vec::Ones(3)}), std::invalid_argument);
  // A plain operator has no parameters to take a tangent of.
  const auto plain = as_operator(p.a);
  auto fp = layer.forward(plain, p.b, 0.0);
  CHECK_THROWS_AS((void)layer.jvp(fp, {.theta = Vec::Ones(40)}), std::invalid_argument);
  const auto g = layer.backward(fp, Vec::Ones(5));
  CHECK(g.theta.size() == 0);
  CHECK(g.a_terms.size() == 2);
}

TEST_CASE("layer: float") {
  const KnownSvdProblem<double> p(20, 8, spread(8, 10.0), 14u);
  const Eigen::MatrixXf af = p.a.cast<float>();
  const Eigen::VectorXf bf = p.b.cast<float>();
  const Vec xbar = random_vec(8, 3);
  LeastSquaresOptions<float> o;
  o.forward = {.atol = 1e-6f, .btol = 1e-6f, .max_iterations = 100};
  LeastSquares<float> layer(o);
  auto op = parameterized(af);
  auto fwd = layer.forward(op, bf, 0.1f);
  const auto g = layer.backward(fwd, xbar.cast<float>());
  const FdGradient ref = fd_gradient(p.a, p.b, 0.1, xbar);
  CHECK(rel(Eigen::Map<const Eigen::MatrixXf>(g.theta.data(), 20, 8).cast<double>(), ref.a) < 1e-3);
  CHECK(rel(g.b.cast<double>(), ref.b) < 1e-3);
  CHECK(std::abs(g.damp - ref.lam) < 1e-3 * (1 + std::abs(ref.lam)));
}

namespace {
using CMat = Eigen::MatrixXcd;
using CVec = Eigen::VectorXcd;
using cd = std::complex<double>;

/// The gradient of L = Re⟨x̄, x⟩ in PyTorch's convention, ∂L/∂Re z + i ∂L/∂Im z, entry by
/// entry from central differences along the real and the imaginary unit directions.
struct FdGradientC {
  CMat a;
  CVec b;
  double lam = 0;
};
FdGradientC fd_gradient_c(const CMat& a, const CVec& b, double lam, const CVec& xbar) {
  FdGradientC g{CMat(a.rows(), a.cols()), CVec(b.size()), 0};
  const CMat za = CMat::Zero(a.rows(), a.cols());
  const CVec zb = CVec::Zero(b.size());
  auto loss = [&](const CVec& dx) { return std::real(xbar.dot(dx)); };
  for (Index j = 0; j < a.cols(); ++j)
    for (Index i = 0; i < a.rows(); ++i) {
      CMat e = za;
      e(i, j) = 1;
      const double re = loss(fd_direction(a, b, lam, e, zb, 0));
      e(i, j) = cd(0, 1);
      const double im = loss(fd_direction(a, b, lam, e, zb, 0));
      g.a(i, j) = cd(re, im);
    }
  for (Index i = 0; i < b.size(); ++i) {
    CVec e = zb;
    e[i] = 1;
    const double re = loss(fd_direction(a, b, lam, za, e, 0));
    e[i] = cd(0, 1);
    g.b[i] = cd(re, loss(fd_direction(a, b, lam, za, e, 0)));
  }
  if (lam > 0) g.lam = loss(fd_direction(a, b, lam, za, zb, 1));
  return g;
}

double rel_c(const CMat& x, const CMat& ref) { return (x - ref).norm() / ref.norm(); }
}  // namespace

TEST_CASE("layer: complex scalars — reverse and forward mode against finite differences") {
  // Every conjugation in the rules is exercised: a missing one gives errors of order 1.
  const Case cases[] = {
      {"tall", 9, 5, 5, 0.0},
      {"tall damped", 9, 5, 5, 0.3},
      {"tall weakly damped (split rule)", 9, 5, 5, 1e-4},
      {"wide", 5, 9, 5, 0.0},
      {"wide damped", 5, 9, 5, 0.3},
      {"wide weakly damped", 5, 9, 5, 1e-4},
      {"tall rank-deficient damped", 10, 6, 4, 0.3},
      {"tall rank-deficient weakly damped", 10, 6, 4, 1e-2},
      {"wide rank-deficient damped", 6, 10, 4, 0.3},
  };
  std::mt19937_64 gen(41);
  for (const Case& c : cases) {
    const Index k = std::min(c.m, c.n);
    const KnownSvdProblem<cd> p(c.m, c.n, spread(k, 10.0, k - c.rank), 51u + unsigned(c.m));
    const CVec xbar = test::random_vector<cd>(c.n, gen);
    const FdGradientC ref = fd_gradient_c(p.a, p.b, c.lam, xbar);
    const CMat da = test::random_matrix<cd>(c.m, c.n, gen);
    const CVec db = test::random_vector<cd>(c.m, gen);
    const double dl = c.lam > 0 ? 0.7 : 0.0;
    const CVec xdot_ref = fd_direction(p.a, p.b, c.lam, da, db, dl);
    for (Method method : kMethods) {
      const std::string case_name = c.name;
      CAPTURE(case_name);
      CAPTURE(name(method));
      LeastSquaresOptions<cd> o;
      o.method = method;
      o.forward = {.atol = 1e-14, .btol = 1e-14, .conlim = 0, .max_iterations = 2000};
      LeastSquares<cd> layer(o);
      auto op = parameterized(p.a);
      auto fwd = layer.forward(op, p.b, c.lam);
      CHECK(rel_c(fwd.x, dense_solution(p.a, p.b, c.lam)) < 1e-9);
      const auto g = layer.backward(fwd, xbar);
      CHECK(g.converged());
      CHECK(rel_c(g.b, ref.b) < 1e-6);
      CMat abar = CMat::Zero(c.m, c.n);
      for (const auto& [u, v] : g.a_terms) abar += u * v.adjoint();
      CHECK(rel_c(abar, ref.a) < 1e-6);
      CHECK(rel_c(Eigen::Map<const CMat>(g.theta.data(), c.m, c.n), ref.a) < 1e-6);
      // λ̄ = −2λ Re⟨x, y⟩ from the known SVD (finite differences in λ lose accuracy as h²/λ³).
      CVec coef = p.v.adjoint() * xbar;
      for (Index i = 0; i < coef.size(); ++i) coef[i] /= p.sigma[i] * p.sigma[i] + c.lam * c.lam;
      const double lam_bar = c.lam > 0 ? -2 * c.lam * std::real(p.solution(c.lam).dot(p.v * coef)) : 0;
      CHECK(std::abs(g.damp - lam_bar) < 1e-7 * (1e-3 + std::abs(lam_bar)));
      if (c.lam >= 0.1) CHECK(std::abs(g.damp - ref.lam) < 1e-6 * (1 + std::abs(ref.lam)));

      const CVec theta_dot = Eigen::Map<const CVec>(da.data(), da.size());
      const auto t = layer.jvp(fwd, {.theta = theta_dot, .b = db, .damp = dl});
      CHECK(t.converged());
      CHECK(rel_c(t.x, xdot_ref) < 1e-6);
      // Re⟨x̄, ẋ⟩ = Re⟨θ̄, θ̇⟩ + Re⟨b̄, ḃ⟩ + λ̄λ̇ (reverse mode is the adjoint of forward mode).
      const double lhs = std::real(xbar.dot(t.x));
      const double rhs = std::real(g.theta.dot(theta_dot)) + std::real(g.b.dot(db)) + g.damp * dl;
      CHECK(std::abs(lhs - rhs) < 1e-6 * (1 + std::abs(lhs)));
    }
  }
}

TEST_CASE("layer: complex<float>") {
  const KnownSvdProblem<cd> p(20, 8, spread(8, 10.0), 15u);
  using CMatF = Eigen::MatrixXcf;
  const CMatF af = p.a.cast<std::complex<float>>();
  const Eigen::VectorXcf bf = p.b.cast<std::complex<float>>();
  std::mt19937_64 gen(3);
  const CVec xbar = test::random_vector<cd>(8, gen);
  LeastSquaresOptions<std::complex<float>> o;
  o.forward = {.atol = 1e-6f, .btol = 1e-6f, .max_iterations = 100};
  LeastSquares<std::complex<float>> layer(o);
  auto op = parameterized(af);
  auto fwd = layer.forward(op, bf, 0.1f);
  const auto g = layer.backward(fwd, xbar.cast<std::complex<float>>());
  const FdGradientC ref = fd_gradient_c(p.a, p.b, 0.1, xbar);
  CHECK(rel_c(Eigen::Map<const CMatF>(g.theta.data(), 20, 8).cast<cd>(), ref.a) < 1e-3);
  CHECK(rel_c(g.b.cast<cd>(), ref.b) < 1e-3);
  CHECK(std::abs(g.damp - ref.lam) < 1e-3 * (1 + std::abs(ref.lam)));
}

TEST_CASE("layer: backward solves without an iteration limit get more than min(m, n)") {
  // An ill-conditioned tall problem (cond 100) whose undamped backward solves (the split of x̄
  // by Aᵀ, then A⁺) need more iterations than LSMR's default min(m, n) = 250 (measured: about
  // 420 each). Their limit is max(2 × the forward iterations, min(m, n) for max(m, n)²).
  const KnownSvdProblem<double> p(1000, 250, spread(250, 100.0), 12u);
  const Vec xbar = random_vec(250, 13);
  LeastSquaresOptions<double> o;
  o.method = Method::Lsmr;
  o.forward = {.atol = 1e-8, .btol = 1e-8, .conlim = 1e12, .max_iterations = 2000};
  o.backward = Tolerances<double>{.atol = 1e-8, .btol = 1e-8, .conlim = 1e12};
  LeastSquares<double> layer(o);
  auto op = parameterized(p.a);
  auto fwd = layer.forward(op, p.b, 0.0);
  CHECK(fwd.report.converged());
  const auto g = layer.backward(fwd, xbar);
  Index most = 0;
  for (const auto& s : g.solves) most = std::max(most, s.report.iterations);
  CHECK(g.converged());
  CHECK(most > 250);  // min(m, n) would have stopped it
  CHECK(rel(g.b, Vec(p.a * (p.a.transpose() * p.a).ldlt().solve(xbar))) < 1e-4);
}

TEST_CASE("layer: a (G12) solve at its iteration limit falls back to the split") {
  // Square rank-deficient A, λ = 1e-6, tolerances 1e-8: the one solve with [Aᵀ λI] converges
  // slowly along λ·N(A) and can reach its iteration limit (2 × the forward's) before test 2 or
  // conlim fire. That used to be a SolveError, or under Warn / Ignore a wrong gradient and a
  // wrong ẋ; the split (G5) gets both. Reference: the known SVD, y = V diag(1/(σ² + λ²)) Vᵀg.
  const double lam = 1e-6;
  std::mt19937_64 gen(47);
  for (unsigned seed : {51u, 52u, 53u}) {
    const KnownSvdProblem<double> p(5, 5, spread(5, 10.0, 2), seed);
    const Mat da = test::random_matrix<double>(5, 5, gen);
    const Vec db = test::random_vector<double>(5, gen), xbar = test::random_vector<double>(5, gen);
    Vec inv = Vec::Zero(5), gain = Vec::Zero(5);  // 1/(σ² + λ²), σ/(σ² + λ²)
    for (Index i = 0; i < 5; ++i) {
      inv[i] = 1 / (p.sigma[i] * p.sigma[i] + lam * lam);
      gain[i] = p.sigma[i] * inv[i];
    }
    const Vec x = p.v * gain.asDiagonal() * p.u.transpose() * p.b;
    const Vec r = p.u * (lam * lam * inv).asDiagonal() * p.u.transpose() * p.b;
    const Vec y = p.v * inv.asDiagonal() * p.v.transpose() * xbar;
    const Vec bbar = p.u * gain.asDiagonal() * p.v.transpose() * xbar;
    const Mat abar = r * y.transpose() - bbar * x.transpose();
    const Vec g = p.a.transpose() * (db - da * x) + da.transpose() * r;
    const Vec xdot = p.v * inv.asDiagonal() * p.v.transpose() * g;
    for (Method method : kMethods) {
      CAPTURE(seed);
      CAPTURE(name(method));
      LeastSquaresOptions<double> o;
      o.method = method;
      o.forward = {.atol = 1e-8, .btol = 1e-8};
      LeastSquares<double> layer(o);  // FailurePolicy::Raise
      auto op = parameterized(p.a);
      auto fwd = layer.forward(op, p.b, lam);
      REQUIRE(fwd.report.converged());
      const auto grads = layer.backward(fwd, xbar);
      CHECK(grads.converged());
      CHECK(rel(a_bar(grads, 5, 5), abar) < 1e-6);
      CHECK(rel(grads.b, bbar) < 1e-6);
      const Vec theta_dot = Eigen::Map<const Vec>(da.data(), da.size());
      const auto t = layer.jvp(fwd, {.theta = theta_dot, .b = db});
      CHECK(t.converged());
      CHECK(rel(t.x, xdot) < 1e-6);
    }
  }
}

TEST_CASE("layer: float jvp through (G12) for a rank-deficient A and small damping") {
  // Float rounding swamps the one (G12) solve when ẋ has a large part along N(A)/λ²: ẋ was off
  // by 3e-4 (CGLS) to 1e-2 (LSMR) with a converged status, while backward fell back to the
  // split. Reference: the SVD in double of the same float data.
  const Index m = 30, n = 12;
  std::mt19937_64 gen(42);
  std::normal_distribution<double> normal;
  const auto gaussian = [&](Index rows, Index cols) {
    return Mat(Mat::NullaryExpr(rows, cols, [&] { return normal(gen); }));
  };
  const Mat q1 = gaussian(m, m).householderQr().householderQ();
  const Mat q2 = gaussian(n, n).householderQr().householderQ();
  Mat sigma = Mat::Zero(m, n);
  for (Index i = 0; i < n; ++i) sigma(i, i) = std::pow(10.0, -2.0 * double(i) / double(n - 1));
  Eigen::MatrixXf a = (q1 * sigma * q2.transpose()).cast<float>();
  for (Index j = 0; j < 4; ++j) a.col(n - 1 - j) = a.col(j);  // rank 8
  const Eigen::VectorXf b = gaussian(m, 1).cast<float>();
  const Eigen::MatrixXf da = gaussian(m, n).cast<float>();
  const Mat ad = a.cast<double>();
  Eigen::JacobiSVD<Mat> svd(ad, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const double lam = 1e-5;
  Vec inv = Vec::Zero(n), gain = Vec::Zero(n);
  for (Index i = 0; i < n; ++i) {
    const double s = svd.singularValues()[i] > 1e-10 ? svd.singularValues()[i] : 0.0;
    inv[i] = 1 / (s * s + lam * lam);
    gain[i] = s * inv[i];
  }
  const Mat& u = svd.matrixU();
  const Mat& v = svd.matrixV();
  const Vec x = v * gain.asDiagonal() * u.transpose() * b.cast<double>();
  const Vec r = b.cast<double>() - ad * x;
  const Vec g = ad.transpose() * (-(da.cast<double>() * x)) + da.cast<double>().transpose() * r;
  const Vec xdot = v * inv.asDiagonal() * v.transpose() * g;
  for (Method method : kMethods) {
    CAPTURE(name(method));
    LeastSquaresOptions<float> o;
    o.method = method;
    o.forward = {.atol = 1e-7f, .btol = 1e-7f};  // clamped to float's reach
    o.on_failure = FailurePolicy::Ignore;
    LeastSquares<float> layer(o);
    auto op = parameterized(a);
    auto fwd = layer.forward(op, b, float(lam));
    const Eigen::VectorXf theta_dot = Eigen::Map<const Eigen::VectorXf>(da.data(), da.size());
    const auto t = layer.jvp(fwd, {.theta = theta_dot});
    CHECK(t.converged());
    const Vec xdot_float = t.x.cast<double>();
    CHECK(rel(xdot_float, xdot) < 5e-5);
  }
}

TEST_CASE("layer: LSQR's ‖A‖ estimate after a first step that ends the bidiagonalization") {
  // For a 1 × n A or a selection of rows, A v₁ − α₁u₁ = 0: β₂ = 0 after one step. lsqr.py then
  // leaves its ‖A‖ estimate at 0, and so did LSQR here; the layer read 0 as strong damping
  // (z = r/λ², rounding noise at λ = 1e-8) and ẋ and the gradients were off by O(1) with a
  // converged status. Reference: x = Aᵀ(AAᵀ + λ²I)⁻¹b, well conditioned for these A.
  const auto wide_solution = [](const Mat& a, const Vec& b, double lam) -> Vec {
    const Mat g = a * a.transpose() + lam * lam * Mat::Identity(a.rows(), a.rows());
    return a.transpose() * g.ldlt().solve(b);
  };
  std::mt19937_64 gen(23);
  std::normal_distribution<double> normal;
  const double lam = 1e-8, h = 1e-6;
  for (int trial = 0; trial < 12; ++trial) {
    CAPTURE(trial);
    const Mat a = trial < 10 ? Mat(Mat::NullaryExpr(1, 5, [&] { return normal(gen); }))
                             : selection(7, {4, 5, 6});
    const Mat da = Mat::NullaryExpr(a.rows(), a.cols(), [&] { return normal(gen); });
    const Vec b = Vec::NullaryExpr(a.rows(), [&] { return normal(gen); });
    const Vec xbar = Vec::NullaryExpr(a.cols(), [&] { return normal(gen); });
    LeastSquares<double> layer({.method = Method::Lsqr});
    auto op = parameterized(a);
    auto fwd = layer.forward(op, b, lam);
    CHECK(fwd.report.anorm >= (1 - 1e-12) * a.operatorNorm());
    const Vec xdot =
        (wide_solution(a + h * da, b, lam) - wide_solution(a - h * da, b, lam)) / (2 * h);
    const auto t = layer.jvp(fwd, {.theta = da.reshaped()});
    CHECK(t.converged());
    CHECK(rel(t.x, xdot) < 1e-6);
    const auto g = layer.backward(fwd, xbar);
    CHECK(std::abs(g.theta.dot(da.reshaped()) - xbar.dot(xdot)) < 1e-6 * xbar.norm() * xdot.norm());
  }
}

TEST_CASE("layer: float jvp under strong damping, and along λ for a rank-deficient A") {
  // λ ≫ ‖A‖: the (G12) solve's head is swamped by rounding but ẋ = its tail/λ is accurate; jvp
  // used to drop it for the split, whose undamped solve needs cond(A) iterations (SolveError),
  // and so did backward, which now takes (G6).
  // And a check that strong damping's exception leaves this alone: an exactly rank-deficient A
  // (duplicate columns), λ = 1e-2, tangent on λ only.
  // References: central differences of dense solves in double of the same float data.
  std::mt19937_64 gen(31);
  std::normal_distribution<double> normal;
  const auto gaussian = [&](Index rows, Index cols) {
    return Mat(Mat::NullaryExpr(rows, cols, [&] { return normal(gen); }));
  };
  const Index m = 20, n = 20;
  const Eigen::MatrixXf strong = (gaussian(m, n) / std::sqrt(double(m))).cast<float>();
  Eigen::MatrixXf deficient = (gaussian(m, n) / std::sqrt(double(m))).cast<float>();
  for (Index j = 0; j < 8; ++j) deficient.col(n - 1 - j) = deficient.col(j);  // rank 12, exactly
  const Eigen::VectorXf b = gaussian(m, 1).cast<float>();
  const Eigen::MatrixXf da = gaussian(m, n).cast<float>();
  for (Method method : kMethods) {
    CAPTURE(name(method));
    LeastSquares<float> layer({.method = method});
    {
      const float lam = 1e4f;
      auto op = parameterized(strong);
      auto fwd = layer.forward(op, b, lam);
      const auto t = layer.jvp(fwd, {.theta = da.reshaped(), .damp = 1.0f});
      CHECK(t.converged());
      CHECK(t.solves.size() == 1);  // the (G12) solve, kept
      const Vec ref = fd_direction<double>(strong.cast<double>(), b.cast<double>(), lam,
                                           da.cast<double>(), Vec::Zero(m), 1.0, 1e-2);
      CHECK(rel(t.x.cast<double>(), ref) < 1e-4);
      // Backward: the head was swamped there too, and the split failed; now (G6).
      const Vec db = gaussian(m, 1), xbar = gaussian(n, 1);
      const auto g = layer.backward(fwd, xbar.cast<float>());
      CHECK(g.converged());
      CHECK(g.solves.size() <= 2);  // (G12), swamped or set aside; then (G6), not the split
      CHECK(std::string(g.solves.back().role).find("min |A^T c - xbar|") != std::string::npos);
      const Vec dx = fd_direction<double>(strong.cast<double>(), b.cast<double>(), lam,
                                          da.cast<double>(), db, 1.0, 1e-2);
      const double pairing = g.theta.cast<double>().dot(da.cast<double>().reshaped()) +
                             g.b.cast<double>().dot(db) + double(g.damp);
      CHECK(std::abs(pairing - xbar.dot(dx)) < 1e-4 * xbar.norm() * dx.norm());
    }
    {
      const float lam = 1e-2f;
      auto op = parameterized(deficient);
      auto fwd = layer.forward(op, b, lam);
      const auto t = layer.jvp(fwd, {.damp = 1.0f});
      CHECK(t.converged());
      const Vec ref = fd_direction<double>(deficient.cast<double>(), b.cast<double>(), lam,
                                           Mat::Zero(m, n), Vec::Zero(m), 1.0, 1e-7);
      CHECK(rel(t.x.cast<double>(), ref) < 1e-3);
    }
  }
}
