// difflsq — column scaling, the diagonal right preconditioner.
//
// With d_j = 1/‖A e_j‖ every column of A·diag(d) has unit norm, which often removes most of the
// ill-conditioning that comes from units and scales. Pass the result as
// Options::column_scaling; the solution of a damped problem, or of one with a unique solution,
// does not change (undamped with many solutions: the smallest ‖D⁻¹(x − x0)‖, docs/solvers.md).
#pragma once

#include <Eigen/Core>
#include <Eigen/SparseCore>

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

}  // namespace difflsq
