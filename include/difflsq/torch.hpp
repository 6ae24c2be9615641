// difflsq — the least-squares layer as LibTorch autograd Functions, for C++ code that trains
// with LibTorch (the Python package has the same layer as difflsq.torch.lstsq).
//
//     #include <difflsq/torch.hpp>
//     torch::Tensor x = difflsq::lstsq(A, b, damp);   // A (m, n), b (m) or (m, k), damp 0-d
//     loss(x).backward();                              // gradients reach A, b and damp
//
//     // A matrix-free A(θ): fn(v, params) computes A(θ)·v with torch operations, linear in v.
//     auto conv = [](const torch::Tensor& v, const std::vector<torch::Tensor>& p) { ... };
//     torch::Tensor x = difflsq::lstsq(conv, {m, n}, b, damp, {kernel});  // gradients reach kernel
//
// For a tensor A the forward pass runs the solver on the tensor's memory (no copy for a
// contiguous A). A sparse COO (coalesced here) or CSR A runs as a CSR matrix whose stored values
// are the parameters (SparseMatrixParameters): its gradient is a sparse tensor of A's layout
// and pattern. For a callable, A·v calls fn without autograd and Aᴴ·u is a vector–Jacobian
// product through one recorded application of fn; θ̄ is one autograd pass over Σ Re⟨u, A(θ)v⟩
// for the rank-one terms Σ u vᴴ of Ā. The backward pass is the adjoint rule of layer.hpp
// (docs/gradients.md). CPU tensors, float32, float64, complex64 or complex128 (kept; damp is
// real, of the same precision). First-order gradients with create_graph = true are exact;
// differentiating them again (double backward) throws.
//
// Forward mode: LibTorch 1.13's C++ Functions have no forward-mode hook, so lstsq() looks for
// forward-mode tangents itself. When A, b, damp or a parameter is a dual tensor (level 0, made by
// at::_make_dual inside a forward-AD level), the returned x is a dual tensor whose tangent ẋ is
// the rule of LeastSquares::jvp (docs/gradients.md, G8), computed with the forward solve's
// context (for a callable, Ȧv and Ȧᴴu by reverse mode twice through fn). lstsq_jvp() returns
// (x, ẋ) for explicit tangents, without dual tensors. Tangents are not differentiable again
// (reverse-over-forward throws, as double backward does). Not part of difflsq.hpp: link
// LibTorch (find_package(Torch)).
#pragma once

#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <complex>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "layer.hpp"

