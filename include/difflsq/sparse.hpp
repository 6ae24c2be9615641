// difflsq — the sparse-matrix operator: products over Eigen's compressed storage (CSR for
// row-major, CSC for column-major matrices; compressed or not), with OpenMP for large matrices.
//
// The solvers' Golub–Kahan step needs y ← A x − a·y followed by ‖y‖. Where the product gathers
// (CSR·x, and CSCᴴ·u), both happen in the same pass over y (`apply_sub_norm2`), saving two
// passes over the vector. Where it scatters (CSRᴴ·u, CSC·x), the update is a scatter into y
// after scaling; with several threads each thread past the first scatters into its own
// buffer (allocated with the operator, never during a product), summed at the end.
//
// With a transposed index (SparseOptions::transposed_index) both products gather. By default
// (SparseOptions::sliced) both directions are then stored as sliced ELLPACK in 4-row slices
// (detail/sliced_ell.hpp; an LSQR iteration on illc1850 in 0.68× the time, with an AVX2 kernel
// chosen at run time): the operator owns (sizeof(Scalar) + sizeof(index)) bytes per stored entry
// in each direction, 1.06–1.13 entries per nonzero on the Harwell–Boeing problems, plus one
// index per row of a length-sorted layout, and its products never read the matrix's arrays.
//
// Non-owning: the matrix must outlive the operator and not change while it is used (with the
// sliced layout only matrix() still refers to it). An operator is not safe to use from two
// threads at once (it owns the scatter buffers). Constructing one allocates only when it runs on
// several threads (the scatter buffers) or has a transposed index: for repeated solves of a
// large matrix without allocation, construct it once and pass it instead of the matrix.
#pragma once

#include <Eigen/SparseCore>
#include <algorithm>
#include <array>
#include <vector>

#include "detail/sliced_ell.hpp"
#include "options.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <chrono>
#include <limits>

namespace difflsq {

/// Products below this many nonzeros run on one thread by default: a parallel region costs
/// about as much as such a product (docs/benchmarks.md).
inline constexpr Index kParallelNonzeros = 50000;

namespace detail {

/// Chooses between the parallel and the one-thread version of one kind of product by timing
/// them. Every call is timed. After `interval` calls of the current version (kFirstInterval
/// the first time), a trial runs calls of the other one: 1 + kToSerial of the one-thread
/// version, 1 + kToParallel of the parallel one. Its first call is not compared (a parallel
/// region after a run of one-thread calls first wakes its sleeping threads). If the mean of
/// the others is below kSwitch times the mean of those `interval` calls, the other version
/// becomes current and the interval restarts at kMinInterval. Otherwise the trial ends as soon
/// as it cannot win, and the interval doubles (up to kMaxInterval) and is at least kAmortize
/// times the trial's cost in calls of the current version, so that trials take at most about
/// 1/kAmortize of the time even when the other version is 100× slower.
///
/// On an idle machine the parallel version stays current; the one early trial costs a short
/// solve about three calls' difference (the first trial comes early because a solve of 50
/// iterations, as bench/compare_scipy.py's, would otherwise never get one). On a machine whose
/// cores other processes hold, a parallel region waits at its barriers for whichever of its
/// threads is descheduled while OpenMP's spinning threads take time from the others: an LSQR
/// solve on a random 20000 × 5000 matrix with 60000 nonzeros, with two threads on two cores
/// that two compilers also used, took 120× the one-thread time (docs/benchmarks.md, "A loaded
/// machine"). Means, not minima, and long trials of the parallel version: there a parallel call
/// is fast when both threads happen to hold a core and 100× slower when one waits for a time
/// slice; a few calls miss that tail (trials of 4 switched to parallel and back, 3.5× the
/// one-thread time). A trial of a slower version ends early, so its length costs little.
class ThreadChoice {
 public:
  static constexpr int kToSerial = 4, kToParallel = 16;
  static constexpr int kFirstInterval = 8, kMinInterval = 64, kMaxInterval = 1024;
  static constexpr int kAmortize = 32;
  static constexpr double kSwitch = 0.9;

