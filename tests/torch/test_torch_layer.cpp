// The LibTorch layer (difflsq/torch.hpp): values and gradients against torch's own autograd
// through a dense formula (damped normal equations, pseudo-inverse), real and complex, for a
// tensor A and for a callable A(θ). The DOCTEST_-prefixed macros are needed: LibTorch defines
// its own CHECK.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <difflsq/torch.hpp>
#include <tuple>

namespace {

/// The damped least-squares solution by a dense formula whose forward-mode derivative torch
/// computes: (AᴴA + λ²I)⁻¹Aᴴb for tall A, Aᴴ(AAᴴ + λ²I)⁻¹b for wide (full rank when λ = 0).
torch::Tensor dense_formula(const torch::Tensor& a, const torch::Tensor& b,
                            const torch::Tensor& d) {
  const auto ah = a.t().conj();
  const auto l2 = (d * d).to(a.scalar_type());
  if (a.size(0) >= a.size(1))
    return torch::linalg::solve(ah.mm(a) + l2 * torch::eye(a.size(1), a.options()), ah.matmul(b),
                                true);
  return ah.matmul(
      torch::linalg::solve(a.mm(ah) + l2 * torch::eye(a.size(0), a.options()), b, true));
}
/// pinv(A) b at λ = 0 (rank-deficient A too), the formula above otherwise.
torch::Tensor dense_reference(const torch::Tensor& a, const torch::Tensor& b,
                              const torch::Tensor& damp) {
  return damp.item<double>() > 0 ? dense_formula(a, b, damp) : torch::linalg::pinv(a).matmul(b);
}

struct Grads {
  torch::Tensor x, a, b, damp;
};

template <class Solve>
Grads run(Solve solve, const torch::Tensor& a0, const torch::Tensor& b0, double lam,
          const torch::Tensor& w) {
  auto a = a0.clone().requires_grad_(true);
  auto b = b0.clone().requires_grad_(true);
  auto d = torch::full({}, lam, torch::dtype(c10::toRealValueType(a0.scalar_type())))
               .requires_grad_(true);
  auto x = solve(a, b, d);
  torch::real((x * w).sum()).backward();
  return {x.detach(), a.grad(), b.grad(), d.grad()};
}

bool close(const torch::Tensor& x, const torch::Tensor& y, double rtol, double atol) {
  return torch::allclose(x, y, rtol, atol);
}

/// run() of difflsq::lstsq on a (tolerances 1e-13) and of dense_reference on `dense` (A as a
/// dense tensor), for a random b and cotangent of k columns (k = 0: vectors).
std::pair<Grads, Grads> against_dense(const torch::Tensor& a, const torch::Tensor& dense, int64_t k,
                                      double lam) {
  const int64_t m = dense.size(0), n = dense.size(1);
  const auto opts = torch::dtype(dense.scalar_type());
  const auto b = k ? torch::randn({m, k}, opts) : torch::randn({m}, opts);
  const auto w = k ? torch::randn({n, k}, opts) : torch::randn({n}, opts);
  difflsq::TorchLstsqOptions o;
  o.forward = {1e-13, 1e-13, 0, 5000};
  return {run([&](auto& a, auto& b, auto& d) { return difflsq::lstsq(a, b, d, o); }, a, b, lam, w),
          run(dense_reference, dense, b, lam, w)};
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
    const auto [got, ref] = against_dense(a, a, c.k, c.lam);
    DOCTEST_CHECK(got.x.sizes().vec() == ref.x.sizes().vec());
    DOCTEST_CHECK(close(got.x, ref.x, 1e-9, 1e-11));
    DOCTEST_CHECK(close(got.a, ref.a, 1e-7, 1e-9));
    DOCTEST_CHECK(close(got.b, ref.b, 1e-7, 1e-9));
    if (c.lam > 0) DOCTEST_CHECK(close(got.damp, ref.damp, 1e-7, 1e-9));
  }
}

DOCTEST_TEST_CASE("LibTorch layer: the solution may be changed in place") {
  // It used to be a view (b of one dimension) or the saved x: autograd refused the change, or
  // the backward pass after it.
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const difflsq::TorchOperator apply =
      [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) { return p[0].matmul(v); };
  for (const auto& b : {torch::randn({8}, opts), torch::randn({8, 2}, opts)}) {
    for (const bool callable : {false, true}) {
      DOCTEST_CAPTURE(callable);
      const auto a = torch::randn({8, 5}, opts).requires_grad_(true);
      auto x = callable ? difflsq::lstsq(apply, {8, 5}, b, 0.1, {a}) : difflsq::lstsq(a, b, 0.1);
      const auto before = x.detach().clone();
      DOCTEST_CHECK_NOTHROW(x.mul_(2));
      DOCTEST_CHECK(torch::equal(x.detach(), 2 * before));
      DOCTEST_CHECK_NOTHROW(x.sum().backward());
      DOCTEST_CHECK(torch::isfinite(a.grad()).all().item<bool>());
    }
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
  // Double backward: a clear error instead of silently zero second derivatives (first-order
  // gradients with create_graph = true work: see the create_graph test).
  auto a2 = a.clone().requires_grad_(true);
  const auto x2 = difflsq::lstsq(a2, b, 0.1, o);
  const auto g2 = torch::autograd::grad({x2.sum()}, {a2}, {}, true, true)[0];
  DOCTEST_CHECK_THROWS_AS(torch::autograd::grad({g2.sum()}, {a2}), std::runtime_error);
  difflsq::TorchLstsqOptions limit;
  limit.forward.max_iterations = 1;
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a, b, 0.0, limit), difflsq::SolveError);
}

