// difflsq — the Golub–Kahan bidiagonalization step shared by LSQR and LSMR [PS82, §3]:
//
//     β₁u₁ = r0,  α₁v₁ = Aᴴu₁,   β_{k+1}u_{k+1} = A v_k − α_k u_k,   α_{k+1}v_{k+1} = Aᴴu_{k+1} −
//     β_{k+1}v_k.
//
// A non-finite α or β (the operator produced Inf/NaN) clears `finite`; the caller stops with
// Status::NonFinite before touching x.
//
// Operators that can make both products in one pass over A (docs/solvers.md) are used so: by
// rows (HasFusedStep: u ← A v − αu and Aᴴũ together, in step()), or by columns
// (HasFusedAdjointStep: v ← Aᴴu − βv and A ṽ together in step_v, A v then kept for the next
// step_u).
#pragma once

#include <cmath>
#include <limits>

#include "../options.hpp"
#include "kernels.hpp"

namespace difflsq {
template <class Scalar>
struct Workspace;

namespace detail {

template <LinearOperator Op>
struct GolubKahan {
  using Scalar = typename Op::Scalar;
  using Real = RealOf<Scalar>;

  GolubKahan(const Op& a, Workspace<Scalar>& w, Report<Real>& r) : op(a), ws(w), rep(r) {}

  /// u holds r0 on entry. Sets beta, alpha, u₁, v₁ (v₁ = 0 when β₁ = 0).
  void start() {
    beta = check(norm2(ws.u));
    if (!finite) return;
    if (beta > 0) {
      ws.u /= Scalar(beta);  // not ·(1/β): 1/β overflows for a subnormal ‖b‖
      if constexpr (HasFusedAdjointStep<Op>) {
        if (op.fuses_adjoint_step()) {
          alpha = fused_step_v(0);
          return;
        }
      }
      op.apply_adjoint(ws.u, ws.v);
      ++rep.rmatvecs;
      alpha = check(norm2(ws.v));
    } else {
      ws.v.setZero();
      alpha = 0;
    }
    if (alpha > 0) ws.v *= Scalar(1 / alpha);
  }

  /// start(), and the report of x0 (‖r0‖ = β₁, ‖Aᴴr0‖ = α₁β₁). Whether the solve goes on: not
  /// when an α or β is non-finite (status NonFinite) or x0 is exact, α₁ = 0 or β₁ = 0 (status
  /// ExactSolution; not read off α₁β₁ = 0, which underflows for a small A and b).
  bool begin() {
    start();
    if (!finite) {
      rep.status = Status::NonFinite;
      return false;
    }
    rep.r1norm = rep.r2norm = beta;
    rep.arnorm = alpha * beta;
    if (alpha == 0 || beta == 0) {
      rep.status = Status::ExactSolution;
      return false;
    }
    return true;
  }

  /// One step: β u ← A v − α u, then, when β > 0, α v ← Aᴴu − β v [PS82, (3.4)]; α is left as
  /// it was when β = 0. With an operator that fuses the two products (HasFusedStep), the
  /// second is Aᴴũ for the unnormalized ũ = β u, from the same pass over A: α v = Aᴴũ/β − β v.
  void step(Real& alpha_k, Real& beta_k) {
    if constexpr (HasFusedStep<Op>) {
      if (op.fuses_step()) return fused_step(alpha_k, beta_k);
    }
    beta_k = step_u(alpha_k);
    if (beta_k > 0) alpha_k = step_v(beta_k);
  }

  /// β u ← A v − α u; returns β.
  Real step_u(Real alpha_k) {
    if (pending_) {  // A v = ỹ/α from the last fused adjoint product (fused_step_v)
      pending_ = false;
      auto& y = ws.tmp_m;
      y = y * Scalar(1 / pending_scale_) - Scalar(alpha_k) * ws.u;  // u kept for the fall-back
      const Real b = norm2(y);
      if (std::isfinite(b)) {
        ++rep.matvecs;
        ws.u.swap(y);  // O(1)
        if (b > 0) ws.u *= Scalar(1 / b);
        return b;
      }
      // A ṽ overflowed where A v may not, or the operator produced Inf/NaN: the plain
      // product decides.
    }
    Real b;
    if constexpr (HasFusedNorm<Op>) {  // product, update and ‖u‖² in one pass
      b = norm_from_squares(op.apply_sub_norm2(ws.v, ws.u, alpha_k), ws.u);
    } else {
      apply_minus_scaled(op, ws.v, ws.u, alpha_k, ws.tmp_m);
      b = norm2(ws.u);
    }
    ++rep.matvecs;
    b = check(b);
    if (b > 0) ws.u *= Scalar(1 / b);
    return b;
  }

