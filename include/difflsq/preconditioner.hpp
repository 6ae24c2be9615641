// difflsq — column scaling, the diagonal right preconditioner.
//
// With d_j = 1/‖A e_j‖ every column of A·diag(d) has unit norm, which often removes most of the
// ill-conditioning that comes from units and scales. Pass the result as
// Options::column_scaling; the solution of a damped problem, or of one with a unique solution,
// does not change (undamped with many solutions: the smallest ‖D⁻¹(x − x0)‖, docs/solvers.md).
#pragma once

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "operator.hpp"

namespace difflsq {

/// d_j = 1/‖A e_j‖₂ for the columns of an Eigen matrix; zero columns get d_j = 1.
template <class Matrix>
Vector<RealOf<typename Matrix::Scalar>> column_scaling(const Matrix& a) {
  using Real = RealOf<typename Matrix::Scalar>;
  Vector<Real> d(a.cols());
  if constexpr (detail::is_sparse_v<Matrix>) {
    d.setZero();
    for (Index k = 0; k < a.outerSize(); ++k)
      for (typename Matrix::InnerIterator it(a, k); it; ++it) d[it.col()] += std::norm(it.value());
  } else {
    d = a.colwise().squaredNorm().transpose();
  }
  for (Index j = 0; j < d.size(); ++j) d[j] = d[j] > 0 ? Real(1) / std::sqrt(d[j]) : Real(1);
  return d;
}

/// Estimates of the column norms ‖A e_j‖₂ of a matrix-free operator (or matrix) from `probes`
/// products with Aᴴ (Hutchinson's estimator of diag(AᴴA)): for z with independent ±1 entries,
/// E[|(Aᴴz)_j|²] = ‖A e_j‖², exactly for a column with one nonzero and within a factor of about
/// 2 otherwise with 8 probes. The rows of A: pass adjoint(A). Deterministic for a seed.
template <OperatorLike A>
Vector<RealOf<ScalarOf<A>>> estimate_column_norms(const A& a, int probes = 8,
                                                  std::uint64_t seed = 20261203) {
  using Scalar = ScalarOf<A>;
  using Real = RealOf<Scalar>;
  // Squares summed in a wider type: column norms near the range's ends (1e20 in float) must not
  // overflow or underflow.
  using Wide = std::conditional_t<(sizeof(Real) < sizeof(double)), double, long double>;
  if (probes < 1)
    throw std::invalid_argument("difflsq::estimate_column_norms: probes must be >= 1, got " +
                                std::to_string(probes));
  const auto& op = as_operator(a);
  std::mt19937_64 gen(seed);
  Vector<Scalar> z(op.rows()), y(op.cols());
  Eigen::Matrix<Wide, Eigen::Dynamic, 1> sum =
      Eigen::Matrix<Wide, Eigen::Dynamic, 1>::Zero(op.cols());
  for (int p = 0; p < probes; ++p) {
    for (Index i = 0; i < z.size(); ++i) z[i] = Scalar((gen() & 1) ? 1 : -1);
    op.apply_adjoint(z, y);
    for (Index j = 0; j < y.size(); ++j) {
      const Wide re = static_cast<Wide>(std::real(y[j])), im = static_cast<Wide>(std::imag(y[j]));
      sum[j] += re * re + im * im;
    }
  }
  return (sum / Wide(probes)).cwiseSqrt().template cast<Real>();
}

}  // namespace difflsq