DOCTEST_TEST_CASE("LibTorch layer: complex A, b and x; damp real") {
  torch::manual_seed(2);
  for (const auto dtype : {torch::kComplexDouble, torch::kComplexFloat}) {
    const bool single = dtype == torch::kComplexFloat;
    for (const auto& [m, n, lam] : {std::tuple{9, 5, 0.0}, std::tuple{9, 5, 0.3},
                                    std::tuple{5, 9, 0.0}, std::tuple{5, 9, 0.3}}) {
      DOCTEST_CAPTURE(m);
      DOCTEST_CAPTURE(lam);
      const auto opts = torch::TensorOptions().dtype(torch::kComplexDouble);
      const auto a = torch::randn({m, n}, opts) + 2 * torch::eye(m, n, opts);
      const auto b = torch::randn({m}, opts), w = torch::randn({n}, opts);
      difflsq::TorchLstsqOptions o;
      o.forward = single ? difflsq::Tolerances<double>{1e-6, 1e-6, 1e8, 1000}
                         : difflsq::Tolerances<double>{1e-13, 1e-13, 0, 5000};
      const auto got = run([&](auto& a, auto& b, auto& d) { return difflsq::lstsq(a, b, d, o); },
                           a.to(dtype), b.to(dtype), lam, w.to(dtype));
      const auto ref = run(dense_reference, a, b, lam, w);
      DOCTEST_CHECK(bool(got.x.scalar_type() == dtype));
      DOCTEST_CHECK(bool(got.damp.scalar_type() == c10::toRealValueType(dtype)));
      const double rtol = single ? 1e-3 : 1e-7, atol = single ? 1e-4 : 1e-9;
      DOCTEST_CHECK(close(got.x.to(torch::kComplexDouble), ref.x, rtol, atol));
      DOCTEST_CHECK(close(got.a.to(torch::kComplexDouble), ref.a, rtol, atol));
      DOCTEST_CHECK(close(got.b.to(torch::kComplexDouble), ref.b, rtol, atol));
      if (lam > 0) DOCTEST_CHECK(close(got.damp.to(torch::kDouble), ref.damp, rtol, atol));
      // A callable whose parameter is the matrix: Aᴴu and θ̄ through torch autograd.
      auto matvec = [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) {
        return p[0].mv(v);
      };
      const auto viaf = run(
          [&](auto& a, auto& b, auto& d) {
            return difflsq::lstsq(matvec, {a.size(0), a.size(1)}, b, d, {a}, o);
          },
          a.to(dtype), b.to(dtype), lam, w.to(dtype));
      DOCTEST_CHECK(close(viaf.x.to(torch::kComplexDouble), ref.x, rtol, atol));
      DOCTEST_CHECK(close(viaf.a.to(torch::kComplexDouble), ref.a, rtol, atol));
      DOCTEST_CHECK(close(viaf.b.to(torch::kComplexDouble), ref.b, rtol, atol));
    }
  }
  {
    // Conjugate views (lazy, as data_ptr does not apply them): A = M.conj(), b = c.conj(), and
    // a loss through x.conj(), whose incoming gradient is itself a conjugate view.
    const auto opts = torch::TensorOptions().dtype(torch::kComplexDouble);
    const auto m0 = torch::randn({8, 4}, opts) + torch::eye(8, 4, opts);
    const auto c0 = torch::randn({8}, opts), w = torch::randn({4}, opts);
    difflsq::TorchLstsqOptions o;
    o.forward = {1e-13, 1e-13, 0, 5000};
    auto grads = [&](bool ours) {
      auto m = m0.clone().requires_grad_(true), c = c0.clone().requires_grad_(true);
      const auto d = torch::full({}, 0.2, torch::kDouble);
      const auto x = ours ? difflsq::lstsq(m.conj(), c.conj(), d, o)
                          : dense_reference(m.conj(), c.conj(), d);
      torch::real((x.conj() * w).sum()).backward();
      return std::tuple{x.detach(), m.grad(), c.grad()};
    };
    const auto [x1, m1, c1] = grads(true);
    const auto [x2, m2, c2] = grads(false);
    DOCTEST_CHECK(close(x1, x2, 1e-9, 1e-11));
    DOCTEST_CHECK(close(m1, m2, 1e-7, 1e-9));
    DOCTEST_CHECK(close(c1, c2, 1e-7, 1e-9));
    // A callable whose products end in a conjugate view.
    auto conj_op = [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) {
      return p[0].conj().mv(v.conj()).conj();  // M v, returned as a conjugate view
    };
    auto m3 = m0.clone().requires_grad_(true);
    const auto x3 = difflsq::lstsq(conj_op, {8, 4}, c0, 0.2, {m3}, o);
    auto m4 = m0.clone().requires_grad_(true);
    const auto x4 = dense_reference(m4, c0, torch::full({}, 0.2, torch::kDouble));
    torch::real((x3 * w).sum()).backward();
    torch::real((x4 * w).sum()).backward();
    DOCTEST_CHECK(close(x3.detach(), x4.detach(), 1e-9, 1e-11));
    DOCTEST_CHECK(close(m3.grad(), m4.grad(), 1e-7, 1e-9));
  }
  const auto a = torch::randn({6, 3}, torch::kComplexDouble);
  // damp must be real; b must have A's dtype.
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a, torch::randn({6}, torch::kComplexDouble),
                                         torch::full({}, 0.1, torch::kComplexDouble)),
                          std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a, torch::randn({6}, torch::kDouble), 0.1),
                          std::invalid_argument);
}

namespace {
/// A 1-D full convolution k ∗ v with torch operations: linear in v, differentiable in k.
torch::Tensor convolve(const torch::Tensor& v, const std::vector<torch::Tensor>& p) {
  const auto& k = p.at(0);
  return torch::conv1d(v.reshape({1, 1, -1}), k.flip(0).reshape({1, 1, -1}), {}, 1,
                       k.size(0) - 1)
      .reshape({-1});
}
/// The same as a dense (n + p − 1) × n matrix built from k with torch operations.
torch::Tensor convolution_matrix(const torch::Tensor& k, int64_t n) {
  const int64_t p = k.size(0);
  std::vector<torch::Tensor> cols;
  for (int64_t s = 0; s < n; ++s)
    cols.push_back(torch::cat({torch::zeros({s}, k.options()), k,
                               torch::zeros({n - 1 - s}, k.options())}));
  return torch::stack(cols, 1).reshape({n + p - 1, n});
}
}  // namespace

