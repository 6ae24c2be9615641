// The operator adapters, the adjoint view and the dot test.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <difflsq/difflsq.hpp>
#include <limits>
#include <string>
#include <tuple>

#include "test_problems.hpp"

using namespace difflsq;
using namespace difflsq::test;

namespace {

/// An m × n CSR matrix keeping each entry of a random dense one with probability `density`.
template <class Scalar>
Eigen::SparseMatrix<Scalar, Eigen::RowMajor> random_csr(Index m, Index n, double density,
                                                        std::mt19937_64& gen) {
  std::bernoulli_distribution keep(density);
  std::vector<Eigen::Triplet<Scalar>> t;
  const Mat<Scalar> vals = random_matrix<Scalar>(m, n, gen);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j)
      if (keep(gen)) t.emplace_back(i, j, vals(i, j));
  Eigen::SparseMatrix<Scalar, Eigen::RowMajor> a(m, n);
  a.setFromTriplets(t.begin(), t.end());
  return a;
}

}  // namespace

TEST_CASE_TEMPLATE("check_adjoint passes for correct operators and fails for a wrong adjoint",
                   Scalar, float, double, std::complex<float>, std::complex<double>) {
  std::mt19937_64 gen(1);
  const Mat<Scalar> a = random_matrix<Scalar>(17, 9, gen);
  CHECK(check_adjoint(a).passed);
  const Eigen::SparseMatrix<Scalar> s = a.sparseView();
  CHECK(check_adjoint(s).passed);
  const Eigen::SparseMatrix<Scalar, Eigen::RowMajor> sr = s;
  CHECK(check_adjoint(sr).passed);
  auto good = make_operator<Scalar>(17, 9, [&](const auto& x, auto& y) { y.noalias() = a * x; },
                                    [&](const auto& u, auto& v) { v.noalias() = a.adjoint() * u; });
  CHECK(check_adjoint(good).passed);
  CHECK(check_adjoint(adjoint(good)).passed);
  // Transpose without conjugation is wrong for complex; a perturbed adjoint is wrong for all.
  auto wrong = make_operator<Scalar>(
      17, 9, [&](const auto& x, auto& y) { y.noalias() = a * x; },
      [&](const auto& u, auto& v) {
        v.noalias() = a.adjoint() * u;
        v.head(9) += Scalar(RealOf<Scalar>(0.5)) * u.head(9);
      });
  const auto c = check_adjoint(wrong);
  CHECK(!c.passed);
  CHECK(c.relative_error > 1e-3);
  if constexpr (Eigen::NumTraits<Scalar>::IsComplex) {
    auto no_conj = make_operator<Scalar>(
        17, 9, [&](const auto& x, auto& y) { y.noalias() = a * x; },
        [&](const auto& u, auto& v) { v.noalias() = a.transpose() * u; });
    CHECK(!check_adjoint(no_conj).passed);
  }
}

// A view of a temporary matrix would dangle: refused at compile time; of a named one, or of a
// temporary adapter (which the view owns), accepted.
template <class T>
constexpr bool takes_adjoint = requires(T&& t) {
  adjoint(std::forward<T>(t));
};
static_assert(!takes_adjoint<Eigen::MatrixXd>);
static_assert(!takes_adjoint<Eigen::Map<const Eigen::MatrixXd>>);
static_assert(takes_adjoint<const Eigen::MatrixXd&>);
static_assert(takes_adjoint<difflsq::OperatorOf<Eigen::MatrixXd>>);

TEST_CASE("check_adjoint fails on a non-finite product in any trial, and needs a trial") {
  int calls = 0;
  auto nan_once = make_operator(
      4, 3,
      [&](const auto& x, auto& y) {
        y.setZero();
        y.head(3) = x;
        if (++calls == 1) y[0] = std::numeric_limits<double>::quiet_NaN();  // first trial only
      },
      [](const auto& u, auto& v) { v = u.head(3); });
  const auto r = check_adjoint(nan_once);
  CHECK(!r.passed);
  CHECK(std::isnan(r.relative_error));
  auto all_nan = make_operator(
      3, 2, [](const auto&, auto& y) { y.setConstant(std::nan("")); },
      [](const auto&, auto& v) { v.setConstant(std::nan("")); });
  CHECK(!check_adjoint(all_nan).passed);
  CHECK_THROWS_AS(check_adjoint(all_nan, 0), std::invalid_argument);
}

#ifdef _OPENMP
#include <omp.h>

