// difflsq — linear operators.
//
// A linear operator is anything with
//
//     using Scalar = ...;
//     Index rows() const;  Index cols() const;
//     // y = A x and v = Aᴴ u:
//     void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const;
//     void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const;
//
// Outputs are pre-sized by the caller and overwritten. Operators may additionally offer
// `apply_add(x, y)` (y += A x) and `apply_adjoint_add(u, v)` (v += Aᴴ u), which the solvers use
// to save a pass over memory; the Eigen adapters do. An operator that can make both products of
// a Golub–Kahan step in one pass over A offers `fuses_step()` and `apply_sub_norm2_adjoint(v, u,
// a, w)` (detail::HasFusedStep): dense row-major matrices and CompressedOperator over CSR do.
//
// Adapters: Eigen dense matrices and expressions that evaluate to one (any storage order),
// Eigen sparse matrices (row- and column-major), callbacks (make_operator), and the adjoint view.
// The adapters keep a reference to the matrix: it must outlive the operator.
#pragma once

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <algorithm>
#include <complex>
#include <concepts>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "options.hpp"
#include "sparse.hpp"

namespace difflsq {

template <class Op>
concept LinearOperator = requires(const Op& op, Eigen::Ref<const Vector<typename Op::Scalar>> in,
                                  Eigen::Ref<Vector<typename Op::Scalar>> out) {
  typename Op::Scalar;
  { op.rows() } -> std::convertible_to<Index>;
  { op.cols() } -> std::convertible_to<Index>;
  op.apply(in, out);
  op.apply_adjoint(in, out);
};

namespace detail {

/// An operator that can make both products of a Golub–Kahan step in one pass over A when
/// fuses_step() says so: apply_sub_norm2_adjoint(v, u, a, w) sets u ← A v − a·u and w ← Aᴴu,
/// returning ‖u‖².
template <class Op>
concept HasFusedStep = requires(const Op& op, Eigen::Ref<const Vector<typename Op::Scalar>> in,
                                Eigen::Ref<Vector<typename Op::Scalar>> out,
                                RealOf<typename Op::Scalar> a) {
  { op.fuses_step() } -> std::convertible_to<bool>;
  op.apply_sub_norm2_adjoint(in, out, a, out);
};

/// The same for the other order (for operators stored by columns, and adjoints of those stored
/// by rows): when fuses_adjoint_step() says so, apply_adjoint_sub_norm2_apply(u, v, a, y) sets
/// v ← Aᴴu − a·v and y ← A v, returning ‖v‖².
template <class Op>
concept HasFusedAdjointStep = requires(const Op& op,
                                       Eigen::Ref<const Vector<typename Op::Scalar>> in,
                                       Eigen::Ref<Vector<typename Op::Scalar>> out,
                                       RealOf<typename Op::Scalar> a) {
  { op.fuses_adjoint_step() } -> std::convertible_to<bool>;
  op.apply_adjoint_sub_norm2_apply(in, out, a, out);
};

}  // namespace detail

// --- Eigen matrices -------------------------------------------------------------------------

/// Adapter for an Eigen matrix through Eigen's own products: dense matrices (row- or
/// column-major, Map, Ref) and sparse expressions without compressed storage. Sparse matrices
/// and Maps of them get CompressedOperator (sparse.hpp) instead.
template <class Matrix>
class EigenOperator {
 public:
  using Scalar = typename Matrix::Scalar;
  explicit EigenOperator(const Matrix& a) : a_(&a) {}
  Index rows() const { return a_->rows(); }
  Index cols() const { return a_->cols(); }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    y.noalias() = *a_ * x;
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    v.noalias() = a_->adjoint() * u;
  }
  void apply_add(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    y.noalias() += *a_ * x;
  }
  void apply_adjoint_add(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    v.noalias() += a_->adjoint() * u;
  }
  /// Whether apply_sub_norm2_adjoint() makes one pass over A: a dense row-major matrix.
  bool fuses_step() const { return kDense && kRowMajor; }
  /// Whether apply_adjoint_sub_norm2_apply() makes one pass over A: a dense column-major matrix.
  bool fuses_adjoint_step() const { return kDense && !kRowMajor; }
  /// u ← A v − a·u, then w ← Aᴴu with that new u; returns ‖u‖². A dense row-major matrix goes
  /// by blocks of rows small enough to stay in cache between A_B v and A_Bᴴ u_B, so A is read
  /// from memory once instead of twice (3000 × 800: 0.73× the time of the two products in a
  /// standalone harness; the layer's benchmark in docs/benchmarks.md). a = 0 does not read u's old
  /// values.
  RealOf<Scalar> apply_sub_norm2_adjoint(Eigen::Ref<const Vector<Scalar>> v,
                                         Eigen::Ref<Vector<Scalar>> u, RealOf<Scalar> a,
                                         Eigen::Ref<Vector<Scalar>> w) const {
    RealOf<Scalar> norm2 = 0;
    if constexpr (kDense && kRowMajor) {
      const Index m = rows(), block = block_size(cols());
      w.setZero();
      for (Index i = 0; i < m; i += block) {
        const auto rows_i = a_->middleRows(i, std::min(block, m - i));
        norm2 += sub(rows_i, v, u.segment(i, rows_i.rows()), a);
        w.noalias() += rows_i.adjoint() * u.segment(i, rows_i.rows());
      }
    } else {
      norm2 = sub(*a_, v, u, a);
      apply_adjoint(u, w);
    }
    return norm2;
  }
  /// v ← Aᴴu − a·v, then y ← A v with that new v; returns ‖v‖². A dense column-major matrix goes
  /// by blocks of columns, as apply_sub_norm2_adjoint by rows.
  RealOf<Scalar> apply_adjoint_sub_norm2_apply(Eigen::Ref<const Vector<Scalar>> u,
                                               Eigen::Ref<Vector<Scalar>> v, RealOf<Scalar> a,
                                               Eigen::Ref<Vector<Scalar>> y) const {
    RealOf<Scalar> norm2 = 0;
    if constexpr (kDense && !kRowMajor) {
      const Index n = cols(), block = block_size(rows());
      y.setZero();
      for (Index j = 0; j < n; j += block) {
        const auto cols_j = a_->middleCols(j, std::min(block, n - j));
        norm2 += sub(cols_j.adjoint(), u, v.segment(j, cols_j.cols()), a);
        y.noalias() += cols_j * v.segment(j, cols_j.cols());
      }
    } else {
      norm2 = sub(a_->adjoint(), u, v, a);
      apply(v, y);
    }
    return norm2;
  }
  const Matrix& matrix() const { return *a_; }

