// Solves a small problem through the installed headers; exits 0 when the answer is right.
#include <Eigen/Dense>
#include <difflsq/difflsq.hpp>

int main() {
  Eigen::MatrixXd a(4, 2);
  a << 1, 0, 0, 1, 1, 1, 1, -1;
  const Eigen::VectorXd b = Eigen::Vector4d(1, 2, 3, 4);
  const Eigen::VectorXd ref = a.colPivHouseholderQr().solve(b);
  const auto r = difflsq::lsqr(a, b, {.atol = 1e-12, .btol = 1e-12});
  return r.converged() && (r.x - ref).norm() < 1e-10 ? 0 : 1;
}
