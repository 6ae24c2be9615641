// difflsq demo — parallel-beam X-ray tomography building blocks (header-only).
//
//   * ParallelBeamProjector: a matrix-free discrete Radon transform A (Joseph's method) with
//     an adjoint that is the exact transpose of the forward operator;
//   * shepp_logan(N): the modified Shepp–Logan head phantom;
//   * write_png(...): an 8-bit grayscale PNG writer (libpng's simplified API).
//
// Linking: write_png uses libpng, so a target including this header must link libpng
// (CMake: find_package(PNG REQUIRED) + PNG::PNG; by hand: -lpng16 or -lpng). OpenMP is
// optional: compiled with -fopenmp (_OPENMP defined) the projector runs in parallel,
// otherwise it is sequential. Results are bit-for-bit independent of the thread count.
//
// Geometry and conventions
// ------------------------
// The image is N x N pixels covering [-1,1]^2, pixel size h = 2/N, stored row-major:
// pixel (row r, col c) has index r*N + c and centre (x, y) = (-1 + (c+½)h, 1 - (r+½)h)
// (row 0 at the top, y pointing up). Angle k is θ_k = kπ/angles (k = 0..angles-1);
// detector j sits at offset t_j = (j - (D-1)/2)·Δt with Δt = 2√2/D, so the D detector
// bins always tile [-√2, √2], the diagonal of the image square. The ray (k, j) is the line
// {x cosθ + y sinθ = t_j}, and the sinogram is stored angle-major: index k*D + j.
// With the default D = ⌈√2 N⌉ the detector spacing is ≈ the pixel size.
//
// Projector model (Joseph 1982)
// -----------------------------
// A ray is "row-driven" when |cosθ| ≥ |sinθ| (steeper than 45°, it crosses every pixel row
// once) and "column-driven" otherwise. For a row-driven ray, at each image row r the ray's
// crossing point is located at the continuous column coordinate u (pixel centres at
// integer u), the image is linearly interpolated between columns ⌊u⌋ and ⌊u⌋+1, and the
// interpolated value is weighted by the path length through the row, h/|cosθ|. Pixels
// outside the image are zero. Column-driven rays are handled symmetrically (h/|sinθ|).
// Thus a constant image of value 1 projects to the chord length of the ray through
// [-1,1]^2: exactly (2/|cosθ|) for rays that cross all rows between the outer pixel centres,
// approximately elsewhere — the model sees the image's linear interpolant, which ramps to
// zero over the half pixel outside the square, so rays grazing an edge differ the most.
//
// u is affine in (row, detector): u = base_k + r·line_step_k + j·det_step_k, so only four
// numbers per angle are precomputed (no sparse matrix). Both apply() and apply_adjoint()
// enumerate the weights through the same routine (visit_line), so every weight used by the
// adjoint is bit-for-bit the weight used by the forward operator: Aᵀ is exact up to the
// rounding of the summations. Neither operation allocates heap memory (the adjoint uses a
// 16 KiB stack buffer per thread), given contiguous vectors (see apply()).
//
// Parallelisation (only with OpenMP): the forward operator splits over angles (each thread
// owns whole sinogram rows); the adjoint first splits the row-driven angles over image rows
// and then the column-driven angles over image columns — a row-driven ray at image row r
// only touches pixels in row r (and likewise for columns), so no two threads ever write the
// same pixel. Every output element is accumulated in a fixed order, hence determinism.
#pragma once

#include <png.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace difflsq::demo {

/// Parallel-beam acquisition geometry.
struct ParallelBeamGeometry {
  int image_size = 128;  ///< N: the image has N x N pixels covering [-1,1]^2
  int angles = 180;      ///< number of projection angles, equally spaced in [0, π)
  int detectors = 0;     ///< detector bins per angle over [-√2, √2]; 0 -> ⌈√2 N⌉
};

/// Matrix-free parallel-beam projector (Joseph's method); see the file comment.
class ParallelBeamProjector {
 public:
  using Scalar = double;  // makes the projector a difflsq::LinearOperator as it is

  /// Upper limits that keep every index computation far from overflow.
  static constexpr int max_image_size = 1 << 16;
  static constexpr int max_angles = 1 << 20;
  static constexpr int max_detectors = 1 << 20;