  /// f(parallel) runs the product; returns what f returns.
  template <class F>
  auto run(F&& f) {
    const bool trial = done_ >= interval_;
    const auto start = std::chrono::steady_clock::now();
    auto result = f(trial != parallel_);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!trial) {
      current_ += seconds;
      ++done_;
      return result;
    }
    const double mean = current_ / done_;
    const int compare = parallel_ ? kToSerial : kToParallel;  // calls compared in this trial
    cost_ += seconds;
    if (tried_++ > 0) compared_ += seconds;
    // Can the compared calls' mean still end below kSwitch·mean? (The first call alone may
    // also rule the trial out: 4·(compare + 1) times the current mean is no wake-up.)
    if (compared_ >= kSwitch * mean * compare || cost_ >= 4 * (compare + 1) * mean) {
      const double calls = cost_ / std::max(mean, 1e-12);  // the trial, in current calls
      const double amortized = std::min(kAmortize * calls, 1e9);
      interval_ = std::max(std::clamp(2 * interval_, kMinInterval, kMaxInterval),
                           static_cast<int>(amortized));
      restart();
    } else if (tried_ == compare + 1) {  // the other version was faster
      parallel_ = !parallel_;
      interval_ = kMinInterval;
      restart();
    }
    return result;
  }
  /// The version the calls outside trials use (tests, diagnostics).
  bool parallel() const { return parallel_; }

 private:
  void restart() {
    current_ = cost_ = compared_ = 0;
    done_ = tried_ = 0;
  }

  bool parallel_ = true;
  int interval_ = kFirstInterval, done_ = 0, tried_ = 0;
  double current_ = 0;   // seconds of the `done_` calls of the current version
  double cost_ = 0;      // seconds of the `tried_` trial calls
  double compared_ = 0;  // the same without the trial's first call
};

}  // namespace detail

/// How a CompressedOperator runs.
struct SparseOptions {
  /// Threads for the products; ≤ 0: all OpenMP threads when the matrix has at least
  /// kParallelNonzeros nonzeros, else 1, and each kind of product runs on one thread while that
  /// is measured to be faster (detail::ThreadChoice: a machine whose cores other processes
  /// hold). A positive count is used for every product.
  int threads = 0;
  /// Also store the matrix transposed (nnz values and indices more), so that both products
  /// gather: faster than scattering, and parallel without reduction buffers.
  bool transposed_index = false;
  /// With transposed_index: store both directions as sliced ELLPACK (detail/sliced_ell.hpp),
  /// faster for short rows; false keeps the compressed arrays and a compressed transpose.
  bool sliced = true;
  /// Sliced products of double with 32-bit indices use the AVX2+FMA kernel when the CPU has it;
  /// false forces the portable kernel (for tests and comparisons).
  bool simd = true;
};

/// Options for a matrix with `nonzeros` stored entries, as the Python module and the LibTorch
/// layer choose them: a transposed index (both products gather, over sliced copies of A and
/// Aᵀ: about twice the matrix's memory) up to 2²⁰ nonzeros, none above, where the copies would
/// cost more memory than their speed is worth (docs/benchmarks.md, "sparse layouts").
inline SparseOptions sparse_options_for(Index nonzeros) {
  return SparseOptions{.transposed_index = nonzeros <= (Index(1) << 20)};
}

template <class Matrix>
class CompressedOperator {
 public:
  using Scalar = typename Matrix::Scalar;
  using Real = RealOf<Scalar>;
  using StorageIndex = typename Matrix::StorageIndex;
  static constexpr bool kRowMajor = Matrix::IsRowMajor;

