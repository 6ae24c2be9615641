// Tests of the tomography demo's building blocks (src/cli/tomography.hpp): the parallel-beam
// projector and its adjoint, the modified Shepp–Logan phantom and the PNG writer.
// Needs libpng at link time. The doctest main lives elsewhere.
#include <doctest/doctest.h>
#include <png.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numbers>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/cli/tomography.hpp"

namespace {

using difflsq::demo::ParallelBeamGeometry;
using difflsq::demo::ParallelBeamProjector;
using Eigen::Index;
using Eigen::VectorXd;

VectorXd random_vector(Index n, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  VectorXd v(n);
  for (Index i = 0; i < n; ++i) v[i] = dist(rng);
  return v;
}

std::string describe(const ParallelBeamGeometry& g) {
  return "N=" + std::to_string(g.image_size) + " angles=" + std::to_string(g.angles) +
         " detectors=" + std::to_string(g.detectors);
}

// Length of the chord of the line {x cosθ + y sinθ = t} through the square [-1,1]^2.
double square_chord(double theta, double t) {
  const double c = std::cos(theta), s = std::sin(theta);
  // Points t(c, s) + τ(-s, c); intersect the slabs |x| <= 1 and |y| <= 1 in τ.
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  const auto slab = [&](double p0, double dir) {
    if (std::abs(dir) < 1e-300) {
      if (std::abs(p0) > 1.0) hi = lo - 1.0;
      return;
    }
    double a = (-1.0 - p0) / dir, b = (1.0 - p0) / dir;
    if (a > b) std::swap(a, b);
    lo = std::max(lo, a);
    hi = std::min(hi, b);
  };
  slab(t * c, -s);
  slab(t * s, c);
  return std::max(0.0, hi - lo);
}

// Pixel-area fractions (8x8 sub-samples per pixel) of the disc x² + y² <= R², N x N image.
VectorXd disc_image(int N, double R) {
  const double h = 2.0 / N;
  VectorXd img(static_cast<Index>(N) * N);
  for (int r = 0; r < N; ++r) {
    for (int c = 0; c < N; ++c) {
      int inside = 0;
      for (int a = 0; a < 8; ++a) {
        for (int b = 0; b < 8; ++b) {
          const double x = -1.0 + (c + (a + 0.5) / 8.0) * h;
          const double y = 1.0 - (r + (b + 0.5) / 8.0) * h;
          inside += (x * x + y * y <= R * R) ? 1 : 0;
        }
      }
      img[static_cast<Index>(r) * N + c] = inside / 64.0;
    }
  }
  return img;
}

// Geometries for the adjoint tests: even/odd N, one and many angles (including exactly 45°
// and 90°, where the row/column-driven switch happens), default and explicit detector
// counts, fewer and more detectors than pixels.
const std::vector<ParallelBeamGeometry>& adjoint_geometries() {
  static const std::vector<ParallelBeamGeometry> g = {
      {1, 1, 1},   {1, 3, 0},      {2, 1, 0},     {2, 4, 5},     {3, 2, 1},    {5, 7, 3},
      {7, 4, 0},   {8, 8, 40},     {16, 1, 0},    {17, 45, 9},   {32, 180, 0}, {33, 90, 61},
      {64, 13, 0}, {65, 180, 200}, {128, 180, 0}, {129, 37, 17},
  };
  return g;
}

}  // namespace

