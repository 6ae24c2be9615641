// difflsq — reusable workspace and the driver shared by the three solvers: input checks,
// the initial residual r0 = b − A x0, the right preconditioner, and the assembly of the report.
#pragma once

#include <Eigen/Core>
#include <limits>
#include <stdexcept>
#include <string>

#include "detail/kernels.hpp"
#include "operator.hpp"
#include "options.hpp"

namespace difflsq {

/// Vectors a solve needs, allocated once. Keep one per problem size for repeated solves (a
/// training loop): solving again with the same sizes allocates nothing. After a workspace solve
/// the solution is in `x`.
template <class Scalar>
struct Workspace {
  Vector<Scalar> x;                        ///< the solution (length n)
  Vector<Scalar> u, v, w1, w2, wm;         ///< Golub–Kahan / CG vectors
  Vector<Scalar> tmp_m, tmp_n, scale_tmp;  ///< operator scratch
  Vector<RealOf<Scalar>> var;              ///< LSQR's calc_var estimate (sized only when asked)

  /// Sizes every vector for an operator with m rows (incl. augmentation) and n columns.
  void resize(Index m, Index n) {
    for (auto* vec : {&u, &wm, &tmp_m}) vec->resize(m);
    for (auto* vec : {&x, &v, &w1, &w2, &tmp_n, &scale_tmp}) vec->resize(n);
  }
};

namespace detail {

/// Parameters of the iteration proper, after validation and preconditioning.
template <class Scalar>
struct LoopParams {
  using Real = RealOf<Scalar>;
  Real damp;  ///< damping seen by the loop (0 when folded into an augmented operator)
  Real atol, btol, ctol;
  Real bnorm;  ///< ‖b‖ used by the stopping tests
  Index max_iterations;
  const std::function<MonitorAction(const IterationInfo<Scalar>&)>* monitor;
  const Vector<Real>* scaling;  ///< d of x = x0 + diag(d) y, or nullptr
  bool calc_var;
};

/// x ← x + t·D w: the loop's update of the true iterate, in preconditioned coordinates.
template <class Scalar>
void add_to_x(Vector<Scalar>& x, RealOf<Scalar> t, const Vector<Scalar>& w,
              const Vector<RealOf<Scalar>>* d) {
  if (d)
    x += t * d->template cast<Scalar>().cwiseProduct(w);
  else
    x += t * w;
}

/// A·D for a positive diagonal D (right preconditioner).
template <LinearOperator Op>
class ScaledOperator {
 public:
  using Scalar = typename Op::Scalar;
  using Real = RealOf<Scalar>;
  ScaledOperator(const Op& a, const Vector<Real>& d, Vector<Scalar>& buffer)
      : a_(&a), d_(&d), buf_(&buffer) {}
  Index rows() const { return a_->rows(); }
  Index cols() const { return a_->cols(); }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    *buf_ = d_->template cast<Scalar>().cwiseProduct(x);
    a_->apply(*buf_, y);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    a_->apply_adjoint(u, v);
    v = v.cwiseProduct(d_->template cast<Scalar>());
  }
  /// The fused Golub–Kahan products of A·D from A's (HasFusedStep).
  bool fuses_step() const requires HasFusedStep<Op> { return a_->fuses_step(); }
  Real apply_sub_norm2_adjoint(Eigen::Ref<const Vector<Scalar>> v, Eigen::Ref<Vector<Scalar>> u,
                               Real a,
                               Eigen::Ref<Vector<Scalar>> w) const requires HasFusedStep<Op> {
    *buf_ = d_->template cast<Scalar>().cwiseProduct(v);
    const Real norm2 = a_->apply_sub_norm2_adjoint(*buf_, u, a, w);
    w = w.cwiseProduct(d_->template cast<Scalar>());
    return norm2;
  }

 private:
  const Op* a_;
  const Vector<Real>* d_;
  Vector<Scalar>* buf_;
};

/// [B; λD] for B = A·D: the damped, preconditioned problem as an undamped one, so that the
/// damping keeps acting on x − x0 = D y and the solution of (1) is unchanged.
template <LinearOperator Op>
class AugmentedOperator {
 public:
  using Scalar = typename Op::Scalar;
  using Real = RealOf<Scalar>;
  AugmentedOperator(const ScaledOperator<Op>& b, const Vector<Real>& d, Real damp)
      : b_(&b), d_(&d), damp_(damp) {}
  Index rows() const { return b_->rows() + b_->cols(); }
  Index cols() const { return b_->cols(); }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    const Index m = b_->rows();
    b_->apply(x, y.head(m));
    y.tail(cols()) = damp_ * d_->template cast<Scalar>().cwiseProduct(x);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    const Index m = b_->rows();
    b_->apply_adjoint(u.head(m), v);
    v += damp_ * d_->template cast<Scalar>().cwiseProduct(u.tail(cols()));
  }

