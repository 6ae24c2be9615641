// Test problems with known singular value decompositions (LSTP-style): A = U Σ Vᴴ with chosen
// σ, so that the exact (damped, minimum-norm) solution is known in closed form, computed in
// double precision whatever the scalar type under test.
#pragma once

#include <Eigen/Dense>
#include <complex>
#include <difflsq/difflsq.hpp>
#include <random>
#include <vector>

namespace difflsq::test {

template <class Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

/// The double-precision counterpart of a scalar: double or std::complex<double>.
template <class Scalar>
using Wide = std::conditional_t<Eigen::NumTraits<Scalar>::IsComplex, std::complex<double>, double>;

template <class Scalar>
Mat<Scalar> random_matrix(Index m, Index n, std::mt19937_64& gen) {
  std::normal_distribution<double> normal;
  Mat<Scalar> a(m, n);
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < m; ++i) {
      if constexpr (Eigen::NumTraits<Scalar>::IsComplex)
        a(i, j) = Scalar(typename Scalar::value_type(normal(gen)),
                         typename Scalar::value_type(normal(gen)));
      else
        a(i, j) = Scalar(normal(gen));
    }
  return a;
}

template <class Scalar>
Vector<Scalar> random_vector(Index n, std::mt19937_64& gen) {
  return random_matrix<Scalar>(n, 1, gen).col(0);
}

/// A problem A = U diag(σ) Vᴴ (m × n, σ given, zeros allowed), and b.
template <class Scalar>
struct KnownSvdProblem {
  using W = Wide<Scalar>;
  Mat<W> u, v;          // m × k and n × k with orthonormal columns, k = min(m, n)
  Eigen::VectorXd sigma;
  Mat<W> a_wide;        // A in double precision
  Mat<Scalar> a;        // A in the scalar under test
  Vector<Scalar> b;

  KnownSvdProblem(Index m, Index n, const Eigen::VectorXd& singular_values, unsigned seed) {
    std::mt19937_64 gen(seed);
    const Index k = std::min(m, n);
    sigma = singular_values;
    u = Eigen::HouseholderQR<Mat<W>>(random_matrix<W>(m, k, gen)).householderQ() *
        Mat<W>::Identity(m, k);
    v = Eigen::HouseholderQR<Mat<W>>(random_matrix<W>(n, k, gen)).householderQ() *
        Mat<W>::Identity(n, k);
    a_wide = u * sigma.cast<W>().asDiagonal() * v.adjoint();
    a = a_wide.template cast<Scalar>();
    b = random_vector<W>(m, gen).template cast<Scalar>();
  }

  /// argmin ‖Ax − b‖² + λ²‖x − x0‖², minimum-norm where not unique, in double precision:
  /// x = x0 + V diag(σ/(σ² + λ²)) Uᴴ (b − A x0) (terms with σ = 0 dropped).
  Vector<W> solution(double damp, const Vector<W>* x0 = nullptr) const {
    Vector<W> r = b.template cast<W>();
    if (x0) r -= a_wide * *x0;
    Vector<W> c = u.adjoint() * r;
    for (Index i = 0; i < c.size(); ++i) {
      const double s = sigma[i], d = s * s + damp * damp;
      c[i] = d > 0 ? c[i] * (s / d) : W(0);
    }
    Vector<W> x = v * c;
    if (x0) {
      // With damping, the component of x0 outside range(V) is kept; without it, the
      // minimum-norm correction is taken (LSQR from x0 gives x0 + V(...)).
      x += *x0;
    }
    return x;
  }

  double cond() const {
    double hi = 0, lo = 1e300;
    for (Index i = 0; i < sigma.size(); ++i)
      if (sigma[i] > 0) {
        hi = std::max(hi, sigma[i]);
        lo = std::min(lo, sigma[i]);
      }
    return hi / lo;
  }
};

/// Singular values spread geometrically in [1, κ], with `zeros` trailing zeros.
inline Eigen::VectorXd spread(Index k, double kappa, Index zeros = 0) {
  Eigen::VectorXd s(k);
  for (Index i = 0; i < k; ++i)
    s[i] = i < k - zeros ? std::pow(kappa, -double(i) / std::max<Index>(1, k - zeros - 1)) * kappa
                         : 0.0;
  return s;
}

using difflsq::Method;

inline const char* name(Method m) { return to_string(m); }

inline constexpr Method kMethods[] = {Method::Lsqr, Method::Lsmr, Method::Cgls};

/// Relative error of x against a double-precision reference.
template <class Scalar, class W>
double relative_error(const Vector<Scalar>& x, const Vector<W>& ref) {
  const double nr = ref.norm();
  const double d = (x.template cast<W>() - ref).norm();
  return nr > 0 ? d / nr : d;
}

}  // namespace difflsq::test
