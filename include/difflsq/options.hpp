// difflsq — options, status codes and results shared by LSQR, LSMR and CGLS.
//
// Every solver solves
//
//     min_x  ‖A x − b‖² + damp² ‖x − x0‖²                                        (1)
//
// (x0 = 0 unless given; SciPy's convention: damping acts on the correction x − x0, see
// docs/solvers.md). The stopping rules are those of Paige & Saunders [PS82, §6] and
// Fong & Saunders [FS11, §3.3] as implemented by SciPy's lsqr.py / lsmr.py.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <complex>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace difflsq {

using Index = Eigen::Index;

template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// The real type underlying a scalar: float for std::complex<float>, etc.
template <class Scalar>
using RealOf = typename Eigen::NumTraits<Scalar>::Real;

/// Why a solve stopped. Values 0–7 equal SciPy's `istop`; 8 and 9 are difflsq's own.
enum class Status : int {
  ExactSolution = 0,  ///< b − A x0 = 0 (or Aᴴ(b − A x0) = 0): x = x0 solves (1) exactly
  ResidualSmall = 1,  ///< ‖r‖ ≤ btol·‖b‖ + atol·‖A‖·‖x‖: Ax = b is solved to the tolerances
  LeastSquaresSmall = 2,  ///< ‖Aᴴr‖ ≤ atol·‖A‖·‖r‖: the least-squares solution is good enough
  ConditionLimit = 3,       ///< the estimate of cond(Ā) exceeded conlim
  ResidualMachine = 4,      ///< as 1, with atol = btol = machine precision
  LeastSquaresMachine = 5,  ///< as 2, with atol = machine precision
  ConditionMachine = 6,     ///< cond(Ā) ≥ 1/machine precision
  IterationLimit = 7,       ///< max_iterations reached without meeting a test
  NonFinite = 8,            ///< Inf/NaN from the operator, or an overflowed estimate; x finite
  StoppedByMonitor = 9,     ///< the monitor callback asked to stop
};

/// True when the status means x solves (1) to the requested or attainable accuracy.
constexpr bool converged(Status s) {
  return s == Status::ExactSolution || s == Status::ResidualSmall ||
         s == Status::LeastSquaresSmall || s == Status::ResidualMachine ||
         s == Status::LeastSquaresMachine;
}

inline const char* to_string(Status s) {
  switch (s) {
    case Status::ExactSolution:
      return "the exact solution is x = x0";
    case Status::ResidualSmall:
      return "Ax - b is small enough, given atol, btol";
    case Status::LeastSquaresSmall:
      return "the least-squares solution is good enough, given atol";
    case Status::ConditionLimit:
      return "the estimate of cond(Abar) has exceeded conlim";
    case Status::ResidualMachine:
      return "Ax - b is small enough for this machine";
    case Status::LeastSquaresMachine:
      return "the least-squares solution is good enough for this machine";
    case Status::ConditionMachine:
      return "cond(Abar) seems to be too large for this machine";
    case Status::IterationLimit:
      return "the iteration limit has been reached";
    case Status::NonFinite:
      return "a non-finite value (Inf or NaN): from the operator, or a norm estimate that "
             "overflowed (A or b scaled near the limits of the precision)";
    case Status::StoppedByMonitor:
      return "stopped by the monitor callback";
  }
  return "unknown status";
}

/// Returned by the per-iteration monitor.
enum class MonitorAction { Continue, Stop };

/// What the monitor sees after each iteration. Norms are the solver's estimates.
template <class Scalar>
struct IterationInfo {
  using Real = RealOf<Scalar>;
  Index iteration;          ///< 1-based iteration number
  const Vector<Scalar>& x;  ///< the current iterate (do not keep the reference)
  Real r1norm;  ///< ‖b − A x‖ (LSMR with damp > 0: the damped residual, its only estimate)
  Real r2norm;  ///< sqrt(‖b − A x‖² + damp²‖x − x0‖²)
  Real arnorm;  ///< ‖Aᴴ(b − A x) − damp²(x − x0)‖
  Real anorm;   ///< estimate of ‖Ā‖_F, Ā = [A; damp·I]
  Real acond;   ///< estimate of cond(Ā)
  Real xnorm;   ///< ‖x‖ (LSQR: ‖x − x0‖)
};

namespace detail {
/// Empty when every entry of v is finite, else "name[i] = value" for the first that is not.
template <class Derived>
std::string non_finite_entry(const Eigen::DenseBase<Derived>& v, const std::string& name) {
  if (v.allFinite()) return {};
  for (Index i = 0; i < v.size(); ++i) {
    const auto e = v.derived().coeff(i);
    if (!std::isfinite(std::real(e)) || !std::isfinite(std::imag(e))) {
      std::ostringstream s;
      s << name << "[" << i << "] = " << e;
      return s.str();
    }
  }
  return {};
}
}  // namespace detail