DOCTEST_TEST_CASE("LibTorch layer: a callable A(theta), gradients reach its parameters") {
  torch::manual_seed(3);
  const int64_t n = 12;
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const auto k0 = torch::tensor({1.0, -0.5, 0.25, 0.3}, opts);
  const int64_t m = n + k0.size(0) - 1;
  difflsq::TorchLstsqOptions o;
  o.forward = {1e-13, 1e-13, 0, 5000};
  for (const int64_t cols : {int64_t(0), int64_t(3)}) {  // b (m) and b (m, 3)
    for (const double lam : {0.0, 0.1}) {
      DOCTEST_CAPTURE(cols);
      DOCTEST_CAPTURE(lam);
      const auto b0 = cols ? torch::randn({m, cols}, opts) : torch::randn({m}, opts);
      const auto w = cols ? torch::randn({n, cols}, opts) : torch::randn({n}, opts);
      auto grads = [&](bool callable) {
        auto k = k0.clone().requires_grad_(true);
        auto b = b0.clone().requires_grad_(true);
        auto d = torch::full({}, lam, opts).requires_grad_(true);
        torch::Tensor x;
        if (callable) {
          x = difflsq::lstsq(convolve, {m, n}, b, d, {k}, o);
        } else {
          const auto a = convolution_matrix(k, n);
          x = lam > 0 ? dense_reference(a, b, d) : torch::linalg::pinv(a).matmul(b);
        }
        (x * w).sum().backward();
        return std::tuple{x.detach(), k.grad(), b.grad(), d.grad()};
      };
      const auto [x1, k1, b1, d1] = grads(true);
      const auto [x2, k2, b2, d2] = grads(false);
      DOCTEST_CHECK(x1.sizes().vec() == x2.sizes().vec());
      DOCTEST_CHECK(close(x1, x2, 1e-9, 1e-11));
      DOCTEST_CHECK(close(k1, k2, 1e-7, 1e-9));
      DOCTEST_CHECK(close(b1, b2, 1e-7, 1e-9));
      if (lam > 0) DOCTEST_CHECK(close(d1, d2, 1e-7, 1e-9));
    }
  }
  // The dense matrix as a callable whose parameter is the matrix: the same as the tensor path.
  const auto a0 = torch::randn({7, 4}, opts) + torch::eye(7, 4, opts);
  const auto b0 = torch::randn({7}, opts);
  auto matvec = [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) {
    return p[0].mv(v);
  };
  auto a1 = a0.clone().requires_grad_(true), a2 = a0.clone().requires_grad_(true);
  difflsq::lstsq(matvec, {7, 4}, b0, 0.2, {a1}, o).sum().backward();
  difflsq::lstsq(a2, b0, 0.2, o).sum().backward();
  DOCTEST_CHECK(close(a1.grad(), a2.grad(), 1e-8, 1e-10));
  // Bad operators and inputs.
  auto wrong = [](const torch::Tensor& v, const std::vector<torch::Tensor>&) { return v; };
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(wrong, {7, 4}, b0, 0.0), std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(matvec, {7, 4}, torch::randn({6}, opts), 0.0, {a0}),
                          std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(difflsq::TorchOperator{}, {7, 4}, b0, 0.0),
                          std::invalid_argument);
  // float32 is kept.
  auto af = a0.to(torch::kFloat).requires_grad_(true);
  difflsq::TorchLstsqOptions of;
  of.forward.max_iterations = 100;  // LSMR's default min(m, n) = 4 is too few in float
  const auto xf = difflsq::lstsq(matvec, {7, 4}, b0.to(torch::kFloat), 0.2, {af}, of);
  DOCTEST_CHECK(bool(xf.scalar_type() == torch::kFloat));
  xf.sum().backward();
  DOCTEST_CHECK(close(af.grad().to(torch::kDouble), a2.grad(), 1e-3, 1e-4));
}

DOCTEST_TEST_CASE("LibTorch layer: callables under InferenceMode, captured tensors, affine maps") {
  torch::manual_seed(11);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const auto a0 = torch::randn({9, 4}, opts) + torch::eye(9, 4, opts);
  const auto b0 = torch::randn({9}, opts);
  const auto d = torch::full({}, 0.2, opts);
  const auto ref = dense_formula(a0, b0, d);
  difflsq::TorchLstsqOptions o;
  o.forward = {1e-12, 1e-12, 0, 500};
  auto matvec = [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) {
    return p[0].mv(v);
  };
  {  // The adjoint by autograd must work under InferenceMode (it returned x = 0, "converged").
    c10::InferenceMode guard;
    const auto x = difflsq::lstsq(matvec, {9, 4}, b0, 0.2, {a0}, o);
    DOCTEST_CHECK(close(x, ref, 1e-9, 1e-11));
  }
  torch::Tensor a_inf;
  {
    c10::InferenceMode guard;
    a_inf = a0.clone();  // an inference tensor, used outside: a constant of the solve
  }
  auto b = b0.clone().requires_grad_(true);
  const auto x = difflsq::lstsq(matvec, {9, 4}, b, 0.2, {a_inf}, o);
  DOCTEST_CHECK(close(x.detach(), ref, 1e-9, 1e-11));
  x.sum().backward();
  DOCTEST_CHECK(b.grad().defined());
  // A captured tensor that requires grad: an error, not a gradient silently lost.
  const auto w = a0.clone().requires_grad_(true);
  auto captured = [w](const torch::Tensor& v, const std::vector<torch::Tensor>&) {
    return w.mv(v);
  };
  DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq(captured, {9, 4}, b0, 0.2, {}, o),
                               doctest::Contains("not in params"), std::invalid_argument);
  {  // without grad mode the captured tensor is a constant
    torch::NoGradGuard off;
    DOCTEST_CHECK(close(difflsq::lstsq(captured, {9, 4}, b0, 0.2, {}, o), ref, 1e-9, 1e-11));
  }
  // A tensor made afresh in each call is not captured.
  auto fresh = [&a0](const torch::Tensor& v, const std::vector<torch::Tensor>&) {
    return a0.clone().requires_grad_(true).mv(v);
  };
  DOCTEST_CHECK(close(difflsq::lstsq(fresh, {9, 4}, b0, 0.2, {}, o).detach(), ref, 1e-9, 1e-11));
  // Not linear in v: an affine map (A(0) ≠ 0) and a nonlinear one (the dot test).
  const auto c = torch::randn({9}, opts);
  auto affine = [c](const torch::Tensor& v, const std::vector<torch::Tensor>& p) {
    return p[0].mv(v) + c;
  };
  DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq(affine, {9, 4}, b0, 0.2, {a0}, o),
                               doctest::Contains("A(0) is not 0"), std::invalid_argument);
  auto cubic = [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) {
    return p[0].mv(v * v * v);
  };
  DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq(cubic, {9, 4}, b0, 0.2, {a0}, o),
                               doctest::Contains("dot test"), std::invalid_argument);
  // A non-finite A is bad input under every failure policy (was a SolveError, or x = 0).
  auto a_nan = a0.clone();
  a_nan[2][1] = std::nan("");
  for (const auto policy : {difflsq::FailurePolicy::Raise, difflsq::FailurePolicy::Ignore}) {
    difflsq::TorchLstsqOptions op = o;
    op.on_failure = policy;
    DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq(a_nan, b0, 0.2, op),
                                 "difflsq::lstsq: A is not finite", std::invalid_argument);
  }
  DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq(a0.to_sparse().to_sparse_csc(), b0, 0.2, o),
                               doctest::Contains("dense (strided), sparse COO or sparse CSR"),
                               std::invalid_argument);
}