  /// α v ← Aᴴ u − β v; returns α.
  Real step_v(Real beta_k) {
    if constexpr (HasFusedAdjointStep<Op>) {
      if (op.fuses_adjoint_step()) return fused_step_v(beta_k);
    }
    Real a;
    if constexpr (HasFusedNorm<Op>) {
      a = norm_from_squares(op.apply_adjoint_sub_norm2(ws.u, ws.v, beta_k), ws.v);
    } else {
      apply_adjoint_minus_scaled(op, ws.u, ws.v, beta_k, ws.tmp_n);
      a = norm2(ws.v);
    }
    ++rep.rmatvecs;
    a = check(a);
    if (a > 0) ws.v *= Scalar(1 / a);
    return a;
  }

  const Op& op;
  Workspace<Scalar>& ws;
  Report<Real>& rep;
  Real alpha = 0, beta = 0;
  bool finite = true;

 private:
  /// α v ← Aᴴu − β v with A ṽ (ṽ = α v) from the same pass over A, kept in tmp_m for the next
  /// step_u; β = 0 does not read v's old values.
  Real fused_step_v(Real beta_k) {
    const Real a = check(
        norm_from_squares(op.apply_adjoint_sub_norm2_apply(ws.u, ws.v, beta_k, ws.tmp_m), ws.v));
    ++rep.rmatvecs;
    pending_ = fused_in_range(a);  // else step_u makes the plain product A v
    if (a > 0) {
      ws.v *= Scalar(1 / a);
      pending_scale_ = a;
    }
    return a;
  }

  void fused_step(Real& alpha_k, Real& beta_k) {
    auto& w = ws.tmp_n;  // Aᴴũ
    const Real b =
        check(norm_from_squares(op.apply_sub_norm2_adjoint(ws.v, ws.u, alpha_k, w), ws.u));
    ++rep.matvecs;
    beta_k = b;
    if (!(b > 0)) return;  // β = 0 (the unfused step makes no Aᴴ product then), or non-finite
    if (!fused_in_range(b)) {  // Aᴴũ may have lost digits to underflow: the plain product
      ws.u *= Scalar(1 / b);
      alpha_k = step_v(b);
      return;
    }
    ws.u *= Scalar(1 / b);
    w = w * Scalar(1 / b) - Scalar(b) * ws.v;
    const Real a = norm2(w);
    if (!std::isfinite(a)) {  // Aᴴũ can overflow where Aᴴu does not: the plain product decides
      alpha_k = step_v(b);
      return;
    }
    ++rep.rmatvecs;
    ws.v.swap(w);  // O(1): the new v is in w's storage
    if (a > 0) ws.v *= Scalar(1 / a);
    alpha_k = a;
  }

  /// Whether a product with the unnormalized vector (ũ = βu or ṽ = αv) is as accurate as one
  /// with the unit vector: ‖Aᴴũ‖ = β·‖Aᴴu‖ = β·hypot(α', β) ≥ β² (and ‖Aṽ‖ ≥ α² likewise), so
  /// for s ≥ √(min/ε) every entry's absolute underflow error (≤ n·denorm_min ≤ min·ε for
  /// n ≤ 2⁵²) is below ε relative to the result. Smaller s (‖A‖ below about 1e-146 in double,
  /// 3e-16 in float) would lose digits: those steps make the plain products instead.
  static bool fused_in_range(Real s) {
    static const Real smallest =
        std::sqrt(std::numeric_limits<Real>::min() / std::numeric_limits<Real>::epsilon());
    return s >= smallest;
  }

  Real check(Real value) {
    if (std::isfinite(value)) return value;
    finite = false;
    return 0;
  }

  bool pending_ = false;  // tmp_m holds A ṽ for the current v = ṽ/pending_scale_
  Real pending_scale_ = 1;
};

}  // namespace detail
}  // namespace difflsq
