// difflsq — sliced ELLPACK storage of one direction of a sparse matrix and its gathering
// product y ← op(A)·x − a·y (returning ‖y‖²), used by CompressedOperator (sparse.hpp) when it
// has a transposed index.
//
// Layout: the output rows are grouped in slices of kSliceRows = 4 consecutive slots; a slice is
// stored padded to its longest row, slot-major (entry j of the 4 rows, then entry j + 1, …), so
// that one step of the product loads 4 values and 4 indices contiguously and accumulates 4 rows
// at once. This is SELL-C-σ [KHWFB14] with C = 4, in one of two forms chosen per matrix:
//   - identity order, every slice padded to the longest row (ELLPACK in 4-row slices), when that
//     costs at most kMaxEllFill stored entries per nonzero: the 4 results are one vector store;
//   - else rows sorted by length over the whole matrix (σ = all rows; with several threads,
//     over each thread's rows), `perm` giving the row of each slot: padding is then at most
//     4 × the longest row (per thread), and the results are scattered.
// Consecutive slices of equal width form a run; runs of width ≤ 8 use a fully unrolled body.
// Padding entries have value 0 and a valid column (the lane's last column, else the slice's
// first, else 0), so no product reads out of bounds; like Eigen, a product then computes 0·x_j
// for such columns, so an Inf/NaN in x can turn a row's Inf or an empty row's 0 into NaN.
//
// Why these choices (AMD EPYC Zen 4, one thread). A standalone comparison of some 25 layouts
// and kernels on illc1850 (1850 × 712, 4.7 nonzeros a row; columns 1 to 417) chose C = 4, the
// padded identity order for A (fill 1.057: 0.79× the CSR product's time, against 0.91× sorted,
// whose scattered stores cost more than the padding) and σ = all rows for Aᵀ (padded fill 34,
// sorted 1.068: 0.84×); AVX-512, C = 8 and vgatherdpd variants were slower. In CompressedOperator
// (bench/bench_layouts.cpp, docs/benchmarks.md) an LSQR iteration on illc1850 takes
// 0.68× the time of the compressed layouts with the AVX2 kernel and 0.85× with the portable one
// (callgrind: 87k and 118k instructions an iteration, against 177k).
//
// Kernels: a portable one for every scalar and index type, and for double with 32-bit indices
// an AVX2+FMA one (x86-64, GCC or Clang), compiled with a target attribute and chosen at run
// time, so that the header builds for any target.
//
// [KHWFB14] M. Kreutzer, G. Hager, G. Wellein, H. Fehske, A. R. Bishop. A unified sparse matrix
//           data format for efficient general sparse matrix-vector multiplication on modern
//           processors with wide SIMD units. SIAM J. Sci. Comput. 36(5), 2014.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <complex>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../options.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DIFFLSQ_SELL_AVX2 1
#define DIFFLSQ_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace difflsq::detail {

inline constexpr int kSliceRows = 4;
/// Identity order while padding to the longest row stores at most this many entries per
/// nonzero (illc1850: 1.057, 0.79× vs 0.91× for the sorted layout; illc1033: 1.095).
inline constexpr double kMaxEllFill = 1.15;
/// The AVX2 kernel runs while the gathered vector has at most this many bytes. Beyond about the
/// core's L2 cache (1 MB here) the portable kernel was faster, though both read the same
/// entries: random m × m/2 matrices with 5 nonzeros a row, one thread, LSQR time per iteration
/// against the compressed layouts, portable / AVX2 kernel in both directions: m = 60k (gathered
/// vectors of 240 and 480 KB) 0.49 / 0.49, 90k 0.53 / 0.53, 120k 0.71 / 0.84, 200k 0.79 / 0.96.
inline constexpr Index kAvx2MaxGatherBytes = Index(512) << 10;
/// Most threads a product is split between (CompressedOperator's limit).
inline constexpr int kMaxSparseThreads = 64;