DOCTEST_TEST_CASE("LibTorch layer: empty problems (m = 0 or n = 0) give empty or zero results") {
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const difflsq::TorchOperator zero_map = [](const torch::Tensor& v,
                                             const std::vector<torch::Tensor>& p) {
    return p[0].narrow(0, 0, 0).sum() * v.narrow(0, 0, 0);  // m = 0 outputs, linear in v
  };
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{0, 3}, {4, 0}}) {
    for (const bool matrix_b : {false, true}) {
      DOCTEST_CAPTURE(m);
      DOCTEST_CAPTURE(n);
      DOCTEST_CAPTURE(matrix_b);
      auto a = torch::zeros({m, n}, opts).requires_grad_(true);
      auto b = (matrix_b ? torch::ones({m, 2}, opts) : torch::ones({m}, opts)).requires_grad_(true);
      auto x = difflsq::lstsq(a, b, 0.1);
      DOCTEST_CHECK(x.size(0) == n);
      DOCTEST_CHECK(torch::all(x == 0).item<bool>());  // x = 0: A = 0 (or no equations)
      x.sum().backward();
      DOCTEST_CHECK(a.grad().sizes() == a.sizes());
      DOCTEST_CHECK(b.grad().sizes() == b.sizes());
      DOCTEST_CHECK(torch::isfinite(a.grad()).all().item<bool>());
      if (m == 0) {  // the same through a callable
        auto k = torch::ones({2}, opts).requires_grad_(true);
        auto bc = matrix_b ? torch::ones({0, 2}, opts) : torch::ones({0}, opts);
        auto xc = difflsq::lstsq(zero_map, {0, n}, bc, 0.1, {k});
        DOCTEST_CHECK(xc.size(0) == n);
        DOCTEST_CHECK(torch::all(xc == 0).item<bool>());
      }
    }
  }
  DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq(torch::Tensor(), torch::ones({2}, opts), 0.1),
                               doctest::Contains("A"), std::invalid_argument);
}

DOCTEST_TEST_CASE("LibTorch layer: create_graph: exact first-order gradients, second order throws") {
  torch::manual_seed(5);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const auto a0 = torch::randn({8, 5}, opts), b0 = torch::randn({8}, opts);
  difflsq::TorchLstsqOptions o;
  o.forward = {1e-13, 1e-13, 0, 5000};
  auto matvec = [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) {
    return p[0].mv(v);
  };
  for (const bool callable : {false, true}) {
    for (const bool quadratic : {false, true}) {  // x̄ = 2x depends on A; x̄ = 1 does not
      DOCTEST_CAPTURE(callable);
      DOCTEST_CAPTURE(quadratic);
      auto leaves = [&] {
        return std::vector<torch::Tensor>{a0.clone().requires_grad_(true),
                                          b0.clone().requires_grad_(true),
                                          torch::full({}, 0.3, opts).requires_grad_(true)};
      };
      auto loss = [&](const torch::Tensor& x) { return quadratic ? (x * x).sum() : x.sum(); };
      const auto p = leaves(), q = leaves();
      const auto x = callable ? difflsq::lstsq(matvec, {8, 5}, p[1], p[2], {p[0]}, o)
                              : difflsq::lstsq(p[0], p[1], p[2], o);
      const auto g = torch::autograd::grad({loss(x)}, p, {}, true, /*create_graph=*/true);
      const auto ref = torch::autograd::grad({loss(dense_reference(q[0], q[1], q[2]))}, q);
      for (std::size_t i = 0; i < 3; ++i) {
        DOCTEST_CAPTURE(i);
        DOCTEST_CHECK(close(g[i], ref[i], 1e-7, 1e-9));
        DOCTEST_CHECK(g[i].requires_grad());
      }
      // A Hessian-vector product must not come back as zeros.
      DOCTEST_CHECK_THROWS_WITH(torch::autograd::grad({(g[0] * g[0]).sum()}, {p[0]}),
                                doctest::Contains("double backward"));
    }
  }
}

namespace {
/// A forward-mode AD level for the scope (LibTorch's C++ form of Python's fwAD.dual_level()).
struct DualLevel {
  uint64_t idx = torch::autograd::ForwardADLevel::get_next_idx();
  ~DualLevel() { torch::autograd::ForwardADLevel::release_idx(idx); }
};
torch::Tensor dual(const torch::Tensor& primal, const torch::Tensor& tangent) {
  return at::_make_dual(primal, tangent, 0);
}
torch::Tensor tangent(const torch::Tensor& t) { return t._fw_grad(0); }
}  // namespace