namespace difflsq {

/// How one solve made by lstsq() ended; its role is "forward", or the rule's solve, e.g.
/// "backward: min |A^T p - xbar|".
using TorchSolveRecord = SolveSummary;

/// The solves of lstsq(), per pass and column of b, in order (TorchLstsqOptions::info).
struct TorchLstsqInfo {
  std::vector<TorchSolveRecord> forward, backward, jvp;
};

/// Options of lstsq(): the method, forward and backward tolerances, the failure policy, and
/// where warnings and the statuses of the solves go.
struct TorchLstsqOptions {
  Method method = Method::Lsmr;
  Tolerances<double> forward{};
  std::optional<Tolerances<double>> backward{};
  FailurePolicy on_failure = FailurePolicy::Raise;
  /// Receives the message of a solve that did not converge under FailurePolicy::Warn; by
  /// default it becomes a LibTorch warning (TORCH_WARN: a Python warning when called from
  /// Python, stderr otherwise). It is kept for the backward pass: what it captures must
  /// outlive that pass.
  std::function<void(const std::string&)> warn{};
  /// When set, every solve of the forward pass, of the backward pass and of forward mode is
  /// appended to it as the pass runs (under FailurePolicy::Ignore, the way to find failures),
  /// also the one that throws SolveError under Raise. The records accumulate over calls that
  /// share it; it is not synchronized: one per thread.
  std::shared_ptr<TorchLstsqInfo> info{};
};

/// A matrix-free operator for lstsq(): fn(v, params) = A(params)·v for v of length n, linear
/// in v, returning m values (any shape). It must not modify v.
using TorchOperator =
    std::function<torch::Tensor(const torch::Tensor& v, const std::vector<torch::Tensor>& params)>;

namespace detail {

template <class Scalar>
using TensorMap =
    Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class Scalar>
using CsrMap = Eigen::Map<const Eigen::SparseMatrix<Scalar, Eigen::RowMajor, int64_t>>;

/// Re⟨a, b⟩ = Re Σ conj(a_i) b_i. Not torch::vdot: Debian's LibTorch 1.13 returns 0 for
/// complex vectors (its value; its gradients are right).
inline torch::Tensor real_inner(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::real((a.conj() * b).sum());
}

inline bool is_sparse(const torch::Tensor& t) {
  return t.layout() == torch::kSparse || t.layout() == torch::kSparseCsr;
}

/// The stored values of a sparse COO (as stored, duplicates included) or CSR tensor.
inline torch::Tensor stored_values(const torch::Tensor& t) {
  return t.layout() == torch::kSparse ? t._values() : t.values();
}

template <class Scalar>
constexpr torch::ScalarType torch_dtype() {
  if constexpr (std::is_same_v<Scalar, float>) return torch::kFloat;
  else if constexpr (std::is_same_v<Scalar, double>) return torch::kDouble;
  else if constexpr (std::is_same_v<Scalar, std::complex<float>>) return torch::kComplexFloat;
  else return torch::kComplexDouble;
}

/// A tensor's memory as Scalar* (c10::complex<T> and std::complex<T> share their layout).
template <class Scalar>
Scalar* data(const torch::Tensor& t) {
  if constexpr (Eigen::NumTraits<Scalar>::IsComplex)
    return reinterpret_cast<Scalar*>(t.data_ptr<c10::complex<RealOf<Scalar>>>());
  else
    return t.data_ptr<Scalar>();
}

/// f(Scalar{}) for the tensor dtype t.
template <class F>
decltype(auto) dispatch(torch::ScalarType t, F&& f) {
  switch (t) {
    case torch::kFloat: return f(float{});
    case torch::kDouble: return f(double{});
    case torch::kComplexFloat: return f(std::complex<float>{});
    case torch::kComplexDouble: return f(std::complex<double>{});
    default:
      throw std::invalid_argument(std::string("difflsq::lstsq: dtype ") + c10::toString(t) +
                                  " is not float32, float64, complex64 or complex128");
  }
}

/// v's memory as a 1-D tensor (no copy; read-only use only).
template <class Scalar>
torch::Tensor view_tensor(Eigen::Ref<const Vector<Scalar>> v) {
  return torch::from_blob(const_cast<Scalar*>(v.data()), {v.size()},
                          torch::TensorOptions().dtype(torch_dtype<Scalar>()));
}

/// A copy of v as a 1-D tensor.
template <class Scalar>
torch::Tensor to_tensor(Eigen::Ref<const Vector<Scalar>> v) {
  auto t = torch::empty({v.size()}, torch::TensorOptions().dtype(torch_dtype<Scalar>()));
  if (v.size() > 0) std::memcpy(data<Scalar>(t), v.data(), sizeof(Scalar) * std::size_t(v.size()));
  return t;
}

/// The columns side by side as an (rows, k) tensor.
template <class Scalar>
torch::Tensor from_columns(const std::vector<Vector<Scalar>>& cols, Index rows) {
  const Index k = Index(cols.size());
  auto out = torch::empty({rows, k}, torch::TensorOptions().dtype(torch_dtype<Scalar>()));
  Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> map(
      data<Scalar>(out), rows, k);
  for (Index j = 0; j < k; ++j) map.col(j) = cols[std::size_t(j)];
  return out;
}

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
  out.warn = o.warn ? o.warn : [](const std::string& msg) { TORCH_WARN(msg); };
  return out;
}

/// Appends the solves of a pass's result to `list` of `info` (when there is one): a forward
/// pass's one solve as "forward", the rules' solves by their roles.
template <LinearOperator Op>
void record(const std::shared_ptr<TorchLstsqInfo>& info,
            std::vector<TorchSolveRecord> TorchLstsqInfo::*list, const Forward<Op>& f) {
  if (info) ((*info).*list).push_back(summary("forward", f.report));
}
template <class Result>
void record(const std::shared_ptr<TorchLstsqInfo>& info,
            std::vector<TorchSolveRecord> TorchLstsqInfo::*list, const Result& r) {
  if (info)
    for (const auto& s : r.solves) ((*info).*list).push_back(summary(s.role, s.report));
}

/// fn(), a pass of the layer, with its solves recorded in `list` of `info`: those of its
/// result, or those of the SolveError it throws, before the error goes on.
template <class Fn>
auto logged_pass(const std::shared_ptr<TorchLstsqInfo>& info,
                 std::vector<TorchSolveRecord> TorchLstsqInfo::*list, Fn&& fn) {
  try {
    auto result = std::forward<Fn>(fn)();
    record(info, list, result);
    return result;
  } catch (const SolveError& e) {
    if (info)
      for (auto s : e.solves()) {
        if (list == &TorchLstsqInfo::forward) s.role = "forward";  // as record()'s
        ((*info).*list).push_back(std::move(s));
      }
    throw;
  }
}

/// The options, kept between a Function's forward and backward passes.
struct OptionsHolder : torch::CustomClassHolder {
  TorchLstsqOptions options;
  explicit OptionsHolder(TorchLstsqOptions o) : options(std::move(o)) {}
};

/// t's values in contiguous memory: conjugate and negative views (lazy bits that data_ptr does
/// not apply) are resolved first.
inline torch::Tensor dense(const torch::Tensor& t) {
  return t.resolve_conj().resolve_neg().contiguous();
}

/// A sparse COO or CSR matrix as CSR with int64 indices and contiguous values, in the order of
/// SparseMatrixParameters' θ; a COO matrix is coalesced first (sorted, duplicates summed: the
/// matrix they add up to is what is solved).
inline torch::Tensor csr64(const torch::Tensor& a) {
  auto c = a.detach();
  if (c.layout() == torch::kSparse) {
    c = c.coalesce();
    // A tensor flagged coalesced must also be sorted without duplicates for its CSR form to be
    // its matrix; one built with the flag set but unsorted is coalesced afresh.
    const auto key = c._indices()[0] * c.size(1) + c._indices()[1];
    if (key.numel() > 1 && !(key.slice(0, 1) > key.slice(0, 0, -1)).all().item<bool>())
      c = torch::sparse_coo_tensor(c._indices(), c._values(), c.sizes()).coalesce();
    c = c.to_sparse_csr();
  }
  return torch::sparse_csr_tensor(c.crow_indices().to(torch::kLong).contiguous(),
                                  c.col_indices().to(torch::kLong).contiguous(), dense(c.values()),
                                  c.sizes(), c.values().options().layout(torch::kSparseCsr));
}

/// The sparse matrix of `like`'s layout (COO or CSR) with csr's pattern and these values; its
/// indices are its own (A's may be csr's: an in-place change of either must not reach the other).
inline torch::Tensor with_values(const torch::Tensor& like, const torch::Tensor& csr,
                                 const torch::Tensor& values) {
  const auto crow = csr.crow_indices().clone(), col = csr.col_indices().clone();
  if (like.layout() == torch::kSparseCsr)
    return torch::sparse_csr_tensor(crow.to(like.crow_indices().scalar_type()),
                                    col.to(like.col_indices().scalar_type()), values, csr.sizes(),
                                    values.options().layout(torch::kSparseCsr));
  const auto rows = torch::repeat_interleave(torch::arange(csr.size(0), crow.options()),
                                             crow.slice(0, 1) - crow.slice(0, 0, -1));
  return torch::sparse_coo_tensor(torch::stack({rows, col}), values, csr.sizes(),
                                  values.options().layout(torch::kSparse))
      ._coalesced_(true);
}

/// f(op) for the parameterized operator of a checked A: a dense (contiguous) one, θ = its
/// entries in row-major order, or a csr64() one, θ = its stored values.
template <class Scalar, class F>
decltype(auto) with_parameters(const torch::Tensor& a, F&& f) {
  const Index m = a.size(0), n = a.size(1);
  if (a.layout() == torch::kSparseCsr) {
    const auto crow = a.crow_indices(), col = a.col_indices(), values = a.values();
    const CsrMap<Scalar> map(m, n, values.numel(), crow.data_ptr<int64_t>(),
                             col.data_ptr<int64_t>(), data<Scalar>(values));
    return f(parameterized(map, sparse_options_for(values.numel())));
  }
  const TensorMap<Scalar> map(data<Scalar>(a), m, n);
  return f(parameterized(map));
}

/// Refuses a sparse A whose indices are out of range or (CSR) out of order before any torch
/// operation reads them: tensors built with check_invariants off or by the _unsafe factories
/// are not checked by torch.
inline void check_sparse_pattern(const torch::Tensor& a) {
  try {
    if (a.layout() == torch::kSparse)
      at::_validate_sparse_coo_tensor_args(a._indices(), a._values(), a.sizes());
    else
      at::_validate_sparse_csr_tensor_args(a.crow_indices(), a.col_indices(), a.values(),
                                           a.sizes());
  } catch (const c10::Error& e) {
    throw std::invalid_argument(std::string("difflsq::lstsq: malformed sparse A: ") +
                                e.what_without_backtrace());
  }
}

inline void check_tensor(const torch::Tensor& t, const std::string& name) {
  if (!t.defined()) throw std::invalid_argument("difflsq::lstsq: " + name + " is undefined");
  if (t.device().type() != torch::kCPU)
    throw std::invalid_argument("difflsq::lstsq: " + name + " is on device " +
                                t.device().str() + "; this build runs on the CPU only");
}

/// b of shape (m) or (m, k) and a real 0-d damp of the precision of dtype.
inline void check_b_and_damp(const torch::Tensor& b, const torch::Tensor& damp, int64_t m,
                             torch::ScalarType dtype) {
  check_tensor(b, "b");
  check_tensor(damp, "damp");
  if (b.scalar_type() != dtype)
    throw std::invalid_argument(std::string("difflsq::lstsq: b has dtype ") +
                                c10::toString(b.scalar_type()) + ", expected " +
                                c10::toString(dtype));
  if (damp.scalar_type() != c10::toRealValueType(dtype))
    throw std::invalid_argument(std::string("difflsq::lstsq: damp must be real, of dtype ") +
                                c10::toString(c10::toRealValueType(dtype)));
  if ((b.dim() != 1 && b.dim() != 2) || b.size(0) != m)
    throw std::invalid_argument("difflsq::lstsq: b must have shape (" + std::to_string(m) +
                                ") or (" + std::to_string(m) + ", k)");
  if (damp.numel() != 1) throw std::invalid_argument("difflsq::lstsq: damp must be a scalar");
}

/// t (rows) or (rows, k) as (rows, k), also when rows or k is 0 (where reshape({rows, -1})
/// is ambiguous and throws).
inline torch::Tensor as_columns(const torch::Tensor& t, int64_t rows) {
  return t.reshape({rows, t.dim() == 1 ? 1 : t.size(1)});
}

/// The gradients under create_graph = true. The rules run on raw memory, so their results are
/// not differentiable again; this node makes them outputs of the gradient's inputs (x̄, A or
/// the parameters, b, damp) whose backward throws, so that a Hessian, a Hessian-vector product
/// or a gradient of a gradient fails loudly instead of returning zeros. First-order gradients
/// with create_graph = true stay exact.
class GradientsNode : public torch::autograd::Function<GradientsNode> {
 public:
  // `values` is a std::vector, not a TensorList: autograd does not take it as an input.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext*,
                                                std::vector<torch::Tensor> values,
                                                torch::TensorList /*inputs*/) {
    return values;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    throw std::runtime_error(
        "difflsq::lstsq does not support double backward (second derivatives, or gradients of "
        "forward-mode tangents)");
  }
};

