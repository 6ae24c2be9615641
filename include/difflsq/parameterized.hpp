// difflsq — operators A(θ) that depend on parameters θ, so that a solve can be differentiated
// with respect to θ (layer.hpp, docs/gradients.md).
//
// A parameterized operator is a LinearOperator that also offers, for a flat parameter vector θ
// of length parameter_count():
//
//     void add_parameter_gradient(u, v, g) const;    // g += ∇_θ Re⟨u, A(θ) v⟩    (reverse mode)
//     void apply_derivative(t, v, y) const;          // y  = (Σ_k t_k ∂A/∂θ_k) v   (forward mode)
//     void apply_derivative_adjoint(t, u, w) const;  // w  = (Σ_k t_k ∂A/∂θ_k)ᴴ u
//
// with u, v, t passed as Eigen::Ref<const Vector<Scalar>> and g, y, w as Eigen::Ref<Vector>
// (pre-sized; g is accumulated into, y and w are overwritten). The reverse rule only ever asks
// for ∇_θ⟨u, A(θ)v⟩ — one vector-Jacobian product of the map θ ↦ A(θ)v — so A(θ) is never
// formed. Complex scalars: ⟨u, w⟩ = uᴴw, θ has the operator's scalar type, ∇_θ f means
// ∂f/∂Re θ + i ∂f/∂Im θ (PyTorch's convention), and A(θ) must be holomorphic in θ (as the dense
// adapter is) or θ real, for forward and reverse mode to be transposes of each other.
//
// Adapters: a dense matrix whose entries are the parameters, a sparse matrix whose stored values
// are the parameters (both `parameterized`), and callbacks (make_parameterized_operator). For
// anything else, write a small class (tests/test_layer.cpp has a convolution whose kernel is the
// parameter).
#pragma once

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <concepts>
#include <stdexcept>
#include <string>
#include <utility>

#include "operator.hpp"
#include "sparse.hpp"

namespace difflsq {

template <class Op>
concept ParameterizedOperator =
    LinearOperator<Op> &&
    requires(const Op& op, Eigen::Ref<const Vector<typename Op::Scalar>> in,
             Eigen::Ref<Vector<typename Op::Scalar>> out) {
      { op.parameter_count() } -> std::convertible_to<Index>;
      op.add_parameter_gradient(in, in, out);
      op.apply_derivative(in, in, out);
      op.apply_derivative_adjoint(in, in, out);
    };

    namespace detail {
    inline void check_parameter_count(Index size, Index expected) {
      if (size != expected)
        throw std::invalid_argument("difflsq: parameter vector has length " + std::to_string(size) +
                                    ", expected " + std::to_string(expected));
    }
    }  // namespace detail

/// A dense Eigen matrix as A(θ) with θ = its entries in storage order (column-major: θ[i + m·j]
/// = A(i, j); row-major: θ[i·n + j]). A gradient vector mapped with the matrix's shape and
/// storage order is ∂L/∂A. Keeps a reference: the matrix must outlive the operator.
template <class Matrix>
class MatrixParameters : public EigenOperator<Matrix> {
 public:
  using Scalar = typename Matrix::Scalar;
  explicit MatrixParameters(const Matrix& a) : EigenOperator<Matrix>(a) {
    if (a.innerStride() != 1 || a.outerStride() != a.innerSize())
      throw std::invalid_argument("difflsq::parameterized: the matrix must be contiguous");
  }
  Index parameter_count() const { return this->rows() * this->cols(); }
  void add_parameter_gradient(Eigen::Ref<const Vector<Scalar>> u,
                              Eigen::Ref<const Vector<Scalar>> v,
                              Eigen::Ref<Vector<Scalar>> g) const {
    check(g.size());
    shaped(g.data()).noalias() += u * v.adjoint();  // ∇_A Re⟨u, A v⟩ = u vᴴ
  }
  void apply_derivative(Eigen::Ref<const Vector<Scalar>> t, Eigen::Ref<const Vector<Scalar>> v,
                        Eigen::Ref<Vector<Scalar>> y) const {
    check(t.size());
    y.noalias() = shaped(t.data()) * v;
  }
  void apply_derivative_adjoint(Eigen::Ref<const Vector<Scalar>> t,
                                Eigen::Ref<const Vector<Scalar>> u,
                                Eigen::Ref<Vector<Scalar>> w) const {
    check(t.size());
    w.noalias() = shaped(t.data()).adjoint() * u;
  }

