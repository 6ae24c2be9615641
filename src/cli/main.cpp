// The `difflsq` command.
//
//   difflsq solve A.mtx[.gz] [b.mtx[.gz]] --method lsqr|lsmr|cgls --damp --atol --btol --conlim
//                 --maxiter --scale --out x.mtx
//   difflsq demo [--size N --angles K --noise σ --damp λ --method ... --out DIR]
//
// `solve` reads a Matrix Market matrix (and right-hand side; without one, b = A·1 so the error
// against x = 1 can be reported), prints a progress line and a final report. `demo` runs the
// matrix-free job on an embedded default: parallel-beam X-ray tomography of a Shepp–Logan
// phantom from a noisy sinogram, reconstructed by damped LSQR and LSMR, written as PNG images.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <difflsq/difflsq.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>

#include "matrix_market.hpp"
#include "tomography.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct SolveSettings {
  std::string method = "lsqr";
  double damp = 0, atol = 1e-6, btol = 1e-6, conlim = 1e8;
  long long maxiter = 0;
  bool scale = false, quiet = false;
};

template <class Scalar>
difflsq::Options<Scalar> options_from(const SolveSettings& s, Clock::time_point start) {
  difflsq::Options<Scalar> o;
  o.damp = s.damp;
  o.atol = s.atol;
  o.btol = s.btol;
  o.conlim = s.conlim;
  o.max_iterations = s.maxiter;
  if (!s.quiet) {
    // A progress line at most every 0.2 s, overwritten in place.
    auto last = std::make_shared<Clock::time_point>(start);
    o.monitor = [last](const difflsq::IterationInfo<Scalar>& it) {
      const auto now = Clock::now();
      if (now - *last > std::chrono::milliseconds(200) || it.iteration == 1) {
        *last = now;
        std::fprintf(stderr, "\r  iteration %6lld  |r| = %.6e  |A^H r| = %.3e  cond ~ %.2e",
                     static_cast<long long>(it.iteration), double(it.r1norm), double(it.arnorm),
                     double(it.acond));
      }
      return difflsq::MonitorAction::Continue;
    };
  }
  return o;
}

template <class Op>
auto run_method(const std::string& method, const Op& op,
                const difflsq::Vector<typename Op::Scalar>& b,
                const difflsq::Options<typename Op::Scalar>& o) {
  if (method == "lsmr") return difflsq::lsmr(op, b, o);
  if (method == "cgls") return difflsq::cgls(op, b, o);
  return difflsq::lsqr(op, b, o);
}

void print_report(const char* what, const difflsq::Report<double>& r, double seconds) {
  std::printf("%s: %s\n", what, difflsq::to_string(r.status));
  std::printf("  iterations      %lld (%lld A products, %lld A^H products)\n",
              static_cast<long long>(r.iterations), static_cast<long long>(r.matvecs),
              static_cast<long long>(r.rmatvecs));
  std::printf("  |b - A x|       %.6e\n", r.r1norm);
  std::printf("  damped residual %.6e\n", r.r2norm);
  std::printf("  |A^H r|         %.6e\n", r.arnorm);
  std::printf("  |A| estimate    %.3e   cond estimate %.3e\n", r.anorm, r.acond);
  std::printf("  |x|             %.6e\n", r.xnorm);
  std::printf("  time            %.3f s\n", seconds);
}

/// Fails before reading and solving, not after: `path` must be a file we can write (it is
/// created to find out, and removed again if it did not exist).
void check_writable(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool existed = fs::exists(path, ec);
  if (fs::is_directory(path, ec)) throw std::runtime_error("--out " + path + " is a directory");
  if (!std::ofstream(path, std::ios::app)) throw std::runtime_error("cannot write --out " + path);
  if (!existed) fs::remove(path, ec);
}

/// A Matrix Market header may declare up to 2^31 - 1 rows in a few bytes (the reader's memory
/// is O(entries + columns)); the solve needs vectors of that length. Refuse a solve whose
/// estimated memory exceeds the machine's (Linux overcommits: it would be killed mid-way).
template <class Scalar>
void check_memory(std::int64_t rows, std::int64_t cols, std::int64_t nonzeros) {
  const double s = sizeof(Scalar), entry = s + sizeof(int);
  // CSR and up to two more stored copies of the entries, their row/column starts, and about
  // five vectors of length m and seven of length n (b, x, and the solvers' workspace).
  const double need = 3 * entry * double(nonzeros) + 8.0 * double(rows + cols) +
                      s * (5.0 * double(rows) + 7.0 * double(cols));
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return;  // unknown
  const double have = double(pages) * double(page);
  if (need > have)
    throw std::runtime_error(
        "A is " + std::to_string(rows) + " x " + std::to_string(cols) + " with " +
        std::to_string(nonzeros) + " nonzeros: solving needs about " +
        std::to_string(static_cast<long long>(need / 1e9 + 1)) + " GB, more than this machine's " +
        std::to_string(static_cast<long long>(have / 1e9)) + " GB of memory");
}