TEST_CASE("CompressedOperator computes every row when OpenMP gives a smaller team than asked") {
  // An operator built for two threads, used where a parallel region gets one (nested here;
  // also OMP_THREAD_LIMIT=1 or OMP_DYNAMIC on a loaded machine): each thread must take the
  // partitions of the missing ones (they were skipped: wrong products, wrong solutions).
  std::mt19937_64 gen(8);
  const Eigen::SparseMatrix<double, Eigen::RowMajor> csr = random_csr<double>(400, 200, 0.05, gen);
  const Eigen::SparseMatrix<double, Eigen::ColMajor> csc = csr;
  const Eigen::VectorXd x = random_vector<double>(200, gen), u = random_vector<double>(400, gen);
  for (int layout = 0; layout < 3; ++layout) {  // compressed, + transposed index, sliced
    CAPTURE(layout);
    const SparseOptions o{.threads = 2, .transposed_index = layout > 0, .sliced = layout == 2};
    const CompressedOperator row(csr, o);
    const CompressedOperator col(csc, o);
    if (row.threads() < 2) continue;  // a one-core machine: nothing to test
    double worst = 0;
    const int levels = omp_get_max_active_levels();
    omp_set_max_active_levels(1);  // the operator's regions, nested, get one thread each
#pragma omp parallel num_threads(2)
#pragma omp single
    {
      Eigen::VectorXd y(400), v(200), w(200), uu = u;
      row.apply(x, y);
      row.apply_adjoint(u, v);
      worst = std::max(
          {worst, (y - csr * x).norm() / y.norm(), (v - csr.transpose() * u).norm() / v.norm()});
      row.apply_sub_norm2_adjoint(x, uu, 0.5, w);
      const Eigen::VectorXd ref_u = csr * x - 0.5 * u;
      worst = std::max({worst, (uu - ref_u).norm() / ref_u.norm(),
                        (w - csr.transpose() * ref_u).norm() / w.norm()});
      col.apply(x, y);
      col.apply_adjoint(u, v);
      worst = std::max(
          {worst, (y - csc * x).norm() / y.norm(), (v - csc.transpose() * u).norm() / v.norm()});
    }
    omp_set_max_active_levels(levels);
    CHECK(worst <= 1e-13);
  }
}
#endif

TEST_CASE("ThreadChoice keeps the faster version of a product and tries the other again") {
  // Stand-ins for a product whose versions take known times (busy waits, so that a
  // descheduled test thread makes a call look slower, never faster).
  const auto spin = [](double micro) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(micro * 1e-6);
    while (std::chrono::steady_clock::now() < end) {
    }
  };
  detail::ThreadChoice choice;
  CHECK(choice.parallel());  // the first calls run in parallel
  double slow_parallel = 200, slow_serial = 20;
  int parallel_calls = 0;
  const auto call = [&] {
    return choice.run([&](bool parallel) {
      spin(parallel ? slow_parallel : slow_serial);
      parallel_calls += parallel;
      return 0.0;
    });
  };
  for (int k = 0; k < 400; ++k) call();
  // Parallel 10× slower: after the first interval and a trial it runs on one thread, trying
  // parallel again now and then (each trial ends after its second call).
  CHECK(!choice.parallel());
  CHECK(parallel_calls <= detail::ThreadChoice::kFirstInterval + 10);
  // The load goes away: parallel is 10× faster. The next trial switches back.
  std::swap(slow_parallel, slow_serial);
  int calls = 0;
  while (!choice.parallel() && calls < 5000) {
    call();
    ++calls;
  }
  CHECK(choice.parallel());
  parallel_calls = 0;
  for (int k = 0; k < 400; ++k) call();
  CHECK(parallel_calls >= 400 - 2 * (detail::ThreadChoice::kToSerial + 1));
}

TEST_CASE("CompressedOperator with automatic threads: products equal Eigen's in both versions") {
  // threads = 0 on a matrix with ≥ kParallelNonzeros nonzeros: each kind of product switches
  // between its parallel and one-thread versions as timed; every product must be right.
  std::mt19937_64 gen(9);
  const Eigen::SparseMatrix<double, Eigen::RowMajor> csr =
      random_csr<double>(1000, 600, 1.2 * kParallelNonzeros / (1000.0 * 600), gen);
  REQUIRE(csr.nonZeros() >= kParallelNonzeros);
  const Eigen::VectorXd x = random_vector<double>(600, gen), u = random_vector<double>(1000, gen);
  for (const bool transposed : {false, true}) {
    CAPTURE(transposed);
    const CompressedOperator op(csr, SparseOptions{.transposed_index = transposed});
    CHECK(op.adaptive_threads() == (op.threads() > 1));
    double worst = 0;
    Eigen::VectorXd y(1000), v(600), w(600);
    for (int k = 0; k < 300; ++k) {  // several intervals and trials of each kind
      op.apply(x, y);
      op.apply_adjoint(u, v);
      worst = std::max(
          {worst, (y - csr * x).norm() / y.norm(), (v - csr.transpose() * u).norm() / v.norm()});
      Eigen::VectorXd uu = u;
      op.apply_sub_norm2_adjoint(x, uu, 0.5, w);
      const Eigen::VectorXd ref_u = csr * x - 0.5 * u;
      worst = std::max({worst, (uu - ref_u).norm() / ref_u.norm(),
                        (w - csr.transpose() * ref_u).norm() / w.norm()});
    }
    CHECK(worst <= 1e-13);
  }
}

