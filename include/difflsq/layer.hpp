// difflsq — the solve as a differentiable layer: forward pass, reverse mode (backward) and
// forward mode (jvp) of
//
//     x(θ, b, λ) = argmin_x ‖A(θ) x − b‖² + λ² ‖x‖²   (minimum-norm where not unique)   (1)
//
// without storing iterates: the derivative rules are least-squares solves of their own
// (docs/gradients.md derives every formula used below; equation numbers (G…) refer to it):
// one solve for λ > 0 with a tall A or strong damping (G12), else two (G5, G6, G13), three for
// an undamped rank-deficient A whose residual is not zero (G7).
//
//     difflsq::LeastSquares<double> layer({.method = difflsq::Method::Lsmr});
//     auto A = difflsq::parameterized(M);          // θ = entries of M
//     auto fwd = layer.forward(A, b, 0.1);         // fwd.x, fwd.report
//     auto grads = layer.backward(fwd, xbar);      // grads.b, grads.damp, grads.theta
//     auto tan = layer.jvp(fwd, {.theta = Mdot, .b = bdot, .damp = 1.0});   // tan.x
//
// Scalars: float, double, std::complex<float>, std::complex<double>. For complex data, ᵀ becomes ᴴ,
// ⟨u, v⟩ = Re(uᴴv), and gradients follow PyTorch's convention for a real loss L: the gradient
// with respect to z is ∂L/∂Re z + i ∂L/∂Im z (docs/gradients.md, "Complex scalars"). The operator
// passed to forward() must outlive the Forward object. A LeastSquares object holds workspaces:
// use one per thread.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "method.hpp"
#include "operator.hpp"
#include "parameterized.hpp"

namespace difflsq {

/// What a solve that did not converge does (forward, backward and jvp solves alike).
enum class FailurePolicy {
  Raise,   ///< throw SolveError
  Warn,    ///< call LeastSquaresOptions::warn (default: print to stderr) and go on
  Ignore,  ///< go on; the statuses are in the returned records
};

/// Stopping rules of one kind of solve (the fields of Options with the same names).
template <class Real>
struct Tolerances {
  Real atol = Real(1e-6);
  Real btol = Real(1e-6);
  Real conlim = Real(1e8);
  /// ≤ 0: a default. Forward: the largest of 4·min(m, n), 20 and the method's (SciPy's)
  /// default; SciPy's min(m, n) for LSMR stops ordinary problems short (measured: random
  /// 100 × 100 problems take up to 1.7·min(m, n) iterations in floating point). Backward: see
  /// LeastSquaresOptions::backward.
  Index max_iterations = 0;
};

/// The layer's options. Deliberately without the core's x0, column_scaling and monitor: the
/// layer's x is the minimum-norm solution of (1) with x0 = 0, which the rules differentiate; a
/// starting guess or scaling would change which solution the forward pass returns when A is
/// rank-deficient and λ = 0, and the backward solves set their own starts (docs/gradients.md).
template <class Scalar>
struct LeastSquaresOptions {
  using Real = RealOf<Scalar>;
  Method method = Method::Lsmr;
  Tolerances<Real> forward{};
  /// Tolerances of the solves in backward() and jvp(); by default the forward ones. Their
  /// max_iterations ≤ 0 means max(2 × the forward iterations, the method's default for an
  /// operator of size max(m, n) × max(m, n)).
  std::optional<Tolerances<Real>> backward{};
  FailurePolicy on_failure = FailurePolicy::Raise;
  /// Receives the message under FailurePolicy::Warn; by default it goes to stderr.
  std::function<void(const std::string&)> warn{};
};

/// One solve made by the layer: what it solved and how it ended.
template <class Real>
struct SolveRecord {
  const char* role;
  Report<Real> report;
};

/// How a solve ended, for any scalar type (SolveError::solves).
struct SolveSummary {
  std::string role;  ///< what it solved, as in SolveRecord::role
  Status status;
  Index iterations;
  bool converged;
};

template <class Real>
SolveSummary summary(const char* role, const Report<Real>& report) {
  return {role, report.status, report.iterations, report.converged()};
}

/// Thrown under FailurePolicy::Raise when a solve did not converge; names the solve. solves()
/// lists the solves of the call that threw, in order, the one that failed last.
class SolveError : public std::runtime_error {
 public:
  SolveError(const std::string& what, Status status, std::vector<SolveSummary> solves = {})
      : std::runtime_error(what), status_(status), solves_(std::move(solves)) {}
  Status status() const { return status_; }
  const std::vector<SolveSummary>& solves() const { return solves_; }

