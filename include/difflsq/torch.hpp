// difflsq — the least-squares layer as a LibTorch autograd Function, for C++ code that trains
// with LibTorch (the Python package has the same layer as difflsq.torch.lstsq).
//
//     #include <difflsq/torch.hpp>
//     torch::Tensor x = difflsq::lstsq(A, b, damp);   // A (m, n), b (m) or (m, k), damp 0-d
//     loss(x).backward();                              // gradients reach A, b and damp
//
// The forward pass runs the solver on the tensor's memory (no copy for a contiguous A); the
// backward pass is the adjoint rule of layer.hpp (docs/gradients.md). CPU tensors, float32 or
// float64 (kept). Not part of difflsq.hpp: link LibTorch (find_package(Torch)) to use it.
#pragma once

#include <torch/torch.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "layer.hpp"

namespace difflsq {

/// Options of lstsq(): the method, forward and backward tolerances and the failure policy.
struct TorchLstsqOptions {
  Method method = Method::Lsmr;
  Tolerances<double> forward{};
  std::optional<Tolerances<double>> backward{};
  FailurePolicy on_failure = FailurePolicy::Raise;
};

namespace detail {

template <class Scalar>
using TensorMap =
    Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

template <class Scalar>
LeastSquaresOptions<Scalar> layer_options(const TorchLstsqOptions& o) {
  using Real = RealOf<Scalar>;
  auto cast = [](const Tolerances<double>& t) {
    return Tolerances<Real>{Real(t.atol), Real(t.btol), Real(t.conlim), t.max_iterations};
  };
  LeastSquaresOptions<Scalar> out;
  out.method = o.method;
  out.forward = cast(o.forward);
  if (o.backward) out.backward = cast(*o.backward);
  out.on_failure = o.on_failure;
  return out;
}

inline void check_tensor(const torch::Tensor& t, const char* name) {
  if (!t.defined()) throw std::invalid_argument(std::string("difflsq::lstsq: ") + name + " is undefined");
  if (t.device().type() != torch::kCPU)
    throw std::invalid_argument(std::string("difflsq::lstsq: ") + name + " is on device " +
                                t.device().str() + "; this build runs on the CPU only");
}

}  // namespace detail

/// The autograd Function behind difflsq::lstsq.
class LstsqFunction : public torch::autograd::Function<LstsqFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a,
                               const torch::Tensor& b, const torch::Tensor& damp,
                               const TorchLstsqOptions& options) {
    const auto ac = a.contiguous();
    const auto b2 = b.reshape({a.size(0), -1}).contiguous();
    torch::Tensor x, r, status, anorm;
    if (a.scalar_type() == torch::kFloat)
      run_forward<float>(ac, b2, damp, options, x, r, status, anorm);
    else
      run_forward<double>(ac, b2, damp, options, x, r, status, anorm);
    ctx->save_for_backward({ac, b2, x, r, damp});
    ctx->saved_data["status"] = status;
    ctx->saved_data["anorm"] = anorm;
    ctx->saved_data["method"] = static_cast<int64_t>(options.method);
    ctx->saved_data["policy"] = static_cast<int64_t>(options.on_failure);
    const auto& t = options.backward ? *options.backward : options.forward;
    ctx->saved_data["tol"] = std::vector<double>{t.atol, t.btol, t.conlim,
                                                 static_cast<double>(t.max_iterations)};
    const auto& f = options.forward;
    ctx->saved_data["ftol"] = std::vector<double>{f.atol, f.btol, f.conlim,
                                                  static_cast<double>(f.max_iterations)};
    return b.dim() == 1 ? x.reshape({a.size(1)}) : x;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // The rule runs on raw memory: its result is not differentiable again.
    if (torch::GradMode::is_enabled())
      throw std::runtime_error(
          "difflsq::lstsq does not support double backward (create_graph = true)");
    const auto saved = ctx->get_saved_variables();
    const auto& a = saved[0];
    const auto xbar = grads[0].reshape({a.size(1), -1}).contiguous();
    torch::Tensor abar, bbar, dbar;
    if (a.scalar_type() == torch::kFloat)
      run_backward<float>(ctx, saved, xbar, abar, bbar, dbar);
    else
      run_backward<double>(ctx, saved, xbar, abar, bbar, dbar);
    if (grads[0].dim() == 1) bbar = bbar.reshape({a.size(0)});
    return {abar, bbar, dbar, torch::Tensor()};
  }

 private:
  static TorchLstsqOptions options_from(torch::autograd::AutogradContext* ctx) {
    TorchLstsqOptions o;
    o.method = static_cast<Method>(ctx->saved_data["method"].toInt());
    o.on_failure = static_cast<FailurePolicy>(ctx->saved_data["policy"].toInt());
    auto tol = [](const c10::IValue& v) {
      const auto d = v.toDoubleVector();
      return Tolerances<double>{d[0], d[1], d[2], static_cast<Index>(d[3])};
    };
    o.forward = tol(ctx->saved_data["ftol"]);
    o.backward = tol(ctx->saved_data["tol"]);
    return o;
  }

  template <class Scalar>
  static void run_forward(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& damp,
                          const TorchLstsqOptions& options, torch::Tensor& x, torch::Tensor& r,
                          torch::Tensor& status, torch::Tensor& anorm) {
    const Index m = a.size(0), n = a.size(1), k = b.size(1);
    const detail::TensorMap<Scalar> map(a.data_ptr<Scalar>(), m, n);
    const auto op = parameterized(map);
    LeastSquares<Scalar> layer(detail::layer_options<Scalar>(options));
    const auto lam = static_cast<RealOf<Scalar>>(damp.item<double>());
    x = torch::empty({n, k}, a.options());
    r = torch::empty({m, k}, a.options());
    status = torch::empty({k}, torch::kLong);
    anorm = torch::empty({k}, torch::kDouble);
    const auto bt = b.t().contiguous();  // column j of b is row j of bᵀ
    std::vector<Vector<Scalar>> xs(k), rs(k);
    for (Index j = 0; j < k; ++j) {
      const Eigen::Map<const Vector<Scalar>> bj(bt.data_ptr<Scalar>() + j * m, m);
      auto f = layer.forward(op, bj, lam);
      xs[j] = std::move(f.x);
      rs[j] = std::move(f.r);
      status[j] = static_cast<int64_t>(f.report.status);
      anorm[j] = static_cast<double>(f.report.anorm);
    }
    copy_columns(xs, x);
    copy_columns(rs, r);
  }

  template <class Scalar>
  static void run_backward(torch::autograd::AutogradContext* ctx,
                           const torch::autograd::variable_list& saved, const torch::Tensor& xbar,
                           torch::Tensor& abar, torch::Tensor& bbar, torch::Tensor& dbar) {
    const auto &a = saved[0], &b = saved[1], &x = saved[2], &r = saved[3], &damp = saved[4];
    const Index m = a.size(0), n = a.size(1), k = b.size(1);
    const detail::TensorMap<Scalar> map(a.data_ptr<Scalar>(), m, n);
    const auto op = parameterized(map);
    LeastSquares<Scalar> layer(detail::layer_options<Scalar>(options_from(ctx)));
    const auto status = ctx->saved_data["status"].toTensor();
    const auto anorm = ctx->saved_data["anorm"].toTensor();
    const auto bt = b.t().contiguous(), xt = x.t().contiguous(), rt = r.t().contiguous(),
               gt = xbar.t().contiguous();
    auto col = [](const torch::Tensor& t, Index j, Index len) {
      return Eigen::Map<const Vector<Scalar>>(t.data_ptr<Scalar>() + j * len, len);
    };
    Vector<Scalar> theta = Vector<Scalar>::Zero(m * n);
    std::vector<Vector<Scalar>> bbars(k);
    double dsum = 0;
    for (Index j = 0; j < k; ++j) {
      // The saved context of column j, rebuilt from the saved tensors.
      Forward<MatrixParameters<detail::TensorMap<Scalar>>> f;
      f.op = &op;
      f.b = col(bt, j, m);
      f.x = col(xt, j, n);
      f.r = col(rt, j, m);
      f.damp = static_cast<RealOf<Scalar>>(damp.item<double>());
      f.report.status = static_cast<Status>(status[j].item<int64_t>());
      f.report.anorm = static_cast<RealOf<Scalar>>(anorm[j].item<double>());
      auto g = layer.backward(f, col(gt, j, n));
      theta += g.theta;
      bbars[j] = std::move(g.b);
      dsum += static_cast<double>(g.damp);
    }
    abar = torch::from_blob(theta.data(), {m, n}, a.options()).clone();  // θ is row-major Ā
    bbar = torch::empty({m, k}, a.options());
    copy_columns(bbars, bbar);
    dbar = torch::full({}, dsum, damp.options());
  }

  template <class Scalar>
  static void copy_columns(const std::vector<Vector<Scalar>>& cols, torch::Tensor& out) {
    auto acc = out.accessor<Scalar, 2>();
    for (std::size_t j = 0; j < cols.size(); ++j)
      for (Index i = 0; i < cols[j].size(); ++i) acc[i][static_cast<Index>(j)] = cols[j][i];
  }
};

