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
/// The scalar of a real Eigen expression, deduced from x so that project_box(x, 0, 1) needs no
/// template argument.
template <class Derived>
using ProjectedScalar =
    std::enable_if_t<std::is_floating_point_v<typename Derived::Scalar>, typename Derived::Scalar>;

/// x evaluated once, as a column: any vector expression (a column or a row, a block, a strided
/// Map, a product); a matrix with more than one row and column is refused.
template <class Derived>
Vector<typename Derived::Scalar> evaluated(const Eigen::MatrixBase<Derived>& x, const char* who) {
  if (x.rows() != 1 && x.cols() != 1)
    throw std::invalid_argument(std::string("difflsq::") + who + ": x must be a vector, got " +
                                std::to_string(x.rows()) + " x " + std::to_string(x.cols()));
  return x.reshaped();
}
}  // namespace detail

/// Box lo ≤ y ≤ hi (coordinate-wise clamp); lo ≤ hi is required.
template <class Derived, class Scalar = detail::ProjectedScalar<Derived>>
Vector<Scalar> project_box(const Eigen::MatrixBase<Derived>& x, std::type_identity_t<Scalar> lo,
                           std::type_identity_t<Scalar> hi) {
  if (!(lo <= hi))
    throw std::invalid_argument("difflsq::project_box: need lo <= hi");
  return detail::evaluated(x, "project_box").cwiseMax(lo).cwiseMin(hi);
}

/// The non-negative orthant y ≥ 0.
template <class Derived, class Scalar = detail::ProjectedScalar<Derived>>
Vector<Scalar> project_nonnegative(const Eigen::MatrixBase<Derived>& x) {
  return detail::evaluated(x, "project_nonnegative").cwiseMax(Scalar(0));
}

/// The simplex {y ≥ 0, Σ y = total} (total > 0; total = 1: the probability simplex), by the
/// sort-based threshold: y = max(x − τ, 0) with τ from the largest entries, O(n log n).
template <class Derived, class Scalar = detail::ProjectedScalar<Derived>>
Vector<Scalar> project_simplex(const Eigen::MatrixBase<Derived>& x,
                               std::type_identity_t<Scalar> total = 1) {
  if (!(total > 0) || !std::isfinite(total))
    throw std::invalid_argument("difflsq::project_simplex: total must be finite and > 0");
  const Vector<Scalar> v = detail::evaluated(x, "project_simplex");
  if (v.size() == 0) throw std::invalid_argument("difflsq::project_simplex: empty vector");
  if (!v.allFinite()) throw std::invalid_argument("difflsq::project_simplex: x is not finite");
  std::vector<Scalar> s(v.data(), v.data() + v.size());
  std::sort(s.begin(), s.end(), std::greater<Scalar>());
  // τ = (Σ_{i≤ρ} s_i − total)/ρ for the largest ρ with s_ρ > (Σ_{i≤ρ} s_i − total)/ρ.
  Scalar cumulative = 0, tau = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    cumulative += s[i];
    const Scalar t = (cumulative - total) / Scalar(i + 1);
    if (s[i] > t) tau = t;
  }
  return (v.array() - tau).cwiseMax(Scalar(0)).matrix();
}

/// The ball ‖y‖ ≤ radius (radius ≥ 0).
template <class Derived, class Scalar = detail::ProjectedScalar<Derived>>
Vector<Scalar> project_ball(const Eigen::MatrixBase<Derived>& x,
                            std::type_identity_t<Scalar> radius = 1) {
  if (!(radius >= 0)) throw std::invalid_argument("difflsq::project_ball: radius must be >= 0");
  Vector<Scalar> v = detail::evaluated(x, "project_ball");
  const Scalar n = v.norm();
  if (n > radius) v *= radius / n;
  return v;
}

}  // namespace difflsq