DOCTEST_TEST_CASE(
    "LibTorch layer: forward mode (dual tensors, lstsq_jvp) matches torch's forward AD through a "
    "dense formula") {
  torch::manual_seed(6);
  struct Case {
    int64_t m, n, k;
    double lam;
    torch::ScalarType dtype;
  };
  difflsq::TorchLstsqOptions o;
  o.forward = {1e-13, 1e-13, 0, 5000};
  for (const Case c :
       {Case{9, 5, 0, 0.0, torch::kDouble}, Case{9, 5, 0, 0.3, torch::kDouble},
        Case{5, 9, 0, 0.0, torch::kDouble}, Case{5, 9, 0, 0.3, torch::kDouble},
        Case{8, 4, 3, 0.2, torch::kDouble}, Case{9, 5, 0, 0.3, torch::kComplexDouble},
        Case{5, 9, 2, 0.0, torch::kComplexDouble}}) {
    DOCTEST_CAPTURE(c.m);
    DOCTEST_CAPTURE(c.n);
    DOCTEST_CAPTURE(c.k);
    DOCTEST_CAPTURE(c.lam);
    const auto opts = torch::TensorOptions().dtype(c.dtype);
    const auto real = torch::TensorOptions().dtype(torch::kDouble);
    const auto a = torch::randn({c.m, c.n}, opts) + 2 * torch::eye(c.m, c.n, opts);
    const auto b = c.k ? torch::randn({c.m, c.k}, opts) : torch::randn({c.m}, opts);
    const auto d = torch::full({}, c.lam, real);
    const auto da = torch::randn_like(a), db = torch::randn_like(b);
    const auto dd = torch::full({}, c.lam > 0 ? 0.7 : 0.0, real);
    torch::Tensor ref, x, dx;
    {
      DualLevel level;
      ref = tangent(dense_formula(dual(a, da), dual(b, db), dual(d, dd)));
      const auto y = difflsq::lstsq(dual(a, da), dual(b, db), dual(d, dd), o);
      x = std::get<0>(at::_unpack_dual(y, 0));  // the primal
      dx = tangent(y);
      // One tangent at a time: the others are zero.
      const auto only_b = tangent(difflsq::lstsq(a, dual(b, db), d, o));
      DOCTEST_CHECK(close(only_b, tangent(dense_formula(a, dual(b, db), d)), 1e-8, 1e-10));
    }
    DOCTEST_REQUIRE(dx.defined());
    DOCTEST_CHECK(dx.sizes() == x.sizes());
    DOCTEST_CHECK(close(x, dense_formula(a, b, d), 1e-9, 1e-11));
    DOCTEST_CHECK(close(dx, ref, 1e-8, 1e-10));
    const auto [x2, dx2] = difflsq::lstsq_jvp(a, b, d, da, db, dd, o);
    DOCTEST_CHECK(close(x2, x, 1e-12, 1e-14));
    DOCTEST_CHECK(close(dx2, ref, 1e-8, 1e-10));
  }
}

DOCTEST_TEST_CASE("LibTorch layer: forward mode through a callable's parameters, and its errors") {
  torch::manual_seed(7);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  difflsq::TorchLstsqOptions o;
  o.forward = {1e-13, 1e-13, 0, 5000};
  const int64_t n = 12;
  const auto k = torch::tensor({1.0, -0.5, 0.25, 0.3}, opts), dk = torch::randn({4}, opts);
  const int64_t m = n + k.size(0) - 1;
  for (const double lam : {0.0, 0.1}) {
    DOCTEST_CAPTURE(lam);
    const auto b = torch::randn({m}, opts), db = torch::randn({m}, opts);
    const auto d = torch::full({}, lam, opts), dd = torch::full({}, lam > 0 ? -0.4 : 0.0, opts);
    torch::Tensor got, ref;
    {
      DualLevel level;
      got = tangent(difflsq::lstsq(convolve, {m, n}, dual(b, db), dual(d, dd), {dual(k, dk)}, o));
      const auto a = convolution_matrix(dual(k, dk), n);
      ref = tangent(dense_formula(a, dual(b, db), dual(d, dd)));
    }
    DOCTEST_CHECK(close(got, ref, 1e-8, 1e-10));
    const auto [x, dx] = difflsq::lstsq_jvp(convolve, {m, n}, b, d, {k}, {dk}, db, dd, o);
    DOCTEST_CHECK(close(dx, ref, 1e-8, 1e-10));
    // Only the kernel moves.
    const auto [x3, dk_only] =
        difflsq::lstsq_jvp(convolve, {m, n}, b, d, {k}, {dk}, torch::Tensor(), torch::Tensor(), o);
    torch::Tensor ref_k;
    {
      DualLevel level;
      ref_k = tangent(dense_formula(convolution_matrix(dual(k, dk), n), b, d));
    }
    DOCTEST_CHECK(close(dk_only, ref_k, 1e-8, 1e-10));
  }
  // Reverse mode still works on the primal of a dual result; the tangent is not differentiable.
  const auto a0 = torch::randn({7, 4}, opts) + torch::eye(7, 4, opts);
  const auto b0 = torch::randn({7}, opts);
  {
    DualLevel level;
    auto a = a0.clone().requires_grad_(true);
    const auto y = difflsq::lstsq(dual(a, torch::randn_like(a0)), b0, 0.2, o);
    std::get<0>(at::_unpack_dual(y, 0)).sum().backward();
    auto a2 = a0.clone().requires_grad_(true);
    dense_formula(a2, b0, torch::full({}, 0.2, opts)).sum().backward();
    DOCTEST_CHECK(close(a.grad(), a2.grad(), 1e-7, 1e-9));
    DOCTEST_CHECK_THROWS_WITH(torch::autograd::grad({tangent(y).sum()}, {a}),
                              doctest::Contains("double backward"));
  }
  // Tangents of the wrong shape or dtype, non-finite, or given twice.
  const auto d0 = torch::full({}, 0.2, opts);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq_jvp(a0, b0, d0, torch::randn({4, 7}, opts), {}, {}),
                          std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(
      difflsq::lstsq_jvp(a0, b0, d0, {}, torch::randn({7}, torch::kComplexDouble), {}),
      std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq_jvp(a0, b0, d0, {}, torch::full({7}, NAN, opts), {}),
                          std::invalid_argument);
  {
    DualLevel level;
    DOCTEST_CHECK_THROWS_WITH_AS(
        difflsq::lstsq_jvp(a0, dual(b0, torch::randn_like(b0)), d0, {}, {}, {}),
        doctest::Contains("dual tensor"), std::invalid_argument);
  }
}