TEST_CASE("the adjoint view swaps shapes and products; solving with it solves A^H") {
  std::mt19937_64 gen(2);
  const Mat<double> a = random_matrix<double>(12, 30, gen);
  auto op = make_operator(12, 30, [&](const auto& x, auto& y) { y.noalias() = a * x; },
                          [&](const auto& u, auto& v) { v.noalias() = a.transpose() * u; });
  const auto at = adjoint(op);
  CHECK(at.rows() == 30);
  CHECK(at.cols() == 12);
  const Eigen::VectorXd b = random_vector<double>(30, gen);
  const Eigen::MatrixXd atd = a.transpose();
  const Eigen::VectorXd ref = atd.colPivHouseholderQr().solve(b);
  const auto r = lsqr(at, b, {.atol = 1e-14, .btol = 1e-14});
  CHECK((r.x - ref).norm() < 1e-10 * ref.norm());
  // Of a matrix, of a temporary adapter (owned by the view: ASan checks the lifetime in
  // make test) and of a sparse matrix: the same solution.
  const Eigen::SparseMatrix<double> s = a.sparseView();
  const auto views = std::make_tuple(adjoint(a), adjoint(as_operator(a)), adjoint(s));
  std::apply(
      [&](const auto&... view) {
        for (const auto& x : {lsqr(view, b, {.atol = 1e-14, .btol = 1e-14}).x...})
          CHECK((x - ref).norm() < 1e-10 * ref.norm());
      },
      views);
}

TEST_CASE("Eigen Map and Ref of dense matrices are accepted without copies") {
  std::mt19937_64 gen(3);
  Mat<double> a = random_matrix<double>(20, 6, gen);
  const Eigen::VectorXd b = random_vector<double>(20, gen);
  const Eigen::Map<const Eigen::MatrixXd> map(a.data(), 20, 6);
  const Eigen::Ref<const Eigen::MatrixXd> ref(a);
  const auto r1 = lsmr(a, b), r2 = lsmr(map, b), r3 = lsmr(ref, b);
  CHECK(r1.x == r2.x);
  CHECK(r1.x == r3.x);
  CHECK(&as_operator(map).matrix() == &map);
}

