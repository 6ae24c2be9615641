// difflsq — the few vector kernels and scalar helpers the solver loops use. A different vector
// backend (GPU, MPI) re-implements these and nothing else.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>

#include "../operator.hpp"
#include "../options.hpp"

namespace difflsq::detail {

/// Whether a norm computed as √(Σ|v_i|²) may be wrong by over- or underflow of the squares:
/// not finite, or below √(smallest normal) (1.5e-154 in double), where the squares are
/// subnormal or zero (a vector of entries 1e-170 would get norm 0). 0 included: v = 0 is
/// rare and then costs one more pass.
template <class Real>
bool squares_out_of_range(Real s) {
  return !(std::isfinite(s) && s >= std::sqrt(std::numeric_limits<Real>::min()));
}

/// ‖v‖ of a finite v whose squares may over- or underflow: 2ᵉ‖2⁻ᵉv‖ with 2ᵉ⁻¹ ≤ max|v_i| < 2ᵉ.
/// Scaling by a power of two is exact, so the result is the plain norm's of a rescaled problem
/// bit for bit (a solve of 2ᵏA makes the same iterations as one of A), which Eigen's
/// stableNorm is not.
template <class V>
auto scaled_norm(const V& v) {
  using Real = typename Eigen::NumTraits<typename V::Scalar>::Real;
  const Real big = v.size() ? v.cwiseAbs().maxCoeff() : Real(0);
  if (!(big > 0)) return Real(0);
  int e = 0;
  (void)std::frexp(big, &e);
  // 2⁻ᵉ in two factors: one would overflow for a subnormal max (e below the exponent range).
  const Real f1 = std::ldexp(Real(1), -e / 2), f2 = std::ldexp(Real(1), -e - (-e / 2));
  return std::ldexp((v * f1 * f2).norm(), e);
}

/// √|a² − b²| with the sign of a − b (a, b ≥ 0), as √|a − b|·√(a + b): neither square is
/// formed, so neither over- nor underflows (SciPy's signed r1norm, from squares).
template <class Real>
Real signed_root_of_difference(Real a, Real b) {
  return std::copysign(std::sqrt(std::abs(a - b)) * std::sqrt(a + b), a - b);
}

/// ‖v‖₂, robust to over- and underflow: the plain norm, and scaled_norm only when the plain
/// one is out of range although every entry is finite. Non-finite entries give a non-finite
/// result.
template <class V>
auto norm2(const V& v) {
  auto s = v.norm();
  if (squares_out_of_range(s) && v.allFinite()) s = scaled_norm(v);
  return s;
}

/// ‖v‖ from a fused sum of squares: its square root, unless that is out of range (or 0) while
/// v is finite (entries above ~1e154 or below ~1e-154 in double), then the scaled norm.
template <class Real, class V>
Real norm_from_squares(Real sum_of_squares, const V& v) {
  Real s = std::sqrt(sum_of_squares);
  if (squares_out_of_range(s) && v.allFinite()) s = scaled_norm(v);
  return s;
}

/// Stable Givens rotation [Choi 2006, SymOrtho]: c, s, r with c·a + s·b = r = hypot(a, b) ≥ 0
/// and −s·a + c·b = 0. Mirrors SciPy's _sym_ortho so that iterates match it.
template <class Real>
struct Rotation {
  Real c, s, r;
};

template <class Real>
Rotation<Real> sym_ortho(Real a, Real b) {
  auto sign = [](Real t) { return t > 0 ? Real(1) : (t < 0 ? Real(-1) : Real(0)); };
  if (b == 0) return {sign(a), 0, std::abs(a)};
  if (a == 0) return {0, sign(b), std::abs(b)};
  if (std::abs(b) > std::abs(a)) {
    const Real tau = a / b;
    const Real s = sign(b) / std::sqrt(1 + tau * tau);
    return {s * tau, s, b / s};
  }
  const Real tau = b / a;
  const Real c = sign(a) / std::sqrt(1 + tau * tau);
  return {c, c * tau, a / c};
}

template <class Op>
concept HasApplyAdd = requires(const Op& op, Eigen::Ref<const Vector<typename Op::Scalar>> in,
                               Eigen::Ref<Vector<typename Op::Scalar>> out) {
  op.apply_add(in, out);
  op.apply_adjoint_add(in, out);
};

// The vector updates below accumulate their norm in four partial sums, combined pairwise: a
// single running sum is one chain of dependent additions that the compiler may not reassociate,
// and it kept the loops from vectorizing.

/// LSQR's vector work over x, w, v (length n), D applied when Scaled [PS82, (4.12)].
template <bool Scaled, class Scalar, class Real>
Real lsqr_pass(Index n, Scalar* __restrict xp, Scalar* __restrict wp, const Scalar* __restrict vp,
               const Real* __restrict dp, Real t1, Real t2) {
  Real acc[4] = {0, 0, 0, 0};
  auto body = [&](Index j, int l) {
    const Scalar wj = wp[j];
    acc[l] += Eigen::numext::abs2(wj);
    xp[j] += (Scaled ? t1 * dp[j] : t1) * wj;
    wp[j] = vp[j] + t2 * wj;
  };
  Index j = 0;
  for (; j + 4 <= n; j += 4)
    for (int l = 0; l < 4; ++l) body(j + l, l);
  for (; j < n; ++j) body(j, 0);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/// LSQR's vector work of one iteration in one pass [PS82, (4.12)]: returns ‖w‖² (before the
/// update) and does x += t1·D w, w = v + t2·w (D = diag(d), or I when d is null).
template <class Scalar>
RealOf<Scalar> lsqr_update(Vector<Scalar>& x, Vector<Scalar>& w, const Vector<Scalar>& v,
                           RealOf<Scalar> t1, RealOf<Scalar> t2, const Vector<RealOf<Scalar>>* d) {
  if (d) return lsqr_pass<true>(x.size(), x.data(), w.data(), v.data(), d->data(), t1, t2);
  return lsqr_pass<false>(x.size(), x.data(), w.data(), v.data(),
                          static_cast<const RealOf<Scalar>*>(nullptr), t1, t2);
}

/// LSMR's vector work over x, h, h̄, v (length n), D applied when Scaled [FS11, (3.3)].
template <bool Scaled, class Scalar, class Real>
Real lsmr_pass(Index n, Scalar* __restrict xp, Scalar* __restrict hp, Scalar* __restrict hb,
               const Scalar* __restrict vp, const Real* __restrict dp, Real c_hbar, Real c_x,
               Real c_h) {
  Real acc[4] = {0, 0, 0, 0};
  auto body = [&](Index j, int l) {
    const Scalar hbj = hp[j] + c_hbar * hb[j];
    hb[j] = hbj;
    const Scalar xj = xp[j] + (Scaled ? c_x * dp[j] : c_x) * hbj;
    xp[j] = xj;
    acc[l] += Eigen::numext::abs2(xj);
    hp[j] = vp[j] + c_h * hp[j];
  };
  Index j = 0;
  for (; j + 4 <= n; j += 4)
    for (int l = 0; l < 4; ++l) body(j + l, l);
  for (; j < n; ++j) body(j, 0);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/// LSMR's vector work of one iteration in one pass [FS11, (3.3)]: h̄ = h + c_hbar·h̄,
/// x += c_x·D h̄, h = v + c_h·h; returns ‖x‖² after the update.
template <class Scalar>
RealOf<Scalar> lsmr_update(Vector<Scalar>& x, Vector<Scalar>& h, Vector<Scalar>& hbar,
                           const Vector<Scalar>& v, RealOf<Scalar> c_hbar, RealOf<Scalar> c_x,
                           RealOf<Scalar> c_h, const Vector<RealOf<Scalar>>* d) {
  if (d)
    return lsmr_pass<true>(x.size(), x.data(), h.data(), hbar.data(), v.data(), d->data(), c_hbar,
                           c_x, c_h);
  return lsmr_pass<false>(x.size(), x.data(), h.data(), hbar.data(), v.data(),
                          static_cast<const RealOf<Scalar>*>(nullptr), c_hbar, c_x, c_h);
}

/// Operators that fuse y ← A x − a·y with the computation of ‖y‖² (CompressedOperator).
template <class Op>
concept HasFusedNorm = requires(const Op& op, Eigen::Ref<const Vector<typename Op::Scalar>> in,
                                Eigen::Ref<Vector<typename Op::Scalar>> out,
                                RealOf<typename Op::Scalar> a) {
  op.apply_sub_norm2(in, out, a);
  op.apply_adjoint_sub_norm2(in, out, a);
};

/// y ← A x − a·y. Uses apply_add when the operator has it (one pass less), else `tmp`.
template <class Op, class Real>
void apply_minus_scaled(const Op& op, const Vector<typename Op::Scalar>& x,
                        Vector<typename Op::Scalar>& y, Real a, Vector<typename Op::Scalar>& tmp) {
  if constexpr (HasApplyAdd<Op>) {
    y *= -a;
    op.apply_add(x, y);
  } else {
    op.apply(x, tmp);
    y = tmp - a * y;
  }
}

/// v ← Aᴴ u − a·v, likewise.
template <class Op, class Real>
void apply_adjoint_minus_scaled(const Op& op, const Vector<typename Op::Scalar>& u,
                                Vector<typename Op::Scalar>& v, Real a,
                                Vector<typename Op::Scalar>& tmp) {
  if constexpr (HasApplyAdd<Op>) {
    v *= -a;
    op.apply_adjoint_add(u, v);
  } else {
    op.apply_adjoint(u, tmp);
    v = tmp - a * v;
  }
}

}  // namespace difflsq::detail