 private:
  const ScaledOperator<Op>* b_;
  const Vector<Real>* d_;
  Real damp_;
};

/// Runs Method on (A, b, opts) in ws: the common prologue and epilogue of every solver.
/// Method provides `default_max_iterations(m, n)`, `kEstimatesR1` (whether its r1norm accounts
/// for damping) and `run(op, ws, params, report)`; the loop
/// starts with x = x0 and ws.u = b − A x0 (padded with zeros when augmented).
template <class Method, LinearOperator Op>
Report<RealOf<typename Op::Scalar>> solve(Workspace<typename Op::Scalar>& ws, const Op& op,
                                          Eigen::Ref<const Vector<typename Op::Scalar>> b,
                                          const Options<typename Op::Scalar>& opts) {
  using Scalar = typename Op::Scalar;
  using Real = RealOf<Scalar>;
  const Index m = op.rows(), n = op.cols();
  if (b.size() != m)
    throw std::invalid_argument("difflsq: b has length " + std::to_string(b.size()) + " but A is " +
                                std::to_string(m) + " x " + std::to_string(n));
  if (const auto bad = detail::non_finite_entry(b, "b"); !bad.empty())
    throw std::invalid_argument("difflsq: b must be finite, got " + bad);
  opts.validate(n);

  Report<Real> report;
  constexpr Real eps = std::numeric_limits<Real>::epsilon();
  auto clamp = [&](Real t) {
    if (t > 0 && t < eps) {
      report.tolerances_clamped = true;
      return eps;
    }
    return t;
  };
  LoopParams<Scalar> params{};
  params.damp = opts.damp;
  params.atol = clamp(opts.atol);
  params.btol = clamp(opts.btol);
  params.ctol = opts.conlim > 0 ? Real(1) / opts.conlim : Real(0);
  params.max_iterations =
      opts.max_iterations > 0 ? opts.max_iterations : Method::default_max_iterations(m, n);
  params.monitor = opts.monitor ? &opts.monitor : nullptr;
  params.scaling = opts.column_scaling ? &*opts.column_scaling : nullptr;
  params.calc_var = opts.calc_var;
  if (opts.calc_var) {
    ws.var.resize(n);
    ws.var.setZero();
  } else {
    ws.var.resize(0);  // no stale estimate from an earlier solve
  }

  const bool augmented = params.scaling && opts.damp > 0;
  ws.resize(augmented ? m + n : m, n);

  // r0 = b − A x0; x starts at x0 [SciPy: damping acts on the correction x − x0].
  auto head = ws.u.head(m);
  if (opts.x0) {
    ws.x = *opts.x0;
    op.apply(ws.x, ws.tmp_m.head(m));
    ++report.matvecs;
    head = b - ws.tmp_m.head(m);
  } else {
    ws.x.setZero();
    head = b;
  }
  if (augmented) ws.u.tail(n).setZero();
  params.bnorm = detail::norm2(b);
  if (!std::isfinite(detail::norm2(head))) {  // the operator produced Inf/NaN at x0
    report.status = Status::NonFinite;
    return report;
  }
  // With b = 0 the relative tests use ‖b − A x0‖ instead (SciPy divides by zero there).
  if (params.bnorm == 0) params.bnorm = detail::norm2(head);

  if (!params.scaling) {
    Method::run(op, ws, params, report);
  } else {
    const ScaledOperator<Op> scaled(op, *params.scaling, ws.scale_tmp);
    if (!augmented) {
      Method::run(scaled, ws, params, report);
    } else {
      params.damp = 0;
      const AugmentedOperator<Op> aug(scaled, *params.scaling, opts.damp);
      Method::run(aug, ws, params, report);
    }
  }
  // Where the loop only knows the damped residual (LSMR; any method on the augmented
  // operator), split off ‖r‖ with the exact ‖x − x0‖: ‖r‖² = r2norm² − damp²‖x − x0‖².
  if (opts.damp > 0 && (augmented || !Method::kEstimatesR1) && report.iterations > 0) {
    const Real dx = opts.x0 ? detail::norm2(ws.x - *opts.x0) : detail::norm2(ws.x);
    report.r1norm = std::abs(detail::signed_root_of_difference(report.r2norm, opts.damp * dx));
  }
  return report;
}

