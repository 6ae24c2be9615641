// The null-space step in C++ (difflsq::NullSpaceStep, ConstrainedSgd) against a plain SGD step,
// without Python or autograd: what the library itself costs. Not part of `make test`.
//
//     build/bench/bench_nullspace [--repeat 5] [--sizes 1e4,1e5,1e6,1e7,5e7]
//
// Cases (double precision, LSQR, tolerances 1e-10, γ = 1/lr: a full Gauss–Newton correction):
//   sparsity   c = θ[mask] − 0 for a random half of the entries (J selects entries, JJᵀ = I),
//              for every size in --sizes;
//   dense      c = Cθ − d with a dense 100 × 10⁶ C (800 MB);
//   nonlinear  c_i = ‖W_i‖² − 1 for the 1000 rows of a 1000 × 1000 W.
// "feasible" starts on the constraint set (the correction solve is skipped), "infeasible" at a
// random θ. Timed: one ConstrainedSgd::step (projection, correction, update) against θ −= lr·g,
// best of --repeat after one warm-up, from the same θ each time. "peak extra": the step's own
// peak resident memory (VmHWM after the step minus VmRSS before it, the peak reset through
// /proc/self/clear_refs just before).
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <difflsq/difflsq.hpp>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Vec = Eigen::VectorXd;
using difflsq::Index;

long proc_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::stol(line.substr(n + 1));
  return -1;
}

void reset_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }

double seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// c = θ[mask]: J v = v[mask], Jᵀu scatters u into zeros.
struct Selection {
  using Scalar = double;
  std::vector<Index> idx;
  Index p;
  Index constraints() const { return Index(idx.size()); }
  Index parameters() const { return p; }
  void value(Eigen::Ref<const Vec> theta, Eigen::Ref<Vec> c) const {
    for (std::size_t i = 0; i < idx.size(); ++i) c[Index(i)] = theta[idx[i]];
  }
  void jacobian(Eigen::Ref<const Vec>, Eigen::Ref<const Vec> v, Eigen::Ref<Vec> y) const {
    for (std::size_t i = 0; i < idx.size(); ++i) y[Index(i)] = v[idx[i]];
  }
  void jacobian_adjoint(Eigen::Ref<const Vec>, Eigen::Ref<const Vec> u, Eigen::Ref<Vec> w) const {
    w.setZero();
    for (std::size_t i = 0; i < idx.size(); ++i) w[idx[i]] = u[Index(i)];
  }
};

/// c_i = ‖W_i‖² − 1 for the rows of W (θ = W in row-major order): J v = 2⟨W_i, V_i⟩ per row,
/// Jᵀu = 2 u_i W_i.
struct RowNorms {
  using Scalar = double;
  Index rows, cols;
  using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  static Eigen::Map<const RowMat> shaped(const Eigen::Ref<const Vec>& v, Index r, Index c) {
    return {v.data(), r, c};
  }
  Index constraints() const { return rows; }
  Index parameters() const { return rows * cols; }
  void value(Eigen::Ref<const Vec> theta, Eigen::Ref<Vec> c) const {
    c = shaped(theta, rows, cols).rowwise().squaredNorm().array() - 1;
  }
  void jacobian(Eigen::Ref<const Vec> theta, Eigen::Ref<const Vec> v, Eigen::Ref<Vec> y) const {
    y = 2 * shaped(theta, rows, cols).cwiseProduct(shaped(v, rows, cols)).rowwise().sum();
  }
  void jacobian_adjoint(Eigen::Ref<const Vec> theta, Eigen::Ref<const Vec> u,
                        Eigen::Ref<Vec> w) const {
    Eigen::Map<RowMat>(w.data(), rows, cols) = 2 * u.asDiagonal() * shaped(theta, rows, cols);
  }
};

struct Row {
  std::string name, start;
  Index p, k;
  double plain_ms, step_ms;
  std::vector<Index> iterations;
  double c_before, c_after, peak_mb;
};