 private:
  Status status_;
  std::vector<SolveSummary> solves_;
};

/// Whether every solve in `solves` converged.
template <class Real>
bool all_converged(const std::vector<SolveRecord<Real>>& solves) {
  for (const auto& s : solves)
    if (!s.report.converged()) return false;
  return true;
}

/// The forward pass: the solution and report, plus what backward() and jvp() need (O(m + n)
/// memory whatever the iteration count).
template <LinearOperator Op>
struct Forward {
  using Scalar = typename Op::Scalar;
  using Real = RealOf<Scalar>;
  Vector<Scalar> x;     ///< the solution of (1)
  Report<Real> report;  ///< the forward solve's report
  // --- saved context ---
  const Op* op = nullptr;
  Vector<Scalar> b;
  Vector<Scalar> r;  ///< b − A x
  Real damp = 0;
  /// z = (AAᵀ + λ²I)⁺ b, the dual solution (x = Aᵀz, r = λ²z), computed when a rule first needs
  /// it and kept for later calls (G9).
  std::optional<Vector<Scalar>> dual{};
  /// z's part in range(A), kept when z also has a part in N(Aᵀ) (G9).
  std::optional<Vector<Scalar>> dual_range{};
  /// The dual solve's record when it did not converge (policy Warn or Ignore): a later rule
  /// that reuses z reports it again.
  std::optional<SolveRecord<Real>> dual_failure{};
  bool residual_outside_range = false;  ///< r has a part in N(Aᵀ) above the solver's noise
};

/// Reverse mode: the cotangents of the inputs for a cotangent x̄ of x.
template <class Scalar>
struct Gradients {
  using Real = RealOf<Scalar>;
  Vector<Scalar> b;       ///< ∂L/∂b
  Real damp = 0;          ///< ∂L/∂λ
  Vector<Scalar> theta;   ///< ∂L/∂θ for a ParameterizedOperator, else empty
  /// ∂L/∂A = Σ u vᴴ over these pairs, for operators whose parameters the caller handles.
  std::vector<std::pair<Vector<Scalar>, Vector<Scalar>>> a_terms;
  std::vector<SolveRecord<Real>> solves;  ///< the solves made, in order
  /// Whether the forward solve these gradients differentiate converged: they are no more
  /// accurate than its x and r.
  bool forward_converged = true;
  bool converged() const { return forward_converged && all_converged(solves); }
};

/// Forward mode: tangents of the inputs (absent = zero).
template <class Scalar>
struct Tangents {
  using Product = std::function<void(Eigen::Ref<const Vector<Scalar>>, Eigen::Ref<Vector<Scalar>>)>;
  std::optional<Vector<Scalar>> theta{};  ///< θ̇ (ParameterizedOperator only)
  std::optional<Vector<Scalar>> b{};      ///< ḃ
  RealOf<Scalar> damp = 0;                ///< λ̇
  /// Instead of θ̇, for any operator: Ȧ by its products, a_dot(v, y): y = Ȧv and
  /// a_dot_adjoint(u, w): w = Ȧᴴu (both or neither), e.g. from an autodiff framework.
  Product a_dot{}, a_dot_adjoint{};
};

template <class Scalar>
struct TangentResult {
  using Real = RealOf<Scalar>;
  Vector<Scalar> x;  ///< ẋ
  std::vector<SolveRecord<Real>> solves;
  bool forward_converged = true;  ///< as in Gradients
  bool converged() const { return forward_converged && all_converged(solves); }
};

namespace detail {
/// What a solve that did not converge, the last of `log`, does under `policy`; `what` names
/// it.
template <class Real>
void on_failure(FailurePolicy policy, const std::function<void(const std::string&)>& warn,
                const std::string& what, const std::vector<SolveRecord<Real>>& log) {
  const auto& report = log.back().report;
  const std::string msg = what + ": " + to_string(report.status) + " after " +
                          std::to_string(report.iterations) + " iterations";
  std::vector<SolveSummary> solves;
  switch (policy) {
    case FailurePolicy::Raise:
      for (const auto& s : log) solves.push_back(summary(s.role, s.report));
      throw SolveError(msg, report.status, std::move(solves));
    case FailurePolicy::Warn:
      if (warn)
        warn(msg);
      else
        std::fprintf(stderr, "warning: %s\n", msg.c_str());
      break;
    case FailurePolicy::Ignore:
      break;
  }
}

template <class Op>
inline constexpr bool is_adjoint_v = false;
template <class Op>
inline constexpr bool is_adjoint_v<AdjointOperator<Op>> = true;

/// K = [A; λI], (m + n) × n: the damped problem (1) as an undamped one (G12).
template <LinearOperator Op>
class Stacked {
 public:
  using Scalar = typename Op::Scalar;
  Stacked(const Op& a, RealOf<Scalar> lam) : a_(&a), lam_(lam) {}
  Index rows() const { return a_->rows() + a_->cols(); }
  Index cols() const { return a_->cols(); }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    a_->apply(x, y.head(a_->rows()));
    y.tail(x.size()) = lam_ * x;
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    a_->apply_adjoint(u.head(a_->rows()), v);
    v += lam_ * u.tail(v.size());
  }
  /// The fused Golub–Kahan products from A's (HasFusedStep): u ← K v − a·u, w ← Kᴴu, one pass
  /// over A. Its adjoint view, the (G12) solve's operator, uses them by columns.
  bool fuses_step() const requires HasFusedStep<Op> { return a_->fuses_step(); }
  RealOf<Scalar> apply_sub_norm2_adjoint(
      Eigen::Ref<const Vector<Scalar>> v, Eigen::Ref<Vector<Scalar>> u, RealOf<Scalar> a,
      Eigen::Ref<Vector<Scalar>> w) const requires HasFusedStep<Op> {
    const Index m = a_->rows();
    const RealOf<Scalar> head = a_->apply_sub_norm2_adjoint(v, u.head(m), a, w);
    auto tail = u.tail(v.size());
    if (a == 0)
      tail = lam_ * v;
    else
      tail = lam_ * v - a * tail;
    w += lam_ * tail;
    return head + tail.squaredNorm();
  }