  explicit CompressedOperator(const Matrix& a, SparseOptions options = {})
      : a_(&a), rows_(a.rows()), cols_(a.cols()), inner_(a.innerSize()) {
    int max_threads = 1;
#ifdef _OPENMP
    max_threads = omp_get_max_threads();
#endif
    threads_ = options.threads > 0                 ? std::min(options.threads, max_threads)
               : a.nonZeros() >= kParallelNonzeros ? max_threads
                                                   : 1;
    threads_ = static_cast<int>(
        std::max<Index>(1, std::min<Index>({Index(threads_), a.outerSize(), Index(kMaxThreads)})));
    adaptive_ = options.threads <= 0 && threads_ > 1;
    direct_ = storage(a.outerSize(), a.outerIndexPtr(), a.innerNonZeroPtr(), a.innerIndexPtr(),
                      a.valuePtr());
    transposed_index_ = options.transposed_index;
    if (transposed_index_ && options.sliced)
      build_sliced(options.simd);
    else if (transposed_index_)
      build_transposed();
    if (threads_ > 1 && !transposed_index_) buffers_.resize((threads_ - 1) * inner_);
  }
  /// Shorthand for SparseOptions{.threads = threads}.
  CompressedOperator(const Matrix& a, int threads)
      : CompressedOperator(a, SparseOptions{threads}) {}
  // The transposed arrays are referred to by pointer: moving keeps them valid, copying would not.
  CompressedOperator(const CompressedOperator&) = delete;
  CompressedOperator& operator=(const CompressedOperator&) = delete;
  CompressedOperator(CompressedOperator&&) noexcept = default;
  CompressedOperator& operator=(CompressedOperator&&) noexcept = default;

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  int threads() const { return threads_; }
  /// Whether products may run on one thread when that is measured to be faster
  /// (SparseOptions::threads ≤ 0 and threads() > 1).
  bool adaptive_threads() const { return adaptive_; }
  bool has_transposed_index() const { return transposed_index_; }
  /// Both directions are stored as sliced ELLPACK (see SparseOptions::sliced).
  bool sliced() const { return sliced_; }
  /// A sliced product runs the AVX2+FMA kernel (see sliced_outer().avx2, sliced_inner().avx2).
  bool uses_avx2() const { return sell_direct_.avx2 || sell_transposed_.avx2; }
  /// The sliced layouts (tests, diagnostics): along the storage's outer dimension (rows of a
  /// row-major matrix) and along its inner one. Empty unless sliced().
  const detail::SlicedEll<Scalar, StorageIndex>& sliced_outer() const { return sell_direct_; }
  const detail::SlicedEll<Scalar, StorageIndex>& sliced_inner() const { return sell_transposed_; }
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
  /// Whether apply_sub_norm2_adjoint() makes one pass over the matrix: a row-major matrix
  /// without a transposed index (whose adjoint would otherwise scatter in a second pass).
  bool fuses_step() const { return kRowMajor && !transposed_index_; }
  /// Whether apply_adjoint_sub_norm2_apply() makes one pass: column-major, no transposed index.
  bool fuses_adjoint_step() const { return !kRowMajor && !transposed_index_; }
  /// u ← A v − a·u, then w ← Aᴴu with that new u; returns ‖u‖². With fuses_step(), one pass
  /// over the matrix: row k's entry of the new u is scattered into w while the row is in cache
  /// (the Golub–Kahan step's two products; on a random 200k × 100k matrix with 2M nonzeros an
  /// LSQR iteration takes 0.66× the time of gather-then-scatter, docs/benchmarks.md).
  Real apply_sub_norm2_adjoint(Eigen::Ref<const Vector<Scalar>> v, Eigen::Ref<Vector<Scalar>> u,
                               Real a, Eigen::Ref<Vector<Scalar>> w) const {
    if (!fuses_step()) {
      const Real norm2 = apply_sub_norm2(v, u, a);
      apply_adjoint(u, w);
      return norm2;
    }
    return fused_product<false>(v.data(), u.data(), w.data(), Scalar(a));
  }
  /// v ← Aᴴu − a·v, then y ← A v with that new v; returns ‖v‖². With fuses_adjoint_step(), one
  /// pass over the columns, as apply_sub_norm2_adjoint over the rows.
  Real apply_adjoint_sub_norm2_apply(Eigen::Ref<const Vector<Scalar>> u,
                                     Eigen::Ref<Vector<Scalar>> v, Real a,
                                     Eigen::Ref<Vector<Scalar>> y) const {
    if (!fuses_adjoint_step()) {
      const Real norm2 = apply_adjoint_sub_norm2(u, v, a);
      apply(v, y);
      return norm2;
    }
    return fused_product<true>(u.data(), v.data(), y.data(), Scalar(a));
  }

