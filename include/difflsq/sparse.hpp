// difflsq — the sparse-matrix operator: products over Eigen's compressed storage (CSR for
// row-major, CSC for column-major matrices; compressed or not), with OpenMP for large matrices.
//
// The solvers' Golub–Kahan step needs y ← A x − a·y followed by ‖y‖. Where the product gathers
// (CSR·x, and CSCᴴ·u), both happen in the same pass over y (`apply_sub_norm2`), saving two
// passes over the vector. Where it scatters (CSRᴴ·u, CSC·x), the update is a scatter into y
// after scaling; with several threads each thread past the first scatters into its own
// buffer (allocated with the operator, never during a product), summed at the end.
//
// Non-owning: the matrix must outlive the operator and not change while it is used. An operator
// is not safe to use from two threads at once (it owns the scatter buffers). Constructing one
// allocates only when it runs on several threads (the scatter buffers): for repeated solves of
// a large matrix without allocation, construct it once and pass it instead of the matrix.
#pragma once

#include <Eigen/SparseCore>
#include <algorithm>
#include <array>
#include <vector>

#include "options.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace difflsq {

/// Products below this many nonzeros run on one thread: a parallel region costs more than the
/// product (measured on illc1850, 8758 nonzeros; see docs/benchmarks.md).
inline constexpr Index kParallelNonzeros = 50000;

template <class Matrix>
class CompressedOperator {
 public:
  using Scalar = typename Matrix::Scalar;
  using Real = RealOf<Scalar>;
  using StorageIndex = typename Matrix::StorageIndex;
  static constexpr bool kRowMajor = Matrix::IsRowMajor;

  /// threads ≤ 0: all OpenMP threads for matrices with ≥ kParallelNonzeros nonzeros, else 1.
  explicit CompressedOperator(const Matrix& a, int threads = 0)
      : a_(&a),
        outer_(a.outerSize()),
        inner_(a.innerSize()),
        ptr_(a.outerIndexPtr()),
        nnz_(a.innerNonZeroPtr()),
        idx_(a.innerIndexPtr()),
        val_(a.valuePtr()) {
    int max_threads = 1;
#ifdef _OPENMP
    max_threads = omp_get_max_threads();
#endif
    threads_ = threads > 0 ? std::min(threads, max_threads)
                           : (a.nonZeros() >= kParallelNonzeros ? max_threads : 1);
    threads_ = static_cast<int>(std::max<Index>(
        1, std::min<Index>({Index(threads_), outer_, Index(kMaxThreads)})));
    // Outer ranges with about equal nonzeros, one per thread.
    partition_.fill(outer_);
    partition_[0] = 0;
    const Index total = a.nonZeros();
    Index k = 0;
    for (int t = 1; t < threads_; ++t) {
      const Index target = total * t / threads_;
      while (k < outer_ && begin(k) < target) ++k;
      partition_[t] = k;
    }
    if (threads_ > 1) buffers_.resize((threads_ - 1) * inner_);
  }