  /// Validates g; throws std::invalid_argument naming the offending field and its value.
  explicit ParallelBeamProjector(const ParallelBeamGeometry& g) : geometry_(g) {
    check_range("image_size", g.image_size, 1, max_image_size);
    check_range("angles", g.angles, 1, max_angles);
    check_range("detectors", g.detectors, 0, max_detectors);
    n_ = g.image_size;
    if (geometry_.detectors == 0) {
      geometry_.detectors = static_cast<int>(std::ceil(std::numbers::sqrt2 * n_));
    }
    d_ = geometry_.detectors;

    const double n = n_;
    h_ = 2.0 / n;
    dt_ = 2.0 * std::numbers::sqrt2 / d_;
    const double t0 = -0.5 * (d_ - 1) * dt_;  // offset of detector 0
    const double centre0 = 1.0 - 0.5 * h_;    // y of row 0 centre = -(x of column 0 centre)
    table_.resize(static_cast<std::size_t>(g.angles));
    for (int k = 0; k < g.angles; ++k) {
      const double theta = std::numbers::pi * k / g.angles;
      const double c = std::cos(theta);
      const double s = std::sin(theta);
      AngleTable& a = table_[static_cast<std::size_t>(k)];
      if (std::abs(c) >= std::abs(s)) {
        // Row r (y_r = centre0 - r h): x = (t - y_r s)/c; u = (x + 1)/h - 1/2 (column coord).
        a.row_driven = true;
        a.base = (t0 - centre0 * s) / (c * h_) + 0.5 * n - 0.5;
        a.line_step = s / c;
        a.det_step = dt_ / (c * h_);
        a.weight = h_ / std::abs(c);
        row_angles_.push_back(k);
      } else {
        // Column c (x_c = -centre0 + c h): y = (t - x_c cosθ)/s; u = (1 - y)/h - 1/2 (row).
        a.row_driven = false;
        a.base = 0.5 * n - 0.5 - (t0 + centre0 * c) / (s * h_);
        a.line_step = c / s;
        a.det_step = -dt_ / (s * h_);
        a.weight = h_ / std::abs(s);
        column_angles_.push_back(k);
      }
    }
  }

  /// Number of sinogram samples: angles * detectors.
  Eigen::Index rows() const { return static_cast<Eigen::Index>(geometry_.angles) * d_; }
  /// Number of image pixels: N * N.
  Eigen::Index cols() const { return static_cast<Eigen::Index>(n_) * n_; }

  /// The geometry with `detectors` resolved (never 0).
  const ParallelBeamGeometry& geometry() const { return geometry_; }
  int image_size() const { return n_; }
  int angles() const { return geometry_.angles; }
  int detectors() const { return d_; }
  double pixel_size() const { return h_; }
  double detector_spacing() const { return dt_; }
  /// θ_k in radians.
  double angle(int k) const { return std::numbers::pi * k / geometry_.angles; }
  /// t_j, the signed distance of detector j's ray from the origin.
  double detector_offset(int j) const { return (j - 0.5 * (d_ - 1)) * dt_; }

  /// sinogram = A image. Both vectors must have the right sizes (cols() and rows());
  /// the sinogram is overwritten. They must not alias. Pass contiguous vectors: a strided
  /// input would make Eigen::Ref copy it into a temporary.
  void apply(const Eigen::Ref<const Eigen::VectorXd>& image,
             Eigen::Ref<Eigen::VectorXd> sinogram) const {
    check_size("apply: image", image.size(), cols());
    check_size("apply: sinogram", sinogram.size(), rows());
    const double* x = image.data();
    double* y = sinogram.data();
    const int n = n_;
    const int d = d_;
    const int na = geometry_.angles;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (parallel_worthwhile())
#endif
    for (int k = 0; k < na; ++k) {
      double* yk = y + static_cast<std::ptrdiff_t>(k) * d;
      std::fill(yk, yk + d, 0.0);
      const AngleTable& a = table_[static_cast<std::size_t>(k)];
      if (a.row_driven) {
        for (int r = 0; r < n; ++r) {
          const double* xr = x + static_cast<std::ptrdiff_t>(r) * n;
          visit_line(
              a, r,
              [&](int j, int i, double w0, double w1) { yk[j] += w0 * xr[i] + w1 * xr[i + 1]; },
              [&](int j, int i, double w) { yk[j] += w * xr[i]; });
        }
      } else {
        for (int c = 0; c < n; ++c) {
          const double* xc = x + c;
          visit_line(
              a, c,
              [&](int j, int i, double w0, double w1) {
                const double* p = xc + static_cast<std::ptrdiff_t>(i) * n;
                yk[j] += w0 * p[0] + w1 * p[n];
              },
              [&](int j, int i, double w) { yk[j] += w * xc[static_cast<std::ptrdiff_t>(i) * n]; });
        }
      }
    }
  }