template <class C>
Row run(const std::string& name, const std::string& start, const C& con, const Vec& theta0,
        const Vec& target, int repeat) {
  const double lr = 1e-2;
  difflsq::NullSpaceOptions<double> o;
  o.gamma = 1 / lr;
  o.tolerances = {.atol = 1e-10, .btol = 1e-10, .conlim = 0, .max_iterations = 1000};
  difflsq::ConstrainedSgd<double> sgd(lr, o);
  const Vec g = theta0 - target;  // loss ½‖θ − target‖²
  Vec theta = theta0;
  double plain = 1e300, step = 1e300, peak = 0;
  difflsq::NullSpaceResult<double> r;
  for (int i = 0; i <= repeat; ++i) {  // i = 0: warm-up
    theta = theta0;
    const double tp = seconds([&] { theta.noalias() -= lr * g; });
    theta = theta0;
    reset_peak();
    const long before = proc_status_kb("VmRSS:");
    const double ts = seconds([&] { r = sgd.step(con, theta, g); });
    peak = std::max(peak, double(proc_status_kb("VmHWM:") - before) / 1024);
    if (i > 0) plain = std::min(plain, tp), step = std::min(step, ts);
  }
  Vec c(con.constraints());
  con.value(theta, c);
  std::vector<Index> its;
  for (const auto& s : r.solves) its.push_back(s.report.iterations);
  return {name, start, con.parameters(), con.constraints(), plain * 1e3, step * 1e3, its,
          r.constraint_norm, c.norm(), peak};
}

void print(const Row& row) {
  std::ostringstream its;
  for (std::size_t i = 0; i < row.iterations.size(); ++i)
    its << (i ? " + " : "") << row.iterations[i];
  std::printf("| %s | %s | %.0e | %ld | %.3f | %.2f | %.0f | %s | %.1e → %.1e | %.0f |\n",
              row.name.c_str(), row.start.c_str(), double(row.p), long(row.k), row.plain_ms,
              row.step_ms, row.step_ms / row.plain_ms, its.str().c_str(), row.c_before,
              row.c_after, row.peak_mb);
  std::fflush(stdout);
}

Vec random_vec(Index n, std::mt19937_64& gen) {
  std::normal_distribution<double> d;
  Vec v(n);
  for (Index i = 0; i < n; ++i) v[i] = d(gen);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int repeat = 5;
  std::vector<double> sizes = {1e4, 1e5, 1e6, 1e7, 5e7};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--repeat" && i + 1 < argc) {
      repeat = std::stoi(argv[++i]);
    } else if (a == "--sizes" && i + 1 < argc) {
      sizes.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) sizes.push_back(std::stod(t));
    } else {
      std::fprintf(stderr, "usage: %s [--repeat N] [--sizes 1e4,1e5,...]\n", argv[0]);
      return 2;
    }
  }
  std::printf("| constraint | start | P | k | plain ms | null-space ms | ratio | LSQR its "
              "(projection + correction) | ‖c‖ before → after | peak extra MB |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |\n");
  std::mt19937_64 gen(1);
  for (double size : sizes) {
    const Index p = Index(size);
    Selection sel{{}, p};
    std::bernoulli_distribution half(0.5);
    for (Index j = 0; j < p; ++j)
      if (half(gen)) sel.idx.push_back(j);
    Vec theta = random_vec(p, gen);
    const Vec target = random_vec(p, gen);
    print(run("sparsity", "infeasible", sel, theta, target, repeat));
    for (Index j : sel.idx) theta[j] = 0;
    print(run("sparsity", "feasible", sel, theta, target, repeat));
  }
  {
    const Index p = 1000000, k = 100;
    const Eigen::MatrixXd c = Eigen::MatrixXd::NullaryExpr(
        k, p, [&] { return std::normal_distribution<double>()(gen); });
    const Vec theta = random_vec(p, gen), target = random_vec(p, gen);
    const Vec d = random_vec(k, gen);
    const difflsq::LinearConstraint con(c, d);
    print(run("dense k = 100", "infeasible", con, theta, target, repeat));
    const difflsq::LinearConstraint on_set(c, Vec(c * theta));
    print(run("dense k = 100", "feasible", on_set, theta, target, repeat));
  }
  {
    const RowNorms con{1000, 1000};
    Vec theta = random_vec(con.parameters(), gen);
    const Vec target = random_vec(con.parameters(), gen);
    print(run("nonlinear (row norms)", "infeasible", con, theta, target, repeat));
    auto w = Eigen::Map<RowNorms::RowMat>(theta.data(), 1000, 1000);
    w.rowwise().normalize();
    print(run("nonlinear (row norms)", "feasible", con, theta, target, repeat));
  }
  return 0;
}
