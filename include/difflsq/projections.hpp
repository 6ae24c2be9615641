// difflsq — exact Euclidean projections onto simple convex sets, for inequality constraints
// next to the equality constraints of the null-space step (nullspace.hpp). Each returns
// argmin_{y ∈ S} ‖y − x‖ and leaves x unchanged.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "options.hpp"

namespace difflsq {

/// Box lo ≤ y ≤ hi (coordinate-wise clamp); lo ≤ hi is required.
template <class Scalar>
Vector<Scalar> project_box(const Eigen::Ref<const Vector<Scalar>>& x, Scalar lo, Scalar hi) {
  if (!(lo <= hi))
    throw std::invalid_argument("difflsq::project_box: need lo <= hi");
  return x.cwiseMax(lo).cwiseMin(hi);
}

/// The non-negative orthant y ≥ 0.
template <class Scalar>
Vector<Scalar> project_nonnegative(const Eigen::Ref<const Vector<Scalar>>& x) {
  return x.cwiseMax(Scalar(0));
}

/// The simplex {y ≥ 0, Σ y = total} (total > 0; total = 1: the probability simplex), by the
/// sort-based threshold: y = max(x − τ, 0) with τ from the largest entries, O(n log n).
template <class Scalar>
Vector<Scalar> project_simplex(const Eigen::Ref<const Vector<Scalar>>& x, Scalar total = 1) {
  if (!(total > 0) || !std::isfinite(total))
    throw std::invalid_argument("difflsq::project_simplex: total must be finite and > 0");
  if (x.size() == 0) throw std::invalid_argument("difflsq::project_simplex: empty vector");
  if (!x.allFinite()) throw std::invalid_argument("difflsq::project_simplex: x is not finite");
  std::vector<Scalar> s(x.data(), x.data() + x.size());
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
template <class Scalar>
Vector<Scalar> project_ball(const Eigen::Ref<const Vector<Scalar>>& x, Scalar radius = 1) {
  if (!(radius >= 0)) throw std::invalid_argument("difflsq::project_ball: radius must be >= 0");
  const Scalar n = x.norm();
  if (n <= radius) return x;
  return x * (radius / n);
}

}  // namespace difflsq
