// difflsq — the null-space step for equality-constrained optimization (docs/nullspace.md).
//
// For parameters θ ∈ ℝᴾ, a loss gradient g and constraints c(θ) = 0 ∈ ℝᵏ with Jacobian J (only
// J·v and Jᵀ·u are used), a step computes with least-squares solves
//
//     z  = argmin_z ‖Jᵀz − g‖         the least-squares Lagrange multipliers of g,
//     Pg = g − Jᵀz                    the part of g in N(J) (the residual of that solve),
//     δ  = J⁺c                        the minimum-norm Gauss–Newton correction (Jδ = c),
//
// and the direction d = Pg + γ·δ: θ ← θ − lr·d moves along the constraint set and back towards
// it (lr·γ = 1 is a full Gauss–Newton correction). Two solves, where the paper's combined
// solve u = J⁺(Jg − γc), d = g − u, makes one: they give z and Pg exactly — Pg to the relative
// accuracy atol of its own solve, which matters as Pg → 0 at a stationary point, where g − u
// loses it to cancellation — and the correction solve is skipped when c = 0.
//
// Optimizers that rescale the gradient by a diagonal D⁻¹ (Adam: D = diag(√v̂ + ε)) project their
// step Δ in the metric of D instead, P_D Δ = argmin_{Jw = 0} (w − Δ)ᵀD(w − Δ) = Δ − D⁻¹Jᵀμ: then
// P_D Δ = 0 exactly where the gradient lies in range(Jᵀ), the KKT condition. The Euclidean
// projection PΔ = 0 would stop where D⁻¹g ∈ range(Jᵀ) instead, not a constrained stationary
// point (docs/nullspace.md).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <concepts>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "layer.hpp"
#include "method.hpp"
#include "operator.hpp"
#include "preconditioner.hpp"

namespace difflsq {

/// Equality constraints c(θ) = 0 with k = constraints() values over P = parameters() unknowns:
///   value(θ, c):             c = c(θ)
///   jacobian(θ, v, y):       y = J(θ) v     (length k)
///   jacobian_adjoint(θ, u, w): w = J(θ)ᵀ u  (length P)
/// (θ, v, u as Eigen::Ref<const Vector<Scalar>>; c, y, w as pre-sized Eigen::Ref<Vector>.)
template <class C>
concept Constraint = requires(const C& con, Eigen::Ref<const Vector<typename C::Scalar>> in,
                              Eigen::Ref<Vector<typename C::Scalar>> out) {
  typename C::Scalar;
  { con.constraints() } -> std::convertible_to<Index>;
  { con.parameters() } -> std::convertible_to<Index>;
  con.value(in, out);
  con.jacobian(in, in, out);
  con.jacobian_adjoint(in, in, out);
};

/// Linear constraints C θ = d from a dense or sparse Eigen matrix C (kept by reference).
template <class Matrix>
class LinearConstraint {
 public:
  using Scalar = typename Matrix::Scalar;
  LinearConstraint(const Matrix& c, Vector<Scalar> d) : c_(&c), d_(std::move(d)) {
    if (d_.size() != c.rows())
      throw std::invalid_argument("difflsq::LinearConstraint: d has length " +
                                  std::to_string(d_.size()) + " but C has " +
                                  std::to_string(c.rows()) + " rows");
  }
  Index constraints() const { return c_->rows(); }
  Index parameters() const { return c_->cols(); }
  void value(Eigen::Ref<const Vector<Scalar>> theta, Eigen::Ref<Vector<Scalar>> out) const {
    out.noalias() = *c_ * theta;
    out -= d_;
  }
  void jacobian(Eigen::Ref<const Vector<Scalar>>, Eigen::Ref<const Vector<Scalar>> v,
                Eigen::Ref<Vector<Scalar>> y) const {
    y.noalias() = *c_ * v;
  }
  void jacobian_adjoint(Eigen::Ref<const Vector<Scalar>>, Eigen::Ref<const Vector<Scalar>> u,
                        Eigen::Ref<Vector<Scalar>> w) const {
    w.noalias() = c_->transpose() * u;
  }