  /// image = Aᵀ sinogram (back-projection), the exact transpose of apply(). Sizes as for
  /// apply(); the image is overwritten; no aliasing.
  void apply_adjoint(const Eigen::Ref<const Eigen::VectorXd>& sinogram,
                     Eigen::Ref<Eigen::VectorXd> image) const {
    check_size("apply_adjoint: sinogram", sinogram.size(), rows());
    check_size("apply_adjoint: image", image.size(), cols());
    const double* y = sinogram.data();
    double* x = image.data();
    const int n = n_;
    const int d = d_;
    const int n_row_angles = static_cast<int>(row_angles_.size());
    const int n_column_angles = static_cast<int>(column_angles_.size());
    std::fill(x, x + cols(), 0.0);
#ifdef _OPENMP
#pragma omp parallel if (parallel_worthwhile())
#endif
    {
      // Row-driven angles: ray (k, j) at row r touches pixels of row r only.
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (int r = 0; r < n; ++r) {
        double* xr = x + static_cast<std::ptrdiff_t>(r) * n;
        for (int q = 0; q < n_row_angles; ++q) {
          const int k = row_angles_[static_cast<std::size_t>(q)];
          const double* yk = y + static_cast<std::ptrdiff_t>(k) * d;
          visit_line(
              table_[static_cast<std::size_t>(k)], r,
              [&](int j, int i, double w0, double w1) {
                const double v = yk[j];
                xr[i] += w0 * v;
                xr[i + 1] += w1 * v;
              },
              [&](int j, int i, double w) { xr[i] += w * yk[j]; });
        }
      }
      // (implicit barrier) Column-driven angles: ray (k, j) at column c touches column c only.
      // A column is accumulated in a contiguous stack buffer (when it fits) and then added to
      // the image: writing the strided column directly is slow (4K-aliasing stalls).
      double column[column_buffer_size];
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (int c = 0; c < n; ++c) {
        const bool buffered = n <= column_buffer_size;
        double* base = buffered ? column : x + c;
        const std::ptrdiff_t stride = buffered ? 1 : n;
        if (buffered) std::fill(column, column + n, 0.0);
        for (int q = 0; q < n_column_angles; ++q) {
          const int k = column_angles_[static_cast<std::size_t>(q)];
          const double* yk = y + static_cast<std::ptrdiff_t>(k) * d;
          visit_line(
              table_[static_cast<std::size_t>(k)], c,
              [&](int j, int i, double w0, double w1) {
                double* p = base + i * stride;
                const double v = yk[j];
                p[0] += w0 * v;
                p[stride] += w1 * v;
              },
              [&](int j, int i, double w) { base[i * stride] += w * yk[j]; });
        }
        if (buffered) {
          for (int i = 0; i < n; ++i) x[static_cast<std::ptrdiff_t>(i) * n + c] += column[i];
        }
      }
    }
  }

 private:
  static constexpr int column_buffer_size = 2048;  // 16 KiB of stack per thread

  // Per-angle table: for image line `line` (a row if row_driven, else a column) and detector
  // j, the ray crosses the line at coordinate u = base + line*line_step + j*det_step along
  // it (pixel centres at u = 0..N-1), with path length `weight` per line.
  struct AngleTable {
    bool row_driven = true;
    double base = 0;
    double line_step = 0;
    double det_step = 0;
    double weight = 0;
  };

