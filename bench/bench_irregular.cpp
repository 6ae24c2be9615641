// bench_irregular — what the irregular accesses of a sparse LSQR iteration cost on their own, one
// thread, beside a STREAM triad measured in the same run.
//
//     bench_irregular [rounds] [m n nnz]      (default: 30 rounds, 200000 100000 2000000)
//
// An LSQR iteration on a CSR matrix with uniformly random column indices makes, per nonzero, one
// random load of v[j] (A·v) and one random read-modify-write of w[j] (Aᵀ·u), into n-vectors of
// 8n bytes. This program times nnz such loads and nnz such updates at random positions in an
// n-vector (800 KB by default: in L2 on a 1 MB-L2 core, not in L1), as a control the same into
// a 1024-vector (8 KB, in L1), and both in one loop (v and w together: 1.6 MB, partly beyond
// such an L2). Each streams its nnz column indices (4 bytes each, a third of the matrix's 12
// per nonzero) and nothing else, so the last time bounds the iteration's from below: no kernel
// that makes these accesses is faster. It is printed beside the time that 80% of the triad
// allows for the minimum bytes of an iteration, B (two passes over A) and B₁ (one fused pass),
// as bench/README.md defines them. Each round runs every variant once (interleaved); the best
// round is reported.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "stream_triad.hpp"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Four independent sums, so that the loads, not an add chain, set the pace.
__attribute__((noinline)) double random_loads(const std::vector<int>& idx, const double* x) {
  const int* __restrict j = idx.data();
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const std::size_t count = idx.size() / 4 * 4;
  for (std::size_t p = 0; p < count; p += 4) {
    s0 += x[j[p]];
    s1 += x[j[p + 1]];
    s2 += x[j[p + 2]];
    s3 += x[j[p + 3]];
  }
  return s0 + s1 + s2 + s3;
}

__attribute__((noinline)) void random_updates(const std::vector<int>& idx, double* w) {
  for (const int j : idx) w[j] += 1.0;
}

// Both in one loop, at the same positions of two vectors, as the fused step A·v, Aᵀ·ũ does them
// (four sums again, so that the loads are not serialized by one chain of additions).
__attribute__((noinline)) double random_both(const std::vector<int>& idx, const double* x,
                                             double* w) {
  const int* __restrict j = idx.data();
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const std::size_t count = idx.size() / 4 * 4;
  for (std::size_t p = 0; p < count; p += 4) {
    s0 += x[j[p]];
    w[j[p]] += 1.0;
    s1 += x[j[p + 1]];
    w[j[p + 1]] += 1.0;
    s2 += x[j[p + 2]];
    w[j[p + 2]] += 1.0;
    s3 += x[j[p + 3]];
    w[j[p + 3]] += 1.0;
  }
  return s0 + s1 + s2 + s3;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 30;
  const long m = argc > 4 ? std::atol(argv[2]) : 200000;
  const long n = argc > 4 ? std::atol(argv[3]) : 100000;
  const long nnz = argc > 4 ? std::atol(argv[4]) : 2000000;
  if (rounds < 1 || m < 1 || n < 1024 || nnz < 4) {
    std::fprintf(stderr, "usage: bench_irregular [rounds] [m n nnz]  (n >= 1024)\n");
    return 2;
  }
  std::mt19937_64 gen(0);
  std::uniform_int_distribution<int> column(0, static_cast<int>(n) - 1);
  std::vector<int> wide(static_cast<std::size_t>(nnz)), narrow(wide.size());
  for (std::size_t p = 0; p < wide.size(); ++p) {
    wide[p] = column(gen);
    narrow[p] = wide[p] & 1023;
  }
  std::vector<double> x(static_cast<std::size_t>(n), 1.0), w(x.size(), 0.0);

  enum { kLoadsWide, kLoadsNarrow, kUpdatesWide, kUpdatesNarrow, kBothWide, kVariants };
  std::vector<double> best(kVariants, 1e30);
  double sink = 0;
  for (int r = 0; r < rounds; ++r)
    for (int k = 0; k < kVariants; ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      switch (k) {
        case kLoadsWide:
          sink += random_loads(wide, x.data());
          break;
        case kLoadsNarrow:
          sink += random_loads(narrow, x.data());
          break;
        case kUpdatesWide:
          random_updates(wide, w.data());
          break;
        case kUpdatesNarrow:
          random_updates(narrow, w.data());
          break;
        default:
          sink += random_both(wide, x.data(), w.data());
          break;
      }
      best[k] = std::min(best[k], seconds_since(t0));
    }
  const auto triad = difflsq_bench::stream_triad(1);
  const double gbs = triad.bytes_per_second / 1e9;
  const double bytes_b = 24.0 * nnz + 32.0 * m + 64.0 * n + 8;               // two passes over A
  const double bytes_b1 = 12.0 * nnz + 4.0 * (m + 1) + 16.0 * m + 80.0 * n;  // one fused pass

  std::printf("m %ld, n %ld, nnz %ld, one thread, best of %d rounds (checksum %g)\n", m, n, nnz,
              rounds, sink + w[0]);
  std::printf("%ld random loads     : %8.0f us into %ld KB, %8.0f us into 8 KB\n", nnz,
              best[kLoadsWide] * 1e6, n * 8 / 1024, best[kLoadsNarrow] * 1e6);
  std::printf("%ld random updates   : %8.0f us into %ld KB, %8.0f us into 8 KB\n", nnz,
              best[kUpdatesWide] * 1e6, n * 8 / 1024, best[kUpdatesNarrow] * 1e6);
  std::printf(
      "loads + updates      : %8.0f us timed apart, %8.0f us in one loop (the "
      "irregular accesses of one iteration)\n",
      (best[kLoadsWide] + best[kUpdatesWide]) * 1e6, best[kBothWide] * 1e6);
  std::printf(
      "triad %.1f GB/s; 80%% of it allows %.0f us for B = %.1f MB, %.0f us for B1 = "
      "%.1f MB\n",
      gbs, bytes_b / (0.8 * triad.bytes_per_second) * 1e6, bytes_b / 1e6,
      bytes_b1 / (0.8 * triad.bytes_per_second) * 1e6, bytes_b1 / 1e6);
}