/// grads as they are, or, when autograd records the backward pass (create_graph = true), the
/// defined ones passed through GradientsNode with `inputs` as its inputs.
inline torch::autograd::variable_list recorded(torch::autograd::variable_list grads,
                                               const torch::autograd::variable_list& inputs) {
  if (!torch::GradMode::is_enabled()) return grads;
  std::vector<torch::Tensor> values;
  std::vector<std::size_t> where;
  for (std::size_t i = 0; i < grads.size(); ++i)
    if (grads[i].defined()) {
      values.push_back(grads[i]);
      where.push_back(i);
    }
  torch::autograd::variable_list defined;
  for (const auto& t : inputs)
    if (t.defined()) defined.push_back(t);
  const auto out = GradientsNode::apply(std::move(values), torch::TensorList(defined));
  for (std::size_t k = 0; k < where.size(); ++k) grads[where[k]] = out[k];
  return grads;
}

/// Forward-mode tangents of lstsq's inputs (undefined: zero), and x, which the Functions'
/// forward passes write: ẋ as (n, k) columns. Passed to them by pointer: not an input.
struct TangentRequest {
  TangentRequest(torch::Tensor a_dot, torch::Tensor b_dot, torch::Tensor damp_dot,
                 std::vector<torch::Tensor> params_dot = {})
      : a(std::move(a_dot)),
        b(std::move(b_dot)),
        damp(std::move(damp_dot)),
        params(std::move(params_dot)) {}
  torch::Tensor a, b, damp;
  std::vector<torch::Tensor> params;
  torch::Tensor x;
  bool params_moving() const {
    return std::any_of(params.begin(), params.end(), [](const auto& t) { return t.defined(); });
  }
  bool any() const { return a.defined() || b.defined() || damp.defined() || params_moving(); }
};

/// Whether t carries a forward-mode tangent at level 0 (the only level LibTorch 1.13 has),
/// be it a symbolic zero.
inline bool is_dual(const torch::Tensor& t) { return t.defined() && t._fw_grad(0).defined(); }

/// t's tangent, undefined when it has none or it is a symbolic zero.
inline torch::Tensor tangent_of(const torch::Tensor& t) {
  if (!is_dual(t) || t._fw_grad(0)._is_zerotensor()) return {};
  return t._fw_grad(0);
}

/// t without its forward-mode tangent (same values and reverse-mode history).
inline torch::Tensor primal_of(const torch::Tensor& t) { return is_dual(t) ? t._fw_primal(0) : t; }

/// "[m, n] Double", for messages.
inline std::string describe(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes() << " " << t.scalar_type();
  return s.str();
}

/// A tangent given for `what`: undefined, or a CPU tensor of `like`'s shape and dtype (a
/// complex tangent for a real input is an error, not silently truncated).
inline torch::Tensor checked_tangent(const torch::Tensor& t, const torch::Tensor& like,
                                     const std::string& what) {
  if (!t.defined()) return t;
  check_tensor(t, "the tangent of " + what);
  if (t.sizes() != like.sizes() || t.scalar_type() != like.scalar_type())
    throw std::invalid_argument("difflsq::lstsq: the tangent of " + what + " must have " + what +
                                "'s shape and dtype, " + describe(like) + "; got " + describe(t));
  if (!torch::isfinite(t).all().item<bool>())
    throw std::invalid_argument("difflsq::lstsq: the tangent of " + what + " is not finite");
  return dense(t);
}

/// The tangents of the rule (layer.hpp's Tangents) column by column of b: λ̇, and ḃ's column j
/// (set by column(j)); the caller adds Ȧ.
template <class Scalar>
struct ColumnTangents {
  ColumnTangents(const TangentRequest& request, Index rows) : m(rows) {
    if (request.b.defined()) b_rows = dense(as_columns(request.b, m).t());  // column j: row j
    if (request.damp.defined()) t.damp = static_cast<RealOf<Scalar>>(request.damp.item<double>());
  }
  const Tangents<Scalar>& column(Index j) {
    if (b_rows.defined()) t.b = Eigen::Map<const Vector<Scalar>>(data<Scalar>(b_rows) + j * m, m);
    return t;
  }
  Index m;
  torch::Tensor b_rows;
  Tangents<Scalar> t;
};

