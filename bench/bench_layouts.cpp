// bench_layouts — CompressedOperator's layouts side by side in one process: the compressed arrays
// with a compressed transpose (SparseOptions::sliced = false), and sliced ELLPACK with the
// portable kernel (simd = false) and with the AVX2 kernel where it applies (the default).
//
//     bench_layouts [rounds] [problem...]
//
// Problems: the Harwell–Boeing illc1850, well1850, illc1033, well1033 (default: illc1850), and
// random:<m>:<n>:<nnz>[:<threads>] (N(0,1) entries at uniformly random positions, seed 0).
// Each round times every variant once (interleaved; best of the rounds is reported): the two
// fused products (y ← A x − ½y, v ← Aᵀu − ½v; repeated calls, so that a branch predictor may
// learn a small matrix's pattern: LSQR's figure is the one to trust) and an LSQR solve with
// tolerances 0 (1000 iterations, 50 on random problems), µs per iteration.
// Environment: ONLY=<i> runs variant i only, REPS=<n> sets the product repetitions (REPS=0
// with callgrind --toggle-collect='*LsqrMethod::run*' counts an LSQR solve's instructions).
#include <Eigen/SparseCore>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "difflsq/difflsq.hpp"
#include "matrix_market.hpp"

namespace {

using Csr = Eigen::SparseMatrix<double, Eigen::RowMajor>;
using Vec = Eigen::VectorXd;
using Clock = std::chrono::steady_clock;

struct Problem {
  Csr a;
  Vec b;
  int threads = 1, iterations = 1000;
};

Problem load(const std::string& name) {
  Problem p;
  if (name.rfind("random:", 0) == 0) {
    std::istringstream in(name.substr(7));
    std::string field;
    std::vector<long> f;
    while (std::getline(in, field, ':')) f.push_back(std::stol(field));
    if (f.size() < 3) throw std::runtime_error("random:<m>:<n>:<nnz>[:<threads>]");
    std::mt19937_64 gen(0);
    std::uniform_int_distribution<long> row(0, f[0] - 1), col(0, f[1] - 1);
    std::normal_distribution<double> normal;
    std::vector<Eigen::Triplet<double>> t;
    for (long k = 0; k < f[2]; ++k) t.emplace_back(row(gen), col(gen), normal(gen));
    p.a.resize(f[0], f[1]);
    p.a.setFromTriplets(t.begin(), t.end());
    p.b.resize(f[0]);
    for (auto& v : p.b) v = normal(gen);
    p.threads = f.size() > 3 ? int(f[3]) : 1;
    p.iterations = 50;
  } else {
    const std::string dir = DIFFLSQ_HB_DATA_DIR "/";
    p.a = difflsq::io::read_matrix_market(dir + name + ".mtx.gz").real;
    p.b = difflsq::io::to_real_vector(
        difflsq::io::read_matrix_market(dir + name + "_rhs1.mtx.gz"), name);
  }
  p.a.makeCompressed();
  return p;
}

double us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 10;
  std::vector<std::string> names(argv + std::min(argc, 2), argv + argc);
  if (names.empty()) names = {"illc1850"};
  const char* only = std::getenv("ONLY");
  const char* reps_env = std::getenv("REPS");
  for (const auto& name : names) {
    const Problem p = load(name);
    const Csr& a = p.a;
    struct Variant {
      const char* name;
      difflsq::SparseOptions options;
    };
    const Variant variants[] = {
        {"compressed + compressed transpose",
         {.threads = p.threads, .transposed_index = true, .sliced = false}},
        {"sliced, portable kernel", {.threads = p.threads, .transposed_index = true, .simd = false}},
        {"sliced, AVX2 kernel where it applies", {.threads = p.threads, .transposed_index = true}},
    };
    constexpr int kVariants = 3;
    std::vector<std::unique_ptr<difflsq::CompressedOperator<Csr>>> ops;
    for (const auto& v : variants)
      ops.push_back(std::make_unique<difflsq::CompressedOperator<Csr>>(a, v.options));
    const auto& sliced = *ops[2];
    std::printf("\n## %s: %ld × %ld, %ld nonzeros, %d thread(s)\n", name.c_str(), long(a.rows()),
                long(a.cols()), long(a.nonZeros()), sliced.threads());
    auto describe = [&](const char* what, const auto& m) {
      std::printf("%s: %s, %.3f stored entries per nonzero, %zu runs, %s kernel\n", what,
                  m.permuted ? "sorted by length" : "padded, identity order",
                  double(m.stored()) / double(std::max<Eigen::Index>(1, a.nonZeros())),
                  m.runs.size(), m.avx2 ? "AVX2" : "portable");
    };
    describe("rows (A x)", sliced.sliced_outer());
    describe("columns (Aᵀu)", sliced.sliced_inner());

    const Vec x = Vec::Random(a.cols()), u = Vec::Random(a.rows());
    Vec y = Vec::Random(a.rows()), v = Vec::Random(a.cols());
    difflsq::Options<double> opts;
    opts.atol = opts.btol = opts.conlim = 0;
    opts.max_iterations = p.iterations;
    std::vector<difflsq::Workspace<double>> ws(kVariants);
    const int reps =
        reps_env ? std::atoi(reps_env) : int(std::max<long>(1, 20'000'000 / (a.nonZeros() + 1)));
    std::vector<double> t_a(kVariants, 1e300), t_at(kVariants, 1e300), t_lsqr(kVariants, 1e300);
    std::vector<Vec> xs(kVariants);
    for (int r = 0; r < rounds; ++r)
      for (int i = 0; i < kVariants; ++i) {
        if (only && std::atoi(only) != i) continue;
        const auto& op = *ops[i];
        const auto t0 = Clock::now();
        for (int q = 0; q < reps; ++q) op.apply_sub_norm2(x, y, 0.5);
        const auto t1 = Clock::now();
        for (int q = 0; q < reps; ++q) op.apply_adjoint_sub_norm2(u, v, 0.5);
        const auto t2 = Clock::now();
        const auto report = difflsq::lsqr(ws[i], op, p.b, opts);
        const auto t3 = Clock::now();
        if (reps > 0) {
          t_a[i] = std::min(t_a[i], us(t1 - t0) / reps);
          t_at[i] = std::min(t_at[i], us(t2 - t1) / reps);
        }
        t_lsqr[i] = std::min(t_lsqr[i], us(t3 - t2) / double(std::max<long>(1, report.iterations)));
        xs[i] = ws[i].x;
      }
    std::printf(
        "\n| variant | A x − a y µs | ÷ | Aᵀu − a v µs | ÷ | LSQR µs/it | ÷ | ‖x − x₁‖/‖x₁‖ |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < kVariants; ++i) {
      if (only && std::atoi(only) != i) continue;
      const double dx = xs[0].size() && xs[0].norm() > 0 && xs[i].size()
                            ? (xs[i] - xs[0]).norm() / xs[0].norm()
                            : 0.0;
      std::printf("| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.1e |\n", variants[i].name,
                  t_a[i], t_a[i] / t_a[0], t_at[i], t_at[i] / t_at[0], t_lsqr[i],
                  t_lsqr[i] / t_lsqr[0], dx);
    }
  }
}
