// bench_solvers — difflsq LSQR/LSMR/CGLS vs Eigen's LeastSquaresConjugateGradient vs Ceres Solver,
// and the LSQR iteration's memory traffic as a fraction of the STREAM-triad bandwidth.
//
//     bench_solvers --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true
//
// Three kinds of benchmark (see bench/README.md):
//   fixed/<problem>/<method>  a fixed iteration count, all tolerances 0: time per iteration;
//   tol/<problem>/<method>    the smallest iteration count whose returned x satisfies
//                             ‖Aᵀr‖ / (‖A‖_F ‖r‖) ≤ 1e-8 (checked here on x, for every method);
//                             direct Ceres solvers run once. Time to solution and accuracy.
//   triad/threads:<t>         STREAM triad on 3 × 80 MB arrays, best of 10.
// Each benchmark keeps the best (minimum) time of all its solves; a summary with ratios is
// printed after the Google Benchmark report.
#include <benchmark/benchmark.h>
#include <ceres/ceres.h>

#include <Eigen/Dense>
#include <Eigen/IterativeLinearSolvers>
#include <Eigen/SparseCore>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "difflsq/difflsq.hpp"
#include "matrix_market.hpp"
#include "stream_triad.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using Csr = Eigen::SparseMatrix<double, Eigen::RowMajor>;  // 32-bit indices: 12 bytes per nonzero
using Vec = Eigen::VectorXd;
using Clock = std::chrono::steady_clock;

constexpr double kTolerance = 1e-8;  // on ‖Aᵀr‖ / (‖A‖_F ‖r‖)

// Threads for the solvers (difflsq, Eigen, Ceres): 1 unless OMP_NUM_THREADS says otherwise and
// the difflsq target brings OpenMP (then difflsq's and Eigen's products may use it).
int solver_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// --- problems ----------------------------------------------------------------------------------

struct Problem {
  std::string name;
  Csr a;
  Vec b;
  double a_fro = 0;
  Vec x_ref;      // dense reference (colPivHouseholderQr); empty for the large problem
  Vec col_scale;  // 1/‖a_j‖ (Jacobi column scaling), 1 for empty columns
  int fixed_iterations = 0;
};

void finish(Problem& p) {
  p.a.makeCompressed();
  p.a_fro = p.a.norm();
  Vec sq = Vec::Zero(p.a.cols());
  for (Eigen::Index i = 0; i < p.a.outerSize(); ++i)
    for (Csr::InnerIterator it(p.a, i); it; ++it) sq[it.col()] += it.value() * it.value();
  p.col_scale = sq.unaryExpr([](double s) { return s > 0 ? 1 / std::sqrt(s) : 1.0; });
}

std::string hb_path(const std::string& file) { return std::string(DIFFLSQ_HB_DATA_DIR) + "/" + file; }

bool hb_available(const std::string& name) {
  return std::filesystem::exists(hb_path(name + ".mtx.gz")) &&
         std::filesystem::exists(hb_path(name + "_rhs1.mtx.gz"));
}

std::unique_ptr<Problem> load_hb(const std::string& name) {
  auto p = std::make_unique<Problem>();
  p->name = name;
  p->a = difflsq::io::read_matrix_market(hb_path(name + ".mtx.gz")).real;
  p->b = difflsq::io::to_real_vector(difflsq::io::read_matrix_market(hb_path(name + "_rhs1.mtx.gz")),
                                     name + "_rhs1");
  finish(*p);
  const Eigen::MatrixXd dense(p->a);
  p->x_ref = dense.colPivHouseholderQr().solve(p->b);
  p->fixed_iterations = 200;  // well1033 reaches LSQR's machine-precision stop at 251
  return p;
}

// 200k x 100k, ~2M nonzeros at uniformly random positions (duplicates summed), N(0,1) values,
// N(0,1) right-hand side; fixed seed.
std::unique_ptr<Problem> make_random() {
  auto p = std::make_unique<Problem>();
  p->name = "random200k";
  const int m = 200'000, n = 100'000, nnz = 2'000'000;
  std::mt19937_64 gen(20251125);
  std::uniform_int_distribution<int> row(0, m - 1), col(0, n - 1);
  std::normal_distribution<double> normal;
  std::vector<Eigen::Triplet<double>> t;
  t.reserve(nnz);
  for (int k = 0; k < nnz; ++k) {
    const int i = row(gen), j = col(gen);
    t.emplace_back(i, j, normal(gen));
  }
  p->a.resize(m, n);
  p->a.setFromTriplets(t.begin(), t.end());
  p->b.resize(m);
  for (int i = 0; i < m; ++i) p->b[i] = normal(gen);
  finish(*p);
  p->fixed_iterations = 50;
  return p;
}

