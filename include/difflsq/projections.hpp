// difflsq — exact Euclidean projections onto simple convex sets, for inequality constraints
// next to the equality constraints of the null-space step (nullspace.hpp). Each returns
// argmin_{y ∈ S} ‖y − x‖ and leaves x unchanged.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "options.hpp"

namespace difflsq {

namespace detail {
/// The scalar of a real column-vector expression (any Eigen vector, block or Map); deduced
/// from x, so that project_box(x, 0, 1) needs no template argument.
template <class Derived>
using ProjectedScalar = std::enable_if_t<Derived::ColsAtCompileTime == 1 &&
                                             std::is_floating_point_v<typename Derived::Scalar>,
                                         typename Derived::Scalar>;
}  // namespace detail

/// Box lo ≤ y ≤ hi (coordinate-wise clamp); lo ≤ hi is required.
template <class Derived, class Scalar = detail::ProjectedScalar<Derived>>
Vector<Scalar> project_box(const Eigen::MatrixBase<Derived>& x, std::type_identity_t<Scalar> lo,
                           std::type_identity_t<Scalar> hi) {
  if (!(lo <= hi))
    throw std::invalid_argument("difflsq::project_box: need lo <= hi");
  return x.cwiseMax(lo).cwiseMin(hi);
}

/// The non-negative orthant y ≥ 0.
template <class Derived, class Scalar = detail::ProjectedScalar<Derived>>
Vector<Scalar> project_nonnegative(const Eigen::MatrixBase<Derived>& x) {
  return x.cwiseMax(Scalar(0));
}

/// The simplex {y ≥ 0, Σ y = total} (total > 0; total = 1: the probability simplex), by the
/// sort-based threshold: y = max(x − τ, 0) with τ from the largest entries, O(n log n).
template <class Derived, class Scalar = detail::ProjectedScalar<Derived>>
Vector<Scalar> project_simplex(const Eigen::MatrixBase<Derived>& x,
                               std::type_identity_t<Scalar> total = 1) {
  if (!(total > 0) || !std::isfinite(total))
    throw std::invalid_argument("difflsq::project_simplex: total must be finite and > 0");
  if (x.size() == 0) throw std::invalid_argument("difflsq::project_simplex: empty vector");
  if (!x.allFinite()) throw std::invalid_argument("difflsq::project_simplex: x is not finite");
  std::vector<Scalar> s(static_cast<std::size_t>(x.size()));
  Eigen::Map<Vector<Scalar>>(s.data(), x.size()) = x;  // x may be strided (a row, a Map)
  std::sort(s.begin(), s.end(), std::greater<Scalar>());
  // τ = (Σ_{i≤ρ} s_i − total)/ρ for the largest ρ with s_ρ > (Σ_{i≤ρ} s_i − total)/ρ.
  Scalar cumulative = 0, tau = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    cumulative += s[i];
    const Scalar t = (cumulative - total) / Scalar(i + 1);
    if (s[i] > t) tau = t;
  }
  return (x.array() - tau).cwiseMax(Scalar(0)).matrix();
}

/// The ball ‖y‖ ≤ radius (radius ≥ 0).
template <class Derived, class Scalar = detail::ProjectedScalar<Derived>>
Vector<Scalar> project_ball(const Eigen::MatrixBase<Derived>& x,
                            std::type_identity_t<Scalar> radius = 1) {
  if (!(radius >= 0)) throw std::invalid_argument("difflsq::project_ball: radius must be >= 0");
  const Scalar n = x.norm();
  if (n <= radius) return x;
  return x * (radius / n);
}

}  // namespace difflsq