DOCTEST_TEST_CASE(
    "LibTorch layer: forward mode with complex parameters, strided and float32 tangents, zero "
    "tangents, and operators that capture a dual tensor") {
  torch::manual_seed(8);
  difflsq::TorchLstsqOptions o;
  o.forward = {1e-13, 1e-13, 0, 5000};
  const auto real = torch::TensorOptions().dtype(torch::kDouble);
  const auto cplx = torch::TensorOptions().dtype(torch::kComplexDouble);
  // A(M, s) = s·M with M complex and s real: Ȧv and Ȧᴴu by reverse mode through the callable
  // must get the conjugations right, for a tall and a wide A.
  const difflsq::TorchOperator scaled = [](const torch::Tensor& v,
                                           const std::vector<torch::Tensor>& p) {
    return p.at(1) * p.at(0).mv(v);
  };
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{8, 5}, {5, 8}}) {
    DOCTEST_CAPTURE(m);
    const auto mat = torch::randn({m, n}, cplx) + 2 * torch::eye(m, n, cplx);
    const auto dmat = torch::randn_like(mat);
    const auto s = torch::full({}, 1.3, real), ds = torch::full({}, -0.6, real);
    const auto b = torch::randn({m}, cplx), db = torch::randn_like(b);
    const auto d = torch::full({}, 0.2, real);
    torch::Tensor got, ref, ref_m;
    {
      DualLevel level;
      got = tangent(
          difflsq::lstsq(scaled, {m, n}, dual(b, db), d, {dual(mat, dmat), dual(s, ds)}, o));
      ref = tangent(dense_formula(dual(s, ds) * dual(mat, dmat), dual(b, db), d));
      ref_m = tangent(dense_formula(s * dual(mat, dmat), b, d));
    }
    DOCTEST_CHECK(close(got, ref, 1e-8, 1e-10));
    // Only M moves (s's tangent missing).
    const auto [x, dx] = difflsq::lstsq_jvp(scaled, {m, n}, b, d, {mat, s}, {dmat}, {}, {}, o);
    DOCTEST_CHECK(close(dx, ref_m, 1e-8, 1e-10));
  }

  const auto a = torch::randn({9, 5}, real) + 2 * torch::eye(9, 5, real);
  const auto b = torch::randn({9}, real);
  const auto d = torch::full({}, 0.3, real), dd = torch::full({}, 0.5, real);
  const auto da_t = torch::randn({5, 9}, real), db = torch::randn({9}, real);
  torch::Tensor ref, ref_damp, ref_t;
  {
    DualLevel level;
    ref = tangent(dense_formula(dual(a, da_t.t()), dual(b, db), d));
    ref_damp = tangent(dense_formula(a, b, dual(d, dd)));
    // Strided primal and tangent (transposed views) through dual tensors.
    const auto at = a.t().contiguous().t();  // a's values, column-major
    DOCTEST_CHECK(
        close(tangent(difflsq::lstsq(dual(at, da_t.t()), dual(b, db), d, o)), ref, 1e-8, 1e-10));
    // λ̇ alone.
    DOCTEST_CHECK(close(tangent(difflsq::lstsq(a, b, dual(d, dd), o)), ref_damp, 1e-8, 1e-10));
    // float32: the same rule, single precision.
    const auto y32 =
        difflsq::lstsq(dual(a.to(torch::kFloat), da_t.t().to(torch::kFloat)),
                       dual(b.to(torch::kFloat), db.to(torch::kFloat)), d.to(torch::kFloat));
    DOCTEST_CHECK((tangent(y32).scalar_type() == torch::kFloat));
    DOCTEST_CHECK(close(tangent(y32).to(torch::kDouble), ref, 1e-3, 1e-4));
    // A symbolic-zero tangent: x as without it, ẋ = 0, no error.
    const auto y0 = difflsq::lstsq(a, dual(b, at::_efficientzerotensor(b.sizes(), real)), d, o);
    DOCTEST_CHECK(close(std::get<0>(at::_unpack_dual(y0, 0)), dense_formula(a, b, d), 1e-9, 1e-11));
    DOCTEST_CHECK((!tangent(y0).defined() || tangent(y0).abs().max().item<double>() == 0));
    // An operator that captures a dual tensor instead of taking it in params: an error, not a
    // lost tangent.
    const auto ad = dual(a, da_t.t());
    const difflsq::TorchOperator captures =
        [ad](const torch::Tensor& v, const std::vector<torch::Tensor>&) { return ad.mv(v); };
    DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq(captures, {9, 5}, b, d, {}, o),
                                 doctest::Contains("captured by the operator"),
                                 std::invalid_argument);
    DOCTEST_CHECK_THROWS_WITH_AS(
        difflsq::lstsq_jvp(convolve, {9, 5}, b, d,
                           {dual(torch::randn({5}, real), db.narrow(0, 0, 5))}, {}, {}, {}, o),
        doctest::Contains("dual tensor"), std::invalid_argument);
  }
  // lstsq_jvp: a strided tangent, and no tangent at all (ẋ = 0, no rule solves).
  const auto [x, dx] = difflsq::lstsq_jvp(a, b, d, da_t.t(), db, {}, o);
  DOCTEST_CHECK(close(dx, ref, 1e-8, 1e-10));
  const auto [x0, dx0] = difflsq::lstsq_jvp(a, b, d, {}, {}, {}, o);
  DOCTEST_CHECK(close(x0, x, 1e-12, 1e-14));
  DOCTEST_CHECK(dx0.sizes() == x.sizes());
  DOCTEST_CHECK(dx0.abs().max().item<double>() == 0);
  // More parameter tangents than parameters; a tangent of the wrong shape names both shapes.
  const auto k = torch::randn({5}, real);
  DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq_jvp(convolve, {9, 5}, b, d, {k}, {k, k}, {}, {}, o),
                               doctest::Contains("more parameter tangents"), std::invalid_argument);
  DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq_jvp(a, b, d, da_t, {}, {}, o),
                               doctest::Contains("[9, 5]"), std::invalid_argument);
}