const std::vector<std::string> kHbNames = {"well1033", "illc1033", "well1850", "illc1850"};

Problem& problem(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Problem>> cache;
  auto& slot = cache[name];
  if (!slot) slot = name == "random200k" ? make_random() : load_hb(name);
  return *slot;
}

// ‖Aᵀ(b − Ax)‖ / (‖A‖_F ‖b − Ax‖), computed from scratch on x.
double rel_normal_residual(const Problem& p, const Vec& x) {
  const Vec r = p.b - p.a * x;
  const Vec g = p.a.transpose() * r;
  return g.norm() / (p.a_fro * r.norm());
}

double rel_error(const Problem& p, const Vec& x) {
  return p.x_ref.size() ? (x - p.x_ref).norm() / p.x_ref.norm() : std::nan("");
}

// Minimum bytes one LSQR iteration must move for a CSR matrix with 32-bit indices (see README),
// norms and scalings assumed fused into the passes below. With two products: two passes over
// values + column indices + row pointers; A·v reads v, reads and writes u; Aᵀ·u reads u, reads
// and writes v; the fused update x += t₁w, w = v + t₂w reads x, w, v and writes x, w.
double lsqr_min_bytes(const Csr& a) {
  const double m = static_cast<double>(a.rows()), n = static_cast<double>(a.cols());
  const double nnz = static_cast<double>(a.nonZeros());
  const double matrix = 12 * nnz + 4 * (m + 1);
  return 2 * matrix + (8 * n + 16 * m) + (8 * m + 16 * n) + 40 * n;
}
// With one pass over the matrix (difflsq's fused Golub–Kahan step, which it takes on this
// matrix): A·v − αu reads v, reads and writes u, and its scatter writes w = Aᵀũ; αv = w/β − βv
// reads w and v and writes v; the x, w update as above.
double lsqr_one_pass_bytes(const Csr& a) {
  const double m = static_cast<double>(a.rows()), n = static_cast<double>(a.cols());
  const double nnz = static_cast<double>(a.nonZeros());
  return 12 * nnz + 4 * (m + 1) + (8 * n + 16 * m) + 8 * n + 24 * n + 40 * n;
}
double matrix_pass_bytes(const Csr& a) {
  return 2 * (12 * static_cast<double>(a.nonZeros()) + 4 * static_cast<double>(a.rows() + 1));
}

// --- Ceres -------------------------------------------------------------------------------------

// Row i of A x − b as a Ceres residual over the scalar parameter blocks x_j it touches.
class RowCost final : public ceres::CostFunction {
 public:
  RowCost(const double* values, int count, double bi) : values_(values), bi_(bi) {
    set_num_residuals(1);
    mutable_parameter_block_sizes()->assign(static_cast<std::size_t>(count), 1);
  }
  bool Evaluate(double const* const* params, double* residuals, double** jacobians) const override {
    const int k = static_cast<int>(parameter_block_sizes().size());
    double s = -bi_;
    for (int j = 0; j < k; ++j) s += values_[j] * params[j][0];
    residuals[0] = s;
    if (jacobians)
      for (int j = 0; j < k; ++j)
        if (jacobians[j]) jacobians[j][0] = values_[j];
    return true;
  }

 private:
  const double* values_;
  double bi_;
};

struct CeresModel {
  std::vector<double> x;  // the parameter blocks (one scalar each), i.e. the solution
  ceres::Problem problem;
  explicit CeresModel(const Problem& p) : x(static_cast<std::size_t>(p.a.cols()), 0.0) {
    std::vector<double*> blocks;
    for (Eigen::Index i = 0; i < p.a.rows(); ++i) {
      const auto begin = p.a.outerIndexPtr()[i], end = p.a.outerIndexPtr()[i + 1];
      if (begin == end) continue;  // an empty row only adds b_i² to the cost
      blocks.clear();
      for (auto k = begin; k < end; ++k) blocks.push_back(&x[p.a.innerIndexPtr()[k]]);
      problem.AddResidualBlock(new RowCost(p.a.valuePtr() + begin, end - begin, p.b[i]), nullptr,
                               blocks);
    }
  }
};