  Index rows() const { return a_->rows(); }
  Index cols() const { return a_->cols(); }
  int threads() const { return threads_; }
  const Matrix& matrix() const { return *a_; }

  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    product<false>(x, y, Scalar(0), false);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    product<true>(u, v, Scalar(0), false);
  }
  void apply_add(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    product<false>(x, y, Scalar(-1), false);
  }
  void apply_adjoint_add(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    product<true>(u, v, Scalar(-1), false);
  }
  /// y ← A x − a·y; returns ‖y‖² (fused into the product where it gathers).
  Real apply_sub_norm2(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y,
                       Real a) const {
    return product<false>(x, y, Scalar(a), true);
  }
  /// v ← Aᴴ u − a·v; returns ‖v‖².
  Real apply_adjoint_sub_norm2(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v,
                               Real a) const {
    return product<true>(u, v, Scalar(a), true);
  }

 private:
  Index begin(Index k) const { return ptr_[k]; }

  static Scalar maybe_conj(const Scalar& s, bool conj) {
    if constexpr (Eigen::NumTraits<Scalar>::IsComplex)
      return conj ? std::conj(s) : s;
    else
      return s;
  }

  /// out ← op(A)·in − a·out with op = identity or ᴴ; a = 0 overwrites (out's old values,
  /// possibly uninitialized, are never read). Returns ‖out‖² when asked, else 0.
  template <bool Adjoint>
  Real product(const Eigen::Ref<const Vector<Scalar>>& in, Eigen::Ref<Vector<Scalar>> out,
               Scalar a, bool want_norm) const {
    // Gather when the output is indexed by the outer dimension: CSR·x or CSCᴴ·u.
    constexpr bool gather = (kRowMajor != Adjoint);
    if constexpr (gather)
      return gather_product(in, out, a, want_norm, Adjoint);
    else
      return scatter_product(in, out, a, want_norm, Adjoint);
  }

  Real gather_product(const Eigen::Ref<const Vector<Scalar>>& in, Eigen::Ref<Vector<Scalar>> out,
                      Scalar a, bool want_norm, bool conj) const {
    const Scalar* x = in.data();
    Scalar* y = out.data();
    Real norm2 = 0;
    // The row loop, with the storage kind and the update hoisted out of it (rows are often
    // short: illc1850 has 4.7 nonzeros per row, so per-row branches cost ~20%).
    auto rows = [&]<bool Compressed, bool Overwrite>(Index lo, Index hi) {
      Real local = 0;
      for (Index k = lo; k < hi; ++k) {
        Scalar s(0);
        const Index e = Compressed ? Index(ptr_[k + 1]) : Index(ptr_[k] + nnz_[k]);
        for (Index p = ptr_[k]; p < e; ++p) s += maybe_conj(val_[p], conj) * x[idx_[p]];
        const Scalar yk = Overwrite ? s : s - a * y[k];
        y[k] = yk;
        if (want_norm) local += Eigen::numext::abs2(yk);
      }
      return local;
    };
    auto run = [&](Index lo, Index hi) {
      const bool overwrite = a == Scalar(0);
      if (!nnz_)
        return overwrite ? rows.template operator()<true, true>(lo, hi)
                         : rows.template operator()<true, false>(lo, hi);
      return overwrite ? rows.template operator()<false, true>(lo, hi)
                       : rows.template operator()<false, false>(lo, hi);
    };
    if (threads_ == 1) return run(0, outer_);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads_) reduction(+ : norm2)
    {
      const int t = omp_get_thread_num();
      norm2 += run(partition_[t], partition_[t + 1]);
    }
#endif
    return norm2;
  }

  Real scatter_product(const Eigen::Ref<const Vector<Scalar>>& in, Eigen::Ref<Vector<Scalar>> out,
                       Scalar a, bool want_norm, bool conj) const {
    const Scalar* u = in.data();
    Scalar* v = out.data();
    const Index n = inner_;
    auto scatter_rows = [&]<bool Compressed>(Index lo, Index hi, Scalar* dst) {
      for (Index k = lo; k < hi; ++k) {
        const Scalar uk = u[k];
        const Index e = Compressed ? Index(ptr_[k + 1]) : Index(ptr_[k] + nnz_[k]);
        for (Index p = ptr_[k]; p < e; ++p) dst[idx_[p]] += maybe_conj(val_[p], conj) * uk;
      }
    };
    auto scatter = [&](Index lo, Index hi, Scalar* dst) {
      if (nnz_)
        scatter_rows.template operator()<false>(lo, hi, dst);
      else
        scatter_rows.template operator()<true>(lo, hi, dst);
    };
    if (threads_ == 1) {
      if (a == Scalar(0))
        out.setZero();
      else
        out *= -a;
      scatter(0, outer_, v);
      return want_norm ? out.squaredNorm() : Real(0);
    }
    Real norm2 = 0;
#ifdef _OPENMP
    Scalar* buf = buffers_.data();
#pragma omp parallel num_threads(threads_) reduction(+ : norm2)
    {
      const int t = omp_get_thread_num();
      // Thread 0 scatters into v (scaled first), thread t > 0 into buffer t − 1.
      Scalar* dst = t == 0 ? v : buf + (t - 1) * n;
      if (t == 0) {
        if (a == Scalar(0))
          std::fill(v, v + n, Scalar(0));
        else
          for (Index j = 0; j < n; ++j) v[j] *= -a;
      } else {
        std::fill(dst, dst + n, Scalar(0));
      }
      scatter(partition_[t], partition_[t + 1], dst);
#pragma omp barrier
#pragma omp for schedule(static)
      for (Index j = 0; j < n; ++j) {
        Scalar s = v[j];
        for (int b = 1; b < threads_; ++b) s += buf[(b - 1) * n + j];
        v[j] = s;
        if (want_norm) norm2 += Eigen::numext::abs2(s);
      }
    }
#endif
    return norm2;
  }

  const Matrix* a_;
  Index outer_, inner_;
  const StorageIndex* ptr_;
  const StorageIndex* nnz_;  // per-outer counts of an uncompressed matrix, else nullptr
  const StorageIndex* idx_;
  const Scalar* val_;
  static constexpr int kMaxThreads = 64;
  int threads_ = 1;
  std::array<Index, kMaxThreads + 1> partition_{};
  mutable std::vector<Scalar> buffers_;
};

}  // namespace difflsq