TEST_CASE_TEMPLATE("CompressedOperator equals Eigen's products: CSR/CSC, uncompressed, threads",
                   Scalar, double, std::complex<float>) {
  using Real = RealOf<Scalar>;
  std::mt19937_64 gen(4);
  Eigen::SparseMatrix<Scalar, Eigen::RowMajor> csr = random_csr<Scalar>(300, 170, 0.05, gen);
  const Eigen::SparseMatrix<Scalar, Eigen::ColMajor> csc = csr;
  Eigen::SparseMatrix<Scalar, Eigen::RowMajor> loose = csr;  // uncompressed: room per row
  loose.reserve(Eigen::VectorXi::Constant(300, 3));
  loose.coeffRef(5, 7) += Scalar(Real(1));
  REQUIRE(!loose.isCompressed());
  const Vector<Scalar> x = random_vector<Scalar>(170, gen), u = random_vector<Scalar>(300, gen);
  const Vector<Scalar> y0 = random_vector<Scalar>(300, gen), v0 = random_vector<Scalar>(170, gen);
  const Real a = Real(0.7), tol = 50 * std::numeric_limits<Real>::epsilon();
  auto check = [&](const auto& mat, int threads, bool transposed, bool sliced) {
    CompressedOperator op(
        mat, SparseOptions{.threads = threads, .transposed_index = transposed, .sliced = sliced});
    CHECK(op.has_transposed_index() == transposed);
    CHECK(op.sliced() == (transposed && sliced));
    const Vector<Scalar> ref_y = mat * x - Scalar(a) * y0;
    const Vector<Scalar> ref_v = mat.adjoint() * u - Scalar(a) * v0;
    Vector<Scalar> y = y0, v = v0;
    const Real ny = op.apply_sub_norm2(x, y, a), nv = op.apply_adjoint_sub_norm2(u, v, a);
    CHECK((y - ref_y).norm() <= tol * ref_y.norm());
    CHECK((v - ref_v).norm() <= tol * ref_v.norm());
    CHECK(std::abs(ny - ref_y.squaredNorm()) <= tol * ref_y.squaredNorm());
    CHECK(std::abs(nv - ref_v.squaredNorm()) <= tol * ref_v.squaredNorm());
    op.apply(x, y);
    CHECK((y - mat * x).norm() <= tol * y.norm());
    op.apply_adjoint(u, v);
    CHECK((v - mat.adjoint() * u).norm() <= tol * v.norm());
    // The Golub–Kahan step's two products: one pass over a CSR matrix without a transposed
    // index, else the two products. a = 0 must not read u's old values (NaN here).
    constexpr bool row_major = std::decay_t<decltype(mat)>::IsRowMajor;
    CHECK(op.fuses_step() == (row_major && !transposed));
    CHECK(op.fuses_adjoint_step() == (!row_major && !transposed));
    const Scalar nan(std::numeric_limits<Real>::quiet_NaN());
    const AdjointOperator<decltype(op)> adj(op);  // the other order of the same products
    CHECK(adj.fuses_step() == op.fuses_adjoint_step());
    CHECK(adj.fuses_adjoint_step() == op.fuses_step());
    for (const Real s : {a, Real(0)}) {
      CAPTURE(s);
      const Vector<Scalar> ref_u = mat * x - Scalar(s) * y0, ref_w = mat.adjoint() * ref_u;
      const Vector<Scalar> ref_v = mat.adjoint() * u - Scalar(s) * v0, ref_y = mat * ref_v;
      Vector<Scalar> uu = s != 0 ? y0 : Vector<Scalar>::Constant(300, nan);
      Vector<Scalar> w = Vector<Scalar>::Constant(170, nan);
      const Real nu = op.apply_sub_norm2_adjoint(x, uu, s, w);
      CHECK((uu - ref_u).norm() <= tol * ref_u.norm());
      CHECK((w - ref_w).norm() <= tol * ref_w.norm());
      CHECK(std::abs(nu - ref_u.squaredNorm()) <= tol * ref_u.squaredNorm());
      Vector<Scalar> vv = s != 0 ? v0 : Vector<Scalar>::Constant(170, nan);
      Vector<Scalar> yy = Vector<Scalar>::Constant(300, nan);
      const Real nv = op.apply_adjoint_sub_norm2_apply(u, vv, s, yy);
      CHECK((vv - ref_v).norm() <= tol * ref_v.norm());
      CHECK((yy - ref_y).norm() <= tol * ref_y.norm());
      CHECK(std::abs(nv - ref_v.squaredNorm()) <= tol * ref_v.squaredNorm());
      vv = s != 0 ? v0 : Vector<Scalar>::Constant(170, nan);  // through the adjoint view
      CHECK(std::abs(adj.apply_sub_norm2_adjoint(u, vv, s, yy) - nv) <= tol * nv);
      CHECK((yy - ref_y).norm() <= tol * ref_y.norm());
    }
  };
  for (int threads : {1, 2, 3})
    for (int layout = 0; layout < 3; ++layout) {  // compressed, + compressed transpose, sliced
      const bool transposed = layout > 0, sliced = layout == 2;
      CAPTURE(threads);
      CAPTURE(layout);
      check(csr, threads, transposed, sliced);
      check(csc, threads, transposed, sliced);
      check(loose, threads, transposed, sliced);
    }
  // The solvers pick it for Eigen sparse matrices and get the same answer as a dense solve.
  static_assert(std::is_same_v<OperatorOf<decltype(csr)>, CompressedOperator<decltype(csr)>>);
}