/// A TorchOperator as a LinearOperator (operator.hpp). Aᴴu is the vector–Jacobian product of
/// v ↦ fn(v, θ) at v = 0, recorded once (valid for every u as fn is linear in v).
template <class Scalar_>
class TorchCallable {
 public:
  using Scalar = Scalar_;
  /// Throws std::invalid_argument unless fn is linear in v: A(0) = 0 and the dot test
  /// ⟨u, A v⟩ = ⟨Aᴴu, v⟩ for one random pair (two products; an affine fn made the solve stop at
  /// its iteration limit, or return a wrong x at tight tolerances).
  TorchCallable(TorchOperator fn, Index m, Index n, std::vector<torch::Tensor> params)
      : fn_(std::move(fn)), m_(m), n_(n), params_(std::move(params)) {
    // The adjoint needs autograd, also under c10::InferenceMode (where AutoGradMode alone
    // records nothing: Aᴴ would read as 0 and the solve return x = 0 as converged).
    c10::InferenceMode no_inference(false);
    for (auto& p : params_) p = p.is_inference() ? p.clone() : p.detach();
    torch::AutoGradMode on(true);
    v0_ = torch::zeros({n_}, torch::TensorOptions().dtype(torch_dtype<Scalar>()))
              .requires_grad_(true);
    out0_ = call(v0_, params_);
    if (m_ > 0 && n_ > 0) check_linear();
  }
  Index rows() const { return m_; }
  Index cols() const { return n_; }
  void apply(Eigen::Ref<const Vector<Scalar>> x, Eigen::Ref<Vector<Scalar>> y) const {
    torch::NoGradGuard off;
    const auto out = call(view_tensor<Scalar>(x), params_);  // fn must not modify v
    y = Eigen::Map<const Vector<Scalar>>(data<Scalar>(out), m_);
  }
  void apply_adjoint(Eigen::Ref<const Vector<Scalar>> u, Eigen::Ref<Vector<Scalar>> v) const {
    if (!out0_.requires_grad()) {  // fn does not depend on v: A = 0
      v.setZero();
      return;
    }
    c10::InferenceMode no_inference(false);
    torch::AutoGradMode on(true);
    const auto g = torch::autograd::grad({out0_}, {v0_}, {view_tensor<Scalar>(u)},
                                         /*retain_graph=*/true, /*create_graph=*/false,
                                         /*allow_unused=*/true)[0];
    if (g.defined()) v = Eigen::Map<const Vector<Scalar>>(data<Scalar>(dense(g)), n_);
    else v.setZero();
  }
  /// θ̄_i = ∇_{θ_i} Σ Re⟨u, A(θ) v⟩ over the terms of Ā (undefined where not wanted).
  std::vector<torch::Tensor> parameter_gradients(
      const std::vector<std::pair<Vector<Scalar>, Vector<Scalar>>>& terms,
      const std::vector<bool>& wanted) const {
    c10::InferenceMode no_inference(false);
    torch::AutoGradMode on(true);
    std::vector<torch::Tensor> leaves, targets;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      leaves.push_back(params_[i].detach().requires_grad_(wanted[i]));
      if (wanted[i]) targets.push_back(leaves.back());
    }
    std::vector<torch::Tensor> out(params_.size());
    if (targets.empty()) return out;
    torch::Tensor total =
        torch::zeros({}, torch::TensorOptions().dtype(c10::toRealValueType(torch_dtype<Scalar>())));
    for (const auto& [u, v] : terms)
      total = total + real_inner(to_tensor<Scalar>(u), call(to_tensor<Scalar>(v), leaves));
    const auto grads = total.requires_grad()
                           ? torch::autograd::grad({total}, targets, {}, false, false, true)
                           : std::vector<torch::Tensor>(targets.size());
    for (std::size_t i = 0, t = 0; i < params_.size(); ++i)
      if (wanted[i]) {
        out[i] = grads[t].defined() ? grads[t] : torch::zeros_like(params_[i]);
        ++t;
      }
    return out;
  }

  /// Ȧ·w (adjoint = false) or Ȧᴴ·w (true) for tangents θ̇ of the parameters (undefined: 0), by
  /// reverse mode twice: with s(u, v) = Σ_i Re⟨∇_{θ_i} Re⟨u, A(θ)v⟩, θ̇_i⟩ = Re⟨u, Ȧv⟩ (torch's
  /// gradient convention makes Re⟨∇, θ̇⟩ the real directional derivative), Ȧv = ∇_u s and
  /// Ȧᴴu = ∇_v s; s is bilinear, so the other vector may be anything (0). Two autograd passes per
  /// product; a jvp needs two or three.
  Vector<Scalar> derivative(const std::vector<torch::Tensor>& dots,
                            Eigen::Ref<const Vector<Scalar>> w, bool adjoint) const {
    Vector<Scalar> out = Vector<Scalar>::Zero(adjoint ? n_ : m_);
    c10::InferenceMode no_inference(false);
    torch::AutoGradMode on(true);
    std::vector<torch::Tensor> leaves, moving, tangents;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const bool d = i < dots.size() && dots[i].defined();
      leaves.push_back(params_[i].detach().requires_grad_(d));
      if (d) {
        moving.push_back(leaves.back());
        tangents.push_back(dots[i].reshape(-1));
      }
    }
    const auto opts = torch::TensorOptions().dtype(torch_dtype<Scalar>());
    const auto other = torch::zeros({adjoint ? n_ : m_}, opts).requires_grad_(true);
    const auto given = to_tensor<Scalar>(w);
    const auto inner = real_inner(adjoint ? given : other, call(adjoint ? other : given, leaves));
    if (moving.empty() || !inner.requires_grad()) return out;
    const auto g = torch::autograd::grad({inner}, moving, {}, true, true, true);
    torch::Tensor s;
    for (std::size_t i = 0; i < g.size(); ++i)
      if (g[i].defined()) {
        const auto term = real_inner(g[i].reshape(-1), tangents[i]);
        s = s.defined() ? s + term : term;
      }
    if (!s.defined() || !s.requires_grad()) return out;  // Ȧ = 0
    const auto d = torch::autograd::grad({s}, {other}, {}, false, false, true)[0];
    if (d.defined()) out = Eigen::Map<const Vector<Scalar>>(data<Scalar>(dense(d)), out.size());
    return out;
  }

 private:
  TorchOperator fn_;
  Index m_, n_;
  std::vector<torch::Tensor> params_;
  torch::Tensor v0_, out0_;

  void check_linear() const {
    const auto y0 = out0_.detach();
    if (!torch::isfinite(y0).all().item<bool>() || y0.abs().max().item<double>() > 0)
      throw std::invalid_argument(
          "difflsq::lstsq: the operator must be linear in v, but A(0) is not 0 (an affine map, "
          "or non-finite params?)");
    using Real = RealOf<Scalar>;
    std::mt19937_64 gen(20260521);  // its own generator: torch's stays as it was
    std::normal_distribution<Real> normal;
    auto random = [&](Index size) {
      Vector<Scalar> r(size);
      for (auto& e : r) {
        if constexpr (Eigen::NumTraits<Scalar>::IsComplex)
          e = Scalar(normal(gen), normal(gen));
        else
          e = normal(gen);
      }
      return r;
    };
    const Vector<Scalar> v = random(n_), u = random(m_);
    Vector<Scalar> av(m_), atu(n_);
    apply(v, av);
    apply_adjoint(u, atu);
    const Scalar lhs = u.dot(av), rhs = atu.dot(v);  // ⟨u, A v⟩ and ⟨Aᴴu, v⟩
    const Real scale = u.norm() * av.norm() + atu.norm() * v.norm();
    if (!(std::abs(lhs - rhs) <= 10 * std::sqrt(Eigen::NumTraits<Real>::epsilon()) * scale)) {
      std::ostringstream msg;
      msg << "difflsq::lstsq: the operator must be linear in v, but the dot test fails: "
             "<u, A v> = "
          << lhs << ", <A^H u, v> = " << rhs << " for random u, v (A^H u by autograd at v = 0)";
      throw std::invalid_argument(msg.str());
    }
  }

  torch::Tensor call(const torch::Tensor& v, const std::vector<torch::Tensor>& params) const {
    const auto y = fn_(v, params);
    if (!y.defined() || y.numel() != m_ || y.scalar_type() != torch_dtype<Scalar>() ||
        y.device().type() != torch::kCPU)
      throw std::invalid_argument("difflsq::lstsq: the operator must return " +
                                  std::to_string(m_) + " values of dtype " +
                                  c10::toString(torch_dtype<Scalar>()) + " on the CPU");
    if (is_dual(y))  // its tangent would be lost: the solve reads raw memory
      throw std::invalid_argument(
          "difflsq::lstsq: the operator returned a dual tensor (forward mode); pass the tensors "
          "with tangents in params, not captured by the operator");
    return dense(y.reshape({m_}));
  }
};