CeresModel& ceres_model(const Problem& p) {
  static std::map<std::string, std::unique_ptr<CeresModel>> cache;
  auto& slot = cache[p.name];
  if (!slot) slot = std::make_unique<CeresModel>(p);
  return *slot;
}

// --- methods -----------------------------------------------------------------------------------

enum class Method {
  Lsqr, Lsmr, Cgls, LsqrJacobi, EigenLscg, EigenLscgDiag, CeresCgnr, CeresDenseQr, CeresSparseChol
};

const char* method_name(Method m) {
  switch (m) {
    case Method::Lsqr: return "difflsq_LSQR";
    case Method::Lsmr: return "difflsq_LSMR";
    case Method::Cgls: return "difflsq_CGLS";
    case Method::LsqrJacobi: return "difflsq_LSQR_colscale";
    case Method::EigenLscg: return "Eigen_LSCG_identity";
    case Method::EigenLscgDiag: return "Eigen_LSCG_diag";
    case Method::CeresCgnr: return "Ceres_CGNR";
    case Method::CeresDenseQr: return "Ceres_DENSE_QR";
    case Method::CeresSparseChol: return "Ceres_SPARSE_NORMAL_CHOLESKY";
  }
  return "?";
}

bool is_difflsq(Method m) {
  return m == Method::Lsqr || m == Method::Lsmr || m == Method::Cgls || m == Method::LsqrJacobi;
}
bool is_direct(Method m) { return m == Method::CeresDenseQr || m == Method::CeresSparseChol; }

// One (problem, method) pair: the solver objects, set up once, and run(k) = exactly k iterations
// (k is ignored by the direct methods). The solution is in x() afterwards.
class Runner {
 public:
  Runner(Problem& p, Method m) : p_(p), m_(m) {
    opts_.atol = 0;
    opts_.btol = 0;
    opts_.conlim = 0;
    if (m == Method::LsqrJacobi) opts_.column_scaling = p.col_scale;
    // difflsq's sparse operator, built once as the Python module and the CLI build it: with a
    // transposed index (both products gather) up to 2^20 nonzeros.
    if (is_difflsq(m))
      op_.emplace(p.a, difflsq::SparseOptions{.transposed_index = p.a.nonZeros() <= (1 << 20)});
    if (m == Method::EigenLscg) lscg_id_.compute(p.a);
    if (m == Method::EigenLscgDiag) lscg_diag_.compute(p.a);
    if (m == Method::CeresCgnr || is_direct(m)) ceres_ = &ceres_model(p);
  }

  struct Out {
    long iterations = 0;
    double ceres_linear_seconds = 0;
  };

  Out run(int k) {
    Out out;
    switch (m_) {
      case Method::Lsqr:
      case Method::LsqrJacobi:
        opts_.max_iterations = k;
        out.iterations = difflsq::lsqr(ws_, *op_, p_.b, opts_).iterations;
        break;
      case Method::Lsmr:
        opts_.max_iterations = k;
        out.iterations = difflsq::lsmr(ws_, *op_, p_.b, opts_).iterations;
        break;
      case Method::Cgls:
        opts_.max_iterations = k;
        out.iterations = difflsq::cgls(ws_, *op_, p_.b, opts_).iterations;
        break;
      case Method::EigenLscg:
        lscg_id_.setMaxIterations(k);
        lscg_id_.setTolerance(0);
        x_ = lscg_id_.solve(p_.b);
        out.iterations = lscg_id_.iterations();
        break;
      case Method::EigenLscgDiag:
        lscg_diag_.setMaxIterations(k);
        lscg_diag_.setTolerance(0);
        x_ = lscg_diag_.solve(p_.b);
        out.iterations = lscg_diag_.iterations();
        break;
      case Method::CeresCgnr:
      case Method::CeresDenseQr:
      case Method::CeresSparseChol: {
        ceres::Solver::Options o;
        o.minimizer_type = ceres::TRUST_REGION;
        o.trust_region_strategy_type = ceres::LEVENBERG_MARQUARDT;
        // One Gauss–Newton step solves a linear problem; an enormous trust region makes the
        // Levenberg–Marquardt regularization (diag(JᵀJ)/radius) negligible.
        o.max_num_iterations = 1;
        o.initial_trust_region_radius = 1e32;
        o.max_trust_region_radius = 1e32;
        o.function_tolerance = 0;
        o.gradient_tolerance = 0;
        o.parameter_tolerance = 0;
        o.num_threads = solver_threads();
        o.logging_type = ceres::SILENT;
        if (m_ == Method::CeresCgnr) {
          o.linear_solver_type = ceres::CGNR;
          o.preconditioner_type = ceres::JACOBI;
          o.min_linear_solver_iterations = k;
          o.max_linear_solver_iterations = k;
          o.eta = 1e-300;  // no early exit on the quadratic-model test
        } else if (m_ == Method::CeresDenseQr) {
          o.linear_solver_type = ceres::DENSE_QR;
        } else {
          o.linear_solver_type = ceres::SPARSE_NORMAL_CHOLESKY;
          o.sparse_linear_algebra_library_type = ceres::SUITE_SPARSE;
        }
        std::fill(ceres_->x.begin(), ceres_->x.end(), 0.0);
        ceres::Solver::Summary s;
        ceres::Solve(o, &ceres_->problem, &s);
        if (s.iterations.size() > 1) out.iterations = s.iterations[1].linear_solver_iterations;
        out.ceres_linear_seconds = s.linear_solver_time_in_seconds;
        x_ = Eigen::Map<const Vec>(ceres_->x.data(), static_cast<Eigen::Index>(ceres_->x.size()));
        break;
      }
    }
    return out;
  }