/// Solver options. Defaults are SciPy's. Usable with designated initializers:
/// `difflsq::lsmr(A, b, {.damp = 0.1, .atol = 1e-10, .btol = 1e-10})`.
template <class Scalar = double>
struct Options {
  using Real = RealOf<Scalar>;
  /// λ in (1): the Tikhonov damping on x − x0. Must be finite and ≥ 0.
  Real damp = 0;
  /// Relative accuracy of A (test 2, ‖Aᴴr‖ ≤ atol‖A‖‖r‖, and part of test 1). ≥ 0. In float,
  /// a value in (0, ε) is raised to ε = 1.19e-7 (see Report::tolerances_clamped).
  Real atol = Real(1e-6);
  /// Relative accuracy of b (test 1: ‖r‖ ≤ btol‖b‖ + atol‖A‖‖x‖). ≥ 0; clamped like atol.
  Real btol = Real(1e-6);
  /// Stop when the estimate of cond(Ā) exceeds conlim (test 3); 0 disables the test.
  Real conlim = Real(1e8);
  /// Iteration limit; ≤ 0 means the SciPy default (LSQR: 2n, LSMR: min(m, n), CGLS: 2n).
  Index max_iterations = 0;
  /// Initial guess (length n). Damping then acts on x − x0, as in SciPy.
  std::optional<Vector<Scalar>> x0{};
  /// Right preconditioner: positive column scaling d (length n), x = x0 + diag(d)·y. The
  /// solution of (1) with λ > 0 does not change (damping keeps acting on x − x0); only
  /// convergence does. With λ = 0 and many solutions (wide or rank-deficient A) the result is
  /// the one with the smallest ‖diag(d)⁻¹(x − x0)‖, not ‖x − x0‖ (docs/solvers.md).
  std::optional<Vector<Real>> column_scaling{};
  /// LSQR only: also estimate diag((ĀᴴĀ)⁻¹) in Result::var, as SciPy's calc_var (one more
  /// vector update per iteration).
  bool calc_var = false;
  /// Called after every iteration; return MonitorAction::Stop to end the solve.
  std::function<MonitorAction(const IterationInfo<Scalar>&)> monitor{};

  /// Throws std::invalid_argument naming the first invalid field and its value.
  void validate(Index n) const {
    auto fail = [](const std::string& what) { throw std::invalid_argument("difflsq: " + what); };
    auto check_tol = [&](const char* name, Real v) {
      if (!std::isfinite(v) || v < 0)
        fail(std::string("Options::") + name + " must be finite and >= 0, got " + fmt(v));
    };
    if (!std::isfinite(damp) || damp < 0)
      fail("Options::damp must be finite and >= 0, got " + fmt(damp));
    check_tol("atol", atol);
    check_tol("btol", btol);
    if (std::isnan(conlim) || conlim < 0)
      fail("Options::conlim must be >= 0 (0 disables), got " + fmt(conlim));
    if (x0) {
      if (x0->size() != n)
        fail("Options::x0 has length " + std::to_string(x0->size()) + " but A has " +
             std::to_string(n) + " columns");
      if (const auto bad = detail::non_finite_entry(*x0, "Options::x0"); !bad.empty())
        fail("the initial guess must be finite, got " + bad);
    }
    if (column_scaling) {
      if (column_scaling->size() != n)
        fail("Options::column_scaling has length " + std::to_string(column_scaling->size()) +
             " but A has " + std::to_string(n) + " columns");
      for (Index j = 0; j < n; ++j) {
        const Real d = (*column_scaling)[j];
        if (!std::isfinite(d) || !(d > 0))
          fail("Options::column_scaling[" + std::to_string(j) + "] must be finite and > 0, got " +
               fmt(d));
      }
    }
  }

 private:
  static std::string fmt(Real v) {
    std::ostringstream s;
    s << v;
    return s.str();
  }
};

/// Everything a solve reports except x. Field names follow SciPy's return values.
template <class Real>
struct Report {
  Status status = Status::ExactSolution;
  Index iterations = 0;
  Index matvecs = 0;   ///< applications of A
  Index rmatvecs = 0;  ///< applications of Aᴴ
  Real r1norm = 0;     ///< ‖b − A x‖
  Real r2norm = 0;     ///< sqrt(‖b − A x‖² + damp²‖x − x0‖²)
  Real arnorm = 0;  ///< ‖Aᴴ(b − A x) − damp²(x − x0)‖, the normal-equations residual
  Real anorm = 0;   ///< estimate of ‖Ā‖ (Frobenius norm of the bidiagonal so far)
  Real acond = 0;   ///< estimate of cond(Ā) (CGLS: not estimated, 0)
  Real xnorm = 0;   ///< ‖x‖ (LSQR: estimate of ‖x − x0‖, as SciPy)
  bool tolerances_clamped = false;  ///< atol or btol was raised to machine precision

  bool converged() const { return difflsq::converged(status); }

  /// One line: method-independent summary for logs.
  std::string summary() const {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%s after %lld iterations: |r| = %.3e, |A^H r| = %.3e, |A| ~ %.2e, "
                  "cond ~ %.2e, |x| = %.3e",
                  to_string(status), static_cast<long long>(iterations),
                  static_cast<double>(r1norm), static_cast<double>(arnorm),
                  static_cast<double>(anorm), static_cast<double>(acond),
                  static_cast<double>(xnorm));
    return buf;
  }
};

/// A solve's result: the solution and its report.
template <class Scalar>
struct Result : Report<RealOf<Scalar>> {
  Vector<Scalar> x;
  Vector<RealOf<Scalar>> var;  ///< LSQR with calc_var: estimate of diag((ĀᴴĀ)⁻¹), else empty
};

}  // namespace difflsq