 private:
  static constexpr int kMaxThreads = detail::kMaxSparseThreads;
  using Sliced = detail::SlicedEll<Scalar, StorageIndex>;

  /// One compressed layout (outer × inner) and its split into per-thread outer ranges with
  /// about equal nonzeros.
  struct Storage {
    Index outer = 0;
    const StorageIndex* ptr = nullptr;
    const StorageIndex* nnz = nullptr;  // per-outer counts of an uncompressed matrix, else null
    const StorageIndex* idx = nullptr;
    const Scalar* val = nullptr;
    std::array<Index, kMaxThreads + 1> partition{};
    bool long_rows = false;  // ≥ 8 nonzeros per outer on average: two accumulators pay off
  };

  Storage storage(Index outer, const StorageIndex* ptr, const StorageIndex* nnz,
                  const StorageIndex* idx, const Scalar* val) const {
    Storage s{outer, ptr, nnz, idx, val, {}, false};
    s.long_rows = nnz == nullptr && outer > 0 && Index(ptr[outer]) >= 8 * outer;
    // Split by nonzeros where they are contiguous (compressed), else by rows.
    const bool by_nonzeros = nnz == nullptr && ptr[outer] > 0;
    const Index total = by_nonzeros ? Index(ptr[outer]) : outer;
    s.partition.fill(outer);
    s.partition[0] = 0;
    Index k = 0;
    for (int t = 1; t < threads_; ++t) {
      const Index target = total * t / threads_;
      while (k < outer && (by_nonzeros ? Index(ptr[k]) : k) < target) ++k;
      s.partition[t] = k;
    }
    return s;
  }

  /// The transpose of the direct layout by a counting sort, as compressed arrays.
  void transpose(std::vector<StorageIndex>& ptr, std::vector<StorageIndex>& idx,
                 std::vector<Scalar>& val) const {
    const Storage& d = direct_;
    ptr.assign(inner_ + 1, 0);
    for (Index k = 0; k < d.outer; ++k)
      for (Index p = d.ptr[k], e = end(d, k); p < e; ++p) ++ptr[d.idx[p] + 1];
    for (Index j = 0; j < inner_; ++j) ptr[j + 1] += ptr[j];
    idx.resize(ptr[inner_]);
    val.resize(ptr[inner_]);
    std::vector<StorageIndex> next(ptr.begin(), ptr.end() - 1);
    for (Index k = 0; k < d.outer; ++k)
      for (Index p = d.ptr[k], e = end(d, k); p < e; ++p) {
        const StorageIndex q = next[d.idx[p]]++;
        idx[q] = static_cast<StorageIndex>(k);
        val[q] = d.val[p];
      }
  }

  void build_transposed() {
    transpose(t_ptr_, t_idx_, t_val_);
    transposed_ = storage(inner_, t_ptr_.data(), nullptr, t_idx_.data(), t_val_.data());
  }

