// STREAM-style triad a[i] = b[i] + s*c[i]: the sustainable memory bandwidth that the solver
// benchmarks are compared against. Compiled in its own translation unit (stream_triad.cpp) so
// that OpenMP, when found, is enabled only there and never in the solver code.
#pragma once

#include <cstddef>

namespace difflsq_bench {

struct TriadResult {
  double bytes_per_second = 0;  ///< best of `repeats`, counting 24 bytes per element (STREAM's rule)
  double best_seconds = 0;
  int threads = 1;              ///< threads actually used
  std::size_t bytes_per_array = 0;
};

/// Best-of-`repeats` triad on three arrays of `bytes_per_array` bytes each, with `threads`
/// threads (ignored, i.e. 1, without OpenMP).
TriadResult stream_triad(int threads, std::size_t bytes_per_array = std::size_t(80) << 20,
                         int repeats = 10);

/// True when stream_triad.cpp was compiled with OpenMP (multi-threaded triad available).
bool triad_has_openmp();

}  // namespace difflsq_bench