 private:
  const Op* a_;
  RealOf<Scalar> lam_;
};

template <class Op>
inline constexpr bool is_stacked_adjoint_v = false;
template <class Op>
inline constexpr bool is_stacked_adjoint_v<AdjointOperator<Stacked<Op>>> = true;
}  // namespace detail

template <class Scalar>
class LeastSquares {
 public:
  using Real = RealOf<Scalar>;

  explicit LeastSquares(LeastSquaresOptions<Scalar> options = {}) : opts_(std::move(options)) {}
  const LeastSquaresOptions<Scalar>& options() const { return opts_; }

  /// Solves (1). Throws std::invalid_argument for bad input, SolveError (policy Raise) when the
  /// solve does not converge.
  template <LinearOperator Op>
  Forward<Op> forward(const Op& a, Eigen::Ref<const Vector<Scalar>> b, Real damp = 0) {
    static_assert(std::is_same_v<typename Op::Scalar, Scalar>, "operator scalar mismatch");
    if (!std::isfinite(damp) || damp < 0)  // named as the caller passed it, not Options::damp
      throw std::invalid_argument(
          "difflsq::LeastSquares::forward: damp must be finite and >= 0, got " +
          std::to_string(static_cast<double>(damp)));
    Forward<Op> f;
    f.op = &a;
    f.b = b;
    f.damp = damp;
    std::vector<SolveRecord<Real>> log;
    f.x = run("forward: min |Ax - b|^2 + damp^2 |x|^2", a, b, damp, nullptr,
              forward_tolerances(a.rows(), a.cols()), log);
    f.report = log.back().report;
    f.r.resize(a.rows());
    a.apply(f.x, f.r);
    f.r = f.b - f.r;
    return f;
  }

  /// The context keeps a pointer to the operator: a temporary would dangle.
  template <LinearOperator Op>
  Forward<Op> forward(const Op&& a, Eigen::Ref<const Vector<Scalar>> b, Real damp = 0) = delete;