  const Vec& x() const { return is_difflsq(m_) ? ws_.x : x_; }

  // Smallest k whose iterate meets kTolerance, or -1 when not reached within kmax.
  // difflsq: exact, by checking every iterate in the monitor. Others: galloping search from
  // `guess`, then bisection to within 2 % (the result is the upper end, which meets it).
  int iterations_to_tolerance(int guess, int kmax) {
    if (is_direct(m_)) return 1;
    if (is_difflsq(m_)) {
      int found = -1;
      auto o = opts_;
      o.max_iterations = kmax;
      o.monitor = [&](const difflsq::IterationInfo<double>& info) {
        if (rel_normal_residual(p_, info.x) <= kTolerance) {
          found = static_cast<int>(info.iteration);
          return difflsq::MonitorAction::Stop;
        }
        return difflsq::MonitorAction::Continue;
      };
      if (m_ == Method::Lsmr) difflsq::lsmr(ws_, *op_, p_.b, o);
      else if (m_ == Method::Cgls) difflsq::cgls(ws_, *op_, p_.b, o);
      else difflsq::lsqr(ws_, *op_, p_.b, o);
      return found;
    }
    auto ok = [&](int k) {
      run(k);
      return rel_normal_residual(p_, x()) <= kTolerance;
    };
    int lo = 0, hi = std::clamp(guess, 1, kmax);  // invariant: lo fails (or 0), hi unknown/ok
    if (ok(hi)) {
      while (hi > 1) {
        const int mid = hi / 2;
        if (ok(mid)) hi = mid;
        else { lo = mid; break; }
      }
    } else {
      lo = hi;
      for (;;) {
        if (hi >= kmax) return -1;
        hi = std::min(kmax, 2 * hi);
        if (ok(hi)) break;
        lo = hi;
      }
    }
    while (hi - lo > std::max(1, hi / 50)) {
      const int mid = lo + (hi - lo) / 2;
      if (ok(mid)) hi = mid;
      else lo = mid;
    }
    return hi;
  }

 private:
  Problem& p_;
  Method m_;
  difflsq::Options<double> opts_;
  difflsq::Workspace<double> ws_;
  std::optional<difflsq::CompressedOperator<Csr>> op_;  // difflsq methods only
  Eigen::LeastSquaresConjugateGradient<Csr, Eigen::IdentityPreconditioner> lscg_id_;
  Eigen::LeastSquaresConjugateGradient<Csr> lscg_diag_;
  CeresModel* ceres_ = nullptr;
  Vec x_;
};

// --- results registry (for the summary) ----------------------------------------------------------

struct Record {
  std::string problem, mode;
  Method method;
  double best_seconds = std::numeric_limits<double>::infinity();
  long iterations = 0;
  double rel_nres = 0, rel_err = 0, ceres_linear_seconds = 0;
  bool failed = false;
};
std::vector<std::unique_ptr<Record>> g_records;
std::map<std::string, int> g_tol_iterations;  // "problem/method" -> iterations to tolerance
std::optional<difflsq_bench::TriadResult> g_triad[3];