  /// Both directions as sliced ELLPACK; the compressed transpose is only a step on the way.
  void build_sliced(bool simd) {
    const Storage& d = direct_;
    sliced_ = true;
    sell_direct_ = detail::make_sliced_ell(d.outer, d.ptr, d.nnz, d.idx, d.val, threads_);
    std::vector<StorageIndex> ptr, idx;
    std::vector<Scalar> val;
    transpose(ptr, idx, val);
    sell_transposed_ = detail::make_sliced_ell<Scalar, StorageIndex>(
        inner_, ptr.data(), nullptr, idx.data(), val.data(), threads_);
    // The AVX2 kernel where the CPU has it and the gathered vector is small enough.
    const bool avx2 =
        simd && detail::kHasAvx2Kernel<Scalar, StorageIndex> && detail::cpu_has_avx2_fma();
    auto small = [](Index n) { return n * Index(sizeof(Scalar)) <= detail::kAvx2MaxGatherBytes; };
    sell_direct_.avx2 = avx2 && small(inner_);
    sell_transposed_.avx2 = avx2 && small(d.outer);
  }

  static Index end(const Storage& s, Index k) {
    return s.nnz ? Index(s.ptr[k] + s.nnz[k]) : Index(s.ptr[k + 1]);
  }

  static Scalar maybe_conj(const Scalar& s, bool conj) {
    if constexpr (Eigen::NumTraits<Scalar>::IsComplex)
      return conj ? std::conj(s) : s;
    else
      return s;
  }

  /// out ← op(A)·in − a·out with op = identity or ᴴ; a = 0 overwrites (out's old values,
  /// possibly uninitialized, are never read). Returns ‖out‖² when asked, else 0.
  template <bool Adjoint>
  Real product(const Eigen::Ref<const Vector<Scalar>>& in, Eigen::Ref<Vector<Scalar>> out, Scalar a,
               bool want_norm) const {
    // The direct layout gathers when the output is indexed by its outer dimension (CSR·x,
    // CSCᴴ·u); otherwise the transposed layout gathers, if there is one, else we scatter.
    constexpr bool direct_gathers = (kRowMajor != Adjoint);
    return with_threads(Adjoint ? 1 : 0, [&](bool parallel) {
      if (sliced_)
        return sliced_product(direct_gathers ? sell_direct_ : sell_transposed_, in.data(),
                              out.data(), a, Adjoint, parallel);
      if constexpr (direct_gathers) {
        return gather_product(direct_, in, out, a, want_norm, Adjoint, parallel);
      } else {
        if (transposed_.ptr)
          return gather_product(transposed_, in, out, a, want_norm, Adjoint, parallel);
        return scatter_product(in, out, a, want_norm, Adjoint, parallel);
      }
    });
  }

  /// f(parallel) with parallel = threads_ > 1, or as choice_[kind] decides when adaptive_;
  /// kind 0: products with A, 1: with Aᴴ, 2: the fused steps.
  template <class F>
  Real with_threads(int kind, F&& f) const {
    if (!adaptive_) return f(threads_ > 1);
    return choice_[kind].run(f);
  }

  /// Rows [lo, hi) of a gathering product: out_k ← Σ_p op(val_p)·in[idx_p] − a·out_k, returning
  /// Σ |out_k|² when asked. A static function of plain values, kept apart from the OpenMP region:
  /// variables captured by an outlined parallel region lose their registers (their address
  /// escapes) and the serial loop ran 23% slower on illc1850.
  /// Long rows use two accumulators to halve the chain of dependent additions (measured on
  /// illc1850ᵀ, 12 nonzeros per row: 4.9 → 3.9 µs; slower on its 4.7-per-row CSR).
  template <bool Compressed, bool Overwrite, bool Two, bool Conj>
  static Real gather_rows(const Storage& st, const Scalar* __restrict x, Scalar* __restrict y,
                          Scalar a, bool want_norm, Index lo, Index hi) {
    const StorageIndex* __restrict ptr = st.ptr;
    const StorageIndex* __restrict nnz = st.nnz;
    const StorageIndex* __restrict idx = st.idx;
    const Scalar* __restrict val = st.val;
    Real local = 0;
    for (Index k = lo; k < hi; ++k) {
      Scalar s(0);
      const Index e = Compressed ? Index(ptr[k + 1]) : Index(ptr[k] + nnz[k]);
      Index p = ptr[k];
      if constexpr (Two) {
        Scalar s1(0);
        for (; p + 1 < e; p += 2) {
          s += maybe_conj(val[p], Conj) * x[idx[p]];
          s1 += maybe_conj(val[p + 1], Conj) * x[idx[p + 1]];
        }
        s += s1;
      }
      for (; p < e; ++p) s += maybe_conj(val[p], Conj) * x[idx[p]];
      const Scalar yk = Overwrite ? s : s - a * y[k];
      y[k] = yk;
      if (want_norm) local += Eigen::numext::abs2(yk);
    }
    return local;
  }