  /// Reverse mode: b̄, λ̄ and θ̄ (or the factors of Ā) for the cotangent x̄ = ∂L/∂x.
  template <LinearOperator Op>
  Gradients<Scalar> backward(Forward<Op>& f, Eigen::Ref<const Vector<Scalar>> xbar) {
    const Op& a = check_context(f);
    const AdjointOperator<Op> at(a);
    const Index m = a.rows(), n = a.cols();
    if (xbar.size() != n)
      throw std::invalid_argument("difflsq::LeastSquares::backward: xbar has length " +
                                  std::to_string(xbar.size()) + ", expected " + std::to_string(n));
    if (!xbar.allFinite())
      throw std::invalid_argument("difflsq::LeastSquares::backward: xbar is not finite");
    const Real lam = f.damp;
    const Tolerances<Real> tol = backward_tolerances(f);
    Gradients<Scalar> g;
    g.forward_converged = f.report.converged();
    std::optional<Vector<Scalar>> w;
    if (m >= n ? stacked_ok(lam) : strongly_damped(f))
      w = normal_solve("backward: min-norm [A^T damp I] w = xbar", a, xbar, lam, tol, g.solves);
    if (w && swamped(*w, m, lam, g.solves.back().report.anorm, f)) w.reset();
    if (w) {
      // (G12): one undamped solve, w = [A y; λ y] with y = (AᴴA + λ²I)⁻¹x̄, so b̄ = A y (G3)
      // is w's head and y its tail over λ; no division by λ², no solve with A alone, whose
      // cost and accuracy would depend on cond(A) rather than on the damped problem.
      g.b = w->head(m);
      Vector<Scalar> y = w->tail(n) / lam;
      g.damp = -2 * lam * std::real(f.x.dot(y));  // (G4); Eigen's dot is xᴴy
      g.a_terms.emplace_back(f.r, std::move(y));  // Ā = r yᴴ − b̄ xᴴ (G2)
      g.a_terms.emplace_back(-g.b, f.x);
    } else if (m >= n && !strongly_damped(f)) {
      // Tall, λ = 0 or too small for (G12) (G5): split x̄ = Aᴴp + q with q ∈ N(A); then
      // y = (AᴴA + λ²I)⁺x̄ = argmin ‖Ay − p‖² + λ²‖y‖² + q/λ², the last term only for λ > 0.
      const auto [p, q, null_part] = split("backward: min |A^T p - xbar|", a, xbar, tol, g.solves);
      Vector<Scalar> y = run("backward: min |Ay - p|^2 + damp^2 |y|^2", a, p, lam, nullptr, tol,
                             g.solves);
      g.b.resize(m);
      a.apply(y, g.b);                            // b̄ = A y (G3), as A q = 0
      g.damp = -2 * lam * std::real(f.x.dot(y));  // (G4); q ⟂ x would add only rounding
      if (null_part && stacked_ok(lam)) y += q / (lam * lam);  // (AᴴA + λ²I)⁻¹q, q ∈ N(A) (G10)
      g.a_terms.emplace_back(f.r, std::move(y));  // Ā = r yᴴ − b̄ xᴴ (G2)
      g.a_terms.emplace_back(-g.b, f.x);
      if (null_part && !stacked_ok(lam)) g.a_terms.emplace_back(dual(f, g.solves), q);  // (G7)
    } else {
      // Wide, or tall and strongly damped (λ ≫ ‖A‖, where rounding swamps the head of the
      // (G12) solve's w, and the split's undamped solve would need cond(A) iterations) (G6):
      // b̄ = (AAᴴ + λ²I)⁺ A x̄ directly; s = x̄ − Aᴴb̄ = λ²y; Ā = z sᴴ − b̄ xᴴ.
      g.b = run("backward: min |A^T c - xbar|^2 + damp^2 |c|^2", at, xbar, lam, nullptr, tol,
                g.solves);
      Vector<Scalar> s(n);
      a.apply_adjoint(g.b, s);
      s = xbar - s;
      const Vector<Scalar>& z = dual(f, g.solves);
      g.damp = -2 * lam * std::real(dual_range(f).dot(g.b));
      g.a_terms.emplace_back(z, std::move(s));
      g.a_terms.emplace_back(-g.b, f.x);
      if (f.residual_outside_range && !stacked_ok(lam)) {  // (G7)
        Vector<Scalar> y = run("backward: min |Ay - c|", a, g.b, 0, nullptr, tol, g.solves);
        g.a_terms.emplace_back(f.r, std::move(y));
      }
    }
    if constexpr (ParameterizedOperator<Op>) {
      g.theta = Vector<Scalar>::Zero(a.parameter_count());
      for (const auto& [u, v] : g.a_terms) a.add_parameter_gradient(u, v, g.theta);
    }
    return g;
  }