namespace {

template <class Scalar>
Scalar random_scalar(std::mt19937_64& gen) {
  return random_matrix<Scalar>(1, 1, gen)(0, 0);
}

/// An m × n test matrix for the sliced layouts.
template <class Matrix>
struct SlicedCase {
  std::string name;
  Matrix a;
  bool permuted_rows = false, permuted_cols = false;  // the layout expected along rows, columns
};

template <class Matrix>
Matrix from_triplets(Index m, Index n, const std::vector<Eigen::Triplet<typename Matrix::Scalar>>& t,
                     bool transpose = false) {
  Matrix a(transpose ? n : m, transpose ? m : n);
  if (!transpose) {
    a.setFromTriplets(t.begin(), t.end());
  } else {
    std::vector<Eigen::Triplet<typename Matrix::Scalar>> tt;
    for (const auto& e : t) tt.emplace_back(e.col(), e.row(), e.value());
    a.setFromTriplets(tt.begin(), tt.end());
  }
  return a;
}

template <class Matrix>
std::vector<SlicedCase<Matrix>> sliced_cases(std::mt19937_64& gen) {
  using Scalar = typename Matrix::Scalar;
  std::vector<SlicedCase<Matrix>> cases;
  // Regular: 4 nonzeros in each of 103 rows, 12 or 13 in each of 34 columns (padding to the
  // longest costs ≤ 14%: both layouts unpermuted; neither count is a multiple of 4).
  std::vector<Eigen::Triplet<Scalar>> t;
  for (int i = 0; i < 103; ++i)
    for (int k = 0; k < 4; ++k) t.emplace_back(i, (4 * i + k) % 34, random_scalar<Scalar>(gen));
  cases.push_back({"regular", from_triplets<Matrix>(103, 34, t), false, false});
  // Irregular: 0–9 nonzeros a row, some rows empty, row 17 with 350; columns 0–2 and 400–402
  // empty. Rows sorted by length give runs of every width 0–9 and 350.
  t.clear();
  std::uniform_int_distribution<int> column(3, 399), length(0, 9);
  for (int i = 0; i < 203; ++i) {
    const int n = i == 17 ? 350 : i % 11 == 3 ? 0 : length(gen);
    std::vector<int> cols;
    while (int(cols.size()) < n) {
      const int j = column(gen);
      if (std::find(cols.begin(), cols.end(), j) == cols.end()) cols.push_back(j);
    }
    for (int j : cols) t.emplace_back(i, j, random_scalar<Scalar>(gen));
  }
  cases.push_back({"long row", from_triplets<Matrix>(203, 403, t), true, true});
  cases.push_back({"long column", from_triplets<Matrix>(203, 403, t, true), true, true});
  // No nonzeros.
  cases.push_back({"all zero", Matrix(9, 6), false, false});
  cases.push_back({"0 x n", Matrix(0, 5), false, false});
  cases.push_back({"m x 0", Matrix(7, 0), false, false});
  return cases;
}

template <class S, int Order, class I>
using Sparse = Eigen::SparseMatrix<S, Order, I>;
using F32R = Sparse<float, Eigen::RowMajor, std::int32_t>;
using F32C = Sparse<float, Eigen::ColMajor, std::int32_t>;
using F64R = Sparse<double, Eigen::RowMajor, std::int32_t>;
using F64C = Sparse<double, Eigen::ColMajor, std::int32_t>;
using F64R64 = Sparse<double, Eigen::RowMajor, std::int64_t>;
using F64C64 = Sparse<double, Eigen::ColMajor, std::int64_t>;
using C128R = Sparse<std::complex<double>, Eigen::RowMajor, std::int32_t>;
using C128C64 = Sparse<std::complex<double>, Eigen::ColMajor, std::int64_t>;
using C64R64 = Sparse<std::complex<float>, Eigen::RowMajor, std::int64_t>;

}  // namespace