 private:
  static constexpr bool kDense = std::is_base_of_v<Eigen::MatrixBase<Matrix>, Matrix>;
  static constexpr bool kRowMajor = bool(Matrix::IsRowMajor);
  /// The fused steps' blocks of rows or columns of this length: at most 256 KB (a quarter of a
  /// 1 MB L2), at most 64.
  static Index block_size(Index length) {
    return std::clamp<Index>(
        (Index(256) << 10) / (Index(sizeof(Scalar)) * std::max<Index>(length, 1)), 1, 64);
  }
  /// out ← m·in − a·out (a = 0: out's old values are not read); returns ‖out‖².
  template <class M, class Out>
  static RealOf<Scalar> sub(const M& m, Eigen::Ref<const Vector<Scalar>> in, Out&& out,
                            RealOf<Scalar> a) {
    if (a == 0) {
      out.noalias() = m * in;
    } else {
      out *= Scalar(-a);
      out.noalias() += m * in;
    }
    return out.squaredNorm();
  }
  const Matrix* a_;
};

template <class Matrix>
using DenseOperator = EigenOperator<Matrix>;
template <class Matrix>
using SparseOperator = EigenOperator<Matrix>;

// --- callbacks ------------------------------------------------------------------------------

/// Matrix-free operator from two callables: matvec(x, y) writes y = A x, rmatvec(u, v) writes
/// v = Aᴴ u. Both receive `const Eigen::Ref<const Vector>&` and `Eigen::Ref<Vector>&` (lvalues),
/// so generic lambdas `[&](const auto& x, auto& y) { y.noalias() = M * x; }` work.
template <class Scalar_, class MatVec, class RMatVec>
class CallbackOperator {
 public:
  using Scalar = Scalar_;
  CallbackOperator(Index rows, Index cols, MatVec matvec, RMatVec rmatvec)
      : rows_(rows), cols_(cols), matvec_(std::move(matvec)), rmatvec_(std::move(rmatvec)) {
    if (rows < 0 || cols < 0)
      throw std::invalid_argument("difflsq::make_operator: negative size " + std::to_string(rows) +
                                  " x " + std::to_string(cols));
  }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    matvec_(x, y);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    rmatvec_(u, v);
  }

 private:
  Index rows_, cols_;
  MatVec matvec_;
  RMatVec rmatvec_;
};