  /// gather_rows with the storage kind, the update and the conjugation hoisted out of the row
  /// loop (rows are often short: illc1850 has 4.7 nonzeros per row, so per-row branches cost
  /// ~20%).
  template <bool Conj>
  static Real gather_range(const Storage& st, const Scalar* x, Scalar* y, Scalar a, bool want_norm,
                           Index lo, Index hi) {
    const bool overwrite = a == Scalar(0);
    if (!st.nnz) {
      if (st.long_rows)
        return overwrite ? gather_rows<true, true, true, Conj>(st, x, y, a, want_norm, lo, hi)
                         : gather_rows<true, false, true, Conj>(st, x, y, a, want_norm, lo, hi);
      return overwrite ? gather_rows<true, true, false, Conj>(st, x, y, a, want_norm, lo, hi)
                       : gather_rows<true, false, false, Conj>(st, x, y, a, want_norm, lo, hi);
    }
    return overwrite ? gather_rows<false, true, false, Conj>(st, x, y, a, want_norm, lo, hi)
                     : gather_rows<false, false, false, Conj>(st, x, y, a, want_norm, lo, hi);
  }

  Real gather_product(const Storage& st, const Eigen::Ref<const Vector<Scalar>>& in,
                      Eigen::Ref<Vector<Scalar>> out, Scalar a, bool want_norm, bool conj,
                      bool parallel) const {
    const Scalar* x = in.data();
    Scalar* y = out.data();
    const auto range = conj ? &gather_range<true> : &gather_range<false>;
    if (!parallel) return range(st, x, y, a, want_norm, 0, st.outer);
    return gather_parallel(range, st, x, y, a, want_norm);
  }

  template <class Range>
  Real gather_parallel(Range range, const Storage& st, const Scalar* x, Scalar* y, Scalar a,
                       bool want_norm) const {
    Real norm2 = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads_) reduction(+ : norm2)
    {
      // Every partition, also when OpenMP gives a smaller team than asked (nested regions,
      // OMP_THREAD_LIMIT, OMP_DYNAMIC): a thread then takes several.
      const int t = omp_get_thread_num(), team = omp_get_num_threads();
      for (int part = t; part < threads_; part += team)
        norm2 += range(st, x, y, a, want_norm, st.partition[part], st.partition[part + 1]);
    }
#endif
    return norm2;
  }

  /// A product over a sliced layout: out ← op(A)·in − a·out, returning ‖out‖². The kernels are
  /// static functions of plain arguments, as gather_rows.
  Real sliced_product(const Sliced& m, const Scalar* x, Scalar* y, Scalar a, bool conj,
                      bool parallel) const {
    const auto kernel = detail::sell_kernel<Scalar, StorageIndex>(m.permuted, a == Scalar(0),
                                                                  conj, m.avx2);
    if (!parallel) return kernel(m, x, y, a, 0, m.slices);
    return sliced_parallel(kernel, m, x, y, a);
  }

  Real sliced_parallel(detail::SellKernel<Scalar, StorageIndex> kernel, const Sliced& m,
                       const Scalar* x, Scalar* y, Scalar a) const {
    Real norm2 = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads_) reduction(+ : norm2)
    {
      const int t = omp_get_thread_num(), team = omp_get_num_threads();  // as gather_parallel
      for (int part = t; part < threads_; part += team)
        norm2 += kernel(m, x, y, a, m.partition[part], m.partition[part + 1]);
    }