TEST_CASE_TEMPLATE(
    "sliced layouts equal Eigen's products: scalars, indices, storage orders, shapes, threads, "
    "portable and AVX2 kernels",
    Matrix, F32R, F32C, F64R, F64C, F64R64, F64C64, C128R, C128C64, C64R64) {
  using Scalar = typename Matrix::Scalar;
  using Real = RealOf<Scalar>;
  using Dense = Vector<Scalar>;
  using RealVector = Vector<Real>;
  std::mt19937_64 gen(6);
  // Both results round within ~(row length)·ε·(|A||x| + |a||y|), the scale below; 1000ε is
  // far below the O(1) errors of a wrong index, value, row or conjugation.
  const Real tol = 1000 * std::numeric_limits<Real>::epsilon();
  const Scalar nan(std::numeric_limits<Real>::quiet_NaN());
  for (const auto& c : sliced_cases<Matrix>(gen)) {
    const Matrix& a = c.a;
    const Index m = a.rows(), n = a.cols();
    const Eigen::SparseMatrix<Real> abs_a = a.cwiseAbs();
    const Eigen::SparseMatrix<Real> abs_at = abs_a.transpose();
    const Dense x = random_vector<Scalar>(n, gen), u = random_vector<Scalar>(m, gen);
    const Dense y0 = random_vector<Scalar>(m, gen), v0 = random_vector<Scalar>(n, gen);
    const RealVector abs_ax = abs_a * x.cwiseAbs(), abs_atu = abs_at * u.cwiseAbs();
    for (int threads : {1, 2})
      for (bool simd : {false, true}) {
        CAPTURE(c.name);
        CAPTURE(threads);
        CAPTURE(simd);
        const CompressedOperator op(
            a, SparseOptions{.threads = threads, .transposed_index = true, .simd = simd});
        REQUIRE(op.sliced());
        const auto& along_rows = Matrix::IsRowMajor ? op.sliced_outer() : op.sliced_inner();
        const auto& along_cols = Matrix::IsRowMajor ? op.sliced_inner() : op.sliced_outer();
        // Small matrices: both directions on the AVX2 kernel when asked and available.
        const bool avx2 = simd && detail::kHasAvx2Kernel<Scalar, typename Matrix::StorageIndex> &&
                          detail::cpu_has_avx2_fma();
        CHECK(op.uses_avx2() == avx2);
        CHECK(along_rows.avx2 == avx2);
        CHECK(along_cols.avx2 == avx2);
        CHECK(along_rows.rows == m);
        CHECK(along_cols.rows == n);
        CHECK(along_rows.permuted == c.permuted_rows);
        CHECK(along_cols.permuted == c.permuted_cols);
        CHECK(along_rows.stored() >= a.nonZeros());
        // Each thread's slices hold (sorted) rows of its own range only, all rows once.
        for (const auto* layout : {&along_rows, &along_cols}) {
          const auto& p = layout->partition;
          CHECK(p[0] == 0);
          CHECK(p[op.threads()] == layout->slices);
          std::vector<int> seen(layout->rows, 0);
          for (int t = 0; t < op.threads(); ++t)
            for (Index r = 4 * p[t]; r < std::min(layout->rows, 4 * p[t + 1]); ++r) {
              const Index row = layout->permuted ? Index(layout->perm[r]) : r;
              CHECK((row >= 4 * p[t] && row < std::min(layout->rows, 4 * p[t + 1])));
              ++seen[row];
            }
          CHECK(std::count(seen.begin(), seen.end(), 1) == layout->rows);
        }
        for (Real s : {Real(0.7), Real(0)}) {
          CAPTURE(s);
          // s = 0: the old contents (NaN here) must not be read.
          Dense y = s != 0 ? y0 : Dense::Constant(m, nan);
          Dense v = s != 0 ? v0 : Dense::Constant(n, nan);
          const Dense ref_y = a * x - Scalar(s) * y0, ref_v = a.adjoint() * u - Scalar(s) * v0;
          const RealVector scale_y = abs_ax + s * y0.cwiseAbs();
          const RealVector scale_v = abs_atu + s * v0.cwiseAbs();
          const Real ny = op.apply_sub_norm2(x, y, s), nv = op.apply_adjoint_sub_norm2(u, v, s);
          CHECK((y - ref_y).norm() <= tol * scale_y.norm());
          CHECK((v - ref_v).norm() <= tol * scale_v.norm());
          CHECK(std::abs(ny - y.squaredNorm()) <= tol * scale_y.squaredNorm());
          CHECK(std::abs(nv - v.squaredNorm()) <= tol * scale_v.squaredNorm());
        }
        Dense y = Dense::Constant(m, nan), v = Dense::Constant(n, nan);
        op.apply(x, y);
        op.apply_adjoint(u, v);
        CHECK((y - a * x).norm() <= tol * abs_ax.norm());
        CHECK((v - a.adjoint() * u).norm() <= tol * abs_atu.norm());
        y = y0;
        v = v0;
        op.apply_add(x, y);
        op.apply_adjoint_add(u, v);
        CHECK((y - (y0 + a * x)).norm() <= tol * (abs_ax + y0.cwiseAbs()).norm());
        CHECK((v - (v0 + a.adjoint() * u)).norm() <= tol * (abs_atu + v0.cwiseAbs()).norm());
      }
  }
}

namespace {

/// An operator's two plain products only: the solvers then take the unfused Golub–Kahan step.
template <class Op>
struct PlainProducts {
  using Scalar = typename Op::Scalar;
  const Op& op;
  Index rows() const { return op.rows(); }
  Index cols() const { return op.cols(); }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    op.apply(x, y);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    op.apply_adjoint(u, v);
  }
};

}  // namespace