DOCTEST_TEST_CASE("LibTorch layer: statuses of every solve, and the warn and ignore policies") {
  torch::manual_seed(7);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  // Columns scaled over four decades: two iterations cannot reach tolerance 1e-13.
  const auto a0 = torch::randn({30, 20}, opts) * torch::logspace(0, -4, 20, 10, opts);
  const auto b = torch::randn({30}, opts);
  const auto w = torch::randn({20}, opts);
  auto solve = [&](difflsq::TorchLstsqOptions o) {
    o.forward = {1e-13, 1e-13, 0, 5000};
    o.backward = difflsq::Tolerances<double>{1e-13, 1e-13, 0, 2};
    auto a = a0.clone().requires_grad_(true);
    (difflsq::lstsq(a, b, 0.0, o) * w).sum().backward();
    return a.grad();
  };
  auto failed = [](const std::vector<difflsq::TorchSolveRecord>& list) {
    return std::count_if(list.begin(), list.end(), [](const auto& r) {
      return !r.converged && r.status == difflsq::Status::IterationLimit && r.iterations == 2;
    });
  };

  // Warn, through a callback: each failed backward solve once, and recorded as failed.
  difflsq::TorchLstsqOptions warn;
  warn.on_failure = difflsq::FailurePolicy::Warn;
  std::vector<std::string> messages;
  warn.warn = [&](const std::string& m) { messages.push_back(m); };
  warn.info = std::make_shared<difflsq::TorchLstsqInfo>();
  const auto grad = solve(warn);
  DOCTEST_CHECK(torch::isfinite(grad).all().item<bool>());
  DOCTEST_REQUIRE(warn.info->forward.size() == 1);
  DOCTEST_CHECK(warn.info->forward[0].converged);
  DOCTEST_CHECK(warn.info->forward[0].role == "forward");
  const auto failures = failed(warn.info->backward);
  DOCTEST_CHECK(failures >= 1);
  DOCTEST_CHECK(messages.size() == std::size_t(failures));
  for (const auto& m : messages) DOCTEST_CHECK(m.find("backward") != std::string::npos);

  // Warn without a callback: a LibTorch warning.
  struct Collect : c10::WarningHandler {
    std::vector<std::string> seen;
    void process(const c10::SourceLocation&, const std::string& msg, const bool) override {
      seen.push_back(msg);
    }
  } handler;
  {
    c10::Warning::WarningHandlerGuard guard(&handler);
    difflsq::TorchLstsqOptions plain;
    plain.on_failure = difflsq::FailurePolicy::Warn;
    solve(plain);
  }
  DOCTEST_CHECK(handler.seen.size() == std::size_t(failures));

  // Ignore: silent, and the statuses say what happened.
  difflsq::TorchLstsqOptions ignore;
  ignore.on_failure = difflsq::FailurePolicy::Ignore;
  ignore.info = std::make_shared<difflsq::TorchLstsqInfo>();
  solve(ignore);
  DOCTEST_CHECK(failed(ignore.info->backward) == failures);

  // Raise: the solve that throws is recorded too, last, after the ones before it.
  difflsq::TorchLstsqOptions raise;
  raise.info = std::make_shared<difflsq::TorchLstsqInfo>();
  DOCTEST_CHECK_THROWS(solve(raise));
  DOCTEST_CHECK(raise.info->forward.size() == 1);
  DOCTEST_REQUIRE(!raise.info->backward.empty());
  DOCTEST_CHECK(failed(raise.info->backward) == 1);
  DOCTEST_CHECK(!raise.info->backward.back().converged);
  DOCTEST_CHECK(raise.info->backward.back().role.find("backward") == 0);
  raise.forward = {1e-13, 1e-13, 0, 2};  // now the forward solve fails
  raise.info = std::make_shared<difflsq::TorchLstsqInfo>();
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(a0, b, 0.0, raise), difflsq::SolveError);
  DOCTEST_REQUIRE(raise.info->forward.size() == 1);
  DOCTEST_CHECK(raise.info->forward[0].role == "forward");
  DOCTEST_CHECK(failed(raise.info->forward) == 1);

  // Forward mode: its solves in info->jvp; the callable's forward and backward solves too.
  difflsq::TorchLstsqOptions fm;
  fm.forward = {1e-12, 1e-12, 0, 5000};
  fm.info = std::make_shared<difflsq::TorchLstsqInfo>();
  const auto damp = torch::full({}, 0.1, opts);
  difflsq::lstsq_jvp(a0, b, damp, torch::randn({30, 20}, opts), torch::Tensor(), torch::Tensor(),
                     fm);
  DOCTEST_CHECK(fm.info->forward.size() == 1);
  DOCTEST_CHECK(!fm.info->jvp.empty());
  for (const auto& r : fm.info->jvp) DOCTEST_CHECK(r.converged);
  fm.info = std::make_shared<difflsq::TorchLstsqInfo>();
  auto mat = a0.clone().requires_grad_(true);
  const difflsq::TorchOperator apply =
      [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) { return p[0].matmul(v); };
  difflsq::lstsq(apply, {30, 20}, b, damp, {mat}, fm).sum().backward();
  DOCTEST_CHECK(fm.info->forward.size() == 1);
  DOCTEST_CHECK(!fm.info->backward.empty());
  for (const auto& r : fm.info->backward) DOCTEST_CHECK(r.converged);
  fm.forward = {1e-13, 1e-13, 0, 2};  // a failing forward solve of the callable, recorded
  fm.info = std::make_shared<difflsq::TorchLstsqInfo>();
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(apply, {30, 20}, b, damp, {mat}, fm), difflsq::SolveError);
  DOCTEST_REQUIRE(fm.info->forward.size() == 1);
  DOCTEST_CHECK(failed(fm.info->forward) == 1);
}

namespace {
/// A random m × n sparse COO matrix (uncoalesced: about half the entries, the diagonal among
/// them, in random order, the first two repeated at the end).
torch::Tensor random_sparse(int64_t m, int64_t n, torch::Dtype dtype) {
  auto keep = torch::rand({m, n}) < 0.5;
  const auto diag = torch::arange(std::min(m, n));
  keep.index_put_({diag, diag}, true);
  auto idx = keep.nonzero().t();
  idx = idx.index_select(1, torch::randperm(idx.size(1)));
  idx = torch::cat({idx, idx.slice(1, 0, 2)}, 1);
  return torch::sparse_coo_tensor(idx, torch::randn({idx.size(1)}, torch::dtype(dtype)), {m, n});
}
}  // namespace

DOCTEST_TEST_CASE("LibTorch layer: sparse COO and CSR A, gradients on the pattern") {
  torch::manual_seed(3);
  struct Case {
    int64_t m, n, k;
    double lam;
  };
  for (const auto dtype : {torch::kDouble, torch::kComplexDouble})
    for (const Case c :
         {Case{12, 7, 0, 0.0}, Case{12, 7, 2, 0.25}, Case{7, 12, 0, 0.0}, Case{7, 12, 0, 0.25}})
      for (const auto layout : {torch::kSparse, torch::kSparseCsr}) {
        DOCTEST_CAPTURE(c.m);
        DOCTEST_CAPTURE(c.n);
        DOCTEST_CAPTURE(c.lam);
        const std::string what = std::string(layout == torch::kSparse ? "COO " : "CSR ") +
                                 (dtype == torch::kDouble ? "double" : "complex double");
        DOCTEST_CAPTURE(what);
        const auto coo = random_sparse(c.m, c.n, dtype);
        const auto a0 = layout == torch::kSparse ? coo.coalesce() : coo.coalesce().to_sparse_csr();
        const auto [got, ref] = against_dense(a0, coo.to_dense(), c.k, c.lam);
        DOCTEST_CHECK(close(got.x, ref.x, 1e-9, 1e-11));
        DOCTEST_CHECK(close(got.b, ref.b, 1e-7, 1e-9));
        if (c.lam > 0) DOCTEST_CHECK(close(got.damp, ref.damp, 1e-7, 1e-9));
        // Ā is sparse, of A's layout and pattern: the dense gradient at the stored entries.
        DOCTEST_REQUIRE((got.a.layout() == layout));
        const auto stored = coo.coalesce().to_dense() != 0;
        const auto ga = got.a.to_dense();
        DOCTEST_CHECK(
            torch::count_nonzero(ga.masked_select(stored.logical_not())).item<int64_t>() == 0);
        DOCTEST_CHECK(close(ga.masked_select(stored), ref.a.masked_select(stored), 1e-7, 1e-9));
      }
}