 private:
  const Matrix* c_;
  Vector<Scalar> d_;
};

/// Constraints from callbacks value(θ, c), jacobian(θ, v, y), jacobian_adjoint(θ, u, w).
template <class Scalar_, class Value, class Jac, class JacT>
class CallbackConstraint {
 public:
  using Scalar = Scalar_;
  CallbackConstraint(Index k, Index p, Value value, Jac jac, JacT jac_t)
      : k_(k), p_(p), value_(std::move(value)), jac_(std::move(jac)), jac_t_(std::move(jac_t)) {}
  Index constraints() const { return k_; }
  Index parameters() const { return p_; }
  void value(Eigen::Ref<const Vector<Scalar>> theta, Eigen::Ref<Vector<Scalar>> out) const {
    value_(theta, out);
  }
  void jacobian(Eigen::Ref<const Vector<Scalar>> theta, Eigen::Ref<const Vector<Scalar>> v,
                Eigen::Ref<Vector<Scalar>> y) const {
    jac_(theta, v, y);
  }
  void jacobian_adjoint(Eigen::Ref<const Vector<Scalar>> theta, Eigen::Ref<const Vector<Scalar>> u,
                        Eigen::Ref<Vector<Scalar>> w) const {
    jac_t_(theta, u, w);
  }

 private:
  Index k_, p_;
  Value value_;
  Jac jac_;
  JacT jac_t_;
};

template <class Scalar = double, class Value, class Jac, class JacT>
auto make_constraint(Index k, Index p, Value value, Jac jac, JacT jac_t) {
  return CallbackConstraint<Scalar, Value, Jac, JacT>(k, p, std::move(value), std::move(jac),
                                                      std::move(jac_t));
}

namespace detail {
/// diag(s)·A: S Jᵀ, the operator of the projection in the metric D = S⁻², and the row-equilibrated
/// J of a slow correction solve.
template <LinearOperator Op>
class RowScaled {
 public:
  using Scalar = typename Op::Scalar;
  RowScaled(const Op& a, const Vector<Scalar>& s) : a_(&a), s_(&s), tmp_(s.size()) {}
  Index rows() const { return a_->rows(); }
  Index cols() const { return a_->cols(); }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    a_->apply(x, y);
    y.array() *= s_->array();
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> w) const {
    tmp_ = s_->cwiseProduct(u);
    a_->apply_adjoint(tmp_, w);
  }

 private:
  const Op* a_;
  const Vector<Scalar>* s_;
  mutable Vector<Scalar> tmp_;  // allocated once, with the operator
};

/// J(θ) as a LinearOperator (k × P) at a fixed θ.
template <Constraint C>
class JacobianOperator {
 public:
  using Scalar = typename C::Scalar;
  JacobianOperator(const C& con, Eigen::Ref<const Vector<Scalar>> theta)
      : con_(&con), theta_(theta) {}
  Index rows() const { return con_->constraints(); }
  Index cols() const { return con_->parameters(); }
  void apply(Eigen::Ref<const Vector<Scalar>> v, Eigen::Ref<Vector<Scalar>> y) const {
    con_->jacobian(theta_, v, y);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> w) const {
    con_->jacobian_adjoint(theta_, u, w);
  }

 private:
  const C* con_;
  Eigen::Ref<const Vector<Scalar>> theta_;
};
}  // namespace detail

template <class Scalar>
struct NullSpaceOptions {
  using Real = RealOf<Scalar>;
  Method method = Method::Lsqr;
  Tolerances<Real> tolerances{.atol = Real(1e-10), .btol = Real(1e-10), .conlim = 0};
  Real gamma = 1;  ///< rate of the feasibility correction relative to the learning rate
  FailurePolicy on_failure = FailurePolicy::Raise;
  std::function<void(const std::string&)> warn{};
};

/// One null-space step at θ.
template <class Scalar>
struct NullSpaceResult {
  using Real = RealOf<Scalar>;
  Vector<Scalar> direction;    ///< d = Pv + γ·J⁺c
  Vector<Scalar> projected;    ///< Pv, the part of the input vector in N(J) (P_D v with a metric)
  Vector<Scalar> multipliers;  ///< z = argmin ‖Jᵀz − v‖ (μ with a metric)
  Vector<Scalar> correction;   ///< δ = J⁺c (zero when c = 0)
  Real constraint_norm = 0;    ///< ‖c(θ)‖
  Real projected_norm = 0;     ///< ‖Pv‖ (for v = g: the Lagrangian stationarity measure)
  /// ConstrainedAdam: the factor (≤ 1) it applied to P_D Δ so as not to step further than Δ.
  Real step_scale = 1;
  std::vector<SolveRecord<Real>> solves;
  bool converged() const { return all_converged(solves); }
};

/// Computes null-space steps; holds the solver workspaces (one object per thread).
template <class Scalar>
class NullSpaceStep {
 public:
  using Real = RealOf<Scalar>;
  explicit NullSpaceStep(NullSpaceOptions<Scalar> options = {}) : opts_(std::move(options)) {}
  const NullSpaceOptions<Scalar>& options() const { return opts_; }