TEST_CASE("tomography: geometry, sizes and accessors") {
  const ParallelBeamProjector p(ParallelBeamGeometry{});  // defaults: 128, 180, ⌈√2·128⌉
  CHECK(p.image_size() == 128);
  CHECK(p.angles() == 180);
  CHECK(p.detectors() == 182);  // √2·128 = 181.02
  CHECK(p.geometry().detectors == 182);
  CHECK(p.rows() == 180 * 182);
  CHECK(p.cols() == 128 * 128);
  CHECK(p.pixel_size() == doctest::Approx(2.0 / 128));
  CHECK(p.detector_spacing() == doctest::Approx(2.0 * std::numbers::sqrt2 / 182));
  CHECK(p.angle(0) == 0.0);
  CHECK(p.angle(90) == doctest::Approx(std::numbers::pi / 2));
  // Detector offsets are symmetric and tile [-√2, √2].
  CHECK(p.detector_offset(0) == doctest::Approx(-p.detector_offset(181)));
  CHECK(p.detector_offset(0) - 0.5 * p.detector_spacing() == doctest::Approx(-std::sqrt(2.0)));

  const ParallelBeamProjector q({7, 3, 5});
  CHECK(q.rows() == 15);
  CHECK(q.cols() == 49);
  CHECK(ParallelBeamProjector({1, 1, 0}).detectors() == 2);  // ⌈√2⌉
}