  // The single source of the operator's weights: forward and adjoint both enumerate them
  // here. For image line `line` of angle table `a` and every detector j whose ray meets the
  // line within the image (-1 < u < N), the ray's linear-interpolation weights are passed on
  // as pair(j, i, w0, w1) (weight w0 for in-line pixel i, w1 for pixel i+1, 0 <= i < N-1) or,
  // when only one of the two pixels lies inside the image, as single(j, i, w).
  template <class Pair, class Single>
  void visit_line(const AngleTable& a, int line, Pair&& pair, Single&& single) const {
    const double n = n_;
    const double u0 = a.base + line * a.line_step;
    const double du = a.det_step;  // |du| = √2 N / (D |cos| or |sin|) >= √2 N / D > 0
    // Detectors with -1 < u < N, solved for j; widened by one and clamped, the exact
    // test below decides (the range only saves work).
    double jlo = (-1.0 - u0) / du;
    double jhi = (n - u0) / du;
    if (jlo > jhi) std::swap(jlo, jhi);
    jlo = std::max(std::floor(jlo) - 1.0, 0.0);
    jhi = std::min(std::ceil(jhi) + 1.0, static_cast<double>(d_ - 1));
    if (!(jlo <= jhi)) return;
    const int j_begin = static_cast<int>(jlo);
    const int j_end = static_cast<int>(jhi);
    // Interior detectors, where both pixels ⌊u⌋ and ⌊u⌋+1 exist (0 <= u < N-1), kept one full
    // step |du| away from either end: far more than the rounding of u, so the unchecked
    // loop below cannot leave the image. (Empty when N = 1 or the ray misses the interior.)
    double klo = (0.0 - u0) / du;
    double khi = (n - 1.0 - u0) / du;
    if (klo > khi) std::swap(klo, khi);
    klo = std::max(std::ceil(klo) + 1.0, jlo);
    khi = std::min(std::floor(khi) - 1.0, jhi);
    int k_begin = j_end + 1;  // [k_begin, k_end] interior; empty by default
    int k_end = j_end;
    if (klo <= khi) {
      k_begin = static_cast<int>(klo);
      k_end = static_cast<int>(khi);
    }
    const double w = a.weight;
    const int last = n_ - 1;
    // Edge detectors: exact tests.
    auto edge = [&](int j) {
      const double u = u0 + j * du;
      if (!(u > -1.0 && u < n)) return;
      // ⌊u⌋ by truncating u + 1 > 0. The min guards the rounding of u + 1 up to N + 1; a
      // fraction that rounding pushes just outside [0, 1) only perturbs the weights by an
      // ulp, identically in both directions.
      const int i = std::min(static_cast<int>(u + 1.0) - 1, last);
      const double w1 = (u - i) * w;  // weight of pixel i + 1
      const double w0 = w - w1;       // weight of pixel i
      if (static_cast<unsigned>(i) < static_cast<unsigned>(last)) {
        pair(j, i, w0, w1);
      } else if (i < 0) {
        single(j, 0, w1);
      } else {
        single(j, last, w0);
      }
    };
    for (int j = j_begin; j < k_begin; ++j) edge(j);
    // Incremental u: its drift, < D ulps of N, is negligible against the one-step margin
    // |du| >= √2 N / D (D <= 2^20), and it is the same drift in forward and adjoint.
    double u_next = u0 + k_begin * du;
    for (int j = k_begin; j <= k_end; ++j) {
      const double u = u_next;  // 0 < u < N - 1 here
      u_next += du;
      const int i = static_cast<int>(u);  // = ⌊u⌋
      const double w1 = (u - i) * w;
      const double w0 = w - w1;
      pair(j, i, w0, w1);
    }
    for (int j = std::max(k_end + 1, j_begin); j <= j_end; ++j) edge(j);
  }

  bool parallel_worthwhile() const {
    // Below ~1e5 weights the thread start-up costs more than it saves.
    return static_cast<double>(geometry_.angles) * n_ * d_ > 1e5;
  }

  static void check_range(const char* field, int value, int lo, int hi) {
    if (value < lo || value > hi) {
      throw std::invalid_argument("ParallelBeamGeometry: " + std::string(field) + " = " +
                                  std::to_string(value) + " is invalid (must be in [" +
                                  std::to_string(lo) + ", " + std::to_string(hi) + "])");
    }
  }
  static void check_size(const char* what, Eigen::Index got, Eigen::Index expected) {
    if (got != expected) {
      throw std::invalid_argument("ParallelBeamProjector::" + std::string(what) + " has size " +
                                  std::to_string(got) + ", expected " + std::to_string(expected));
    }
  }

  ParallelBeamGeometry geometry_;
  int n_ = 0;
  int d_ = 0;
  double h_ = 0;
  double dt_ = 0;
  std::vector<AngleTable> table_;
  std::vector<int> row_angles_;
  std::vector<int> column_angles_;
};

/// One ellipse of a phantom: density increment `value` inside
/// ((x' / a)² + (y' / b)² <= 1), where (x', y') are (x - x0, y - y0) rotated by -phi.
struct PhantomEllipse {
  double value, a, b, x0, y0, phi_degrees;
};

/// The 10 ellipses of the Shepp–Logan head phantom with the "modified" (higher-contrast)
/// intensities of Toft (1996), as used by MATLAB's phantom('Modified Shepp-Logan').
inline constexpr PhantomEllipse modified_shepp_logan_ellipses[10] = {
    {1.0, 0.69, 0.92, 0.0, 0.0, 0.0},         {-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0},
    {-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0}, {-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0},
    {0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0},    {0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0},
    {0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0},    {0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0},
    {0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0},  {0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0},
};