  /// Forward mode: ẋ for tangents (θ̇, ḃ, λ̇).
  template <LinearOperator Op>
  TangentResult<Scalar> jvp(Forward<Op>& f, const Tangents<Scalar>& t) {
    const Op& a = check_context(f);
    const AdjointOperator<Op> at(a);
    const Index m = a.rows(), n = a.cols();
    const char* who = "difflsq::LeastSquares::jvp: ";
    if (t.b && (t.b->size() != m || !t.b->allFinite()))
      throw std::invalid_argument(std::string(who) + "tangent of b must be finite, of length " +
                                  std::to_string(m));
    if (!std::isfinite(t.damp))
      throw std::invalid_argument(std::string(who) + "tangent of damp is not finite");
    if (bool(t.a_dot) != bool(t.a_dot_adjoint) || (t.theta && t.a_dot))
      throw std::invalid_argument(std::string(who) + "give a_dot and a_dot_adjoint together, " +
                                  "and not with a tangent of theta");
    if (t.theta) {
      if constexpr (ParameterizedOperator<Op>) {
        if (t.theta->size() != a.parameter_count() || !t.theta->allFinite())
          throw std::invalid_argument(std::string(who) + "tangent of theta must be finite, of " +
                                      "length " + std::to_string(a.parameter_count()));
      } else {
        throw std::invalid_argument(std::string(who) +
                                    "a tangent of theta needs a ParameterizedOperator");
      }
    }
    const bool moving = t.theta || t.a_dot;  // Ȧ ≠ 0
    auto derivative_adjoint = [&](const Vector<Scalar>& u, Vector<Scalar>& w) {  // w = Ȧᴴu
      w.resize(n);
      if (t.a_dot_adjoint) t.a_dot_adjoint(u, w);
      if constexpr (ParameterizedOperator<Op>)
        if (t.theta) a.apply_derivative_adjoint(*t.theta, u, w);
      if (!w.allFinite()) throw std::invalid_argument(std::string(who) + "Ȧᴴu is not finite");
    };
    Vector<Scalar> ad_x, ad_r;  // Ȧx and Ȧᴴr
    if (moving) {
      ad_x.resize(m);
      if (t.a_dot) t.a_dot(f.x, ad_x);
      if constexpr (ParameterizedOperator<Op>)
        if (t.theta) a.apply_derivative(*t.theta, f.x, ad_x);
      if (!ad_x.allFinite()) throw std::invalid_argument(std::string(who) + "Ȧx is not finite");
      derivative_adjoint(f.r, ad_r);
    }
    const Real lam = f.damp, dlam = t.damp;
    const Tolerances<Real> tol = backward_tolerances(f);
    TangentResult<Scalar> out;
    out.forward_converged = f.report.converged();
    // (G8): (AᴴA + λ²I) ẋ = Aᴴc + w with c = ḃ − Ȧx and w = Ȧᴴr − 2λλ̇x.
    Vector<Scalar> c = t.b ? *t.b : Vector<Scalar>::Zero(m);
    if (moving) c -= ad_x;
    if (m >= n && stacked_ok(lam)) {
      // Tall (G8, G12): ẋ = (AᴴA + λ²I)⁻¹(Aᴴc + w) with w = Ȧᴴr − 2λλ̇x, one undamped solve.
      Vector<Scalar> rhs(n);
      a.apply_adjoint(c, rhs);
      rhs -= (2 * lam * dlam) * f.x;
      if (moving) rhs += ad_r;
      // As in backward: when rounding swamps the solve (float, a rank-deficient A, a small λ:
      // ẋ was 1e-2 off with a converged status), the split below finds the null-space part.
      // Not under strong damping (λ ≫ ‖A‖), where the test on w's head trips but ẋ = y, its
      // tail over λ, is accurate (the residual's floor ε‖K‖‖w‖ ≤ ε‖K‖²‖y‖ is amplified by at
      // most 1/λ², and ‖K‖²/λ² ≤ 1/√tol there): the split's undamped solve would need about
      // cond(A) iterations (a SolveError at λ = 5e3‖A‖ in float32).
      const auto w =
          normal_solve("jvp: min-norm [A^T damp I] w = A^T c + w", a, rhs, lam, tol, out.solves);
      if (w && (strongly_damped(f) || !swamped(*w, m, lam, out.solves.back().report.anorm, f))) {
        out.x = w->tail(n) / lam;
        return out;
      }
    }
    if (m >= n && stacked_ok(lam)) {
      // Tall, λ too small for (G12): split w = Aᴴp + q as in backward (G5), then
      // ẋ = argmin ‖Ax' − (c + p)‖² + λ²‖x'‖² + q/λ².
      Vector<Scalar> w = (-2 * lam * dlam) * f.x;
      if (moving) w += ad_r;
      std::optional<Vector<Scalar>> q;
      if (w.squaredNorm() > 0) {
        auto parts = split("jvp: min |A^T p - w|", a, w, tol, out.solves);
        c += parts.p;
        if (parts.null_part) q = std::move(parts.q);
      }
      out.x = run("jvp: min |Ax' - c|^2 + damp^2 |x'|^2", a, c, lam, nullptr, tol, out.solves);
      if (q) out.x += *q / (lam * lam);  // (G10)
      return out;
    }
    // Wide, or λ = 0 (or below what λ² can hold) (G8): with the dual z (x = Aᴴz, r = λ²z),
    // Aᴴc + w = Aᴴ(c − 2λλ̇z) + λ²Ȧᴴz,
    // so ẋ = argmin |Ax' − (c − 2λλ̇z)|² + λ²|x' − Ȧᴴz|²: one solve started at x0 = Ȧᴴz.
    // Without θ̇ and λ̇ (w = 0) z is not needed: ẋ = argmin |Ax' − ḃ|² + λ²|x'|².
    std::optional<Vector<Scalar>> x0;
    if (moving || (lam > 0 && dlam != 0)) {
      const Vector<Scalar>& z = dual(f, out.solves);
      if (lam > 0) c -= (2 * lam * dlam) * dual_range(f);
      if (moving) derivative_adjoint(z, x0.emplace(n));
      if (!stacked_ok(lam) && f.residual_outside_range && moving) {
        // λ = 0 with r ∉ range(A): the (AᴴA)⁺Ȧᴴr term needs its own solve (G7).
        c += run("jvp: min |A^T p - A'^T r|", at, ad_r, 0, nullptr, tol, out.solves);
      }
    }
    const Tolerances<Real> own =
        lam > 0 && dlam != 0 ? normal_equation_tolerances(a, c, lam, x0 ? &*x0 : nullptr, f, tol)
                             : tol;
    out.x = run("jvp: min |Ax' - c|^2 + damp^2 |x' - x0|^2", a, c, lam, x0 ? &*x0 : nullptr, own,
                out.solves);
    return out;
  }

 private:
  LeastSquaresOptions<Scalar> opts_;
  Workspace<Scalar> ws_a_, ws_at_, ws_k_;  // solves with A, Aᴴ and [Aᴴ λI] (G12)