Record& record(const std::string& problem, const std::string& mode, Method m) {
  for (auto& r : g_records)
    if (r->problem == problem && r->mode == mode && r->method == m) return *r;
  g_records.push_back(std::make_unique<Record>());
  auto& r = *g_records.back();
  r.problem = problem;
  r.mode = mode;
  r.method = m;
  return r;
}

const Record* find(const std::string& problem, const std::string& mode, Method m) {
  for (auto& r : g_records)
    if (r->problem == problem && r->mode == mode && r->method == m && !r->failed) return r.get();
  return nullptr;
}

int tol_iterations(Problem& p, Method m) {
  const std::string key = p.name + "/" + method_name(m);
  if (auto it = g_tol_iterations.find(key); it != g_tol_iterations.end()) return it->second;
  const int kmax = static_cast<int>(std::min<Eigen::Index>(50 * p.a.cols(), 20000));
  // Guesses for the searched methods: the difflsq iteration count of the same Krylov method.
  int guess = 100;
  if (m == Method::EigenLscg) guess = tol_iterations(p, Method::Cgls);
  if (m == Method::EigenLscgDiag || m == Method::CeresCgnr)
    guess = tol_iterations(p, Method::LsqrJacobi);
  if (guess <= 0) guess = 100;
  Runner r(p, m);
  const int k = r.iterations_to_tolerance(guess, kmax);
  g_tol_iterations[key] = k;
  return k;
}

// --- benchmarks --------------------------------------------------------------------------------

void run_solver(benchmark::State& state, const std::string& pname, Method m, bool fixed) {
  Problem& p = problem(pname);
  const int k = fixed ? p.fixed_iterations : tol_iterations(p, m);
  Record& rec = record(pname, fixed ? "fixed" : "tol", m);
  if (k < 0) {
    rec.failed = true;
    state.SkipWithError("tolerance not reached within the iteration limit");
    return;
  }
  Runner runner(p, m);
  runner.run(k);  // warm-up (first touch of the workspace, Ceres' first preprocessing)
  double best = std::numeric_limits<double>::infinity();
  Runner::Out out;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    out = runner.run(k);
    const double t = std::chrono::duration<double>(Clock::now() - t0).count();
    if (t < best) {
      best = t;
      if (t < rec.best_seconds) rec.ceres_linear_seconds = out.ceres_linear_seconds;
    }
    benchmark::DoNotOptimize(runner.x().data());
  }
  rec.best_seconds = std::min(rec.best_seconds, best);
  rec.iterations = out.iterations;
  rec.rel_nres = rel_normal_residual(p, runner.x());
  rec.rel_err = rel_error(p, runner.x());
  const double its = std::max<long>(out.iterations, 1);
  state.counters["iters"] = static_cast<double>(out.iterations);
  state.counters["best_ms"] = best * 1e3;
  if (!is_direct(m)) state.counters["us_per_it"] = best / its * 1e6;
  state.counters["rel_nres"] = rec.rel_nres;
  if (p.x_ref.size()) state.counters["rel_err_vs_qr"] = rec.rel_err;
  if (m == Method::CeresCgnr || is_direct(m))
    state.counters["ceres_linsolve_ms"] = out.ceres_linear_seconds * 1e3;
  if (!is_direct(m)) state.counters["A_pass_GBps"] = matrix_pass_bytes(p.a) * its / best / 1e9;
  if (m == Method::Lsqr) state.counters["lsqr_min_GBps"] = lsqr_min_bytes(p.a) * its / best / 1e9;
}

void run_triad(benchmark::State& state, int threads) {
  difflsq_bench::TriadResult best;
  for (auto _ : state) {
    const auto r = difflsq_bench::stream_triad(threads);
    if (r.bytes_per_second > best.bytes_per_second) best = r;
  }
  auto& slot = g_triad[threads];
  if (!slot || best.bytes_per_second > slot->bytes_per_second) slot = best;
  state.counters["GBps"] = best.bytes_per_second / 1e9;
  state.counters["threads"] = best.threads;
  state.counters["MB_per_array"] = static_cast<double>(best.bytes_per_array) / (1 << 20);
}