DOCTEST_TEST_CASE("LibTorch layer: sparse A built from values, float32, forward mode, errors") {
  torch::manual_seed(4);
  const auto coo = random_sparse(10, 6, torch::kDouble);
  const auto idx = coo._indices();
  const auto b = torch::randn({10}, torch::kDouble);
  difflsq::TorchLstsqOptions o;
  o.forward = {1e-13, 1e-13, 0, 5000};
  // Gradients reach the values through at::sparse_coo_tensor (torch::sparse_coo_tensor makes a
  // new leaf); duplicates get equal ones.
  auto v = coo._values().clone().requires_grad_(true);
  const auto x = difflsq::lstsq(at::sparse_coo_tensor(idx, v, {10, 6}), b, 0.1, o);
  x.sum().backward();
  auto vd = coo._values().clone().requires_grad_(true);
  dense_reference(at::sparse_coo_tensor(idx, vd, {10, 6}).to_dense(), b,
                  torch::full({}, 0.1, torch::kDouble))
      .sum()
      .backward();
  DOCTEST_CHECK(close(v.grad(), vd.grad(), 1e-7, 1e-9));
  DOCTEST_CHECK(torch::equal(v.grad().slice(0, 0, 2), v.grad().slice(0, -2)));
  // float32 is kept.
  const auto a32 = coo.to(torch::kFloat).coalesce().requires_grad_(true);
  const auto x32 = difflsq::lstsq(a32, b.to(torch::kFloat), 0.1);
  x32.sum().backward();
  DOCTEST_CHECK((x32.scalar_type() == torch::kFloat));
  DOCTEST_CHECK((a32.grad().scalar_type() == torch::kFloat));
  DOCTEST_CHECK(close(x32.to(torch::kDouble), x.detach(), 1e-4, 1e-5));
  // Forward mode along b and damp (not along a sparse A: LibTorch has none for sparse tensors).
  const auto db = torch::randn({10}, torch::kDouble);
  const auto d = torch::full({}, 0.1, torch::kDouble), dd = torch::full({}, 0.5, torch::kDouble);
  const auto [xs, xdot] = difflsq::lstsq_jvp(coo, b, d, {}, db, dd, o);
  const auto [xr, xrdot] = difflsq::lstsq_jvp(coo.to_dense(), b, d, {}, db, dd, o);
  DOCTEST_CHECK(close(xs, xr, 1e-9, 1e-11));
  DOCTEST_CHECK(close(xdot, xrdot, 1e-8, 1e-10));
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq_jvp(coo, b, d, coo, db, dd, o), std::invalid_argument);
  // An uncoalesced COO leaf gets the gradient of its coalesced pattern, as a coalesced leaf
  // does; int32 CSR indices are kept in the gradient.
  auto leaf = coo.clone().requires_grad_(true);
  auto coalesced = coo.coalesce().requires_grad_(true);
  difflsq::lstsq(leaf, b, 0.1, o).sum().backward();
  difflsq::lstsq(coalesced, b, 0.1, o).sum().backward();
  DOCTEST_CHECK(close(leaf.grad().to_dense(), coalesced.grad().to_dense(), 1e-12, 1e-14));
  const auto csr = coo.coalesce().to_sparse_csr();
  auto csr32 = torch::sparse_csr_tensor(csr.crow_indices().to(torch::kInt),
                                        csr.col_indices().to(torch::kInt), csr.values(), {10, 6},
                                        torch::dtype(torch::kDouble))
                   .requires_grad_(true);
  difflsq::lstsq(csr32, b, 0.1, o).sum().backward();
  DOCTEST_CHECK((csr32.grad().crow_indices().scalar_type() == torch::kInt));
  DOCTEST_CHECK(close(csr32.grad().to_dense(), coalesced.grad().to_dense(), 1e-12, 1e-14));
  // Bad input: non-finite values, a hybrid tensor (one sparse and one dense dimension),
  // indices out of range or out of order in tensors torch did not check, a CSC layout.
  auto bad = coo._values().clone();
  bad[0] = std::nan("");
  DOCTEST_CHECK_THROWS_WITH_AS(difflsq::lstsq(torch::sparse_coo_tensor(idx, bad, {10, 6}), b, 0.1),
                               doctest::Contains("not finite"), std::invalid_argument);
  DOCTEST_CHECK_THROWS_WITH_AS(
      difflsq::lstsq(
          torch::sparse_coo_tensor(idx.slice(0, 0, 1),
                                   torch::ones({idx.size(1), 6}, torch::kDouble), {10, 6}),
          b, 0.1),
      doctest::Contains("no dense dimensions"), std::invalid_argument);
  for (const auto& [row, value] : {std::pair<int, int64_t>{0, 10}, {1, -1}}) {
    auto wrong = idx.clone();
    wrong[row][0] = value;
    DOCTEST_CHECK_THROWS_WITH_AS(
        difflsq::lstsq(at::_sparse_coo_tensor_unsafe(wrong, coo._values(), {10, 6}), b, 0.1),
        doctest::Contains("malformed sparse A"), std::invalid_argument);
  }
  auto col = csr.col_indices().clone();
  col[0] = 6;
  DOCTEST_CHECK_THROWS_WITH_AS(
      difflsq::lstsq(at::_sparse_csr_tensor_unsafe(csr.crow_indices(), col, csr.values(), {10, 6},
                                                   torch::dtype(torch::kDouble)),
                     b, 0.1),
      doctest::Contains("malformed sparse A"), std::invalid_argument);
  DOCTEST_CHECK_THROWS_AS(difflsq::lstsq(coo.coalesce().to_sparse_csc(), b, 0.1),
                          std::invalid_argument);
}