/// ‖x‖ in the coordinates the loop works in: ‖D⁻¹x‖ with a column scaling D, else ‖x‖. The
/// stopping tests combine it with ‖Ā‖ of the (scaled) operator, so both must be in one system.
template <class Scalar>
RealOf<Scalar> loop_xnorm(const Vector<Scalar>& x, const Vector<RealOf<Scalar>>* d) {
  if (d) return norm2(x.cwiseQuotient(d->template cast<Scalar>()));
  return norm2(x);
}

/// The end of every iteration, after the stopping tests set rep.status: calls the monitor (if
/// any; its Stop becomes StoppedByMonitor unless a test already stopped) and returns whether to
/// leave the loop.
template <class Scalar>
bool end_of_iteration(const LoopParams<Scalar>& p, Report<RealOf<Scalar>>& rep,
                      const IterationInfo<Scalar>& info) {
  if (p.monitor && (*p.monitor)(info) == MonitorAction::Stop && rep.status == Status::ExactSolution)
    rep.status = Status::StoppedByMonitor;
  return rep.status != Status::ExactSolution;
}

/// SciPy's stopping tests [PS82 §6; FS11 §3.3], in SciPy's order of precedence. Returns the
/// status (IterationLimit only when itn reached the limit; ExactSolution means "go on").
/// Estimates that are not finite (a recurrence left the range of the precision, for an A or b
/// scaled far beyond what hypot and the scaled norms absorb: docs/solvers.md) end the solve
/// with NonFinite: read as numbers, rtol = ∞ or test2 = 0 would look like convergence.
template <class Real>
Status stopping_test(Index itn, Index max_iterations, Real test1, Real test2, Real test3,
                     Real anorm, Real xnorm, Real bnorm, Real atol, Real btol, Real ctol) {
  if (!std::isfinite(anorm) || !std::isfinite(xnorm) || !std::isfinite(test1) ||
      std::isnan(test2) || !(test3 > 0))
    return Status::NonFinite;
  // ‖A‖‖x‖/‖b‖ as ‖A‖(‖x‖/‖b‖): ‖A‖‖x‖ overflows for a large A and a large x.
  const Real axb = anorm * (xnorm / bnorm);
  const Real t1 = test1 / (1 + axb);
  const Real rtol = btol + atol * axb;
  Status s = Status::ExactSolution;
  if (itn >= max_iterations) s = Status::IterationLimit;
  if (1 + test3 <= 1) s = Status::ConditionMachine;
  if (1 + test2 <= 1) s = Status::LeastSquaresMachine;
  if (1 + t1 <= 1) s = Status::ResidualMachine;
  if (test3 <= ctol) s = Status::ConditionLimit;
  if (test2 <= atol) s = Status::LeastSquaresSmall;
  if (test1 <= rtol) s = Status::ResidualSmall;
  return s;
}

/// The body of every public solver function: with a workspace (solution left in ws.x)...
template <class Method, OperatorLike A>
Report<RealOf<ScalarOf<A>>> solve_matrix(Workspace<ScalarOf<A>>& ws, const A& a,
                                         Eigen::Ref<const Vector<ScalarOf<A>>> b,
                                         const Options<ScalarOf<A>>& opts) {
  return solve<Method>(ws, as_operator(a), b, opts);
}

/// Turns a workspace report into a Result, moving the solution out.
template <class Scalar>
Result<Scalar> to_result(Report<RealOf<Scalar>> report, Workspace<Scalar>& ws) {
  Result<Scalar> r;
  static_cast<Report<RealOf<Scalar>>&>(r) = report;
  r.x = std::move(ws.x);
  r.var = std::move(ws.var);
  return r;
}

/// ...and without one (returns x with the report).
template <class Method, OperatorLike A>
Result<ScalarOf<A>> solve_matrix(const A& a, Eigen::Ref<const Vector<ScalarOf<A>>> b,
                                 const Options<ScalarOf<A>>& opts) {
  Workspace<ScalarOf<A>> ws;
  auto report = solve_matrix<Method>(ws, a, b, opts);
  return to_result(report, ws);
}

}  // namespace detail
}  // namespace difflsq