// --- summary -----------------------------------------------------------------------------------

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void print_summary(const std::vector<std::string>& problems) {
  std::printf("\n## Summary (best time of all solves of each benchmark in this run)\n\n");
  std::printf("Threads: solvers %d (OpenMP in the solver translation unit: %s; Eigen::nbThreads() "
              "= %d; Ceres num_threads = %d); triad OpenMP: %s.\n\n",
              solver_threads(),
#ifdef _OPENMP
              "yes",
#else
              "no",
#endif
              Eigen::nbThreads(), solver_threads(),
              difflsq_bench::triad_has_openmp() ? "yes" : "no");

  const Method fixed_methods[] = {Method::Lsqr, Method::Lsmr, Method::Cgls, Method::EigenLscg,
                                  Method::EigenLscgDiag, Method::CeresCgnr};
  std::printf("### (a) Time per iteration at a fixed iteration count (tolerances 0)\n\n");
  std::printf("| problem | k | LSQR µs/it | LSMR µs/it | CGLS µs/it | Eigen LSCG (identity) µs/it | "
              "Eigen LSCG (diag) µs/it | Ceres CGNR µs/it (whole Solve / linear solver) | "
              "Eigen LSCG id ÷ difflsq CGLS | Eigen LSCG id ÷ LSQR | Ceres CGNR ÷ LSQR |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const auto& pn : problems) {
    const Record* r[6];
    for (int i = 0; i < 6; ++i) r[i] = find(pn, "fixed", fixed_methods[i]);
    if (!r[0]) continue;
    auto per_it = [](const Record* x) {
      return x ? x->best_seconds / static_cast<double>(std::max<long>(x->iterations, 1)) : NAN;
    };
    std::string row = "| " + pn + " | " + std::to_string(r[0]->iterations) + " |";
    for (int i = 0; i < 5; ++i) row += " " + fmt("%.2f", per_it(r[i]) * 1e6) + " |";
    if (r[5])
      row += " " + fmt("%.1f", per_it(r[5]) * 1e6) + " / " +
             fmt("%.1f", r[5]->ceres_linear_seconds / std::max<long>(r[5]->iterations, 1) * 1e6) +
             " |";
    else
      row += " – |";
    row += " " + fmt("%.2f×", per_it(r[3]) / per_it(r[2])) + " |";
    row += " " + fmt("%.2f×", per_it(r[3]) / per_it(r[0])) + " |";
    row += " " + fmt("%.1f×", per_it(r[5]) / per_it(r[0])) + " |";
    std::printf("%s\n", row.c_str());
  }

  const Method tol_methods[] = {Method::Lsqr, Method::Lsmr, Method::Cgls, Method::LsqrJacobi,
                                Method::EigenLscg, Method::EigenLscgDiag, Method::CeresCgnr,
                                Method::CeresDenseQr, Method::CeresSparseChol};
  std::printf("\n### (b, c) To ‖Aᵀr‖/(‖A‖_F‖r‖) ≤ 1e-8, checked on the returned x\n\n");
  std::printf("| problem | method | iterations | time ms | time ÷ difflsq LSQR | ‖Aᵀr‖/(‖A‖‖r‖) | "
              "‖x − x_QR‖/‖x_QR‖ |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  for (const auto& pn : problems) {
    const Record* base = find(pn, "tol", Method::Lsqr);
    for (Method m : tol_methods) {
      const Record* r = find(pn, "tol", m);
      bool failed = false;
      for (auto& x : g_records)
        if (x->problem == pn && x->mode == "tol" && x->method == m && x->failed) failed = true;
      if (failed) {
        std::printf("| %s | %s | not reached | | | | |\n", pn.c_str(), method_name(m));
        continue;
      }
      if (!r) continue;
      std::string it = is_direct(m) ? std::string("direct") : std::to_string(r->iterations);
      std::printf("| %s | %s | %s | %.3f | %s | %.1e | %s |\n", pn.c_str(), method_name(m),
                  it.c_str(), r->best_seconds * 1e3,
                  base ? fmt("%.2f×", r->best_seconds / base->best_seconds).c_str() : "–",
                  r->rel_nres, std::isnan(r->rel_err) ? "–" : fmt("%.1e", r->rel_err).c_str());
    }
  }

  std::printf("\n### Memory bandwidth\n\n");
  for (int t = 1; t <= 2; ++t)
    if (g_triad[t])
      std::printf("STREAM triad, %d thread(s), 3 × %.0f MB, best of 10: %.2f GB/s\n",
                  g_triad[t]->threads, static_cast<double>(g_triad[t]->bytes_per_array) / (1 << 20),
                  g_triad[t]->bytes_per_second / 1e9);
  if (const Record* r = find("random200k", "fixed", Method::Lsqr); r && g_triad[1]) {
    const Problem& p = problem("random200k");
    const double per_it = r->best_seconds / static_cast<double>(std::max<long>(r->iterations, 1));
    const double two = lsqr_min_bytes(p.a), one = lsqr_one_pass_bytes(p.a);
    std::printf("\n| quantity | value |\n| --- | ---: |\n");
    std::printf("| m × n, nnz | %ld × %ld, %ld |\n", static_cast<long>(p.a.rows()),
                static_cast<long>(p.a.cols()), static_cast<long>(p.a.nonZeros()));
    std::printf(
        "| minimum bytes per LSQR iteration: two products / one pass over A | %.1f / %.1f MB |\n",
        two / 1e6, one / 1e6);
    std::printf("| LSQR time per iteration (%d thread(s)) | %.0f µs |\n", solver_threads(),
                per_it * 1e6);
    std::printf("| effective bandwidth: two products / one pass | %.2f / %.2f GB/s |\n",
                two / per_it / 1e9, one / per_it / 1e9);
    for (int t = 1; t <= 2; ++t)
      if (g_triad[t])
        std::printf("| fraction of %d-thread triad: two products / one pass | %.2f / %.2f |\n",
                    g_triad[t]->threads, two / per_it / g_triad[t]->bytes_per_second,
                    one / per_it / g_triad[t]->bytes_per_second);
  }
}

}  // namespace

