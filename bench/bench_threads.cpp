// bench_threads — CompressedOperator's automatic thread choice (SparseOptions::threads = 0)
// against a fixed two threads and one thread, on an idle and on a loaded machine.
//
//     bench_threads [busy] [rounds]      (default: 0 busy processes, 7 rounds)
//
// `busy` child processes spin for the whole run (the load of other jobs on a shared machine:
// two of them on two cores leave each of the solver's threads half a core). For random CSR
// matrices of three sizes (20000 × 5000 with 60000 nonzeros, 100000 × 50000 with 1M, both with
// the transposed index the Python module and the CLI build; 200000 × 100000 with 2M, without
// it: the fused one-pass step), LSQR runs a fixed number of iterations with each of the three
// operators in turn, `rounds` times; the median time of each is printed. OMP_NUM_THREADS
// (default: the cores) is the parallel thread count.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <difflsq/difflsq.hpp>
#include <random>
#include <vector>

namespace {

using Csr = Eigen::SparseMatrix<double, Eigen::RowMajor, int>;

Csr random_csr(long m, long n, long nnz, std::mt19937_64& gen) {
  std::normal_distribution<double> normal;
  std::vector<Eigen::Triplet<double, int>> t;
  t.reserve(nnz);
  for (long k = 0; k < nnz; ++k) t.emplace_back(int(gen() % m), int(gen() % n), normal(gen));
  Csr a(m, n);
  a.setFromTriplets(t.begin(), t.end());
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int busy = argc > 1 ? std::atoi(argv[1]) : 0;
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 7;
  std::vector<pid_t> children;
  for (int i = 0; i < busy; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      volatile unsigned long spin = 0;
      for (;;) spin = spin + 1;
    }
    if (pid > 0) children.push_back(pid);
  }
  struct Size {
    long m, n, nnz;
    int iterations;
  };
  std::printf("%d busy processes; median of %d rounds, ms per solve\n", busy, rounds);
  std::printf("%-26s %10s %10s %10s %8s\n", "matrix (LSQR iterations)", "automatic", "two", "one",
              "auto/min");
  std::mt19937_64 gen(1);
  for (const Size s : {Size{20000, 5000, 60000, 150}, Size{100000, 50000, 1000000, 100},
                       Size{200000, 100000, 2000000, 60}}) {
    const Csr a = random_csr(s.m, s.n, s.nnz, gen);
    Eigen::VectorXd b(s.m);
    std::normal_distribution<double> normal;
    for (auto& v : b) v = normal(gen);
    const bool transposed = s.nnz <= (1 << 20);
    const difflsq::CompressedOperator automatic(a, {.threads = 0, .transposed_index = transposed});
    const difflsq::CompressedOperator two(a, {.threads = 2, .transposed_index = transposed});
    const difflsq::CompressedOperator one(a, {.threads = 1, .transposed_index = transposed});
    const difflsq::Options<double> o{
        .atol = 0, .btol = 0, .conlim = 0, .max_iterations = s.iterations};
    std::vector<double> times[3];
    for (int r = 0; r < rounds; ++r) {
      int k = 0;
      for (const auto* op : {&automatic, &two, &one}) {
        const auto start = std::chrono::steady_clock::now();
        const auto result = difflsq::lsqr(*op, b, o);
        times[k++].push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        if (result.iterations != s.iterations)
          std::printf("stopped after %lld iterations: %s\n", (long long)result.iterations,
                      difflsq::to_string(result.status));
      }
    }
    char name[64];
    std::snprintf(name, sizeof name, "%ldx%ld, %ld nnz (%d)", s.m, s.n, s.nnz, s.iterations);
    const double ta = median(times[0]), t2 = median(times[1]), t1 = median(times[2]);
    std::printf("%-26s %10.1f %10.1f %10.1f %8.2f\n", name, 1e3 * ta, 1e3 * t2, 1e3 * t1,
                ta / std::min(t2, t1));
  }
  for (const pid_t pid : children) kill(pid, SIGKILL);
  for (const pid_t pid : children) waitpid(pid, nullptr, 0);
}