/// Differentiable argmin_x ‖A x − b‖² + damp²‖x‖² (minimum-norm where not unique). A (m, n),
/// b (m) or (m, k) (k independent solves), damp a 0-d tensor (it receives a gradient when it
/// requires one). Throws std::invalid_argument for bad input and SolveError when a solve does not
/// converge under FailurePolicy::Raise.
inline torch::Tensor lstsq(const torch::Tensor& a, const torch::Tensor& b,
                           const torch::Tensor& damp, const TorchLstsqOptions& options = {}) {
  detail::check_tensor(a, "A");
  detail::check_tensor(b, "b");
  detail::check_tensor(damp, "damp");
  if (a.dim() != 2) throw std::invalid_argument("difflsq::lstsq: A must be 2-D");
  if (a.scalar_type() != torch::kFloat && a.scalar_type() != torch::kDouble)
    throw std::invalid_argument("difflsq::lstsq: A must be float32 or float64");
  if (b.scalar_type() != a.scalar_type() || damp.scalar_type() != a.scalar_type())
    throw std::invalid_argument("difflsq::lstsq: A, b and damp must have the same dtype");
  if ((b.dim() != 1 && b.dim() != 2) || b.size(0) != a.size(0))
    throw std::invalid_argument("difflsq::lstsq: b must have shape (" + std::to_string(a.size(0)) +
                                ") or (" + std::to_string(a.size(0)) + ", k)");
  if (damp.numel() != 1) throw std::invalid_argument("difflsq::lstsq: damp must be a scalar");
  return LstsqFunction::apply(a, b, damp.reshape({}), options);
}

inline torch::Tensor lstsq(const torch::Tensor& a, const torch::Tensor& b, double damp = 0,
                           const TorchLstsqOptions& options = {}) {
  return lstsq(a, b, torch::full({}, damp, a.options()), options);
}

}  // namespace difflsq