/// What the callable Function keeps between its forward and backward passes: the operator and
/// the forward contexts of the columns of b (x, r and, once computed, the dual solution).
struct CallableStateBase : torch::CustomClassHolder {};
template <class Scalar>
struct CallableState : CallableStateBase {
  TorchCallable<Scalar> op;
  LeastSquares<Scalar> layer;
  std::vector<Forward<TorchCallable<Scalar>>> columns;
  std::shared_ptr<TorchLstsqInfo> info;
  CallableState(TorchCallable<Scalar> o, const TorchLstsqOptions& opts)
      : op(std::move(o)), layer(layer_options<Scalar>(opts)), info(opts.info) {}
};

}  // namespace detail

/// The autograd Function behind difflsq::lstsq for a tensor A.
class LstsqFunction : public torch::autograd::Function<LstsqFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a,
                               const torch::Tensor& b, const torch::Tensor& damp,
                               const TorchLstsqOptions& options,
                               detail::TangentRequest* tangents = nullptr) {
    const auto ac = detail::is_sparse(a) ? detail::csr64(a) : detail::dense(a);
    const auto b2 = detail::dense(detail::as_columns(b, a.size(0)));
    torch::Tensor x, r, status, anorm;  // status: (status, iterations) per column
    detail::dispatch(a.scalar_type(), [&](auto s) {
      run_forward<decltype(s)>(ac, b2, damp, options, tangents, x, r, status, anorm);
    });
    ctx->save_for_backward({ac, b2, x, r, damp, a, b});  // a, b: GradientsNode's inputs
    ctx->saved_data["status"] = status;
    ctx->saved_data["anorm"] = anorm;
    ctx->saved_data["options"] =
        c10::IValue::make_capsule(c10::make_intrusive<detail::OptionsHolder>(options));
    // A copy, neither a view (autograd forbids in-place changes of a Function's view outputs)
    // nor the saved x: the caller may change it in place.
    return (b.dim() == 1 ? x.reshape({a.size(1)}) : x).clone();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& a = saved[0];
    torch::Tensor abar, bbar, dbar;
    {
      torch::NoGradGuard off;
      const auto xbar = detail::dense(detail::as_columns(grads[0], a.size(1)));
      detail::dispatch(a.scalar_type(), [&](auto s) {
        run_backward<decltype(s)>(ctx, saved, xbar, abar, bbar, dbar);
      });
      if (grads[0].dim() == 1) bbar = bbar.reshape({a.size(0)});
    }
    return detail::recorded({abar, bbar, dbar, torch::Tensor(), torch::Tensor()},
                            {grads[0], saved[5], saved[6], saved[4]});
  }

 private:
  static const TorchLstsqOptions& options_from(torch::autograd::AutogradContext* ctx) {
    const auto capsule = ctx->saved_data["options"].toCapsule();
    return static_cast<const detail::OptionsHolder&>(*capsule).options;
  }

  template <class Scalar>
  static void run_forward(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& damp,
                          const TorchLstsqOptions& options, detail::TangentRequest* tangents,
                          torch::Tensor& x, torch::Tensor& r, torch::Tensor& status,
                          torch::Tensor& anorm) {
    detail::with_parameters<Scalar>(a, [&](const auto& op) {
      forward_columns<Scalar>(op, b, damp, options, tangents, x, r, status, anorm);
    });
  }

  template <class Scalar, class Op>
  static void forward_columns(const Op& op, const torch::Tensor& b, const torch::Tensor& damp,
                              const TorchLstsqOptions& options, detail::TangentRequest* tangents,
                              torch::Tensor& x, torch::Tensor& r, torch::Tensor& status,
                              torch::Tensor& anorm) {
    const Index m = op.rows(), n = op.cols(), k = b.size(1);
    LeastSquares<Scalar> layer(detail::layer_options<Scalar>(options));
    const auto lam = static_cast<RealOf<Scalar>>(damp.item<double>());
    status = torch::empty({k, 2}, torch::kLong);
    anorm = torch::empty({k}, torch::kDouble);
    const auto bt = detail::dense(b.t());  // column j of b is row j of bᵀ
    std::vector<Vector<Scalar>> xs(k), rs(k), dxs;
    std::optional<detail::ColumnTangents<Scalar>> t;  // forward mode
    if (tangents) {
      t.emplace(*tangents, m);
      if (tangents->a.defined())  // Ȧ is θ̇ of the row-major matrix parameters (a's layout)
        t->t.theta = Eigen::Map<const Vector<Scalar>>(detail::data<Scalar>(tangents->a),
                                                      op.parameter_count());
    }
    for (Index j = 0; j < k; ++j) {
      const Eigen::Map<const Vector<Scalar>> bj(detail::data<Scalar>(bt) + j * m, m);
      auto f = detail::logged_pass(options.info, &TorchLstsqInfo::forward,
                                   [&] { return layer.forward(op, bj, lam); });
      if (t) {
        auto out = detail::logged_pass(options.info, &TorchLstsqInfo::jvp,
                                       [&] { return layer.jvp(f, t->column(j)); });
        dxs.push_back(std::move(out.x));
      }
      xs[j] = std::move(f.x);
      rs[j] = std::move(f.r);
      status[j][0] = static_cast<int64_t>(f.report.status);
      status[j][1] = static_cast<int64_t>(f.report.iterations);
      anorm[j] = static_cast<double>(f.report.anorm);
    }
    x = detail::from_columns(xs, n);
    r = detail::from_columns(rs, m);
    if (tangents) tangents->x = detail::from_columns(dxs, n);
  }

  template <class Scalar>
  static void run_backward(torch::autograd::AutogradContext* ctx,
                           const torch::autograd::variable_list& saved, const torch::Tensor& xbar,
                           torch::Tensor& abar, torch::Tensor& bbar, torch::Tensor& dbar) {
    const auto& a = saved[0];
    const Vector<Scalar> theta = detail::with_parameters<Scalar>(a, [&](const auto& op) {
      return backward_columns<Scalar>(ctx, op, saved, xbar, bbar, dbar);
    });
    const auto t = detail::to_tensor<Scalar>(theta);
    abar = detail::is_sparse(a) ? detail::with_values(saved[5], a, t)
                                : t.reshape({a.size(0), a.size(1)});  // θ is row-major Ā
  }

  /// θ̄, with b̄ and λ̄ written to bbar and dbar.
  template <class Scalar, class Op>
  static Vector<Scalar> backward_columns(torch::autograd::AutogradContext* ctx, const Op& op,
                                         const torch::autograd::variable_list& saved,
                                         const torch::Tensor& xbar, torch::Tensor& bbar,
                                         torch::Tensor& dbar) {
    const auto &b = saved[1], &x = saved[2], &r = saved[3], &damp = saved[4];
    const Index m = op.rows(), n = op.cols(), k = b.size(1);
    const auto& options = options_from(ctx);
    LeastSquares<Scalar> layer(detail::layer_options<Scalar>(options));
    const auto status = ctx->saved_data["status"].toTensor();
    const auto anorm = ctx->saved_data["anorm"].toTensor();
    const auto bt = detail::dense(b.t()), xt = detail::dense(x.t()), rt = detail::dense(r.t()),
               gt = detail::dense(xbar.t());
    auto col = [](const torch::Tensor& t, Index j, Index len) {
      return Eigen::Map<const Vector<Scalar>>(detail::data<Scalar>(t) + j * len, len);
    };
    Vector<Scalar> theta = Vector<Scalar>::Zero(op.parameter_count());
    std::vector<Vector<Scalar>> bbars(k);
    double dsum = 0;
    for (Index j = 0; j < k; ++j) {
      // The saved context of column j, rebuilt from the saved tensors.
      Forward<Op> f;
      f.op = &op;
      f.b = col(bt, j, m);
      f.x = col(xt, j, n);
      f.r = col(rt, j, m);
      f.damp = static_cast<RealOf<Scalar>>(damp.item<double>());
      f.report.status = static_cast<Status>(status[j][0].item<int64_t>());
      f.report.iterations = static_cast<Index>(status[j][1].item<int64_t>());
      f.report.anorm = static_cast<RealOf<Scalar>>(anorm[j].item<double>());
      auto g = detail::logged_pass(options.info, &TorchLstsqInfo::backward,
                                   [&] { return layer.backward(f, col(gt, j, n)); });
      theta += g.theta;
      bbars[j] = std::move(g.b);
      dsum += static_cast<double>(g.damp);
    }
    bbar = detail::from_columns(bbars, m);
    dbar = torch::full({}, dsum, damp.options());
    return theta;
  }
};

