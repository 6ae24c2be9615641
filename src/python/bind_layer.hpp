// Python bindings of the differentiable layer (layer.hpp) for one scalar type: the forward
// pass on a dense C-contiguous matrix, on CSR arrays (the stored values are the parameters),
// on callbacks or on a built-in 1-D convolution whose kernel is the parameter
// (convolution.hpp), the reverse rule and (dense, sparse, convolution) the forward rule.
// difflsq/torch.py turns these into a torch.autograd.Function; the parameter products of a callable
// operator are done there, with torch autograd, from the Ā = Σ u vᵀ terms. bind_layer_real.cpp and
// bind_layer_complex.cpp instantiate them (two translation units that compile in parallel).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "bindings.hpp"

namespace difflsq::python {
namespace {

template <class Scalar>
using RowMap = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

/// A forward pass on a dense matrix: owns a reference to the array, the operator and the
/// saved context (which points at the operator, so this object never moves).
template <class Scalar>
struct DenseForward {
  py::array_t<Scalar> array;
  RowMap<Scalar> map;
  MatrixParameters<RowMap<Scalar>> op;
  Forward<MatrixParameters<RowMap<Scalar>>> fwd;
  explicit DenseForward(py::array_t<Scalar> a)
      : array(std::move(a)), map(array.data(), array.shape(0), array.shape(1)), op(map) {}
};

template <class Scalar>
using CsrMap = Eigen::Map<const Eigen::SparseMatrix<Scalar, Eigen::RowMajor, std::int64_t>>;

/// A CSR matrix (int64 indices) whose stored values are the parameters, as an operator that
/// owns references to the arrays. The forward passes of all columns of b share one (it holds
/// the sliced copies of A and Aᵀ) and keep it alive for their backward passes.
template <class Scalar>
struct SparseMatrix {
  CArray<std::int64_t> indptr, indices;
  CArray<Scalar> values;
  CsrMap<Scalar> map;
  SparseMatrixParameters<CsrMap<Scalar>> op;
  SparseMatrix(Index m, Index n, CArray<std::int64_t> ptr, CArray<std::int64_t> idx,
               CArray<Scalar> vals)
      : indptr(std::move(ptr)),
        indices(std::move(idx)),
        values(std::move(vals)),
        map(m, n, compressed_nonzeros(m, n, indptr, indices, values), indptr.data(), indices.data(),
            values.data()),
        op(map, sparse_options_for(map.nonZeros())) {}
};

/// The forward pass of one column of b on a SparseMatrix.
template <class Scalar>
struct SparseForward {
  std::shared_ptr<const SparseMatrix<Scalar>> matrix;
  Forward<SparseMatrixParameters<CsrMap<Scalar>>> fwd;
};

template <class Scalar>
using PyOperator = CallbackOperator<Scalar, PyCallback<Scalar>, PyCallback<Scalar>>;

template <class Scalar>
struct CallbackForward {
  PyOperator<Scalar> op;
  Forward<PyOperator<Scalar>> fwd;
  CallbackForward(Index m, Index n, py::function matvec, py::function rmatvec)
      : op(m, n, PyCallback<Scalar>{std::move(matvec), m, "matvec"},
           PyCallback<Scalar>{std::move(rmatvec), n, "rmatvec"}) {}
};

/// A forward pass on Convolution(kernel, n, mode): every product runs in C++.
template <class Scalar>
struct ConvolutionForward {
  Convolution<Scalar> op;
  Forward<Convolution<Scalar>> fwd;
  ConvolutionForward(Eigen::Ref<const Vector<Scalar>> kernel, Index n, ConvolutionMode mode)
      : op(kernel, n, mode) {}
};

/// The value named `name` among `choices` (what: the option's name, for the error).
template <class E, std::size_t N>
E choose(const char* what, const std::string& name,
         const std::pair<const char*, E> (&choices)[N]) {
  std::string known;
  for (const auto& [key, value] : choices) {
    if (name == key) return value;
    known += std::string(known.empty() ? "'" : ", '") + key + "'";
  }
  throw std::invalid_argument(std::string("difflsq: ") + what + " must be one of " + known +
                              ", got '" + name + "'");
}

ConvolutionMode convolution_mode(const std::string& name) {
  return choose<ConvolutionMode>("convolution mode", name, {{"full", ConvolutionMode::Full},
                                                            {"same", ConvolutionMode::Same},
                                                            {"valid", ConvolutionMode::Valid}});
}

template <class Scalar>
py::array_t<Scalar> to_numpy(const Vector<Scalar>& v) {
  py::array_t<Scalar> out(v.size());
  std::copy(v.data(), v.data() + v.size(), out.mutable_data());
  return out;
}

template <class Real>
py::list records(const std::vector<SolveRecord<Real>>& solves) {
  py::list out;
  for (const auto& s : solves)
    out.append(py::make_tuple(s.role, static_cast<int>(s.report.status), s.report.iterations));
  return out;
}

FailurePolicy policy(const std::string& name) {
  return choose<FailurePolicy>("on_failure", name, {{"raise", FailurePolicy::Raise},
                                                    {"warn", FailurePolicy::Warn},
                                                    {"ignore", FailurePolicy::Ignore}});
}

Method method_of(const std::string& name) {
  return choose<Method>("method", name,
                        {{"lsqr", Method::Lsqr}, {"lsmr", Method::Lsmr}, {"cgls", Method::Cgls}});
}

template <class Op>
py::dict report_of(const Forward<Op>& f) {
  const auto& r = f.report;
  py::dict d;
  d["istop"] = static_cast<int>(r.status);
  d["itn"] = r.iterations;
  d["r1norm"] = r.r1norm;
  d["r2norm"] = r.r2norm;
  d["anorm"] = r.anorm;
  d["acond"] = r.acond;
  d["arnorm"] = r.arnorm;
  d["xnorm"] = r.xnorm;
  return d;
}

/// The reverse rule: (b̄, λ̄, [(u, v) with Ā = Σ u vᵀ], solve records, θ̄ or None).
template <class Scalar, class Op>
py::tuple backward(LeastSquares<Scalar>& layer, Forward<Op>& f, const PyArray<Scalar>& xbar_arr) {
  const auto xbar = as_vector(xbar_arr, "xbar");
  Gradients<Scalar> g;
  {
    py::gil_scoped_release nogil;
    g = layer.backward(f, xbar);
  }
  py::list terms;
  for (const auto& [u, v] : g.a_terms) terms.append(py::make_tuple(to_numpy(u), to_numpy(v)));
  py::object theta = py::none();
  if (g.theta.size()) theta = to_numpy(g.theta);
  return py::make_tuple(to_numpy(g.b), g.damp, terms, records(g.solves), theta);
}

/// The forward rule: (ẋ, solve records).
template <class Scalar, class Op>
py::tuple jvp(LeastSquares<Scalar>& layer, Forward<Op>& f,
              const std::optional<PyArray<Scalar>>& a_dot,
              const std::optional<PyArray<Scalar>>& b_dot, double damp_dot,
              typename Tangents<Scalar>::Product a_dot_products = {},
              typename Tangents<Scalar>::Product a_dot_adjoint_products = {}) {
  Tangents<Scalar> t;
  t.a_dot = std::move(a_dot_products);
  t.a_dot_adjoint = std::move(a_dot_adjoint_products);
  if (a_dot) t.theta = as_vector(*a_dot, "tangent of A");
  if (b_dot) t.b = as_vector(*b_dot, "tangent of b");
  t.damp = static_cast<RealOf<Scalar>>(damp_dot);
  TangentResult<Scalar> out;
  {
    py::gil_scoped_release nogil;
    out = layer.jvp(f, t);
  }
  return py::make_tuple(to_numpy(out.x), records(out.solves));
}

template <class Scalar>
void register_layer(py::module_& m, const std::string& suffix) {
  using Real = RealOf<Scalar>;
  using Layer = LeastSquares<Scalar>;
  using Dense = DenseForward<Scalar>;
  using Callback = CallbackForward<Scalar>;
  using Opt = std::optional<PyArray<Scalar>>;

  py::class_<Dense>(m, ("DenseForward_" + suffix).c_str())
      .def_property_readonly("x", [](const Dense& d) { return to_numpy(d.fwd.x); })
      .def_property_readonly("report", [](const Dense& d) { return report_of(d.fwd); });
  py::class_<Callback>(m, ("CallbackForward_" + suffix).c_str())
      .def_property_readonly("x", [](const Callback& c) { return to_numpy(c.fwd.x); })
      .def_property_readonly("report", [](const Callback& c) { return report_of(c.fwd); });

  using Sparse = SparseForward<Scalar>;
  py::class_<Sparse>(m, ("SparseForward_" + suffix).c_str())
      .def_property_readonly("x", [](const Sparse& s) { return to_numpy(s.fwd.x); })
      .def_property_readonly("report", [](const Sparse& s) { return report_of(s.fwd); });

  using Conv = ConvolutionForward<Scalar>;
  py::class_<Conv>(m, ("ConvolutionForward_" + suffix).c_str())
      .def_property_readonly("x", [](const Conv& c) { return to_numpy(c.fwd.x); })
      .def_property_readonly("report", [](const Conv& c) { return report_of(c.fwd); });

  py::class_<Layer>(m, ("Layer_" + suffix).c_str())
      .def(py::init([](const std::string& method, double atol, double btol, double conlim,
                       long long maxiter,
                       std::optional<std::tuple<double, double, double, long long>> backward_tol,
                       const std::string& on_failure, std::optional<py::function> warn) {
             LeastSquaresOptions<Scalar> o;
             o.method = method_of(method);
             o.forward = {Real(atol), Real(btol), Real(conlim), Index(maxiter)};
             if (backward_tol) {
               const auto& [a, b, c, k] = *backward_tol;
               o.backward = Tolerances<Real>{Real(a), Real(b), Real(c), Index(k)};
             }
             o.on_failure = policy(on_failure);
             if (warn) {
               py::function w = *warn;
               o.warn = [w](const std::string& msg) {
                 py::gil_scoped_acquire gil;
                 w(msg);
               };
             }
             return std::make_unique<Layer>(std::move(o));
           }),
           py::arg("method"), py::arg("atol"), py::arg("btol"), py::arg("conlim"),
           py::arg("maxiter"), py::arg("backward_tol"), py::arg("on_failure"), py::arg("warn"))
      .def("forward_dense",
           [](Layer& layer, py::array_t<Scalar, py::array::c_style> a, PyArray<Scalar> b,
              double damp) {
             if (a.ndim() != 2) throw std::invalid_argument("difflsq: A must be 2-D");
             auto d = std::make_unique<Dense>(std::move(a));
             // Here rather than with torch.isfinite, whose temporaries (measured: 33 MB for a
             // 3000 × 1000 A) stayed resident after the forward pass.
             if (!d->map.allFinite())
               throw std::invalid_argument("difflsq: A is not finite (it has NaN or Inf entries)");
             const auto bv = as_vector(b, "b");
             {
               py::gil_scoped_release nogil;
               d->fwd = layer.forward(d->op, bv, Real(damp));
             }
             return d;
           })
      .def(
          "forward_sparse",
          [](Layer& layer, Index rows, Index cols, CArray<std::int64_t> indptr,
             CArray<std::int64_t> indices, CArray<Scalar> values,
             const std::vector<PyArray<Scalar>>& columns, double damp) {
            auto a = std::make_shared<const SparseMatrix<Scalar>>(
                rows, cols, std::move(indptr), std::move(indices), std::move(values));
            if (!Eigen::Map<const Vector<Scalar>>(a->map.valuePtr(), a->map.nonZeros()).allFinite())
              throw std::invalid_argument("difflsq: A is not finite (it has NaN or Inf entries)");
            std::vector<std::unique_ptr<Sparse>> out;  // one forward pass per column of b
            for (const auto& b : columns) {
              const auto bv = as_vector(b, "b");
              auto f = std::make_unique<Sparse>(Sparse{a, {}});
              {
                py::gil_scoped_release nogil;
                f->fwd = layer.forward(a->op, bv, Real(damp));
              }
              out.push_back(std::move(f));
            }
            return out;
          })
      .def("forward_callback",
           [](Layer& layer, Index rows, Index cols, py::function matvec, py::function rmatvec,
              PyArray<Scalar> b, double damp) {
             auto c = std::make_unique<Callback>(rows, cols, std::move(matvec), std::move(rmatvec));
             const auto bv = as_vector(b, "b");
             {
               py::gil_scoped_release nogil;  // the callbacks take the GIL back
               c->fwd = layer.forward(c->op, bv, Real(damp));
             }
             return c;
           })
      .def("forward_convolution",
           [](Layer& layer, const PyArray<Scalar>& kernel, Index n, const std::string& mode,
              PyArray<Scalar> b, double damp) {
             auto c = std::make_unique<Conv>(as_vector(kernel, "kernel"), n,
                                             convolution_mode(mode));
             const auto bv = as_vector(b, "b");
             {
               py::gil_scoped_release nogil;
               c->fwd = layer.forward(c->op, bv, Real(damp));
             }
             return c;
           })
      .def("backward", [](Layer& layer, Conv& c,
                          const PyArray<Scalar>& xbar) { return backward(layer, c.fwd, xbar); })
      .def("jvp", [](Layer& layer, Conv& c, Opt kernel_dot, Opt b_dot,
                     double damp_dot) { return jvp(layer, c.fwd, kernel_dot, b_dot, damp_dot); })
      .def("backward", [](Layer& layer, Sparse& s,
                          const PyArray<Scalar>& xbar) { return backward(layer, s.fwd, xbar); })
      .def("jvp", [](Layer& layer, Sparse& s, Opt values_dot, Opt b_dot,
                     double damp_dot) { return jvp(layer, s.fwd, values_dot, b_dot, damp_dot); })
      .def("backward", [](Layer& layer, Dense& d,
                          const PyArray<Scalar>& xbar) { return backward(layer, d.fwd, xbar); })
      .def("backward", [](Layer& layer, Callback& c,
                          const PyArray<Scalar>& xbar) { return backward(layer, c.fwd, xbar); })
      .def("jvp", [](Layer& layer, Dense& d, Opt a_dot, Opt b_dot,
                     double damp_dot) { return jvp(layer, d.fwd, a_dot, b_dot, damp_dot); })
      .def("jvp", [](Layer& layer, Callback& c, Opt b_dot,
                     double damp_dot) { return jvp(layer, c.fwd, Opt{}, b_dot, damp_dot); })
      // Tangents of a callable's params as the products Ȧv and Ȧᴴu (NumPy in, NumPy out).
      .def("jvp", [](Layer& layer, Callback& c, py::function a_dot, py::function a_dot_adjoint,
                     Opt b_dot, double damp_dot) {
        const Index m = c.op.rows(), n = c.op.cols();
        auto product = [](PyCallback<Scalar> cb) {
          return [cb](Eigen::Ref<const Vector<Scalar>> in, Eigen::Ref<Vector<Scalar>> out) {
            cb(in, out);
          };
        };
        return jvp(layer, c.fwd, Opt{}, b_dot, damp_dot,
                   product({std::move(a_dot), m, "the tangent product of A"}),
                   product({std::move(a_dot_adjoint), n, "the tangent product of A^H"}));
      });
}

}  // namespace
}  // namespace difflsq::python