/// make_operator<double>(m, n, matvec, rmatvec); the scalar defaults to double.
template <class Scalar = double, class MatVec, class RMatVec>
auto make_operator(Index rows, Index cols, MatVec matvec, RMatVec rmatvec) {
  using In = Eigen::Ref<const Vector<Scalar>>&;
  using Out = Eigen::Ref<Vector<Scalar>>&;
  static_assert(
      std::is_invocable_v<const MatVec&, In, Out> && std::is_invocable_v<const RMatVec&, In, Out>,
      "difflsq::make_operator: matvec and rmatvec are called with (Eigen::Ref<const "
      "Vector>&, Eigen::Ref<Vector>&): take (const auto& x, auto& y), or those Ref "
      "types; an output typed Eigen::VectorXd& cannot bind (and mind the Scalar argument)");
  return CallbackOperator<Scalar, MatVec, RMatVec>(rows, cols, std::move(matvec),
                                                   std::move(rmatvec));
}

// --- adjoint view -----------------------------------------------------------------------------

/// Aᴴ as an operator; refers to A when given an lvalue, owns it (shared) when given a
/// temporary, such as the adapter of `adjoint(as_operator(M))`.
template <LinearOperator Op>
class AdjointOperator {
 public:
  using Scalar = typename Op::Scalar;
  explicit AdjointOperator(const Op& a) : a_(&a) {}
  explicit AdjointOperator(Op&& a)
      : owned_(std::make_shared<const Op>(std::move(a))), a_(owned_.get()) {}
  Index rows() const { return a_->cols(); }
  Index cols() const { return a_->rows(); }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    a_->apply_adjoint(x, y);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    a_->apply(u, v);
  }
  /// The fused Golub–Kahan products of Aᴴ are A's in the other order.
  bool fuses_step() const requires detail::HasFusedAdjointStep<Op> {
    return a_->fuses_adjoint_step();
  }
  RealOf<Scalar> apply_sub_norm2_adjoint(
      Eigen::Ref<const Vector<Scalar>> v, Eigen::Ref<Vector<Scalar>> u, RealOf<Scalar> a,
      Eigen::Ref<Vector<Scalar>> w) const requires detail::HasFusedAdjointStep<Op> {
    return a_->apply_adjoint_sub_norm2_apply(v, u, a, w);
  }
  bool fuses_adjoint_step() const requires detail::HasFusedStep<Op> { return a_->fuses_step(); }
  RealOf<Scalar> apply_adjoint_sub_norm2_apply(
      Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v, RealOf<Scalar> a,
      Eigen::Ref<Vector<Scalar>> y) const requires detail::HasFusedStep<Op> {
    return a_->apply_sub_norm2_adjoint(u, v, a, y);
  }

 private:
  std::shared_ptr<const Op> owned_;
  const Op* a_;
};

// --- turning user input into an operator ----------------------------------------------------

namespace detail {
template <class T>
inline constexpr bool is_dense_v = std::is_base_of_v<Eigen::MatrixBase<T>, T>;
template <class T>
inline constexpr bool is_sparse_v = std::is_base_of_v<Eigen::SparseMatrixBase<T>, T>;
template <class T>
inline constexpr bool is_compressed_v = std::is_base_of_v<Eigen::SparseCompressedBase<T>, T>;
}  // namespace detail

/// Anything the solvers accept: an operator, or an Eigen dense/sparse matrix.
template <class A>
concept OperatorLike = LinearOperator<A> || detail::is_dense_v<A> || detail::is_sparse_v<A>;