/// The autograd Function behind difflsq::lstsq for a TorchOperator.
class LstsqCallableFunction : public torch::autograd::Function<LstsqCallableFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& b,
                               const torch::Tensor& damp, torch::TensorList params,
                               const TorchOperator& fn, std::array<int64_t, 2> shape,
                               const TorchLstsqOptions& options,
                               detail::TangentRequest* tangents = nullptr) {
    const auto [m, n] = shape;
    const auto b2 = detail::dense(detail::as_columns(b, m));
    torch::Tensor x;
    c10::intrusive_ptr<detail::CallableStateBase> state;
    detail::dispatch(b.scalar_type(), [&](auto s) {
      using Scalar = decltype(s);
      auto st = c10::make_intrusive<detail::CallableState<Scalar>>(
          detail::TorchCallable<Scalar>(fn, m, n, params.vec()), options);
      const auto bt = detail::dense(b2.t());
      const auto lam = static_cast<RealOf<Scalar>>(damp.item<double>());
      std::vector<Vector<Scalar>> xs, dxs;
      std::optional<detail::ColumnTangents<Scalar>> t;  // forward mode
      if (tangents) {
        t.emplace(*tangents, m);
        if (tangents->params_moving()) {  // Ȧv and Ȧᴴu through fn (two or three per column)
          const auto& op = st->op;
          const auto& dots = tangents->params;  // both outlive t
          t->t.a_dot = [&op, &dots](Eigen::Ref<const Vector<Scalar>> v,
                                    Eigen::Ref<Vector<Scalar>> y) {
            y = op.derivative(dots, v, false);
          };
          t->t.a_dot_adjoint = [&op, &dots](Eigen::Ref<const Vector<Scalar>> u,
                                            Eigen::Ref<Vector<Scalar>> w) {
            w = op.derivative(dots, u, true);
          };
        }
      }
      for (Index j = 0; j < bt.size(0); ++j) {
        const Eigen::Map<const Vector<Scalar>> bj(detail::data<Scalar>(bt) + j * m, m);
        st->columns.push_back(detail::logged_pass(st->info, &TorchLstsqInfo::forward, [&] {
          return st->layer.forward(st->op, bj, lam);
        }));
        if (t) {
          auto out = detail::logged_pass(st->info, &TorchLstsqInfo::jvp, [&] {
            return st->layer.jvp(st->columns.back(), t->column(j));
          });
          dxs.push_back(std::move(out.x));
        }
        xs.push_back(st->columns.back().x);
      }
      x = detail::from_columns(xs, n);
      if (tangents) tangents->x = detail::from_columns(dxs, n);
      state = st;
    });
    // The parameters are saved so that autograd's version check catches an in-place change
    // between forward and backward (the state holds detached views of them).
    auto saved = params.vec();
    saved.push_back(b);  // with damp, GradientsNode's inputs
    saved.push_back(damp);
    ctx->save_for_backward(saved);
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    ctx->saved_data["vector_b"] = b.dim() == 1;
    return b.dim() == 1 ? x.reshape({n}).clone() : x;  // not a view: may be changed in place
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto inputs = ctx->get_saved_variables();  // params, b, damp (and the version check)
    const std::size_t count = inputs.size() - 2;    // of params
    inputs.push_back(grads[0]);                     // all of GradientsNode's inputs
    const auto capsule = ctx->saved_data["state"].toCapsule();
    const bool vector_b = ctx->saved_data["vector_b"].toBool();
    torch::autograd::variable_list out(2 + count + 4);  // + fn, shape, options, tangents
    {
      torch::NoGradGuard off;  // GradientsNode records the results
      detail::dispatch(grads[0].scalar_type(), [&](auto s) {
        using Scalar = decltype(s);
        auto& st = static_cast<detail::CallableState<Scalar>&>(*capsule);
        const Index m = st.op.rows(), n = st.op.cols();
        const auto gt = detail::dense(detail::as_columns(grads[0], n).t());
        std::vector<Vector<Scalar>> bbars;
        std::vector<std::pair<Vector<Scalar>, Vector<Scalar>>> terms;
        double dsum = 0;
        for (std::size_t j = 0; j < st.columns.size(); ++j) {
          const Eigen::Map<const Vector<Scalar>> xbar(detail::data<Scalar>(gt) + Index(j) * n, n);
          auto g = detail::logged_pass(st.info, &TorchLstsqInfo::backward,
                                       [&] { return st.layer.backward(st.columns[j], xbar); });
          bbars.push_back(std::move(g.b));
          dsum += static_cast<double>(g.damp);
          for (auto& term : g.a_terms) terms.push_back(std::move(term));
        }
        const auto bbar = detail::from_columns(bbars, m);
        out[0] = vector_b ? bbar.reshape({m}) : bbar;
        out[1] = torch::full({}, dsum, torch::TensorOptions().dtype(
                                           c10::toRealValueType(detail::torch_dtype<Scalar>())));
        std::vector<bool> wanted(count);
        for (std::size_t i = 0; i < count; ++i) wanted[i] = ctx->needs_input_grad(2 + i);
        const auto theta = st.op.parameter_gradients(terms, wanted);
        for (std::size_t i = 0; i < count; ++i) out[2 + i] = theta[i];
      });
    }
    return detail::recorded(std::move(out), inputs);
  }
};