/// True when this CPU runs the AVX2+FMA kernel.
inline bool cpu_has_avx2_fma() {
#ifdef DIFFLSQ_SELL_AVX2
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

/// Scalar and index types that have the AVX2 kernel.
template <class Scalar, class StorageIndex>
inline constexpr bool kHasAvx2Kernel =
#ifdef DIFFLSQ_SELL_AVX2
    std::is_same_v<Scalar, double> && std::is_same_v<StorageIndex, std::int32_t>;
#else
    false;
#endif

template <class Scalar, class StorageIndex>
struct SlicedEll {
  /// Slices [begin, end) all `width` entries a row, their entries from `offset` on.
  struct Run {
    Index begin, end, width, offset;
  };
  Index rows = 0;    // outputs
  Index slices = 0;  // ⌈rows / 4⌉; only the last may be partial
  bool permuted = false;
  bool avx2 = false;  // products run the AVX2 kernel (set by the owner)
  std::vector<StorageIndex> idx;   // entry j of slot l of slice s: offset(s) + 4j + l
  std::vector<Scalar> val;
  std::vector<StorageIndex> perm;  // row of slot r (slice r / 4, lane r % 4); empty unpermuted
  std::vector<Run> runs;
  std::array<Index, kMaxSparseThreads + 1> partition{};  // thread t: slices [p[t], p[t + 1])

  Index stored() const { return Index(val.size()); }
};

/// The sliced layout of a compressed matrix (`outer` rows; row k's entries at [ptr[k], end)
/// with end = ptr[k] + nnz[k] when nnz is given, else ptr[k + 1]), split for `threads`.
template <class Scalar, class StorageIndex>
SlicedEll<Scalar, StorageIndex> make_sliced_ell(Index outer, const StorageIndex* ptr,
                                                const StorageIndex* nnz, const StorageIndex* idx,
                                                const Scalar* val, int threads) {
  constexpr int C = kSliceRows;
  SlicedEll<Scalar, StorageIndex> m;
  m.rows = outer;
  m.slices = (outer + C - 1) / C;
  std::vector<Index> len(outer);
  Index total = 0, longest = 0;
  for (Index k = 0; k < outer; ++k) {
    len[k] = nnz ? Index(nnz[k]) : Index(ptr[k + 1] - ptr[k]);
    total += len[k];
    longest = std::max(longest, len[k]);
  }
  m.permuted = double(m.slices * C * longest) > kMaxEllFill * double(total);
  // Thread t's slices [partition[t], partition[t + 1]): about equal stored entries, as
  // CompressedOperator splits rows by nonzeros. Padded, every slice stores as many; sorted,
  // a slice's nonzeros stand for its entries (the fill is ≈ 1 once sorted). Without entries,
  // equal slices.
  threads = std::clamp(threads, 1, kMaxSparseThreads);
  m.partition.fill(m.slices);
  m.partition[0] = 0;
  const bool by_slices = !m.permuted || total == 0;
  for (Index t = 1, s = 0, before = 0; t < threads; ++t) {  // before: nonzeros of slices < s
    const Index target = (by_slices ? m.slices : total) * t / threads;
    for (; s < m.slices && (by_slices ? s : before) < target; ++s)
      for (Index r = C * s; r < std::min(outer, C * s + C); ++r) before += len[r];
    m.partition[t] = s;
  }
  // Sorted by length within each thread's rows, so that a thread writes only its own range of
  // y. Sorted over all rows, two threads wrote to the same cache lines: on a random
  // 20000 × 10000 matrix with 100k nonzeros, LSQR took 1.15–1.24× the compressed layouts' time
  // with 2 threads (0.54× with one); sorted per thread, 0.93×.
  std::vector<StorageIndex> order(outer);
  std::iota(order.begin(), order.end(), StorageIndex(0));
  if (m.permuted)
    for (int t = 0; t < threads; ++t)
      std::stable_sort(order.begin() + std::min(outer, C * m.partition[t]),
                       order.begin() + std::min(outer, C * m.partition[t + 1]),
                       [&](StorageIndex r1, StorageIndex r2) { return len[r1] > len[r2]; });
  // Runs of equal width (sorted: the width of a slice is its first row's length; a thread's
  // rows are whole slices).
  Index stored = 0;
  for (Index s = 0; s < m.slices; ++s) {
    const Index w = m.permuted ? len[order[s * C]] : longest;
    if (!m.runs.empty() && m.runs.back().width == w)
      ++m.runs.back().end;
    else
      m.runs.push_back({s, s + 1, w, stored});
    stored += C * w;
  }
  m.idx.assign(stored, StorageIndex(0));
  m.val.assign(stored, Scalar(0));
  for (const auto& run : m.runs)
    for (Index s = run.begin; s < run.end; ++s) {
      const Index base = run.offset + (s - run.begin) * C * run.width;
      StorageIndex first = 0;  // the slice's first column, for lanes without entries
      for (int l = C - 1; l >= 0; --l)
        if (s * C + l < outer && len[order[s * C + l]] > 0) first = idx[ptr[order[s * C + l]]];
      for (int l = 0; l < C; ++l) {
        const Index r = s * C + l;
        const Index k = r < outer ? Index(order[r]) : -1;
        const Index n = k >= 0 ? len[k] : 0;
        const StorageIndex pad = n > 0 ? idx[ptr[k] + n - 1] : first;
        for (Index j = 0; j < run.width; ++j) {
          const Index q = base + C * j + l;
          if (j < n) {
            m.idx[q] = idx[ptr[k] + j];
            m.val[q] = val[ptr[k] + j];
          } else {
            m.idx[q] = pad;
          }
        }
      }
    }
  if (m.permuted) m.perm = std::move(order);
  return m;
}

template <bool Conj, class Scalar>
inline Scalar conj_if(const Scalar& s) {
  if constexpr (Conj && Eigen::NumTraits<Scalar>::IsComplex)
    return std::conj(s);
  else
    return s;
}

/// Full slices [s0, s1) of one run, width W (or `width` when W = 0), entries from idx/val:
/// y_r ← Σ_j op(val)·x[idx] − a·y_r for the 4 rows r of each slice; returns Σ |y_r|².
template <int W, bool Permuted, bool Overwrite, bool Conj, class Scalar, class StorageIndex>
RealOf<Scalar> sell_slices(const StorageIndex* __restrict idx, const Scalar* __restrict val,
                           const StorageIndex* __restrict perm, Index s0, Index s1, Index width,
                           const Scalar* __restrict x, Scalar* __restrict y, Scalar a) {
  constexpr int C = kSliceRows;
  const Index w = W > 0 ? W : width;
  RealOf<Scalar> norm2 = 0;
  for (Index s = s0; s < s1; ++s, idx += C * w, val += C * w) {
    Scalar acc[C] = {};
    for (Index j = 0; j < w; ++j)
      for (int l = 0; l < C; ++l) acc[l] += conj_if<Conj>(val[C * j + l]) * x[idx[C * j + l]];
    for (int l = 0; l < C; ++l) {
      const Index r = Permuted ? Index(perm[C * s + l]) : C * s + l;
      const Scalar yr = Overwrite ? acc[l] : Scalar(acc[l] - a * y[r]);
      y[r] = yr;
      norm2 += Eigen::numext::abs2(yr);
    }
  }
  return norm2;
}

/// The last slice when it is partial (rows not a multiple of 4): `lanes` rows.
template <bool Conj, class Scalar, class StorageIndex>
RealOf<Scalar> sell_tail(const SlicedEll<Scalar, StorageIndex>& m, const Scalar* x, Scalar* y,
                         Scalar a) {
  constexpr int C = kSliceRows;
  const Index s = m.rows / C, lanes = m.rows - s * C;
  const auto& run = m.runs.back();
  const Index base = run.offset + (s - run.begin) * C * run.width;
  RealOf<Scalar> norm2 = 0;
  for (Index l = 0; l < lanes; ++l) {
    Scalar acc(0);
    for (Index j = 0; j < run.width; ++j)
      acc += conj_if<Conj>(m.val[base + C * j + l]) * x[m.idx[base + C * j + l]];
    const Index r = m.permuted ? Index(m.perm[C * s + l]) : C * s + l;
    const Scalar yr = a == Scalar(0) ? acc : Scalar(acc - a * y[r]);
    y[r] = yr;
    norm2 += Eigen::numext::abs2(yr);
  }
  return norm2;
}

// Calls BODY(W) with a compile-time W for widths 1..8 (fully unrolled), W = 0 (the run's width
// at run time) otherwise. Width-specialized bodies: no loop exit to mispredict on short rows.
#define DIFFLSQ_SELL_WIDTHS(width, BODY) \
  switch (width) {                       \
    case 1: BODY(1); break;              \
    case 2: BODY(2); break;              \
    case 3: BODY(3); break;              \
    case 4: BODY(4); break;              \
    case 5: BODY(5); break;              \
    case 6: BODY(6); break;              \
    case 7: BODY(7); break;              \
    case 8: BODY(8); break;              \
    default: BODY(0);                    \
  }

/// The slices [b, e) of `run` inside [s0, s1) and before the partial last slice `full`, and
/// the offset of slice b's entries (b ≥ e: none).
template <class Run>
inline std::array<Index, 3> clip(const Run& run, Index s0, Index s1, Index full) {
  const Index b = std::max(run.begin, s0), e = std::min({run.end, s1, full});
  return {b, e, run.offset + (b - run.begin) * kSliceRows * run.width};
}

/// Slices [s0, s1) of the portable kernel: returns Σ |y_r|² over their rows.
template <bool Permuted, bool Overwrite, bool Conj, class Scalar, class StorageIndex>
RealOf<Scalar> sell_range(const SlicedEll<Scalar, StorageIndex>& m, const Scalar* x, Scalar* y,
                          Scalar a, Index s0, Index s1) {
  const StorageIndex* idx = m.idx.data();
  const Scalar* val = m.val.data();
  const StorageIndex* perm = m.perm.data();
  const Index full = m.rows / kSliceRows;
  RealOf<Scalar> norm2 = 0;
  for (const auto& run : m.runs) {
    if (run.begin >= s1) break;
    const auto [b, e, off] = clip(run, s0, s1, full);
    if (b >= e) continue;
#define DIFFLSQ_BODY(W)                                                                      \
  norm2 += sell_slices<W, Permuted, Overwrite, Conj>(idx + off, val + off, perm, b, e, run.width, \
                                                      x, y, a)
    DIFFLSQ_SELL_WIDTHS(run.width, DIFFLSQ_BODY)
#undef DIFFLSQ_BODY
  }
  if (s0 <= full && full < s1) norm2 += sell_tail<Conj>(m, x, y, a);
  return norm2;
}

#ifdef DIFFLSQ_SELL_AVX2
/// x[q[0]], …, x[q[3]] as one vector, by 4 broadcasts and 3 blends (measured faster than
/// vgatherdpd on Zen 4, and as fast as movsd/movhpd/vinsertf128).
DIFFLSQ_TARGET_AVX2 inline __m256d avx2_load4(const double* x, const std::int32_t* q) {
  const __m256d b0 = _mm256_broadcast_sd(x + q[0]), b1 = _mm256_broadcast_sd(x + q[1]);
  const __m256d b2 = _mm256_broadcast_sd(x + q[2]), b3 = _mm256_broadcast_sd(x + q[3]);
  return _mm256_blend_pd(_mm256_blend_pd(b0, b1, 0b0010), _mm256_blend_pd(b2, b3, 0b1000),
                         0b1100);
}

/// sell_slices for double and int32 with AVX2+FMA: the 4 rows of a slice in one vector, two
/// accumulators (even and odd entries); adds Σ y_r² into the lanes of `norm2`.
template <int W, bool Permuted, bool Overwrite>
DIFFLSQ_TARGET_AVX2 inline __m256d avx2_slices(const std::int32_t* __restrict idx,
                                               const double* __restrict val,
                                               const std::int32_t* __restrict perm, Index s0,
                                               Index s1, Index width, const double* __restrict x,
                                               double* __restrict y, __m256d a, __m256d norm2) {
  const Index w = W > 0 ? W : width;
  for (Index s = s0; s < s1; ++s, idx += 4 * w, val += 4 * w) {
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    Index j = 0;
    for (; j + 1 < w; j += 2) {
      acc0 = _mm256_fmadd_pd(_mm256_loadu_pd(val + 4 * j), avx2_load4(x, idx + 4 * j), acc0);
      acc1 = _mm256_fmadd_pd(_mm256_loadu_pd(val + 4 * j + 4), avx2_load4(x, idx + 4 * j + 4),
                             acc1);
    }
    if (j < w)
      acc0 = _mm256_fmadd_pd(_mm256_loadu_pd(val + 4 * j), avx2_load4(x, idx + 4 * j), acc0);
    __m256d acc = _mm256_add_pd(acc0, acc1);
    if constexpr (Permuted) {
      const std::int32_t* q = perm + 4 * s;
      if (!Overwrite) acc = _mm256_fnmadd_pd(a, avx2_load4(y, q), acc);
      const __m128d lo = _mm256_castpd256_pd128(acc), hi = _mm256_extractf128_pd(acc, 1);
      _mm_storel_pd(y + q[0], lo);
      _mm_storeh_pd(y + q[1], lo);
      _mm_storel_pd(y + q[2], hi);
      _mm_storeh_pd(y + q[3], hi);
    } else {
      if (!Overwrite) acc = _mm256_fnmadd_pd(a, _mm256_loadu_pd(y + 4 * s), acc);
      _mm256_storeu_pd(y + 4 * s, acc);
    }
    norm2 = _mm256_fmadd_pd(acc, acc, norm2);
  }
  return norm2;
}

/// sell_range with the AVX2 kernel.
template <bool Permuted, bool Overwrite>
DIFFLSQ_TARGET_AVX2 double avx2_range(const SlicedEll<double, std::int32_t>& m, const double* x,
                                      double* y, double a, Index s0, Index s1) {
  const std::int32_t* idx = m.idx.data();
  const double* val = m.val.data();
  const std::int32_t* perm = m.perm.data();
  const Index full = m.rows / kSliceRows;
  const __m256d va = _mm256_set1_pd(a);
  __m256d n2 = _mm256_setzero_pd();
  for (const auto& run : m.runs) {
    if (run.begin >= s1) break;
    const auto [b, e, off] = clip(run, s0, s1, full);
    if (b >= e) continue;
#define DIFFLSQ_BODY(W) \
  n2 = avx2_slices<W, Permuted, Overwrite>(idx + off, val + off, perm, b, e, run.width, x, y, va, n2)
    DIFFLSQ_SELL_WIDTHS(run.width, DIFFLSQ_BODY)
#undef DIFFLSQ_BODY
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, n2);
  double norm2 = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  if (s0 <= full && full < s1) norm2 += sell_tail<false>(m, x, y, a);
  return norm2;
}
#endif

#undef DIFFLSQ_SELL_WIDTHS

/// A product over slices [s0, s1); returns Σ |y_r|² over their rows.
template <class Scalar, class StorageIndex>
using SellKernel = RealOf<Scalar> (*)(const SlicedEll<Scalar, StorageIndex>&, const Scalar*,
                                      Scalar*, Scalar, Index, Index);

/// The kernel for a layout and an update (overwrite: a = 0), conjugating the values when asked
/// (adjoint products of complex matrices); the AVX2 one when `avx2` and the types have it.
template <class Scalar, class StorageIndex>
SellKernel<Scalar, StorageIndex> sell_kernel(bool permuted, bool overwrite, bool conj,
                                             bool avx2) {
  constexpr bool complex = Eigen::NumTraits<Scalar>::IsComplex;
  if constexpr (kHasAvx2Kernel<Scalar, StorageIndex>) {
    if (avx2)
      return permuted ? (overwrite ? &avx2_range<true, true> : &avx2_range<true, false>)
                      : (overwrite ? &avx2_range<false, true> : &avx2_range<false, false>);
  }
  (void)avx2;
  auto pick = [&]<bool Conj>() -> SellKernel<Scalar, StorageIndex> {
    if (permuted)
      return overwrite ? &sell_range<true, true, Conj, Scalar, StorageIndex>
                       : &sell_range<true, false, Conj, Scalar, StorageIndex>;
    return overwrite ? &sell_range<false, true, Conj, Scalar, StorageIndex>
                     : &sell_range<false, false, Conj, Scalar, StorageIndex>;
  };
  if constexpr (complex)
    if (conj) return pick.template operator()<true>();
  return pick.template operator()<false>();
}

}  // namespace difflsq::detail