TEST_CASE_TEMPLATE("the fused Golub–Kahan step gives LSQR's and LSMR's unfused iterates", Scalar,
                   double, std::complex<double>) {
  using Real = RealOf<Scalar>;
  std::mt19937_64 gen(8);
  Eigen::SparseMatrix<Scalar, Eigen::RowMajor> csr = random_csr<Scalar>(400, 150, 0.04, gen);
  Eigen::SparseMatrix<Scalar, Eigen::RowMajor> loose = csr;
  loose.reserve(Eigen::VectorXi::Constant(400, 2));
  loose.coeffRef(3, 4) += Scalar(Real(1));
  REQUIRE(!loose.isCompressed());
  const Vector<Scalar> b = random_vector<Scalar>(400, gen);
  const Eigen::SparseMatrix<Scalar, Eigen::ColMajor> csc = csr;  // fused by columns
  for (int threads : {1, 2}) {
    const CompressedOperator op(csc, threads);
    REQUIRE(op.fuses_adjoint_step());
    Options<Scalar> o;
    o.atol = o.btol = Real(1e-10);
    for (const auto& [fused, plain] :
         {std::pair{lsqr(op, b, o), lsqr(PlainProducts<decltype(op)>{op}, b, o)},
          std::pair{lsmr(op, b, o), lsmr(PlainProducts<decltype(op)>{op}, b, o)}}) {
      CHECK(fused.status == plain.status);
      CHECK(std::abs(fused.iterations - plain.iterations) <= 1);
      CHECK(fused.matvecs - fused.iterations == plain.matvecs - plain.iterations);
      CHECK(fused.rmatvecs - fused.iterations == plain.rmatvecs - plain.iterations);
      CHECK((fused.x - plain.x).norm() <= Real(1e-8) * plain.x.norm());
    }
  }
  for (const auto* mat : {&csr, &loose})
    for (int threads : {1, 2})
      for (Real damp : {Real(0), Real(0.3)})
        for (bool scaled : {false, true}) {
          CAPTURE(threads);
          CAPTURE(damp);
          CAPTURE(scaled);
          const CompressedOperator op(*mat, threads);
          REQUIRE(op.fuses_step());
          Options<Scalar> o;
          o.damp = damp;
          o.atol = o.btol = Real(1e-10);
          if (scaled) o.column_scaling = column_scaling(*mat);
          // Reference: the damped normal equations, solved densely.
          const Mat<Scalar> d = Mat<Scalar>(*mat);
          const Mat<Scalar> normal =
              d.adjoint() * d + Scalar(damp * damp) * Mat<Scalar>::Identity(150, 150);
          const Vector<Scalar> ref = normal.ldlt().solve(d.adjoint() * b);
          // The same iterates up to rounding, which the recurrences amplify to ~1e-10 in 50
          // iterations: one iteration more or less at the stopping test, the same accuracy.
          const auto check = [&](const auto& fused, const auto& plain) {
            CHECK(fused.status == plain.status);
            CHECK(std::abs(fused.iterations - plain.iterations) <= 1);
            CHECK(fused.matvecs - fused.iterations == plain.matvecs - plain.iterations);
            CHECK(fused.rmatvecs - fused.iterations == plain.rmatvecs - plain.iterations);
            CHECK((fused.x - plain.x).norm() <= Real(1e-8) * ref.norm());
            CHECK((fused.x - ref).norm() <= Real(1e-8) * ref.norm());
          };
          check(lsqr(op, b, o), lsqr(PlainProducts<decltype(op)>{op}, b, o));
          check(lsmr(op, b, o), lsmr(PlainProducts<decltype(op)>{op}, b, o));
        }
}

TEST_CASE("the fused Golub–Kahan step falls back where Aᴴũ overflows but Aᴴu does not") {
  // Entries ~1e200: ũ = A v − αu is ~1e200, Aᴴũ ~1e400 overflows, Aᴴu (u = ũ/β) is ~1e200.
  std::mt19937_64 gen(9);
  const Mat<double> dense = 1e200 * random_matrix<double>(40, 20, gen);
  const Eigen::SparseMatrix<double, Eigen::RowMajor> a = dense.sparseView();
  const Vector<double> b = random_vector<double>(40, gen);
  const CompressedOperator op(a);
  REQUIRE(op.fuses_step());
  const PlainProducts<decltype(op)> plain{op};
  Workspace<double> ws1, ws2;
  ws1.resize(40, 20);
  ws2.resize(40, 20);
  ws1.u = ws2.u = b;
  Report<double> r1, r2;
  detail::GolubKahan<std::decay_t<decltype(op)>> fused(op, ws1, r1);
  detail::GolubKahan<PlainProducts<decltype(op)>> unfused(plain, ws2, r2);
  fused.start();
  unfused.start();
  double a1 = fused.alpha, b1 = fused.beta, a2 = unfused.alpha, b2 = unfused.beta;
  for (int k = 0; k < 5; ++k) {
    fused.step(a1, b1);
    unfused.step(a2, b2);
    REQUIRE(fused.finite);
    REQUIRE(unfused.finite);
    CHECK(a1 == doctest::Approx(a2).epsilon(1e-12));
    CHECK(b1 == doctest::Approx(b2).epsilon(1e-12));
    CHECK(b1 > 1e199);
    CHECK((ws1.u - ws2.u).norm() <= 1e-12);
    CHECK((ws1.v - ws2.v).norm() <= 1e-12);
  }
  CHECK(r1.matvecs == r2.matvecs);
  CHECK(r1.rmatvecs == r2.rmatvecs);
}