namespace detail {

/// The checks shared by lstsq and lstsq_jvp for a tensor A.
inline void check_inputs(const torch::Tensor& a, const torch::Tensor& b,
                         const torch::Tensor& damp) {
  check_tensor(a, "A");
  if (a.dim() != 2) throw std::invalid_argument("difflsq::lstsq: A must be 2-D");
  if (a.layout() == torch::kSparse && a.dense_dim() != 0)
    throw std::invalid_argument(
        "difflsq::lstsq: a sparse COO A must have 2 sparse and no dense dimensions");
  dispatch(a.scalar_type(), [](auto) {});
  check_b_and_damp(b, damp, a.size(0), a.scalar_type());
  if (a.layout() != torch::kStrided && !is_sparse(a))
    throw std::invalid_argument(
        "difflsq::lstsq: A must be a dense (strided), sparse COO or sparse CSR tensor");
  const auto primal = primal_of(a);
  if (is_sparse(a)) check_sparse_pattern(primal);
  if (!torch::isfinite(is_sparse(a) ? stored_values(primal) : primal).all().item<bool>())
    throw std::invalid_argument("difflsq::lstsq: A is not finite");
}

/// The leaves (tensors accumulating a gradient) of y's autograd graph.
inline std::unordered_set<const void*> graph_leaves(const torch::Tensor& y) {
  std::unordered_set<const void*> leaves;
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack{y.grad_fn().get()};
  while (!stack.empty()) {
    auto* f = stack.back();
    stack.pop_back();
    if (!f || !seen.insert(f).second) continue;
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(f))
      leaves.insert(acc->variable.unsafeGetTensorImpl());
    for (const auto& edge : f->next_edges()) stack.push_back(edge.function.get());
  }
  return leaves;
}

/// Under grad mode, throws if fn depends on a tensor requiring grad that is not in params
/// (captured): the solve sees A only through products, so its gradient would be lost. A tensor
/// made afresh in each call (autograd used inside fn) is not captured: the leaves of two calls
/// are compared.
inline void check_not_captured(const TorchOperator& fn, std::array<int64_t, 2> shape,
                               torch::ScalarType dtype, const std::vector<torch::Tensor>& params) {
  if (!torch::GradMode::is_enabled() || c10::InferenceMode::is_enabled() || shape[0] == 0 ||
      shape[1] == 0)
    return;
  std::vector<torch::Tensor> primals;
  for (const auto& p : params) primals.push_back(primal_of(p).detach());
  auto call = [&] {
    return fn(torch::zeros({shape[1]}, torch::TensorOptions().dtype(dtype)), primals);
  };
  const auto y = call();
  if (!y.defined() || !y.requires_grad()) return;  // TorchCallable checks what y is
  const auto first = graph_leaves(y), second = graph_leaves(call());
  for (const void* leaf : first)
    if (second.count(leaf))
      throw std::invalid_argument(
          "difflsq::lstsq: the operator depends on a tensor that requires grad but is not in "
          "params (captured by fn, e.g. a module's weights); its gradient would be lost: pass "
          "it in params, or detach it, or solve under torch::NoGradGuard");
}

/// The same for a callable.
inline void check_inputs(const TorchOperator& fn, std::array<int64_t, 2> shape,
                         const torch::Tensor& b, const torch::Tensor& damp,
                         const std::vector<torch::Tensor>& params) {
  if (!fn) throw std::invalid_argument("difflsq::lstsq: the operator is empty");
  if (shape[0] < 0 || shape[1] < 0)
    throw std::invalid_argument("difflsq::lstsq: the shape must not be negative");
  check_tensor(b, "b");
  dispatch(b.scalar_type(), [](auto) {});
  check_b_and_damp(b, damp, shape[0], b.scalar_type());
  for (std::size_t i = 0; i < params.size(); ++i)
    check_tensor(params[i], "params[" + std::to_string(i) + "]");
  check_not_captured(fn, shape, b.scalar_type(), params);
}

/// params with inference tensors (constants made under c10::InferenceMode) cloned into normal
/// ones, which autograd can save for the backward pass.
inline std::vector<torch::Tensor> saveable(std::vector<torch::Tensor> params) {
  if (c10::InferenceMode::is_enabled()) return params;
  c10::InferenceMode no_inference(false);
  for (auto& p : params)
    if (p.is_inference()) p = p.clone();
  return params;
}

/// The tangents of request checked against the inputs they belong to (damp's reshaped to 0-d).
inline void check_tangents(TangentRequest& t, const torch::Tensor* a, const torch::Tensor& b,
                           const torch::Tensor& damp, const std::vector<torch::Tensor>& params) {
  if (a && t.a.defined() && is_sparse(*a))  // LibTorch 1.13 has no sparse forward mode either
    throw std::invalid_argument(
        "difflsq::lstsq: forward mode along a sparse A is not supported (tangents of b and damp "
        "are)");
  if (a) t.a = checked_tangent(t.a, *a, "A");
  t.b = checked_tangent(t.b, b, "b");
  t.damp = checked_tangent(t.damp, damp, "damp");
  if (t.damp.defined()) t.damp = t.damp.reshape({});
  if (t.params.size() > params.size())
    throw std::invalid_argument("difflsq::lstsq: more parameter tangents than parameters");
  for (std::size_t i = 0; i < t.params.size(); ++i)
    t.params[i] = checked_tangent(t.params[i], params[i], "params[" + std::to_string(i) + "]");
}

/// ẋ shaped as x; under grad mode, an output of the inputs and tangents whose backward throws
/// (the rule runs on raw memory: reverse mode through ẋ would otherwise give zeros).
inline torch::Tensor tangent_result(const TangentRequest& t, const torch::Tensor& x,
                                    torch::autograd::variable_list inputs) {
  inputs.insert(inputs.end(), {t.a, t.b, t.damp});
  inputs.insert(inputs.end(), t.params.begin(), t.params.end());
  return recorded({t.x.reshape(x.sizes())}, inputs)[0];
}

/// Throws if an input of lstsq_jvp carries a forward-mode tangent of its own.
inline void check_not_dual(const torch::Tensor& t, const std::string& what) {
  if (is_dual(t))
    throw std::invalid_argument("difflsq::lstsq_jvp: " + what +
                                " is a dual tensor; give its tangent as an argument, or call "
                                "lstsq, which reads dual tensors");
}

/// (x, ẋ) for checked inputs: `solve(request)` runs a Function's forward pass (request null:
/// no tangent moves, ẋ = 0 without the rule's solves); `inputs` are x's inputs.
template <class Solve>
std::pair<torch::Tensor, torch::Tensor> with_tangents(
    TangentRequest t, const Solve& solve, const torch::autograd::variable_list& inputs) {
  if (!t.any()) {
    auto x = solve(nullptr);
    auto dx = torch::zeros_like(x);
    return {std::move(x), std::move(dx)};
  }
  auto x = solve(&t);
  auto dx = tangent_result(t, x, inputs);
  return {std::move(x), std::move(dx)};
}