#endif
    return norm2;
  }

  /// Outer slices [lo, hi) of a scattering product: dst[idx_p] += op(val_p)·u_k. Static, for the
  /// same reason as gather_rows.
  template <bool Compressed, bool Conj>
  static void scatter_rows(const Storage& st, const Scalar* __restrict u, Scalar* __restrict dst,
                           Index lo, Index hi) {
    const StorageIndex* __restrict ptr = st.ptr;
    const StorageIndex* __restrict nnz = st.nnz;
    const StorageIndex* __restrict idx = st.idx;
    const Scalar* __restrict val = st.val;
    for (Index k = lo; k < hi; ++k) {
      const Scalar uk = u[k];
      const Index e = Compressed ? Index(ptr[k + 1]) : Index(ptr[k] + nnz[k]);
      for (Index p = ptr[k]; p < e; ++p) dst[idx[p]] += maybe_conj(val[p], Conj) * uk;
    }
  }

  static void scatter_range(const Storage& st, const Scalar* u, Scalar* dst, bool conj, Index lo,
                            Index hi) {
    if (st.nnz)
      conj ? scatter_rows<false, true>(st, u, dst, lo, hi)
           : scatter_rows<false, false>(st, u, dst, lo, hi);
    else
      conj ? scatter_rows<true, true>(st, u, dst, lo, hi)
           : scatter_rows<true, false>(st, u, dst, lo, hi);
  }

  Real scatter_product(const Eigen::Ref<const Vector<Scalar>>& in, Eigen::Ref<Vector<Scalar>> out,
                       Scalar a, bool want_norm, bool conj, bool parallel) const {
    if (parallel) return scatter_parallel(in.data(), out.data(), a, want_norm, conj);
    if (a == Scalar(0))
      out.setZero();
    else
      out *= -a;
    scatter_range(direct_, in.data(), out.data(), conj, 0, direct_.outer);
    return want_norm ? out.squaredNorm() : Real(0);
  }

  Real scatter_parallel(const Scalar* u, Scalar* v, Scalar a, bool want_norm, bool conj) const {
    const Storage& st = direct_;
    return scatter_threads(v, a, want_norm, [&](Scalar* target, Index lo, Index hi) {
      scatter_range(st, u, target, conj, lo, hi);
      return Real(0);
    });
  }

  /// The parallel frame of the scattering products: partition 0 scatters into dst (first scaled
  /// by −a, or zeroed when a = 0), partition p > 0 into its buffer p − 1 (zeroed), each over its
  /// own outer range by body(target, lo, hi), which returns a partial sum of squares (or 0); the
  /// buffers are then summed into dst, adding ‖dst‖² to the result when asked. A team smaller
  /// than asked (nested regions, OMP_THREAD_LIMIT, OMP_DYNAMIC) takes several partitions each.
  template <class Body>
  Real scatter_threads(Scalar* dst, Scalar a, bool want_norm, Body body) const {
    const Storage& st = direct_;
    const Index n = inner_;
    const int threads = threads_;
    Real norm2 = 0;
#ifdef _OPENMP
    Scalar* buf = buffers_.data();
#pragma omp parallel num_threads(threads) reduction(+ : norm2)
    {
      const int t = omp_get_thread_num(), team = omp_get_num_threads();
      for (int part = t; part < threads; part += team) {
        Scalar* mine = part == 0 ? dst : buf + (part - 1) * n;
        if (part == 0 && a != Scalar(0))
          for (Index j = 0; j < n; ++j) dst[j] *= -a;
        else
          std::fill(mine, mine + n, Scalar(0));
        norm2 += body(mine, st.partition[part], st.partition[part + 1]);
      }
#pragma omp barrier
#pragma omp for schedule(static)
      for (Index j = 0; j < n; ++j) {
        Scalar s = dst[j];
        for (int b = 1; b < threads; ++b) s += buf[(b - 1) * n + j];
        dst[j] = s;
        if (want_norm) norm2 += Eigen::numext::abs2(s);
      }
    }
#endif
    return norm2;
  }

  /// Outer slices [lo, hi) of a fused product: out_k ← op(a_k)·in − a·out_k along the stored
  /// slice k, then dst[idx_p] += op'(val_p)·out_k, where op conjugates for the adjoint form
  /// (CSC: v_k ← a_kᴴu − a·v_k, y += a_k v_k) and op' for the direct one (CSR: u_k ← a_k·v −
  /// a·u_k, w += a_kᴴ u_k). Returns Σ |out_k|². Static, as gather_rows; with Overwrite (a = 0)
  /// out's old values are not read.
  template <bool Compressed, bool Overwrite, bool Adjoint>
  static Real fused_rows(const Storage& st, const Scalar* __restrict in, Scalar* __restrict out,
                         Scalar* __restrict dst, Scalar a, Index lo, Index hi) {
    const StorageIndex* __restrict ptr = st.ptr;
    const StorageIndex* __restrict nnz = st.nnz;
    const StorageIndex* __restrict idx = st.idx;
    const Scalar* __restrict val = st.val;
    Real local = 0;
    for (Index k = lo; k < hi; ++k) {
      const Index b = ptr[k], e = Compressed ? Index(ptr[k + 1]) : Index(ptr[k] + nnz[k]);
      Scalar s(0);
      for (Index p = b; p < e; ++p) s += maybe_conj(val[p], Adjoint) * in[idx[p]];
      if constexpr (!Overwrite) s -= a * out[k];
      out[k] = s;
      local += Eigen::numext::abs2(s);
      for (Index p = b; p < e; ++p) dst[idx[p]] += maybe_conj(val[p], !Adjoint) * s;
    }
    return local;
  }

  template <bool Adjoint>
  static Real fused_range(const Storage& st, const Scalar* in, Scalar* out, Scalar* dst, Scalar a,
                          Index lo, Index hi) {
    if (a == Scalar(0))
      return st.nnz ? fused_rows<false, true, Adjoint>(st, in, out, dst, a, lo, hi)
                    : fused_rows<true, true, Adjoint>(st, in, out, dst, a, lo, hi);
    return st.nnz ? fused_rows<false, false, Adjoint>(st, in, out, dst, a, lo, hi)
                  : fused_rows<true, false, Adjoint>(st, in, out, dst, a, lo, hi);
  }

  /// A fused product over the direct layout; with several threads, in scatter_threads' frame.
  template <bool Adjoint>
  Real fused_product(const Scalar* in, Scalar* out, Scalar* dst, Scalar a) const {
    const Storage& st = direct_;
    return with_threads(2, [&](bool parallel) {
      if (!parallel) {
        std::fill(dst, dst + inner_, Scalar(0));
        return fused_range<Adjoint>(st, in, out, dst, a, 0, st.outer);
      }
      return scatter_threads(dst, Scalar(0), false, [&](Scalar* target, Index lo, Index hi) {
        return fused_range<Adjoint>(st, in, out, target, a, lo, hi);
      });
    });
  }

  const Matrix* a_;
  Index rows_, cols_, inner_;
  int threads_ = 1;
  bool adaptive_ = false;                                 // see SparseOptions::threads
  mutable std::array<detail::ThreadChoice, 3> choice_{};  // see with_threads
  bool transposed_index_ = false, sliced_ = false;
  Storage direct_, transposed_;
  std::vector<StorageIndex> t_ptr_, t_idx_;  // the compressed transposed index (not sliced)
  std::vector<Scalar> t_val_;
  Sliced sell_direct_, sell_transposed_;  // sliced: the products gathering along rows, columns
  mutable std::vector<Scalar> buffers_;  // scatter buffers of threads 1.. (no transposed index)
};

}  // namespace difflsq