  /// The forward solve's stopping rules, with the default iteration limit of Tolerances.
  Tolerances<Real> forward_tolerances(Index m, Index n) const {
    Tolerances<Real> t = opts_.forward;
    if (t.max_iterations <= 0)
      t.max_iterations = std::max({Index(20), 4 * std::min(m, n),
                                   default_max_iterations(opts_.method, m, n)});
    return t;
  }

  /// The stopping rules of the solves after forward f. Without an iteration limit of their own
  /// they get max(2 × f's iterations, the method's default for max(m, n) × max(m, n)): the
  /// backward solves of an ill-conditioned problem can need more iterations than min(m, n),
  /// LSMR's default (measured: 517 for a 2000 × 500 forward solve that took 463).
  template <LinearOperator Op>
  Tolerances<Real> backward_tolerances(const Forward<Op>& f) const {
    Tolerances<Real> t = opts_.backward ? *opts_.backward : opts_.forward;
    if (t.max_iterations <= 0) {
      const Index big = std::max(f.op->rows(), f.op->cols());
      t.max_iterations = std::max(2 * f.report.iterations,
                                  default_max_iterations(opts_.method, big, big));
    }
    return t;
  }

  template <LinearOperator Op>
  static const Op& check_context(const Forward<Op>& f) {
    if (!f.op) throw std::invalid_argument("difflsq::LeastSquares: empty forward context");
    return *f.op;
  }

  /// Whether a residual-like vector of norm `norm` is more than what a solve with these
  /// tolerances leaves behind: its test 1, ‖res‖ ≤ btol‖rhs‖ + atol‖A‖‖sol‖ [PS82 §6]. The
  /// callers also require that solve to have converged: only then is a residual above this
  /// floor a genuine null-space component (G10) rather than an unfinished iteration.
  static bool above_noise(Real norm, Real rhs_norm, Real anorm, Real sol_norm,
                          const Tolerances<Real>& tol) {
    constexpr Real eps = std::numeric_limits<Real>::epsilon();
    return norm > std::max(tol.btol, eps) * rhs_norm + std::max(tol.atol, eps) * anorm * sol_norm;
  }

  /// (G5): v = Aᴴp + q with p = argmin ‖Aᴴp − v‖ (minimum-norm, one undamped solve) and
  /// q = v − Aᴴp, the part of v in N(A); null_part says whether q passes the test of (G10).
  struct Split {
    Vector<Scalar> p, q;
    bool null_part;
  };
  template <LinearOperator Op>
  Split split(const char* role, const Op& a, Eigen::Ref<const Vector<Scalar>> v,
              const Tolerances<Real>& tol, std::vector<SolveRecord<Real>>& log) {
    Split s{run(role, AdjointOperator<Op>(a), v, 0, nullptr, tol, log), Vector<Scalar>(v.size()),
            false};
    a.apply_adjoint(s.p, s.q);
    s.q = v - s.q;
    const Report<Real>& report = log.back().report;
    s.null_part = report.converged() &&
                  above_noise(s.q.norm(), v.norm(), report.anorm, s.p.norm(), tol);
    return s;
  }

  /// Tolerances for ẋ = argmin ‖Ax' − c‖² + λ²‖x' − x0‖² when c holds −2λλ̇z, a device for the
  /// normal equations (AᴴA + λ²I)ẋ = g := Aᴴc + λ²x0 (G8). Its test 2,
  /// ‖g − (AᴴA + λ²I)x'‖ ≤ atol‖K‖‖r̃‖ with K = [A; λI] and r̃ = [c − Ax'; λ(x0 − x')], is
  /// relative to ‖r̃‖, which z can make mostly invisible to A: its part r_N/λ² in N(Aᴴ) when
  /// b ∉ range(A) (measured: ẋ 66% wrong at λ = 1e-3, tolerance 1e-6), or along singular
  /// values far below λ. As ‖r̃‖ never grows from its start ‖[c − Ax0; 0]‖ (LSQR, LSMR and
  /// CGLS minimise it over growing spaces), atol·‖g‖/(‖K‖‖c − Ax0‖) makes test 2 imply
  /// ‖g − (AᴴA + λ²I)x'‖ ≤ atol‖g‖ (‖K‖ by the forward solve's estimate).
  template <LinearOperator Op>
  Tolerances<Real> normal_equation_tolerances(const Op& a, const Vector<Scalar>& c, Real lam,
                                              const Vector<Scalar>* x0, const Forward<Op>& f,
                                              Tolerances<Real> tol) const {
    Vector<Scalar> g(a.cols()), start = c;
    a.apply_adjoint(c, g);
    if (x0) {
      g += (lam * lam) * *x0;
      Vector<Scalar> ax(a.rows());
      a.apply(*x0, ax);
      start -= ax;
    }
    const Real scale = f.report.anorm * start.norm();
    if (scale > 0 && g.norm() < scale) tol.atol *= g.norm() / scale;
    return tol;
  }