/// lstsq_jvp for a tensor A, after the checks of the inputs.
inline std::pair<torch::Tensor, torch::Tensor> jvp(const torch::Tensor& a, const torch::Tensor& b,
                                                   const torch::Tensor& damp, TangentRequest t,
                                                   const TorchLstsqOptions& options) {
  check_tangents(t, &a, b, damp, {});
  const auto d = damp.reshape({});
  return with_tangents(std::move(t),
                       [&](TangentRequest* r) { return LstsqFunction::apply(a, b, d, options, r); },
                       {a, b, d});
}

/// The same for a callable.
inline std::pair<torch::Tensor, torch::Tensor> jvp(
    const TorchOperator& fn, std::array<int64_t, 2> shape, const torch::Tensor& b,
    const torch::Tensor& damp, const std::vector<torch::Tensor>& params, TangentRequest t,
    const TorchLstsqOptions& options) {
  check_tangents(t, nullptr, b, damp, params);
  const auto d = damp.reshape({});
  auto inputs = params;
  inputs.insert(inputs.end(), {b, d});
  return with_tangents(
      std::move(t),
      [&](TangentRequest* r) {
        return LstsqCallableFunction::apply(b, d, torch::TensorList(params), fn, shape, options, r);
      },
      inputs);
}

}  // namespace detail

/// Differentiable argmin_x ‖A x − b‖² + damp²‖x‖² (minimum-norm where not unique). A (m, n),
/// b (m) or (m, k) (k independent solves), damp a real 0-d tensor (it receives a gradient when
/// it requires one). Dual tensors (forward mode, see the top of this file) give a dual x. Throws
/// std::invalid_argument for bad input and SolveError when a solve does not converge under
/// FailurePolicy::Raise.
inline torch::Tensor lstsq(const torch::Tensor& a, const torch::Tensor& b,
                           const torch::Tensor& damp, const TorchLstsqOptions& options = {}) {
  using detail::is_dual, detail::primal_of, detail::tangent_of;
  detail::check_inputs(a, b, damp);
  if (!is_dual(a) && !is_dual(b) && !is_dual(damp))
    return LstsqFunction::apply(a, b, damp.reshape({}), options, nullptr);
  auto [x, dx] =
      detail::jvp(primal_of(a), primal_of(b), primal_of(damp),
                  detail::TangentRequest(tangent_of(a), tangent_of(b), tangent_of(damp)), options);
  return at::_make_dual(x, dx, 0);
}

inline torch::Tensor lstsq(const torch::Tensor& a, const torch::Tensor& b, double damp = 0,
                           const TorchLstsqOptions& options = {}) {
  detail::check_tensor(a, "A");
  return lstsq(
      a, b,
      torch::full({}, damp, torch::TensorOptions().dtype(c10::toRealValueType(a.scalar_type()))),
      options);
}

/// The same for a matrix-free A(θ) of shape {m, n}: fn(v, params) = A(params)·v. The dtype is
/// b's; gradients reach b, damp and the tensors in params that require one, and tangents of
/// b, damp and params (dual tensors) give a dual x. fn must not capture tensors with tangents,
/// nor (under grad mode) tensors that require grad; fn that is not linear in v (A(0) ≠ 0, or a
/// failed dot test on one random pair) is std::invalid_argument. Works under c10::InferenceMode
/// (the adjoint products still use autograd).
inline torch::Tensor lstsq(const TorchOperator& fn, std::array<int64_t, 2> shape,
                           const torch::Tensor& b, const torch::Tensor& damp,
                           const std::vector<torch::Tensor>& params_in = {},
                           const TorchLstsqOptions& options = {}) {
  using detail::is_dual, detail::primal_of, detail::tangent_of;
  detail::check_inputs(fn, shape, b, damp, params_in);
  const auto params = detail::saveable(params_in);
  const bool dual_params = std::any_of(params.begin(), params.end(), is_dual);
  if (!is_dual(b) && !is_dual(damp) && !dual_params)
    return LstsqCallableFunction::apply(b, damp.reshape({}), torch::TensorList(params), fn, shape,
                                        options, nullptr);
  std::vector<torch::Tensor> primals, dots;
  for (const auto& p : params) {
    primals.push_back(primal_of(p));
    dots.push_back(tangent_of(p));
  }
  auto [x, dx] =
      detail::jvp(fn, shape, primal_of(b), primal_of(damp), primals,
                  detail::TangentRequest({}, tangent_of(b), tangent_of(damp), dots), options);
  return at::_make_dual(x, dx, 0);
}

inline torch::Tensor lstsq(const TorchOperator& fn, std::array<int64_t, 2> shape,
                           const torch::Tensor& b, double damp = 0,
                           const std::vector<torch::Tensor>& params = {},
                           const TorchLstsqOptions& options = {}) {
  detail::check_tensor(b, "b");
  return lstsq(fn, shape, b,
               torch::full({}, damp, b.options().dtype(c10::toRealValueType(b.scalar_type()))),
               params, options);
}

/// Forward mode without dual tensors: (x, ẋ) for tangents Ȧ, ḃ, λ̇ (undefined: zero; each of
/// its input's shape and dtype). One forward solve and the solves of the rule (G8, one or two
/// per column of b; none when every tangent is undefined). x is differentiable as lstsq's; ẋ is
/// not differentiable again.
inline std::pair<torch::Tensor, torch::Tensor> lstsq_jvp(
    const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& damp,
    const torch::Tensor& a_dot, const torch::Tensor& b_dot, const torch::Tensor& damp_dot,
    const TorchLstsqOptions& options = {}) {
  detail::check_inputs(a, b, damp);
  detail::check_not_dual(a, "A");
  detail::check_not_dual(b, "b");
  detail::check_not_dual(damp, "damp");
  return detail::jvp(a, b, damp, detail::TangentRequest(a_dot, b_dot, damp_dot), options);
}

/// The same for a callable: tangents of b, damp and params (params_dot[i] for params[i];
/// undefined or missing: zero).
inline std::pair<torch::Tensor, torch::Tensor> lstsq_jvp(
    const TorchOperator& fn, std::array<int64_t, 2> shape, const torch::Tensor& b,
    const torch::Tensor& damp, const std::vector<torch::Tensor>& params_in,
    const std::vector<torch::Tensor>& params_dot, const torch::Tensor& b_dot,
    const torch::Tensor& damp_dot, const TorchLstsqOptions& options = {}) {
  detail::check_inputs(fn, shape, b, damp, params_in);
  const auto params = detail::saveable(params_in);
  detail::check_not_dual(b, "b");
  detail::check_not_dual(damp, "damp");
  for (std::size_t i = 0; i < params.size(); ++i)
    detail::check_not_dual(params[i], "params[" + std::to_string(i) + "]");
  return detail::jvp(fn, shape, b, damp, params,
                     detail::TangentRequest({}, b_dot, damp_dot, params_dot), options);
}

}  // namespace difflsq
