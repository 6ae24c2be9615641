// The operator adapters, the adjoint view and the dot test.
#include <doctest/doctest.h>

#include <difflsq/difflsq.hpp>

#include "test_problems.hpp"

using namespace difflsq;
using namespace difflsq::test;

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
  std::bernoulli_distribution keep(0.05);
  std::vector<Eigen::Triplet<Scalar>> t;
  const Mat<Scalar> vals = random_matrix<Scalar>(300, 170, gen);
  for (int i = 0; i < 300; ++i)
    for (int j = 0; j < 170; ++j)
      if (keep(gen)) t.emplace_back(i, j, vals(i, j));
  Eigen::SparseMatrix<Scalar, Eigen::RowMajor> csr(300, 170);
  csr.setFromTriplets(t.begin(), t.end());
  const Eigen::SparseMatrix<Scalar, Eigen::ColMajor> csc = csr;
  Eigen::SparseMatrix<Scalar, Eigen::RowMajor> loose = csr;  // uncompressed: room per row
  loose.reserve(Eigen::VectorXi::Constant(300, 3));
  loose.coeffRef(5, 7) += Scalar(Real(1));
  REQUIRE(!loose.isCompressed());
  const Vector<Scalar> x = random_vector<Scalar>(170, gen), u = random_vector<Scalar>(300, gen);
  const Vector<Scalar> y0 = random_vector<Scalar>(300, gen), v0 = random_vector<Scalar>(170, gen);
  const Real a = Real(0.7), tol = 50 * std::numeric_limits<Real>::epsilon();
  auto check = [&](const auto& mat, int threads, bool transposed) {
    CompressedOperator op(mat, SparseOptions{.threads = threads, .transposed_index = transposed});
    CHECK(op.has_transposed_index() == transposed);
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
  };
  for (int threads : {1, 2, 3})
    for (bool transposed : {false, true}) {
      CAPTURE(threads);
      CAPTURE(transposed);
      check(csr, threads, transposed);
      check(csc, threads, transposed);
      check(loose, threads, transposed);
    }
  // The solvers pick it for Eigen sparse matrices and get the same answer as a dense solve.
  static_assert(std::is_same_v<OperatorOf<decltype(csr)>, CompressedOperator<decltype(csr)>>);
}