/// An operator for A: A itself when it already is one, otherwise a non-owning adapter.
/// Dense expressions that are not plain objects (e.g. `M * 2`) are not accepted: evaluate them.
template <OperatorLike A>
decltype(auto) as_operator(const A& a) {
  if constexpr (LinearOperator<A>) {
    return (a);
  } else if constexpr (detail::is_dense_v<A>) {
    static_assert(std::is_base_of_v<Eigen::PlainObjectBase<A>, A> ||
                      std::is_base_of_v<Eigen::MapBase<A, Eigen::ReadOnlyAccessors>, A>,
                  "difflsq: pass a dense matrix, Map or Ref, not an unevaluated expression");
    return DenseOperator<A>(a);
  } else if constexpr (detail::is_compressed_v<A>) {
    return CompressedOperator<A>(a);
  } else {
    return SparseOperator<A>(a);
  }
}

template <OperatorLike A>
using OperatorOf = std::remove_cvref_t<decltype(as_operator(std::declval<const A&>()))>;

template <OperatorLike A>
using ScalarOf = typename OperatorOf<A>::Scalar;

/// The adjoint view of A: an operator (referred to, or owned when it is a temporary) or an
/// Eigen matrix (referred to through an owned adapter). A must outlive the view.
template <OperatorLike A>
auto adjoint(const A& a) {
  if constexpr (LinearOperator<A>)
    return AdjointOperator<A>(a);
  else
    return AdjointOperator<OperatorOf<A>>(as_operator(a));
}
template <LinearOperator Op>
requires(!std::is_lvalue_reference_v<Op>) auto adjoint(Op&& a) {
  return AdjointOperator<Op>(std::move(a));
}
/// Not for a temporary matrix, Map or Ref: the view would refer to it after it is gone. Name
/// it first (or pass as_operator(M), which the view then owns).
template <OperatorLike A>
requires(!LinearOperator<A> && !std::is_lvalue_reference_v<A>) auto adjoint(A&& a) = delete;

// --- the dot test -----------------------------------------------------------------------------

/// Result of check_adjoint: |⟨Ax, y⟩ − ⟨x, Aᴴy⟩| relative to ‖Ax‖‖y‖ + ‖x‖‖Aᴴy‖.
struct AdjointCheck {
  double relative_error = 0;
  bool passed = false;
};

/// The dot test: for random x and y, ⟨A x, y⟩ = ⟨x, Aᴴ y⟩ must hold to rounding. Passing is
/// judged against `tolerance` (default: 100·ε·sqrt(m + n) of the scalar's precision); a
/// non-finite product in any trial fails (relative_error NaN). trials must be ≥ 1.
template <class A>
AdjointCheck check_adjoint(const A& a, int trials = 3, double tolerance = -1,
                           unsigned seed = 20251025u) {
  const auto& op = as_operator(a);
  using Scalar = ScalarOf<A>;
  using Real = RealOf<Scalar>;
  const Index m = op.rows(), n = op.cols();
  if (trials < 1)
    throw std::invalid_argument("difflsq::check_adjoint: trials must be >= 1, got " +
                                std::to_string(trials));
  if (tolerance < 0)
    tolerance = 100.0 * static_cast<double>(std::numeric_limits<Real>::epsilon()) *
                std::sqrt(static_cast<double>(m + n) + 1.0);
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  auto random_vector = [&](Index size) {
    Vector<Scalar> z(size);
    for (Index i = 0; i < size; ++i) {
      if constexpr (Eigen::NumTraits<Scalar>::IsComplex)
        z[i] = Scalar(Real(normal(gen)), Real(normal(gen)));
      else
        z[i] = Scalar(normal(gen));
    }
    return z;
  };
  AdjointCheck out;
  Vector<Scalar> ax(m), ahy(n);
  for (int t = 0; t < trials; ++t) {
    const Vector<Scalar> x = random_vector(n), y = random_vector(m);
    op.apply(x, ax);
    op.apply_adjoint(y, ahy);
    const double lhs_scale = static_cast<double>(ax.norm() * y.norm() + x.norm() * ahy.norm());
    const double diff = static_cast<double>(std::abs(y.dot(ax) - ahy.dot(x)));  // ⟨Ax,y⟩ − ⟨x,Aᴴy⟩
    const double rel = lhs_scale > 0 ? diff / lhs_scale : diff;
    // NaN sticks (std::max would drop it): a product that is not finite fails the test.
    if (!(rel <= out.relative_error)) out.relative_error = rel;
    if (std::isnan(rel)) break;
  }
  out.passed = std::isfinite(out.relative_error) && out.relative_error <= tolerance;
  return out;
}

}  // namespace difflsq