/// The modified Shepp–Logan phantom sampled at the pixel centres of the N x N grid on
/// [-1,1]^2 (same pixel convention as the projector: row-major, row 0 at the top, y up).
/// Values lie in [0, 1] (sums like 1 - 0.8 - 0.2 are clamped to exactly 0).
/// Throws std::invalid_argument if N < 1.
inline Eigen::VectorXd shepp_logan(int N) {
  if (N < 1 || N > ParallelBeamProjector::max_image_size) {
    throw std::invalid_argument("shepp_logan: N = " + std::to_string(N) + " is invalid");
  }
  struct Prepared {
    double value, inv_a2, inv_b2, x0, y0, cos_phi, sin_phi;
  };
  Prepared e[10];
  for (int q = 0; q < 10; ++q) {
    const PhantomEllipse& p = modified_shepp_logan_ellipses[q];
    const double phi = p.phi_degrees * std::numbers::pi / 180.0;
    const double inv_a2 = 1.0 / (p.a * p.a);
    const double inv_b2 = 1.0 / (p.b * p.b);
    e[q] = {p.value, inv_a2, inv_b2, p.x0, p.y0, std::cos(phi), std::sin(phi)};
  }
  const double h = 2.0 / N;
  Eigen::VectorXd image(static_cast<Eigen::Index>(N) * N);
  for (int r = 0; r < N; ++r) {
    const double y = 1.0 - (r + 0.5) * h;
    for (int c = 0; c < N; ++c) {
      const double x = -1.0 + (c + 0.5) * h;
      double v = 0.0;
      for (const Prepared& p : e) {
        const double dx = x - p.x0;
        const double dy = y - p.y0;
        const double xr = dx * p.cos_phi + dy * p.sin_phi;
        const double yr = -dx * p.sin_phi + dy * p.cos_phi;
        if (xr * xr * p.inv_a2 + yr * yr * p.inv_b2 <= 1.0) v += p.value;
      }
      image[static_cast<Eigen::Index>(r) * N + c] = std::clamp(v, 0.0, 1.0);
    }
  }
  return image;
}

/// Writes `image` (row-major, width x height, row 0 at the top) as an 8-bit grayscale PNG,
/// mapping [lo, hi] linearly to [0, 255] (rounded) and clamping outside values; NaN -> 0.
/// Throws std::invalid_argument for inconsistent arguments (size != width*height,
/// non-positive dimensions, !(lo < hi) or non-finite lo/hi) and std::runtime_error if the
/// file cannot be written (the message includes libpng's).
inline void write_png(const std::string& path, const Eigen::VectorXd& image, int width, int height,
                      double lo, double hi) {
  if (width <= 0 || height <= 0) {
    throw std::invalid_argument("write_png: invalid dimensions " + std::to_string(width) + " x " +
                                std::to_string(height));
  }
  if (image.size() != static_cast<Eigen::Index>(width) * height) {
    throw std::invalid_argument("write_png: image has " + std::to_string(image.size()) +
                                " values, expected " + std::to_string(width) + " x " +
                                std::to_string(height));
  }
  if (!(std::isfinite(lo) && std::isfinite(hi) && lo < hi)) {
    throw std::invalid_argument("write_png: need finite lo < hi, got lo = " + std::to_string(lo) +
                                ", hi = " + std::to_string(hi));
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(image.size()));
  const double scale = 255.0 / (hi - lo);
  for (Eigen::Index i = 0; i < image.size(); ++i) {
    const double t = (image[i] - lo) * scale;
    bytes[static_cast<std::size_t>(i)] =
        !(t > 0.0) ? 0 : (t >= 255.0 ? 255 : static_cast<std::uint8_t>(std::lround(t)));
  }
  png_image png{};  // zero-initialised as the simplified API requires
  png.version = PNG_IMAGE_VERSION;
  png.opaque = nullptr;
  png.width = static_cast<png_uint_32>(width);
  png.height = static_cast<png_uint_32>(height);
  png.format = PNG_FORMAT_GRAY;
  if (!png_image_write_to_file(&png, path.c_str(), 0, bytes.data(), static_cast<png_int_32>(width),
                               nullptr)) {
    const std::string message = png.message;
    png_image_free(&png);
    throw std::runtime_error("write_png: cannot write '" + path + "': " + message);
  }
  png_image_free(&png);
}

}  // namespace difflsq::demo