int main(int argc, char** argv) {
#ifdef _OPENMP
  // Single-threaded comparison by default; OMP_NUM_THREADS=2 gives a 2-thread one.
  if (!std::getenv("OMP_NUM_THREADS")) omp_set_num_threads(1);
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  std::vector<std::string> problems;
  for (const auto& name : kHbNames) {
    if (hb_available(name)) problems.push_back(name);
    else std::fprintf(stderr, "bench_solvers: %s not found under %s, skipped\n", name.c_str(),
                      DIFFLSQ_HB_DATA_DIR);
  }
  problems.push_back("random200k");

  const Method fixed_methods[] = {Method::Lsqr, Method::Lsmr, Method::Cgls, Method::EigenLscg,
                                  Method::EigenLscgDiag, Method::CeresCgnr};
  for (const auto& pn : problems) {
    const bool big = pn == "random200k";
    for (Method m : fixed_methods)
      benchmark::RegisterBenchmark(("fixed/" + pn + "/" + method_name(m)).c_str(),
                                   [pn, m](benchmark::State& s) { run_solver(s, pn, m, true); })
          ->Unit(benchmark::kMillisecond)
          ->MinTime(big ? 0.5 : 0.2)
          ->UseRealTime();
    std::vector<Method> tol = {Method::Lsqr, Method::Lsmr, Method::Cgls, Method::LsqrJacobi,
                               Method::EigenLscg, Method::EigenLscgDiag, Method::CeresCgnr};
    if (!big) {
      // Direct factorizations: only for the small problems (on the random 100k-column problem
      // the Cholesky factor of AᵀA is essentially dense: ~40 GB).
      tol.push_back(Method::CeresDenseQr);
      tol.push_back(Method::CeresSparseChol);
    }
    for (Method m : tol)
      benchmark::RegisterBenchmark(("tol/" + pn + "/" + method_name(m)).c_str(),
                                   [pn, m](benchmark::State& s) { run_solver(s, pn, m, false); })
          ->Unit(benchmark::kMillisecond)
          ->MinTime(big ? 0.5 : 0.2)
          ->UseRealTime();
  }
  for (int t : {1, 2}) {
    if (t == 2 && !difflsq_bench::triad_has_openmp()) break;
    benchmark::RegisterBenchmark(("triad/threads:" + std::to_string(t)).c_str(),
                                 [t](benchmark::State& s) { run_triad(s, t); })
        ->Unit(benchmark::kMillisecond)
        ->Iterations(1)
        ->UseRealTime();
  }

  benchmark::RunSpecifiedBenchmarks();
  print_summary(problems);
  benchmark::Shutdown();
  return 0;
}