 private:
  static constexpr int kOrder = Matrix::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
  using Shaped = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, kOrder>;
  Eigen::Map<Shaped> shaped(Scalar* p) const { return {p, this->rows(), this->cols()}; }
  Eigen::Map<const Shaped> shaped(const Scalar* p) const { return {p, this->rows(), this->cols()}; }
  void check(Index size) const { detail::check_parameter_count(size, parameter_count()); }
};

/// The matrix `a` as a parameterized operator (θ = its entries).
template <class Matrix>
requires std::derived_from<Matrix, Eigen::DenseBase<Matrix>> MatrixParameters<Matrix> parameterized(
    const Matrix& a) {
  return MatrixParameters<Matrix>(a);
}

/// A compressed Eigen sparse matrix (or a Map of one) as A(θ) with θ = its stored values in
/// storage order, valuePtr()[0 … nnz): row by row for a row-major matrix, column by column for
/// a column-major one. The pattern is fixed: a gradient vector put in place of the values is
/// ∂L/∂A on the pattern; entries outside it are not parameters. Products run as in
/// CompressedOperator (the options choose its layout and threads). Keeps a reference: the
/// matrix must outlive the operator.
template <class Matrix>
class SparseMatrixParameters : public CompressedOperator<Matrix> {
 public:
  using Scalar = typename Matrix::Scalar;
  explicit SparseMatrixParameters(const Matrix& a, SparseOptions options = {})
      : CompressedOperator<Matrix>(compressed(a), options) {}
  Index parameter_count() const { return this->matrix().nonZeros(); }
  void add_parameter_gradient(Eigen::Ref<const Vector<Scalar>> u,
                              Eigen::Ref<const Vector<Scalar>> v,
                              Eigen::Ref<Vector<Scalar>> g) const {
    check(g.size());
    // ∇_θp Re⟨u, A v⟩ = u_i conj(v_j) for the value θp stored at (i, j): u vᴴ on the pattern.
    const Matrix& a = this->matrix();
    const auto* outer = a.outerIndexPtr();
    const auto* inner = a.innerIndexPtr();
    for (Index k = 0; k < a.outerSize(); ++k)
      for (Index p = outer[k]; p < outer[k + 1]; ++p) {
        const Index i = Matrix::IsRowMajor ? k : Index(inner[p]);
        const Index j = Matrix::IsRowMajor ? Index(inner[p]) : k;
        g[p] += u[i] * Eigen::numext::conj(v[j]);
      }
  }
  void apply_derivative(Eigen::Ref<const Vector<Scalar>> t, Eigen::Ref<const Vector<Scalar>> v,
                        Eigen::Ref<Vector<Scalar>> y) const {
    check(t.size());
    y.noalias() = pattern(t.data()) * v;  // ∂A·t: the pattern holding the values t
  }
  void apply_derivative_adjoint(Eigen::Ref<const Vector<Scalar>> t,
                                Eigen::Ref<const Vector<Scalar>> u,
                                Eigen::Ref<Vector<Scalar>> w) const {
    check(t.size());
    w.noalias() = pattern(t.data()).adjoint() * u;
  }

