// The LibTorch layer (difflsq/torch.hpp): values and gradients against torch's own autograd
// through a dense formula (damped normal equations, pseudo-inverse), float and double. The
// DOCTEST_-prefixed macros are needed: LibTorch defines its own CHECK.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <difflsq/torch.hpp>

namespace {

torch::Tensor dense_reference(const torch::Tensor& a, const torch::Tensor& b,
                              const torch::Tensor& damp) {
  if (damp.item<double>() > 0) {
    const auto n = a.size(1);
    const auto normal = a.t().mm(a) + damp * damp * torch::eye(n, a.options());
    return torch::linalg::solve(normal, a.t().matmul(b), true);
  }
  return torch::linalg::pinv(a).matmul(b);
}

struct Grads {
  torch::Tensor x, a, b, damp;
};

template <class Solve>
Grads run(Solve solve, const torch::Tensor& a0, const torch::Tensor& b0, double lam,
          const torch::Tensor& w) {
  auto a = a0.clone().requires_grad_(true);
  auto b = b0.clone().requires_grad_(true);
  auto d = torch::full({}, lam, a0.options()).requires_grad_(true);
  auto x = solve(a, b, d);
  (x * w).sum().backward();
  return {x.detach(), a.grad(), b.grad(), d.grad()};
}

bool close(const torch::Tensor& x, const torch::Tensor& y, double rtol, double atol) {
  return torch::allclose(x, y, rtol, atol);
}

}  // namespace

DOCTEST_TEST_CASE("LibTorch layer: values and gradients match torch autograd through a dense solve") {
  torch::manual_seed(0);
  struct Case {
    int64_t m, n, k;
    double lam;
  };
  for (const Case c : {Case{9, 5, 0, 0.0}, Case{9, 5, 0, 0.3}, Case{5, 9, 0, 0.0},
                       Case{5, 9, 0, 0.3}, Case{6, 6, 0, 0.5}, Case{8, 4, 3, 0.2}}) {
    DOCTEST_CAPTURE(c.m);
    DOCTEST_CAPTURE(c.n);
    DOCTEST_CAPTURE(c.lam);
    const auto opts = torch::TensorOptions().dtype(torch::kDouble);
    const auto a = torch::randn({c.m, c.n}, opts) + 2 * torch::eye(c.m, c.n, opts);
    const auto b = c.k ? torch::randn({c.m, c.k}, opts) : torch::randn({c.m}, opts);
    const auto w = c.k ? torch::randn({c.n, c.k}, opts) : torch::randn({c.n}, opts);
    difflsq::TorchLstsqOptions o;
    o.forward = {1e-13, 1e-13, 0, 5000};
    const auto got = run([&](auto& a, auto& b, auto& d) { return difflsq::lstsq(a, b, d, o); },
                         a, b, c.lam, w);
    const auto ref = run(dense_reference, a, b, c.lam, w);
    DOCTEST_CHECK(got.x.sizes().vec() == ref.x.sizes().vec());
    DOCTEST_CHECK(close(got.x, ref.x, 1e-9, 1e-11));
    DOCTEST_CHECK(close(got.a, ref.a, 1e-7, 1e-9));
    DOCTEST_CHECK(close(got.b, ref.b, 1e-7, 1e-9));
    if (c.lam > 0) DOCTEST_CHECK(close(got.damp, ref.damp, 1e-7, 1e-9));
  }
}

DOCTEST_TEST_CASE("LibTorch layer: float32 is kept; bad input and failures are reported") {
  torch::manual_seed(1);
  const auto a = torch::randn({20, 8}) + 3 * torch::eye(20, 8);
  const auto b = torch::randn({20});
  auto af = a.clone().requires_grad_(true);
  difflsq::TorchLstsqOptions o;
  o.forward.max_iterations = 100;
  const auto x = difflsq::lstsq(af, b, 0.1, o);
  DOCTEST_CHECK(bool(x.scalar_type() == torch::kFloat));
  x.sum().backward();
  DOCTEST_CHECK(bool(af.grad().scalar_type() == torch::kFloat));
  const auto ad = a.to(torch::kDouble).requires_grad_(true);
  const auto xd = dense_reference(ad, b.to(torch::kDouble), torch::full({}, 0.1, torch::kDouble));
  xd.sum().backward();
  DOCTEST_CHECK(close(x.to(torch::kDouble), xd.detach(), 1e-4, 1e-5));
  DOCTEST_CHECK(close(af.grad().to(torch::kDouble), ad.grad(), 1e-3, 1e-4));

  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a, torch::randn({7}), 0.0), std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a, b.to(torch::kDouble), 0.0), std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a, b, -1.0), std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a.to(torch::kMeta), b.to(torch::kMeta), 0.0),
                  std::invalid_argument);
  // Double backward: a clear error instead of silently zero second derivatives.
  auto a2 = a.clone().requires_grad_(true);
  const auto x2 = difflsq::lstsq(a2, b, 0.1, o);
  DOCTEST_CHECK_THROWS_AS(torch::autograd::grad({x2.sum()}, {a2}, {}, true, true),
                          std::runtime_error);
  difflsq::TorchLstsqOptions limit;
  limit.forward.max_iterations = 1;
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a, b, 0.0, limit), difflsq::SolveError);
}