  /// d = P v + γ J⁺c(θ) with the multipliers of v (v = the loss gradient, or an optimizer's
  /// proposed step).
  template <Constraint C>
  NullSpaceResult<Scalar> operator()(const C& con, Eigen::Ref<const Vector<Scalar>> theta,
                                     Eigen::Ref<const Vector<Scalar>> v) {
    return step(con, theta, v, nullptr);
  }

  /// The same with P_D, the projection onto N(J) in the metric D = diag(metric) (entries
  /// positive): P_D v = v − D⁻¹Jᵀμ, μ = argmin ‖D^{-1/2}(Jᵀμ − D v)‖ (file comment).
  template <Constraint C>
  NullSpaceResult<Scalar> operator()(const C& con, Eigen::Ref<const Vector<Scalar>> theta,
                                     Eigen::Ref<const Vector<Scalar>> v,
                                     Eigen::Ref<const Vector<Scalar>> metric) {
    if (metric.size() != v.size() || !metric.allFinite() || !(metric.array() > 0).all())
      throw std::invalid_argument("difflsq::NullSpaceStep: the metric must be finite, positive "
                                  "and as long as v");
    const Vector<Scalar> m = metric;
    return step(con, theta, v, &m);
  }

  /// P v and the multipliers only (no correction).
  template <Constraint C>
  NullSpaceResult<Scalar> project(const C& con, Eigen::Ref<const Vector<Scalar>> theta,
                                  Eigen::Ref<const Vector<Scalar>> v) {
    check(con, theta, v);
    NullSpaceResult<Scalar> out;
    project_into(detail::JacobianOperator<C>(con, theta), v, nullptr, out);
    out.direction = out.projected;
    return out;
  }

 private:
  template <Constraint C>
  NullSpaceResult<Scalar> step(const C& con, Eigen::Ref<const Vector<Scalar>> theta,
                               Eigen::Ref<const Vector<Scalar>> v, const Vector<Scalar>* metric) {
    check(con, theta, v);
    NullSpaceResult<Scalar> out;
    const detail::JacobianOperator<C> jac(con, theta);
    project_into(jac, v, metric, out);
    Vector<Scalar> c(con.constraints());
    con.value(theta, c);
    if (!c.allFinite()) throw std::invalid_argument("difflsq::NullSpaceStep: c(θ) is not finite");
    out.constraint_norm = c.norm();
    out.correction = Vector<Scalar>::Zero(con.parameters());
    if (out.constraint_norm > 0)  // δ = J⁺c: the minimum-norm solution of Jδ = c
      out.correction = run("correction: min |J d - c|", jac, c, out.solves, Side::Rows);
    out.direction = out.projected + opts_.gamma * out.correction;
    return out;
  }

  template <class Jac>
  void project_into(const Jac& jac, Eigen::Ref<const Vector<Scalar>> v,
                    const Vector<Scalar>* metric, NullSpaceResult<Scalar>& out) {
    out.projected.resize(v.size());
    if (!metric) {
      // z = argmin ‖Jᵀz − v‖ (tall, k unknowns); its residual is Pv.
      const AdjointOperator<Jac> jt(jac);
      out.multipliers = run("projection: min |J^T z - v|", jt, v, out.solves, Side::Columns);
      jac.apply_adjoint(out.multipliers, out.projected);
      out.projected = v - out.projected;
    } else {
      // μ = argmin ‖S Jᵀμ − S⁻¹v‖ with S = D^{-1/2}; P_D v = v − S²Jᵀμ.
      const Vector<Scalar> s = metric->cwiseSqrt().cwiseInverse();
      const AdjointOperator<Jac> jt(jac);
      const detail::RowScaled<AdjointOperator<Jac>> sjt(jt, s);
      const Vector<Scalar> rhs = v.cwiseQuotient(s);
      out.multipliers =
          run("projection: min |D^-1/2 (J^T mu - D v)|", sjt, rhs, out.solves, Side::Columns);
      jac.apply_adjoint(out.multipliers, out.projected);
      out.projected = v - s.cwiseAbs2().cwiseProduct(out.projected);
    }
    out.projected_norm = out.projected.norm();
  }

  template <Constraint C>
  static void check(const C& con, Eigen::Ref<const Vector<Scalar>> theta,
                    Eigen::Ref<const Vector<Scalar>> v) {
    const Index p = con.parameters();
    if (theta.size() != p || v.size() != p)
      throw std::invalid_argument("difflsq::NullSpaceStep: theta has length " +
                                  std::to_string(theta.size()) + " and v " +
                                  std::to_string(v.size()) + ", the constraint has " +
                                  std::to_string(p) + " parameters");
    if (!theta.allFinite() || !v.allFinite())
      throw std::invalid_argument("difflsq::NullSpaceStep: theta or v is not finite");
  }

