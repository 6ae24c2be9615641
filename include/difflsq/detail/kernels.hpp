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

/// ‖v‖₂, robust to overflow: the plain norm, and Eigen's scaled stableNorm only when the plain one
/// overflowed although every entry is finite. Non-finite entries give a non-finite result.
template <class V>
auto norm2(const V& v) {
  auto s = v.norm();
  if (!std::isfinite(s) && v.allFinite()) s = v.stableNorm();
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

/// y ← A x − a·y. Uses apply_add when the operator has it (one pass less), else `tmp`.
template <class Op, class Real>
void apply_minus_scaled(const Op& op, const Vector<typename Op::Scalar>& x,
                        Vector<typename Op::Scalar>& y, Real a,
                        Vector<typename Op::Scalar>& tmp) {
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