TEST_CASE_TEMPLATE("dense row-major: the fused Golub–Kahan products equal Eigen's, and LSQR agrees",
                   Scalar, double, std::complex<float>) {
  using Real = RealOf<Scalar>;
  using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::mt19937_64 gen(10);
  const Real tol = 100 * std::numeric_limits<Real>::epsilon();
  // Blocks of 64 rows (n = 30: 130 = 2·64 + 2), of 1 row (n = 40000), of a few rows.
  for (const auto& shape : {std::pair<Index, Index>{130, 30}, {3, 40000}, {70, 5000}, {0, 4}}) {
    const Index m = shape.first, n = shape.second;  // named: CAPTURE cannot take a binding
    CAPTURE(m);
    CAPTURE(n);
    const RowMajor a = random_matrix<Scalar>(m, n, gen);
    const EigenOperator<RowMajor> op(a);
    REQUIRE(op.fuses_step());
    const Vector<Scalar> v = random_vector<Scalar>(n, gen), u0 = random_vector<Scalar>(m, gen);
    for (const Real s : {Real(0.7), Real(0)}) {
      CAPTURE(s);
      const Vector<Scalar> ref_u = a * v - Scalar(s) * u0, ref_w = a.adjoint() * ref_u;
      Vector<Scalar> u =
          s != 0 ? u0 : Vector<Scalar>::Constant(m, Scalar(std::numeric_limits<Real>::quiet_NaN()));
      Vector<Scalar> w =
          Vector<Scalar>::Constant(n, Scalar(std::numeric_limits<Real>::quiet_NaN()));
      const Real nu = op.apply_sub_norm2_adjoint(v, u, s, w);
      CHECK((u - ref_u).norm() <= tol * (1 + ref_u.norm()));
      CHECK((w - ref_w).norm() <= tol * (1 + ref_w.norm()));
      CHECK(std::abs(nu - ref_u.squaredNorm()) <= tol * (1 + ref_u.squaredNorm()));
    }
  }
  // Column-major: by blocks of columns (v ← Aᴴu − a·v, y ← A v).
  for (const auto& shape : {std::pair<Index, Index>{30, 130}, {40000, 3}, {5000, 70}, {4, 0}}) {
    const Index m = shape.first, n = shape.second;
    CAPTURE(m);
    CAPTURE(n);
    const Mat<Scalar> a = random_matrix<Scalar>(m, n, gen);
    const EigenOperator<Mat<Scalar>> op(a);
    REQUIRE(op.fuses_adjoint_step());
    REQUIRE(!op.fuses_step());
    const Vector<Scalar> u = random_vector<Scalar>(m, gen), v0 = random_vector<Scalar>(n, gen);
    for (const Real s : {Real(0.7), Real(0)}) {
      CAPTURE(s);
      const Vector<Scalar> ref_v = a.adjoint() * u - Scalar(s) * v0, ref_y = a * ref_v;
      Vector<Scalar> v =
          s != 0 ? v0 : Vector<Scalar>::Constant(n, Scalar(std::numeric_limits<Real>::quiet_NaN()));
      Vector<Scalar> y =
          Vector<Scalar>::Constant(m, Scalar(std::numeric_limits<Real>::quiet_NaN()));
      const Real nv = op.apply_adjoint_sub_norm2_apply(u, v, s, y);
      CHECK((v - ref_v).norm() <= tol * (1 + ref_v.norm()));
      CHECK((y - ref_y).norm() <= tol * (1 + ref_y.norm()));
      CHECK(std::abs(nv - ref_v.squaredNorm()) <= tol * (1 + ref_v.squaredNorm()));
    }
  }
  // LSQR on both orders (fused by rows, by columns): the same solution.
  const RowMajor a = random_matrix<Scalar>(200, 60, gen);
  const Mat<Scalar> c = a;
  const Vector<Scalar> b = random_vector<Scalar>(200, gen);
  Options<Scalar> o;
  o.damp = Real(0.1);
  const auto x_row = lsqr(a, b, o), x_col = lsqr(c, b, o);
  CHECK(x_row.status == x_col.status);
  CHECK(std::abs(x_row.iterations - x_col.iterations) <= 1);
  CHECK((x_row.x - x_col.x).norm() <= Real(1e-4) * x_col.x.norm());
}