  // Rows of J of very different norms — constraints in different units, or a metric spread
  // over decades as Adam's is — slow the solves down (a selection J under Adam's metric took
  // thousands of iterations). A solve that has not converged after kTrial iterations goes on
  // from where it stopped with J's rows equilibrated: the columns of Jᵀ or S·Jᵀ (Side::Columns,
  // the right preconditioner; for a rank-deficient J the multipliers are then a least-squares
  // solution, not exactly the minimum-norm one) or the rows of J (Side::Rows; the same solution
  // where Jδ = c is consistent). Their norms are estimated from kProbes products, and used only
  // when they differ by more than a factor of kSpread, above the estimate's noise
  // (docs/nullspace.md). The report's r1norm/r2norm are then those of the unscaled system; anorm,
  // acond and arnorm those of the scaled one.
  static constexpr Index kTrial = 8;
  static constexpr int kProbes = 8;
  static constexpr Real kSpread = 10;
  enum class Side { Columns, Rows };

  /// 1/norm for estimated row norms, or empty when they differ by less than kSpread (or are
  /// not finite). A row estimated 0 — a zero row, or two equal entries that cancelled in every
  /// probe — gets the median norm.
  static Vector<Real> weights(Vector<Real> norms) {
    std::vector<Real> positive;
    for (Index j = 0; j < norms.size(); ++j)
      if (norms[j] > 0) positive.push_back(norms[j]);
    if (!norms.allFinite() || positive.empty()) return {};
    const auto [lo, hi] = std::minmax_element(positive.begin(), positive.end());
    if (!(*hi > kSpread * *lo)) return {};
    auto mid = positive.begin() + static_cast<std::ptrdiff_t>(positive.size() / 2);
    std::nth_element(positive.begin(), mid, positive.end());
    for (Index j = 0; j < norms.size(); ++j) norms[j] = Real(1) / (norms[j] > 0 ? norms[j] : *mid);
    if (!norms.allFinite()) return {};  // a norm below 1/max(Real)
    return norms;
  }

  template <LinearOperator Op>
  Vector<Scalar> run(const char* role, const Op& op, Eigen::Ref<const Vector<Scalar>> rhs,
                     std::vector<SolveRecord<Real>>& log, Side side) {
    Options<Scalar> o;
    o.atol = opts_.tolerances.atol;
    o.btol = opts_.tolerances.btol;
    o.conlim = opts_.tolerances.conlim;
    const Index limit = opts_.tolerances.max_iterations > 0
                            ? opts_.tolerances.max_iterations
                            : default_max_iterations(opts_.method, op.rows(), op.cols());
    o.max_iterations = std::min(limit, kTrial);
    Workspace<Scalar>& ws = op.rows() >= op.cols() ? ws_tall_ : ws_wide_;
    auto report = solve(opts_.method, ws, op, rhs, o);
    if (report.status == Status::IterationLimit && report.iterations < limit) {
      const Report<Real> trial = report;
      o.max_iterations = limit - trial.iterations;
      o.x0 = ws.x;
      // Rescaled only with another trial's budget left (the rescaled solve restarts).
      const bool probe = o.max_iterations >= kTrial;
      const Vector<Real> w = !probe ? Vector<Real>()
                             : side == Side::Columns
                                 ? weights(estimate_column_norms(op, kProbes))
                                 : weights(estimate_column_norms(adjoint(op), kProbes));
      if (w.size() == 0) {  // comparable norms: go on unscaled
        report = solve(opts_.method, ws, op, rhs, o);
      } else if (side == Side::Columns) {  // every column of op·diag(w) of norm ≈ 1
        o.column_scaling = w;
        report = solve(opts_.method, ws, op, rhs, o);
      } else {  // diag(w)·op δ = diag(w)·rhs; report the residual of op δ = rhs itself
        const Vector<Scalar> wr = w.template cast<Scalar>();
        const detail::RowScaled<Op> wop(op, wr);
        report = solve(opts_.method, ws, wop, wr.cwiseProduct(rhs), o);
        Vector<Scalar> r(op.rows());
        op.apply(ws.x, r);
        report.r1norm = report.r2norm = (r - rhs).stableNorm();
        ++report.matvecs;
      }
      report.iterations += trial.iterations;
      report.matvecs += trial.matvecs + (probe && side == Side::Rows ? kProbes : 0);
      report.rmatvecs += trial.rmatvecs + (probe && side == Side::Columns ? kProbes : 0);
    }
    log.push_back({role, report});
    if (!report.converged())
      detail::on_failure(opts_.on_failure, opts_.warn,
                         std::string("difflsq: null-space step, ") + role, log);
    return ws.x;
  }