TEST_CASE("tomography: invalid geometries throw std::invalid_argument naming field and value") {
  const auto message = [](const ParallelBeamGeometry& g) -> std::string {
    try {
      ParallelBeamProjector p(g);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "";
  };
  CHECK_THROWS_AS(ParallelBeamProjector({0, 180, 0}), std::invalid_argument);
  CHECK_THROWS_AS(ParallelBeamProjector({-4, 180, 0}), std::invalid_argument);
  CHECK_THROWS_AS(ParallelBeamProjector({128, 0, 0}), std::invalid_argument);
  CHECK_THROWS_AS(ParallelBeamProjector({128, -1, 0}), std::invalid_argument);
  CHECK_THROWS_AS(ParallelBeamProjector({128, 180, -3}), std::invalid_argument);
  CHECK_THROWS_AS(ParallelBeamProjector({1 << 20, 180, 0}), std::invalid_argument);
  CHECK_THROWS_AS(ParallelBeamProjector({128, 180, (1 << 20) + 1}), std::invalid_argument);

  const std::string m1 = message({0, 180, 0});
  CHECK(m1.find("image_size") != std::string::npos);
  CHECK(m1.find("= 0") != std::string::npos);
  const std::string m2 = message({16, -7, 0});
  CHECK(m2.find("angles") != std::string::npos);
  CHECK(m2.find("-7") != std::string::npos);
  const std::string m3 = message({16, 10, -2});
  CHECK(m3.find("detectors") != std::string::npos);
  CHECK(m3.find("-2") != std::string::npos);

  // Wrong vector sizes are rejected too.
  const ParallelBeamProjector p({8, 4, 0});
  VectorXd img(p.cols()), sino(p.rows()), bad(p.cols() + 1);
  CHECK_THROWS_AS(p.apply(bad, sino), std::invalid_argument);
  CHECK_THROWS_AS(p.apply(img, bad), std::invalid_argument);
  CHECK_THROWS_AS(p.apply_adjoint(bad, img), std::invalid_argument);
  CHECK_THROWS_AS(p.apply_adjoint(sino, bad), std::invalid_argument);
}

TEST_CASE("tomography: dot test <A x, y> = <x, A^T y> to 1e-12") {
  std::mt19937_64 rng(20240601);
  for (const ParallelBeamGeometry& g : adjoint_geometries()) {
    CAPTURE(describe(g));
    const ParallelBeamProjector A(g);
    VectorXd Ax(A.rows()), ATy(A.cols());
    // Mixed-sign vectors: error relative to the Cauchy–Schwarz scale ‖Ax‖‖y‖ (the inner
    // products themselves may cancel); non-negative vectors: relative to the value itself.
    for (int trial = 0; trial < 3; ++trial) {
      const bool positive = trial == 2;
      const VectorXd x = random_vector(A.cols(), rng, positive ? 0.0 : -1.0, 1.0);
      const VectorXd y = random_vector(A.rows(), rng, positive ? 0.0 : -1.0, 1.0);
      A.apply(x, Ax);
      A.apply_adjoint(y, ATy);
      const double lhs = Ax.dot(y);
      const double rhs = x.dot(ATy);
      const double scale = positive ? std::abs(lhs) : Ax.norm() * y.norm();
      REQUIRE(scale > 0.0);
      CHECK(std::abs(lhs - rhs) <= 1e-12 * scale);
    }
  }
}

TEST_CASE("tomography: the explicit matrices of apply and apply_adjoint are transposes") {
  // Every weight comes from the same routine, so entries agree to the last bits (up to a
  // few ulps should a compiler contract the weight arithmetic differently in the two
  // instantiations).
  for (const ParallelBeamGeometry& g :
       {ParallelBeamGeometry{1, 2, 3}, ParallelBeamGeometry{3, 4, 0}, ParallelBeamGeometry{4, 7, 2},
        ParallelBeamGeometry{6, 9, 11}}) {
    CAPTURE(describe(g));
    const ParallelBeamProjector A(g);
    const Index m = A.rows(), n = A.cols();
    Eigen::MatrixXd forward(m, n), adjoint(n, m);
    VectorXd e(n), col(m);
    for (Index p = 0; p < n; ++p) {
      e.setZero();
      e[p] = 1.0;
      A.apply(e, col);
      forward.col(p) = col;
    }
    VectorXd f(m), row(n);
    for (Index j = 0; j < m; ++j) {
      f.setZero();
      f[j] = 1.0;
      A.apply_adjoint(f, row);
      adjoint.col(j) = row;
    }
    CHECK(forward.minCoeff() >= -1e-15);  // interpolation weights are non-negative
    CHECK(forward.maxCoeff() > 0.0);
    CHECK((forward - adjoint.transpose()).cwiseAbs().maxCoeff() <= 1e-14 * forward.maxCoeff());
  }
}

TEST_CASE("tomography: outputs are overwritten; views into larger vectors work") {
  const ParallelBeamProjector A({24, 30, 0});
  std::mt19937_64 rng(7);
  const VectorXd x = random_vector(A.cols(), rng, 0.0, 1.0);
  const VectorXd y = random_vector(A.rows(), rng, -1.0, 1.0);

  VectorXd Ax0 = VectorXd::Zero(A.rows()), ATy0 = VectorXd::Zero(A.cols());
  A.apply(x, Ax0);
  A.apply_adjoint(y, ATy0);

  VectorXd Ax1 = VectorXd::Constant(A.rows(), std::numeric_limits<double>::quiet_NaN());
  VectorXd ATy1 = VectorXd::Constant(A.cols(), 1e300);
  A.apply(x, Ax1);
  A.apply_adjoint(y, ATy1);
  CHECK(Ax1 == Ax0);  // deterministic: same summation order every call
  CHECK(ATy1 == ATy0);

  // Segments of larger vectors (Eigen::Ref binds without copying); the rest is untouched.
  VectorXd big_in = VectorXd::Zero(A.cols() + 10), big_out = VectorXd::Constant(A.rows() + 7, 5.0);
  big_in.segment(3, A.cols()) = x;
  A.apply(big_in.segment(3, A.cols()), big_out.segment(2, A.rows()));
  CHECK(big_out.segment(2, A.rows()) == Ax0);
  CHECK(big_out.head(2) == VectorXd::Constant(2, 5.0));
  CHECK(big_out.tail(5) == VectorXd::Constant(5, 5.0));
}

TEST_CASE("tomography: a constant image projects to chord lengths through the square") {
  // A row-driven ray (|cosθ| >= |sinθ|) that meets the first and last pixel rows within
  // the outer pixel centres samples the interpolated image at value 1 in all N rows, so its
  // projection is exactly N·h/|cosθ| = 2/|cosθ|: the chord through [-1,1]^2 (likewise for
  // column-driven rays with sinθ). That is the path-length scaling, checked to rounding.
  for (const ParallelBeamGeometry& g :
       {ParallelBeamGeometry{16, 24, 0}, ParallelBeamGeometry{33, 180, 0},
        ParallelBeamGeometry{128, 180, 0}, ParallelBeamGeometry{64, 36, 301}}) {
    CAPTURE(describe(g));
    const ParallelBeamProjector A(g);
    const double h = A.pixel_size();
    VectorXd y(A.rows());
    A.apply(VectorXd::Ones(A.cols()), y);
    int checked = 0;
    for (int k = 0; k < A.angles(); ++k) {
      const double theta = A.angle(k);
      const double big = std::max(std::abs(std::cos(theta)), std::abs(std::sin(theta)));
      const double small = std::min(std::abs(std::cos(theta)), std::abs(std::sin(theta)));
      for (int j = 0; j < A.detectors(); ++j) {
        const double t = A.detector_offset(j);
        const double value = y[static_cast<Index>(k) * A.detectors() + j];
        CHECK(value >= 0.0);
        // Largest |offset| along the other axis where the ray meets the outer row centres.
        if ((std::abs(t) + (1.0 - 0.5 * h) * small) / big <= 1.0 - 0.5 * h - 1e-9) {
          CHECK(value == doctest::Approx(square_chord(theta, t)).epsilon(1e-12));
          CHECK(value == doctest::Approx(2.0 / big).epsilon(1e-12));
          ++checked;
        }
      }
    }
    CHECK(checked > A.rows() / 4);
  }
}

TEST_CASE("tomography: a centred disc projects to its analytic chords 2 sqrt(R^2 - t^2)") {
  // Image: the disc R = 0.8 as pixel-area fractions (8x8 sub-samples; area error negligible).
  // Tolerance: the discrete disc differs from the true one only in the ring of pixels cut by
  // the circle, and Joseph's linear interpolation smears that ring over one more pixel along
  // the ray's stepping axis. A ray crosses the ring twice; for |t| <= 0.8 R it meets the
  // circle at an angle α to the normal with cos α = sqrt(1 - (t/R)²) >= 0.6, so each
  // crossing spans a path of O(h / cos α) <= O(1.7 h) on which the interpolated disc differs
  // from the indicator. Those local errors are antisymmetric about the circle to first order
  // and largely cancel: measured max |error| ≈ 0.3-0.4 h and RMS ≈ 0.08 h for N = 32..512.
  // We require max <= h (one pixel) and RMS <= 0.15 h, and check the RMS error halves when
  // N doubles (first-order convergence: the discretisation, not a scaling bug, is left).
  const double R = 0.8;
  double previous_rms = 0.0;
  for (int N : {32, 64, 128}) {
    CAPTURE(N);
    const ParallelBeamProjector A({N, 180, 0});
    const double h = A.pixel_size();
    VectorXd y(A.rows());
    A.apply(disc_image(N, R), y);
    double max_err = 0.0, sum_sq = 0.0;
    int count = 0;
    for (int k = 0; k < A.angles(); ++k) {
      for (int j = 0; j < A.detectors(); ++j) {
        const double t = A.detector_offset(j);
        const double value = y[static_cast<Index>(k) * A.detectors() + j];
        if (std::abs(t) > 0.8 * R) {
          // Outside the disc (plus one smear pixel both sides), the projection vanishes.
          if (std::abs(t) > R + 2.0 * h) CHECK(value == 0.0);
          continue;
        }
        const double err = std::abs(value - 2.0 * std::sqrt(R * R - t * t));
        max_err = std::max(max_err, err);
        sum_sq += err * err;
        ++count;
      }
    }
    const double rms = std::sqrt(sum_sq / count);
    CHECK(max_err <= h);
    CHECK(rms <= 0.15 * h);
    if (previous_rms > 0.0) CHECK(rms <= 0.6 * previous_rms);
    previous_rms = rms;
  }
}

TEST_CASE("tomography: each projection conserves the image's mass") {
  // ∫ p_θ(t) dt = ∫∫ f for every θ; the detector sum Σ_j y_kj Δt is a midpoint rule for it
  // with spacing Δt ≈ h. For the phantom (projections with square-root edges) the rule's
  // error is O(h^1.5) ≈ 0.3 % at N = 128 (measured 0.26 %), 0.08 % at N = 256; tolerance 1 %.
  for (int N : {128, 256}) {
    CAPTURE(N);
    const ParallelBeamProjector A({N, 180, 0});
    const VectorXd x = difflsq::demo::shepp_logan(N);
    VectorXd y(A.rows());
    A.apply(x, y);
    const double mass = x.sum() * A.pixel_size() * A.pixel_size();
    for (int k = 0; k < A.angles(); ++k) {
      const double m = y.segment(static_cast<Index>(k) * A.detectors(), A.detectors()).sum() *
                       A.detector_spacing();
      CHECK(m == doctest::Approx(mass).epsilon(0.01));
    }
  }
}

TEST_CASE("tomography: modified Shepp-Logan phantom") {
  using difflsq::demo::modified_shepp_logan_ellipses;
  using difflsq::demo::shepp_logan;
  CHECK_THROWS_AS(shepp_logan(0), std::invalid_argument);

  // Values and orientation at N = 200 (pixel (r, c) centre: x = -1 + (c+½)h, y = 1 - (r+½)h).
  {
    const int N = 200;
    const VectorXd p = shepp_logan(N);
    REQUIRE(p.size() == N * N);
    CHECK(p.minCoeff() == 0.0);
    CHECK(p.maxCoeff() == 1.0);
    const auto at = [&](double x, double y) {
      const int c = static_cast<int>(std::floor((x + 1.0) * N / 2.0));
      const int r = static_cast<int>(std::floor((1.0 - y) * N / 2.0));
      return p[static_cast<Index>(r) * N + c];
    };
    CHECK(at(0.0, 0.9) == doctest::Approx(1.0));    // skull (outer ellipse only)
    CHECK(at(0.0, -0.3) == doctest::Approx(0.2));   // brain
    CHECK(at(0.0, 0.35) == doctest::Approx(0.3));   // ellipse 5, in the upper half
    CHECK(at(0.0, -0.35) == doctest::Approx(0.2));  // ... and not mirrored
    CHECK(at(-0.22, 0.0) == doctest::Approx(0.0));  // left ventricle
    CHECK(at(0.22, 0.0) == doctest::Approx(0.0));   // right ventricle
    CHECK(at(0.95, 0.95) == doctest::Approx(0.0));  // background corner
  }

  // Mean against the analytic area-weighted mean Σ A_i π a_i b_i / 4 (image area 4).
  // Only pixels cut by an ellipse boundary carry error, each at most |A_i| h² / 4 in the
  // mean. Ellipse i cuts at most n_i = 4 (a_i' + b_i')/h + 4 pixels (a_i', b_i': half-sides
  // of its bounding box), which bounds the error rigorously but loosely. The per-pixel
  // errors are A_i h² (1[centre inside] - area fraction)/4 with the fraction spread evenly
  // over the cut pixels, i.e. roughly uniform on ±A_i h²/8 (σ = |A_i| h²/(4√12)) and with
  // incoherent signs, so the error behaves like σ = h²/(4√12) sqrt(Σ A_i² n_i); we require
  // 4σ (measured: 0.2-1.1σ for N = 32..512), and the rigorous bound.
  double analytic = 0.0;
  for (const auto& e : modified_shepp_logan_ellipses) {
    analytic += e.value * std::numbers::pi * e.a * e.b / 4.0;
  }
  CHECK(analytic == doctest::Approx(0.123816).epsilon(1e-5));
  for (int N : {64, 128, 256, 257}) {
    CAPTURE(N);
    const VectorXd p = shepp_logan(N);
    CHECK(p.minCoeff() >= 0.0);
    CHECK(p.maxCoeff() <= 1.0);
    const double h = 2.0 / N;
    double variance_sum = 0.0, rigorous = 0.0;
    for (const auto& e : modified_shepp_logan_ellipses) {
      const double phi = e.phi_degrees * std::numbers::pi / 180.0;
      const double c = std::cos(phi), s = std::sin(phi);
      const double half_w = std::sqrt(e.a * e.a * c * c + e.b * e.b * s * s);
      const double half_h = std::sqrt(e.a * e.a * s * s + e.b * e.b * c * c);
      const double cut = 4.0 * (half_w + half_h) / h + 4.0;
      variance_sum += e.value * e.value * cut;
      rigorous += std::abs(e.value) * h * h / 4.0 * cut;
    }
    const double sigma = h * h / (4.0 * std::sqrt(12.0)) * std::sqrt(variance_sum);
    const double err = std::abs(p.mean() - analytic);
    CHECK(err <= rigorous);
    CHECK(err <= 4.0 * sigma);
  }
}

TEST_CASE("tomography: write_png writes an 8-bit grayscale PNG of the right size") {
  using difflsq::demo::write_png;
  std::random_device rd;
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("difflsq_test_tomography_" + std::to_string(rd()) + std::to_string(rd()) + ".png");

  const int width = 5, height = 3;
  VectorXd img(width * height);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Row-major, row 0 first; lo = -1, hi = 1.
  img << -2.0, -1.0, 0.0, 1.0, 5.0,   //
      -0.5, 0.5, nan, 0.999, -1e300,  //
      0.25, -0.25, 1e300, -0.999, 0.0;
  const std::uint8_t expected[] = {0,   0,   128, 255, 255,  //
                                   64,  191, 0,   255, 0,    //
                                   159, 96,  255, 0,   128};
  write_png(path.string(), img, width, height, -1.0, 1.0);

  // Signature, IHDR: width, height, bit depth 8, colour type 0 (grayscale).
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::vector<unsigned char> head(26);
  in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
  REQUIRE(in.gcount() == 26);
  in.close();
  const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  for (int i = 0; i < 8; ++i) CHECK(head[static_cast<std::size_t>(i)] == signature[i]);
  const auto be32 = [&](int at) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | head[static_cast<std::size_t>(at + i)];
    return v;
  };
  CHECK(std::string(head.begin() + 12, head.begin() + 16) == "IHDR");
  CHECK(be32(16) == static_cast<std::uint32_t>(width));
  CHECK(be32(20) == static_cast<std::uint32_t>(height));
  CHECK(head[24] == 8);
  CHECK(head[25] == 0);

  // Read back the pixels with libpng: mapping, rounding and clamping (NaN -> 0).
  png_image back{};
  back.version = PNG_IMAGE_VERSION;
  REQUIRE(png_image_begin_read_from_file(&back, path.string().c_str()) != 0);
  back.format = PNG_FORMAT_GRAY;
  CHECK(back.width == static_cast<png_uint_32>(width));
  CHECK(back.height == static_cast<png_uint_32>(height));
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(width * height));
  REQUIRE(png_image_finish_read(&back, nullptr, pixels.data(), width, nullptr) != 0);
  for (int i = 0; i < width * height; ++i) {
    CAPTURE(i);
    CHECK(int(pixels[static_cast<std::size_t>(i)]) == int(expected[i]));
  }
  std::filesystem::remove(path);

  // Failures.
  CHECK_THROWS_AS(write_png((path.parent_path() / "no_such_dir_difflsq" / "x.png").string(), img,
                            width, height, -1.0, 1.0),
                  std::runtime_error);
  CHECK_THROWS_AS(write_png(path.string(), img, width + 1, height, -1.0, 1.0),
                  std::invalid_argument);
  CHECK_THROWS_AS(write_png(path.string(), img, 0, 0, -1.0, 1.0), std::invalid_argument);
  CHECK_THROWS_AS(write_png(path.string(), img, width, height, 1.0, 1.0), std::invalid_argument);
  CHECK_THROWS_AS(write_png(path.string(), img, width, height, 0.0, nan), std::invalid_argument);
  CHECK_FALSE(std::filesystem::exists(path));
}