template <class Scalar>
int solve_file(const difflsq::io::MatrixMarket& mm, const std::string& b_path,
               const std::string& out, const SolveSettings& s) {
  using Vec = difflsq::Vector<Scalar>;
  const auto& a = [&]() -> const auto& {
    if constexpr (std::is_same_v<Scalar, double>) return mm.real;
    else return mm.complex;
  }();
  check_memory<Scalar>(a.rows(), a.cols(), a.nonZeros());
  const Eigen::SparseMatrix<Scalar, Eigen::RowMajor> csr = a;
  Vec b;
  std::optional<Vec> x_true;
  if (!b_path.empty()) {
    const auto bm = difflsq::io::read_matrix_market(b_path);
    if constexpr (std::is_same_v<Scalar, double>) {
      b = difflsq::io::to_real_vector(bm, b_path);
    } else {
      b = difflsq::io::to_complex_vector(bm, b_path);
    }
  } else {
    x_true = Vec::Ones(csr.cols());
    b = csr * *x_true;
    std::printf("no right-hand side given: b = A * ones, so x = ones solves Ax = b\n");
  }
  if (b.size() != csr.rows())
    throw std::invalid_argument("b has " + std::to_string(b.size()) + " entries but A has " +
                                std::to_string(csr.rows()) + " rows");
  const auto start = Clock::now();
  auto o = options_from<Scalar>(s, start);
  if (s.scale) o.column_scaling = difflsq::column_scaling(csr);
  const difflsq::CompressedOperator op(
      csr, difflsq::SparseOptions{.transposed_index = csr.nonZeros() <= (1 << 20)});
  const auto r = run_method(s.method, op, b, o);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (!s.quiet) std::fprintf(stderr, "\n");
  std::printf("A: %lld x %lld, %lld nonzeros%s\n", static_cast<long long>(csr.rows()),
              static_cast<long long>(csr.cols()), static_cast<long long>(csr.nonZeros()),
              std::is_same_v<Scalar, double> ? "" : " (complex)");
  difflsq::Report<double> rep;
  static_cast<difflsq::Report<double>&>(rep) = r;
  print_report(s.method.c_str(), rep, seconds);
  // stableNorm: a residual of entries near 1e308 is finite, its plain norm would not be.
  std::printf("  true |b - A x|  %.6e\n", static_cast<double>((b - csr * r.x).stableNorm()));
  if (x_true && x_true->size() > 0)
    std::printf("  |x - ones|/|ones| %.3e\n", (r.x - *x_true).norm() / x_true->norm());
  if (!out.empty()) {
    difflsq::io::write_matrix_market(out, r.x);
    std::printf("wrote %s\n", out.c_str());
  }
  return difflsq::converged(r.status) ? 0 : 2;
}

struct DemoSettings {
  int size = 128, angles = 120;
  double noise = 0.01, damp = 0.05;
  long long maxiter = 200;
  std::string out = "demo";
  unsigned seed = 1;
};