  /// The largest relative tolerance of the forward and backward solves (at least ε).
  template <LinearOperator Op>
  Real solve_tolerance(const Forward<Op>& f) const {
    const auto t = backward_tolerances(f);
    constexpr Real eps = std::numeric_limits<Real>::epsilon();
    return std::max({t.atol, t.btol, opts_.forward.atol, opts_.forward.btol, eps});
  }

  /// Whether λ is large enough to take z = r/λ² (G11): its relative error is about
  /// tol·‖A‖²/λ², which this keeps below √tol (‖A‖ by the forward solve's estimate of
  /// ‖[A; λI]‖, from the directions its iterations explored).
  template <LinearOperator Op>
  bool strongly_damped(const Forward<Op>& f) const {
    const Real anorm = f.report.anorm;
    return stacked_ok(f.damp) && f.damp * f.damp >= std::sqrt(solve_tolerance(f)) * anorm * anorm;
  }

  /// The dual solution z = (AAᵀ + λ²I)⁺b: r/λ² under strong damping (G11), else for λ > 0 one
  /// solve with [A λI] (G13), else, or when that solve stops by test 2, conlim or its iteration
  /// limit, or is swamped by rounding, (G9): z_R = (Aᵀ)⁺x by a solve plus the part of r = λ²z
  /// outside range(A), which that solve cannot see, divided by λ².
  template <LinearOperator Op>
  const Vector<Scalar>& dual(Forward<Op>& f, std::vector<SolveRecord<Real>>& log) {
    if (f.dual && f.dual_failure) {  // a z kept from a solve that did not converge
      log.push_back(*f.dual_failure);
      fail(log);
    }
    if (!f.dual && strongly_damped(f)) {
      f.dual = f.r / (f.damp * f.damp);  // r = λ²z (G1, G11)
      f.residual_outside_range = false;
    }
    const AdjointOperator<Op> at(*f.op);
    if (!f.dual && stacked_ok(f.damp)) {
      // (G13): the minimum-norm w of [A λI] w = b is [Aᴴz; λz], (G12) with Aᴴ for A: one
      // solve as well conditioned as the damped problem, whatever cond(A).
      auto w = normal_solve("dual: min-norm [A damp I] w = b", at, f.b, f.damp,
                            backward_tolerances(f), log);
      if (w && !swamped(*w, f.op->cols(), f.damp, log.back().report.anorm, f)) {
        if (!log.back().report.converged()) f.dual_failure = log.back();
        f.dual = w->tail(f.op->rows()) / f.damp;
        f.residual_outside_range = false;
      }
    }
    if (!f.dual) {
      Vector<Scalar> z =
          run("dual: min |A^T z - x|", at, f.x, 0, nullptr, backward_tolerances(f), log);
      const Real lam2 = f.damp * f.damp;
      if (!log.back().report.converged()) f.dual_failure = log.back();
      const Vector<Scalar> rn = f.r - lam2 * z;
      f.residual_outside_range =
          f.report.converged() && log.back().report.converged() &&
          above_noise(rn.norm(), f.b.norm(), f.report.anorm, f.x.norm(), opts_.forward);
      if (f.residual_outside_range && stacked_ok(f.damp)) {
        f.dual_range = z;
        z += rn / lam2;
      }
      f.dual = std::move(z);
    }
    return *f.dual;
  }

  /// z's part in range(A), after dual(f): what λ̄ = −2λ Re⟨z, b̄⟩ and the jvp's right-hand
  /// side c − 2λλ̇z need. The part r_N/λ² in N(Aᴴ) is orthogonal to b̄ ∈ range(A) and invisible
  /// to A; with a tiny λ it is huge, and adding it would only add its rounding (measured: λ̄ 5×
  /// too large, and a jvp solve stopped after one iteration by its relative test, at λ = 1e-8).
  template <LinearOperator Op>
  static const Vector<Scalar>& dual_range(const Forward<Op>& f) {
    return f.dual_range ? *f.dual_range : *f.dual;
  }

  /// Whether λ is large enough for (G12): λ·v must not underflow, and λ² be a normal number.
  static bool stacked_ok(Real lam) { return lam > std::sqrt(std::numeric_limits<Real>::min()); }

  /// Whether rounding swamps b̄ = w_head from (G12): w is normwise accurate, but its error of
  /// about ε‖K‖‖y‖ can exceed b̄ = A y when y is dominated by a large part along tiny singular
  /// values, such as q/λ² for a rank-deficient A and a tiny λ (measured: 4e-4 relative error in
  /// b̄ and λ̄ at λ = 1e-6, whatever the tolerance). The split (G5) handles that part exactly.
  template <LinearOperator Op>
  bool swamped(const Vector<Scalar>& w, Index m, Real lam, Real knorm,
               const Forward<Op>& f) const {
    constexpr Real eps = std::numeric_limits<Real>::epsilon();
    const Real allowed = std::max(solve_tolerance(f), std::sqrt(eps));
    return eps * knorm * (w.tail(w.size() - m).norm() / lam) > allowed * w.head(m).norm();
  }