 private:
  using Pattern = Eigen::Map<
      const Eigen::SparseMatrix<Scalar, Matrix::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor,
                                typename Matrix::StorageIndex>>;
  static const Matrix& compressed(const Matrix& a) {
    if (!a.isCompressed())
      throw std::invalid_argument(
          "difflsq::parameterized: the sparse matrix must be compressed (makeCompressed())");
    return a;
  }
  Pattern pattern(const Scalar* t) const {
    const Matrix& a = this->matrix();
    return Pattern(a.rows(), a.cols(), a.nonZeros(), a.outerIndexPtr(), a.innerIndexPtr(), t);
  }
  void check(Index size) const { detail::check_parameter_count(size, parameter_count()); }
};

/// The operators keep a reference to the matrix: a temporary (e.g. a Map made in the call)
/// would dangle.
template <class Matrix>
void parameterized(const Matrix&&) = delete;
template <class Matrix>
void parameterized(const Matrix&&, SparseOptions) = delete;

/// The sparse matrix `a` as a parameterized operator (θ = its stored values).
template <class Matrix>
requires std::derived_from<Matrix, Eigen::SparseMatrixBase<Matrix>> SparseMatrixParameters<Matrix>
parameterized(const Matrix& a, SparseOptions options = {}) {
  return SparseMatrixParameters<Matrix>(a, options);
}

/// A(θ) from callbacks: matvec(x, y) and rmatvec(u, v) as in make_operator, and
/// gradient(u, v, g): g += ∇_θ Re⟨u, A(θ)v⟩, dmatvec(t, v, y): y = (∂A·t) v,
/// drmatvec(t, u, w): w = (∂A·t)ᴴ u.
template <class Scalar_, class MatVec, class RMatVec, class Grad, class DMatVec, class DRMatVec>
class ParameterizedCallbackOperator : public CallbackOperator<Scalar_, MatVec, RMatVec> {
 public:
  using Scalar = Scalar_;
  ParameterizedCallbackOperator(Index rows, Index cols, Index parameters, MatVec matvec,
                                RMatVec rmatvec, Grad gradient, DMatVec dmatvec,
                                DRMatVec drmatvec)
      : CallbackOperator<Scalar_, MatVec, RMatVec>(rows, cols, std::move(matvec),
                                                   std::move(rmatvec)),
        parameters_(parameters),
        gradient_(std::move(gradient)),
        dmatvec_(std::move(dmatvec)),
        drmatvec_(std::move(drmatvec)) {
    if (parameters < 0)
      throw std::invalid_argument("difflsq::make_parameterized_operator: negative parameter count");
  }
  Index parameter_count() const { return parameters_; }
  void add_parameter_gradient(Eigen::Ref<const Vector<Scalar>> u,
                              Eigen::Ref<const Vector<Scalar>> v,
                              Eigen::Ref<Vector<Scalar>> g) const {
    gradient_(u, v, g);
  }
  void apply_derivative(Eigen::Ref<const Vector<Scalar>> t, Eigen::Ref<const Vector<Scalar>> v,
                        Eigen::Ref<Vector<Scalar>> y) const {
    dmatvec_(t, v, y);
  }
  void apply_derivative_adjoint(Eigen::Ref<const Vector<Scalar>> t,
                                Eigen::Ref<const Vector<Scalar>> u,
                                Eigen::Ref<Vector<Scalar>> w) const {
    drmatvec_(t, u, w);
  }

 private:
  Index parameters_;
  Grad gradient_;
  DMatVec dmatvec_;
  DRMatVec drmatvec_;
};

template <class Scalar = double, class MatVec, class RMatVec, class Grad, class DMatVec,
          class DRMatVec>
auto make_parameterized_operator(Index rows, Index cols, Index parameters, MatVec matvec,
                                 RMatVec rmatvec, Grad gradient, DMatVec dmatvec,
                                 DRMatVec drmatvec) {
  return ParameterizedCallbackOperator<Scalar, MatVec, RMatVec, Grad, DMatVec, DRMatVec>(
      rows, cols, parameters, std::move(matvec), std::move(rmatvec), std::move(gradient),
      std::move(dmatvec), std::move(drmatvec));
}

}  // namespace difflsq