int demo(const DemoSettings& d) {
  namespace dm = difflsq::demo;
  const dm::ParallelBeamProjector projector({.image_size = d.size, .angles = d.angles});
  const Eigen::VectorXd truth = dm::shepp_logan(d.size);
  // Noisy sinogram: b = A x_true + σ·‖A x_true‖/sqrt(m)·ε, ε ~ N(0, I).
  Eigen::VectorXd b(projector.rows());
  projector.apply(truth, b);
  std::mt19937_64 gen(d.seed);
  std::normal_distribution<double> normal;
  const double sigma = d.noise * b.norm() / std::sqrt(double(b.size()));
  for (auto& v : b) v += sigma * normal(gen);
  const auto adjoint = difflsq::check_adjoint(projector);
  std::printf("parallel-beam tomography: %dx%d image, %d angles x %d detectors "
              "(A is %lld x %lld, applied matrix-free)\n",
              d.size, d.size, d.angles, projector.detectors(),
              static_cast<long long>(projector.rows()), static_cast<long long>(projector.cols()));
  std::printf("dot test <Ax,y> = <x,A^T y>: relative error %.1e (%s)\n", adjoint.relative_error,
              adjoint.passed ? "passed" : "FAILED");
  std::printf("noise: %.1f%% of the sinogram's RMS; damping %.3g\n\n", 100 * d.noise, d.damp);

  std::filesystem::create_directories(d.out);
  dm::write_png(d.out + "/phantom.png", truth, d.size, d.size, 0.0, 1.0);
  int rc = adjoint.passed ? 0 : 1;
  for (const std::string method : {"lsqr", "lsmr"}) {
    difflsq::Options<double> o{.damp = d.damp, .atol = 1e-6, .btol = 1e-6,
                               .max_iterations = d.maxiter};
    std::printf("%s   iteration   damped residual/|b|   |x - x_true|/|x_true|\n", method.c_str());
    o.monitor = [&](const difflsq::IterationInfo<double>& it) {
      if (it.iteration % 10 == 0 || it.iteration <= 3)
        std::printf("       %6lld      %.4e         %.4e\n",
                    static_cast<long long>(it.iteration), double(it.r2norm) / b.norm(),
                    (it.x - truth).norm() / truth.norm());
      return difflsq::MonitorAction::Continue;
    };
    const auto start = Clock::now();
    const auto r = run_method(method, projector, b, o);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double err = (r.x - truth).norm() / truth.norm();
    difflsq::Report<double> rep = r;
    print_report(method.c_str(), rep, seconds);
    std::printf("  relative error against the ground truth: %.4f\n", err);
    const std::string png = d.out + "/reconstruction_" + method + ".png";
    dm::write_png(png, r.x, d.size, d.size, 0.0, 1.0);
    std::printf("  wrote %s\n\n", png.c_str());
    if (r.status == difflsq::Status::NonFinite) rc = 1;
  }
  std::printf("wrote %s/phantom.png (ground truth)\n", d.out.c_str());
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"difflsq: matrix-free least squares (LSQR, LSMR, CGLS)"};
  app.require_subcommand(1);

  SolveSettings s;
  std::string a_path, b_path, out;
  auto* solve = app.add_subcommand("solve", "solve min |Ax - b|^2 + damp^2 |x|^2 for a Matrix Market A");
  solve->add_option("A", a_path, "matrix (Matrix Market, optionally gzipped)")->required();
  solve->add_option("b", b_path, "right-hand side (Matrix Market); default: b = A * ones");
  solve->add_option("--method", s.method, "lsqr, lsmr or cgls")
      ->check(CLI::IsMember({"lsqr", "lsmr", "cgls"}))
      ->capture_default_str();
  solve->add_option("--damp", s.damp, "Tikhonov damping")->capture_default_str();
  solve->add_option("--atol", s.atol, "relative accuracy of A")->capture_default_str();
  solve->add_option("--btol", s.btol, "relative accuracy of b")->capture_default_str();
  solve->add_option("--conlim", s.conlim, "condition limit (0: none)")->capture_default_str();
  solve->add_option("--maxiter", s.maxiter, "iteration limit (0: the method's default)")
      ->check(CLI::NonNegativeNumber);
  solve->add_flag("--scale", s.scale, "column-scaling preconditioner");
  solve->add_flag("--quiet,-q", s.quiet, "no progress line");
  solve->add_option("--out,-o", out, "write x to this Matrix Market file");

  DemoSettings d;
  auto* dem = app.add_subcommand("demo", "tomography reconstruction on an embedded phantom");
  dem->add_option("--size", d.size, "image size N (N x N pixels)")->capture_default_str();
  dem->add_option("--angles", d.angles, "number of projection angles")->capture_default_str();
  dem->add_option("--noise", d.noise, "noise level relative to the sinogram RMS")
      ->capture_default_str();
  dem->add_option("--damp", d.damp, "Tikhonov damping")->capture_default_str();
  dem->add_option("--maxiter", d.maxiter, "iteration limit")->capture_default_str();
  dem->add_option("--out,-o", d.out, "output directory for the PNG images")->capture_default_str();
  dem->add_option("--seed", d.seed, "noise seed")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*dem) return demo(d);
    if (!out.empty()) check_writable(out);
    const auto mm = difflsq::io::read_matrix_market(a_path);
    std::printf("read %s\n", a_path.c_str());
    return mm.is_complex ? solve_file<std::complex<double>>(mm, b_path, out, s)
                         : solve_file<double>(mm, b_path, out, s);
  } catch (const difflsq::io::MatrixMarketError& e) {
    std::fprintf(stderr, "difflsq: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "difflsq: error: %s\n", e.what());
  }
  return 1;
}