  /// (G12): for λ > 0 the minimum-norm solution of the consistent system [Aᴴ λI] w = g is
  /// w = K (KᴴK)⁻¹ g = [A y; λ y] with K = [A; λI] and y = (AᴴA + λ²I)⁻¹g. One undamped solve
  /// whose iterates stay in range(K), so y = w_tail/λ is exact (no cancellation), whatever λ;
  /// its conditioning is that of the damped problem (1).
  ///
  /// Test 1 accepts ‖g − Kᴴw‖ ≤ btol‖g‖ + atol‖K‖‖w‖. When y is dominated by a part along the
  /// smallest singular values of K, such as q/λ² along N(A) for a rank-deficient A and a small
  /// λ, ‖w‖ is large and the atol term lets the residual stay far above btol‖g‖, while y's error
  /// is that residual's part along N(A) divided by λ² (measured: 12% at λ = 1e-5 and tolerance
  /// 1e-6). So a solve that stops with a true residual above 10·btol‖g‖ is continued from its w
  /// with atol = ε, down to the consistent system's own test ‖g − Kᴴw‖ ≤ btol‖g‖ (one record
  /// for both runs); this costs one product when the atol term was not what stopped it.
  ///
  /// A stop by test 2 (‖K res‖ ≤ atol‖K‖‖res‖) means that the residual lies along singular
  /// values of K below atol·‖K‖, such as λ along N(A); a stop by conlim means cond(K) ≈ ‖A‖/λ
  /// is above it; the iteration limit is what the same slow convergence along tiny singular
  /// values of K comes to when neither test fires first (a square rank-deficient A, λ = 1e-6).
  /// Such a solve is dropped from the log and nothing is returned: the caller splits instead
  /// (G5), which finds that part by a subtraction, and reports its own solves' statuses.
  template <LinearOperator Op>
  std::optional<Vector<Scalar>> normal_solve(const char* role, const Op& a,
                                             Eigen::Ref<const Vector<Scalar>> g, Real lam,
                                             const Tolerances<Real>& tol,
                                             std::vector<SolveRecord<Real>>& log) {
    constexpr Real eps = std::numeric_limits<Real>::epsilon();
    const detail::Stacked<Op> k(a, lam);
    const AdjointOperator<detail::Stacked<Op>> kt(k);
    auto report = solve_logged(role, kt, g, 0, nullptr, tol, log);
    if (report.status == Status::ResidualSmall) {
      Vector<Scalar> res(g.size());
      kt.apply(ws_k_.x, res);
      res = g - res;
      if (res.norm() > 10 * std::max(tol.btol, eps) * g.norm()) {
        Tolerances<Real> own = tol;
        own.atol = eps;
        const Vector<Scalar> w0 = ws_k_.x;
        const Index first = report.iterations;
        log.pop_back();
        report = solve_logged(role, kt, g, 0, &w0, own, log);
        report.iterations = log.back().report.iterations += first;  // one record for both
      }
    }
    switch (report.status) {
      case Status::LeastSquaresSmall:
      case Status::LeastSquaresMachine:
      case Status::ConditionLimit:
      case Status::ConditionMachine:
      case Status::IterationLimit:
        log.pop_back();
        return std::nullopt;
      default:
        if (!report.converged()) fail(log);
        return ws_k_.x;
    }
  }

  template <LinearOperator Op>
  Vector<Scalar> run(const char* role, const Op& op, Eigen::Ref<const Vector<Scalar>> rhs,
                     Real damp, const Vector<Scalar>* x0, const Tolerances<Real>& tol,
                     std::vector<SolveRecord<Real>>& log) {
    const auto report = solve_logged(role, op, rhs, damp, x0, tol, log);
    if (!report.converged()) fail(log);
    return workspace<Op>().x;
  }

  template <class Op>
  Workspace<Scalar>& workspace() {
    return detail::is_stacked_adjoint_v<Op> ? ws_k_ : detail::is_adjoint_v<Op> ? ws_at_ : ws_a_;
  }

  /// One solve with the layer's method into the workspace for Op, logged as `role`.
  template <LinearOperator Op>
  Report<Real> solve_logged(const char* role, const Op& op, Eigen::Ref<const Vector<Scalar>> rhs,
                            Real damp, const Vector<Scalar>* x0, const Tolerances<Real>& tol,
                            std::vector<SolveRecord<Real>>& log) {
    Options<Scalar> o;
    o.damp = damp;
    o.atol = tol.atol;
    o.btol = tol.btol;
    o.conlim = tol.conlim;
    o.max_iterations = tol.max_iterations;
    if (x0) o.x0 = *x0;
    const auto report = solve(opts_.method, workspace<Op>(), op, rhs, o);
    log.push_back({role, report});
    return report;
  }

  /// The last solve of `log` did not converge.
  void fail(const std::vector<SolveRecord<Real>>& log) const {
    detail::on_failure(opts_.on_failure, opts_.warn, std::string("difflsq: ") + log.back().role,
                       log);
  }
};

}  // namespace difflsq
