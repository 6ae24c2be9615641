// difflsq — a 1-D discrete convolution A(k) x = k ∗ x whose kernel k is the parameter: the
// standard structured operator of deconvolution, as a ParameterizedOperator (parameterized.hpp)
// so that solves with it can be differentiated with respect to the kernel.
//
// With kernel k of length p and signal x of length n, the full convolution is
//
//     f_i = Σ_t k_t x_{i−t},   0 ≤ i < n + p − 1   (terms with i − t outside [0, n) vanish),   (C1)
//
// and mode selects a window y_i = f_{i+o}, 0 ≤ i < m, as scipy.signal.convolve(x, k, mode)
// does: Full (o = 0, m = n + p − 1), Same (o = (p − 1)/2, m = n, also when p > n, where
// numpy.convolve would return p values), Valid (o = p − 1, m = n − p + 1; needs n ≥ p).
// Then, writing s = i + o − t for the signal index,
//
//     (Aᴴu)_s = Σ_t conj(k_t) u_{s+t−o},   ∇_{k_t} Re⟨u, A(k) v⟩ = Σ_i u_i conj(v_{i+o−t}),    (C2)
//
// and A is linear (holomorphic) in k, so the derivative along a kernel tangent k̇ is A(k̇).
// Every product is p shifted axpys over contiguous ranges: O(p·n) work, vectorized by Eigen.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "operator.hpp"

namespace difflsq {

enum class ConvolutionMode { Full, Same, Valid };

template <class Scalar_>
class Convolution {
 public:
  using Scalar = Scalar_;

  /// k ∗ x for signals of length n; keeps a copy of the kernel (set_kernel replaces it).
  Convolution(Eigen::Ref<const Vector<Scalar>> kernel, Index n,
              ConvolutionMode mode = ConvolutionMode::Full)
      : k_(kernel), n_(n), mode_(mode) {
    const Index p = kernel.size();
    if (p < 1 || n < 1)
      throw std::invalid_argument("difflsq::Convolution: kernel length " + std::to_string(p) +
                                  " and signal length " + std::to_string(n) +
                                  " must both be at least 1");
    if (mode == ConvolutionMode::Valid && n < p)
      throw std::invalid_argument("difflsq::Convolution: mode Valid needs a signal (" +
                                  std::to_string(n) + ") at least as long as the kernel (" +
                                  std::to_string(p) + ")");
    if (!kernel.allFinite())
      throw std::invalid_argument("difflsq::Convolution: the kernel is not finite");
    switch (mode) {
      case ConvolutionMode::Full: o_ = 0, m_ = n + p - 1; break;
      case ConvolutionMode::Same: o_ = (p - 1) / 2, m_ = n; break;
      case ConvolutionMode::Valid: o_ = p - 1, m_ = n - p + 1; break;
    }
  }

  Index rows() const { return m_; }
  Index cols() const { return n_; }
  ConvolutionMode mode() const { return mode_; }
  const Vector<Scalar>& kernel() const { return k_; }
  void set_kernel(Eigen::Ref<const Vector<Scalar>> kernel) {
    check(kernel.size());
    if (!kernel.allFinite())
      throw std::invalid_argument("difflsq::Convolution::set_kernel: the kernel is not finite");
    k_ = kernel;
  }

  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    convolve(k_, x, y);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    correlate(k_, u, v);
  }

  Index parameter_count() const { return k_.size(); }
  void add_parameter_gradient(Eigen::Ref<const Vector<Scalar>> u,
                              Eigen::Ref<const Vector<Scalar>> v,
                              Eigen::Ref<Vector<Scalar>> g) const {
    check(g.size());
    for (Index t = 0; t < k_.size(); ++t) {
      const auto [i0, len] = output_range(t);
      if (len > 0) g[t] += v.segment(i0 + o_ - t, len).dot(u.segment(i0, len));  // (C2)
    }
  }
  void apply_derivative(Eigen::Ref<const Vector<Scalar>> t, Eigen::Ref<const Vector<Scalar>> v,
                        Eigen::Ref<Vector<Scalar>> y) const {
    check(t.size());
    convolve(t, v, y);
  }
  void apply_derivative_adjoint(Eigen::Ref<const Vector<Scalar>> t,
                                Eigen::Ref<const Vector<Scalar>> u,
                                Eigen::Ref<Vector<Scalar>> w) const {
    check(t.size());
    correlate(t, u, w);
  }

 private:
  Vector<Scalar> k_;
  Index n_, m_ = 0, o_ = 0;
  ConvolutionMode mode_;

  /// The outputs i with a signal index i + o − t in [0, n) for tap t: [i0, i0 + len).
  std::pair<Index, Index> output_range(Index t) const {
    const Index i0 = std::max<Index>(0, t - o_), i1 = std::min<Index>(m_, n_ + t - o_);
    return {i0, i1 - i0};
  }

  // (C1): y = window of ker ∗ x, one axpy per tap.
  void convolve(const Eigen::Ref<const Vector<Scalar>>& ker,
                const Eigen::Ref<const Vector<Scalar>>& x, Eigen::Ref<Vector<Scalar>> y) const {
    y.setZero();
    for (Index t = 0; t < ker.size(); ++t) {
      const auto [i0, len] = output_range(t);
      if (len > 0) y.segment(i0, len) += ker[t] * x.segment(i0 + o_ - t, len);
    }
  }
  // (C2): v = Aᴴu, the same index pairs with the roles of input and output swapped.
  void correlate(const Eigen::Ref<const Vector<Scalar>>& ker,
                 const Eigen::Ref<const Vector<Scalar>>& u, Eigen::Ref<Vector<Scalar>> v) const {
    v.setZero();
    for (Index t = 0; t < ker.size(); ++t) {
      const auto [i0, len] = output_range(t);
      if (len > 0) v.segment(i0 + o_ - t, len) += Eigen::numext::conj(ker[t]) * u.segment(i0, len);
    }
  }
  void check(Index size) const {
    if (size != k_.size())
      throw std::invalid_argument("difflsq::Convolution: parameter vector has length " +
                                  std::to_string(size) + ", expected " +
                                  std::to_string(k_.size()));
  }
};

}  // namespace difflsq