  NullSpaceOptions<Scalar> opts_;
  Workspace<Scalar> ws_tall_, ws_wide_;
};

/// Gradient descent under equality constraints: θ ← θ − lr·(Pg + γJ⁺c).
template <class Scalar>
class ConstrainedSgd {
 public:
  using Real = RealOf<Scalar>;
  ConstrainedSgd(Real lr, NullSpaceOptions<Scalar> options = {})
      : lr_(lr), step_(std::move(options)) {}
  template <Constraint C>
  NullSpaceResult<Scalar> step(const C& con, Eigen::Ref<Vector<Scalar>> theta,
                               Eigen::Ref<const Vector<Scalar>> grad) {
    auto r = step_(con, theta, grad);
    theta -= lr_ * r.direction;
    return r;
  }

 private:
  Real lr_;
  NullSpaceStep<Scalar> step_;
};

/// Adam under equality constraints, "step" mode: Adam proposes Δ = −lr·D⁻¹m̂ (D = √v̂ + ε) from
/// the raw gradient, and the applied update is P_D Δ − lr·γ·J⁺c — projected after Adam's
/// per-coordinate rescaling, so the step stays in N(J) (projecting the gradient before Adam
/// would not), and in Adam's metric D, so that it stops only at KKT points (file comment).
template <class Scalar>
class ConstrainedAdam {
 public:
  using Real = RealOf<Scalar>;
  struct Hyper {
    Real lr = Real(1e-3), beta1 = Real(0.9), beta2 = Real(0.999), eps = Real(1e-8);
  };
  explicit ConstrainedAdam(Hyper h, NullSpaceOptions<Scalar> options = {})
      : h_(h), step_(std::move(options)) {}
  /// The learning rate, for schedules (Adam with a fixed rate hovers at a distance ~lr).
  void set_lr(Real lr) { h_.lr = lr; }
  Real lr() const { return h_.lr; }
  /// One step; the returned result's `projected` is P_D Δ (Adam's step, projected) and its
  /// `multipliers` the μ of Δ. The moments change only when the step succeeds.
  template <Constraint C>
  NullSpaceResult<Scalar> step(const C& con, Eigen::Ref<Vector<Scalar>> theta,
                               Eigen::Ref<const Vector<Scalar>> grad) {
    if (grad.size() != theta.size() || !grad.allFinite())
      throw std::invalid_argument("difflsq::ConstrainedAdam: the gradient must be finite and as "
                                  "long as theta");
    const bool fresh = m_.size() != theta.size();
    const long t = fresh ? 1 : t_ + 1;
    const Vector<Scalar> m = fresh ? Vector<Scalar>((1 - h_.beta1) * grad)
                                   : Vector<Scalar>(h_.beta1 * m_ + (1 - h_.beta1) * grad);
    const Vector<Scalar> v =
        fresh ? Vector<Scalar>((1 - h_.beta2) * grad.cwiseAbs2())
              : Vector<Scalar>(h_.beta2 * v_ + (1 - h_.beta2) * grad.cwiseAbs2());
    const Real c1 = 1 - std::pow(h_.beta1, Real(t)), c2 = 1 - std::pow(h_.beta2, Real(t));
    const Vector<Scalar> metric = ((v / c2).cwiseSqrt().array() + h_.eps).matrix();  // D
    const Vector<Scalar> delta = -h_.lr * (m / c1).cwiseQuotient(metric);
    auto r = step_(con, theta, delta, metric);  // P_D Δ and J⁺c; throws before anything changes
    // P_D Δ is shortest in D's norm only: where D is tiny (the first steps, v̂ ≈ 0) it can be far
    // longer than Δ. Like a Euclidean projection, the step is never longer than Δ (scaled as a
    // whole: it stays in N(J), and its fixed points, P_D Δ = 0, are unchanged).
    const Real pn = r.projected.norm(), dn = delta.norm();
    if (pn > dn) r.step_scale = dn / pn;
    theta += r.step_scale * r.projected - h_.lr * step_.options().gamma * r.correction;
    m_ = m;
    v_ = v;
    t_ = t;
    return r;
  }

 private:
  Hyper h_;
  NullSpaceStep<Scalar> step_;
  Vector<Scalar> m_, v_;
  long t_ = 0;
};

}  // namespace difflsq
