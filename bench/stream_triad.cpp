// See stream_triad.hpp.
#include "stream_triad.hpp"

#include <algorithm>
#include <chrono>
#include <limits>
#include <memory>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace difflsq_bench {

bool triad_has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

TriadResult stream_triad(int threads, std::size_t bytes_per_array, int repeats) {
#ifndef _OPENMP
  threads = 1;
#endif
  if (threads < 1 || repeats < 1) throw std::invalid_argument("stream_triad: bad arguments");
  const long n = static_cast<long>(bytes_per_array / sizeof(double));
  // new double[] leaves the pages untouched, so the first (parallel) write places them.
  std::unique_ptr<double[]> a(new double[n]), b(new double[n]), c(new double[n]);
  double* pa = a.get();
  const double* pb = b.get();
  const double* pc = c.get();
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
  for (long i = 0; i < n; ++i) {
    a[i] = 0.0;
    b[i] = 1.0 + static_cast<double>(i % 7);
    c[i] = 2.0 - static_cast<double>(i % 5);
  }
  const double s = 3.0;
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (long i = 0; i < n; ++i) pa[i] = pb[i] + s * pc[i];
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  // Use the result so that the loop cannot be dropped.
  volatile double sink = pa[n / 2] + pa[n - 1];
  (void)sink;
  TriadResult out;
  out.best_seconds = best;
  out.bytes_per_second = 3.0 * sizeof(double) * static_cast<double>(n) / best;
  out.threads = threads;
  out.bytes_per_array = static_cast<std::size_t>(n) * sizeof(double);
  return out;
}

}  // namespace difflsq_bench
