// difflsq Python bindings: the solvers for one scalar type. Dense and sparse matrices are
// wrapped without copying (Eigen::Map over the NumPy/SciPy buffers) and iterate entirely in C++
// with the GIL released; LinearOperators call back into Python.
#pragma once

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <difflsq/difflsq.hpp>
#include <limits>
#include <memory>
#include <optional>
#include <string>

namespace difflsq::python {

namespace py = pybind11;

/// Arguments common to every solve, as the Python layer passes them.
struct SolveArgs {
  std::string method;  // "lsqr", "lsmr" or "cgls"
  double damp, atol, btol, conlim;
  long long maxiter;   // ≤ 0: the method's default
  bool show, calc_var;
};

/// An array converted to C order and type T where it is not already (then a copy).
template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

/// The number of nonzeros of compressed arrays (1-D: indptr of length outer + 1, indices and
/// values) after one O(nnz) pass that refuses malformed arrays (scipy's check=False, torch's
/// check_invariants=False), so that products cannot read or write out of bounds.
template <class StorageIndex>
Index compressed_nonzeros(Index outer, Index inner, const CArray<StorageIndex>& indptr,
                          const CArray<StorageIndex>& indices, const py::array& values) {
  if (outer < 0 || inner < 0)
    throw std::invalid_argument("difflsq: a sparse matrix's shape must not be negative");
  if (indptr.ndim() != 1 || indices.ndim() != 1 || values.ndim() != 1)
    throw std::invalid_argument("difflsq: sparse matrix arrays must be 1-D");
  if (indptr.size() != outer + 1 || values.size() != indices.size() ||
      indptr.data()[outer] > values.size())
    throw std::invalid_argument("difflsq: inconsistent sparse matrix arrays");
  const StorageIndex* ptr = indptr.data();
  const StorageIndex* idx = indices.data();
  if (ptr[0] != 0) throw std::invalid_argument("difflsq: sparse indptr must start at 0");
  for (Index k = 0; k < outer; ++k)
    if (ptr[k + 1] < ptr[k])
      throw std::invalid_argument("difflsq: sparse indptr is not non-decreasing");
  const Index nnz = ptr[outer];
  for (Index k = 0; k < nnz; ++k)
    if (idx[k] < 0 || idx[k] >= inner)
      throw std::invalid_argument("difflsq: sparse index " + std::to_string(idx[k]) +
                                  " out of range [0, " + std::to_string(inner) + ")");
  return nnz;
}

/// Vectors (b, x0, x̄, tangents): C-contiguous, so that a strided, reversed or broadcast
/// array is copied to its values instead of being read as raw memory by as_vector.
template <class Scalar>
using PyArray = CArray<Scalar>;

template <class Scalar>
Eigen::Map<const Vector<Scalar>> as_vector(const PyArray<Scalar>& a, const char* name) {
  if (a.ndim() != 1)
    throw std::invalid_argument(std::string("difflsq: ") + name + " must be 1-D, got " +
                                std::to_string(a.ndim()) + " dimensions");
  return {a.data(), static_cast<Index>(a.shape(0))};
}

/// SciPy-style progress printing for show=True (through Python's sys.stdout): the lines
/// lsqr.py / lsmr.py print, chosen by their rules (every iteration when n <= 40, the first and
/// last ten, every tenth for LSMR only, those near a stopping test and the last), and LSMR's
/// column heads again after every 20 lines. (CGLS, not in SciPy, follows LSMR.)
template <class Scalar>
struct Printer {
  std::string method;
  Index n, max_iterations;
  double bnorm, atol, btol, ctol;                             // ctol = 1/conlim, or 0
  std::shared_ptr<Index> lines = std::make_shared<Index>(0);  // since the heads were printed
  MonitorAction operator()(const IterationInfo<Scalar>& it) const {
    const bool lsqr = method == "lsqr";
    const double r = static_cast<double>(it.r2norm), anorm = static_cast<double>(it.anorm);
    const double arnorm = static_cast<double>(it.arnorm), acond = static_cast<double>(it.acond);
    const double xnorm = static_cast<double>(it.xnorm);
    // The solvers' own tests (workspace.hpp); bnorm > 0 here (b = 0 returns before the first
    // iteration).
    const double test1 = r / bnorm;
    const double test2 = anorm > 0 && r > 0 ? (arnorm / anorm) / r  // no ‖A‖‖r‖ to overflow
                                            : std::numeric_limits<double>::infinity();
    const double test3 = 1 / acond;
    const double rtol = btol + atol * anorm * (xnorm / bnorm);
    const Index itn = it.iteration;
    const bool stops = detail::stopping_test(itn, max_iterations, test1, test2, test3, anorm, xnorm,
                                             bnorm, atol, btol, ctol) != Status::ExactSolution;
    const double near_ctol = lsqr ? 2 : 1.1, near = lsqr ? 10 : 1.1;
    const bool print = n <= 40 || itn <= 10 || itn >= max_iterations - 10 ||
                       (!lsqr && itn % 10 == 0) || test3 <= near_ctol * ctol ||
                       test2 <= near * atol || test1 <= near * rtol || stops;
    if (!print) return MonitorAction::Continue;
    // lsqr.py's columns (r1norm, r2norm) and spacing, or lsmr.py's (norm r, norm Ar).
    char line[160];
    std::snprintf(
        line, sizeof line,
        lsqr ? "%6lld %12.5e  %10.3e %10.3e   %8.1e %8.1e  %8.1e %8.1e"
             : "%6lld %12.5e %10.3e %10.3e  %8.1e %8.1e %8.1e %8.1e",
        static_cast<long long>(itn), it.x.size() ? static_cast<double>(std::real(it.x[0])) : 0.0,
        lsqr ? static_cast<double>(it.r1norm) : r, lsqr ? r : arnorm, test1, test2, anorm, acond);
    py::gil_scoped_acquire gil;
    if (!lsqr && ++*lines > 20) {  // lsmr.py's pfreq
      *lines = 1;
      py::print(" ");
      py::print("   itn      x(1)       norm r    norm Ar  compatible   LS      norm A   cond A");
    }
    py::print(line);
    return MonitorAction::Continue;
  }
};

/// Runs the chosen method on an operator and packs SciPy's return values:
/// (x, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, var, matvecs, rmatvecs).
template <LinearOperator Op>
py::tuple run(const Op& op, const PyArray<typename Op::Scalar>& b_arr,
              const std::optional<PyArray<typename Op::Scalar>>& x0_arr, const SolveArgs& args,
              bool release_gil) {
  using Scalar = typename Op::Scalar;
  using Real = RealOf<Scalar>;
  const auto b = as_vector(b_arr, "b");
  Options<Scalar> opts;
  opts.damp = static_cast<Real>(args.damp);
  opts.atol = static_cast<Real>(args.atol);
  opts.btol = static_cast<Real>(args.btol);
  opts.conlim = static_cast<Real>(args.conlim);
  opts.max_iterations = static_cast<Index>(args.maxiter);
  opts.calc_var = args.calc_var;
  if (x0_arr) opts.x0 = as_vector(*x0_arr, "x0");
  if (args.show) {
    const Index m = op.rows(), n = op.cols();
    const Index limit = args.maxiter > 0 ? static_cast<Index>(args.maxiter)
                        : args.method == "lsmr" ? std::min(m, n)
                                                : 2 * n;
    opts.monitor = Printer<Scalar>{args.method,
                                   n,
                                   limit,
                                   static_cast<double>(b.norm()),
                                   args.atol,
                                   args.btol,
                                   args.conlim > 0 ? 1 / args.conlim : 0.0};
  }
  Workspace<Scalar> ws;
  Report<Real> rep;
  {
    std::optional<py::gil_scoped_release> nogil;
    if (release_gil || args.show) nogil.emplace();  // the printer re-acquires the GIL
    if (args.method == "lsqr")
      rep = lsqr(ws, op, b, opts);
    else if (args.method == "lsmr")
      rep = lsmr(ws, op, b, opts);
    else if (args.method == "cgls")
      rep = cgls(ws, op, b, opts);
    else
      throw std::invalid_argument("difflsq: unknown method '" + args.method + "'");
  }
  auto to_numpy = [](const auto& v) {
    using T = typename std::decay_t<decltype(v)>::Scalar;
    py::array_t<T> out(v.size());
    std::copy(v.data(), v.data() + v.size(), out.mutable_data());
    return out;
  };
  Vector<Real> var = ws.var.size() ? ws.var : Vector<Real>::Zero(op.cols());
  return py::make_tuple(to_numpy(ws.x), static_cast<int>(rep.status), rep.iterations,
                        rep.r1norm, rep.r2norm, rep.anorm, rep.acond, rep.arnorm, rep.xnorm,
                        to_numpy(var), rep.matvecs, rep.rmatvecs,
                        static_cast<bool>(rep.tolerances_clamped));
}

/// Calls a Python matvec/rmatvec: passes a fresh NumPy copy of the input, checks the result.
template <class Scalar>
struct PyCallback {
  py::function f;
  Index out_size;
  const char* name;
  void operator()(const Eigen::Ref<const Vector<Scalar>>& in, Eigen::Ref<Vector<Scalar>>& out) const {
    py::gil_scoped_acquire gil;
    PyArray<Scalar> arg(in.size());
    std::copy(in.data(), in.data() + in.size(), arg.mutable_data());
    py::object res = f(arg);
    // A numeric array of the right kind: complex results of a real operator are an error,
    // not silently truncated.
    const py::array any = py::array::ensure(res);
    const char kind = any ? any.dtype().kind() : '?';
    const bool ok_kind = kind == 'f' || kind == 'i' || kind == 'u' || kind == 'b' ||
                         (kind == 'c' && Eigen::NumTraits<Scalar>::IsComplex);
    if (!ok_kind)
      throw py::type_error(std::string("difflsq: ") + name + " must return a " +
                           (Eigen::NumTraits<Scalar>::IsComplex ? "numeric" : "real") +
                           " array, got " + (any ? py::str(any.dtype()).cast<std::string>()
                                                 : std::string(py::str(res.get_type()))));
    // Contiguous copy in the working dtype (a strided view is read through its strides).
    const auto arr = py::array_t<Scalar, py::array::c_style | py::array::forcecast>::ensure(any);
    if (arr.size() != out_size)
      throw std::invalid_argument(std::string("difflsq: ") + name + " returned " +
                                  std::to_string(arr.size()) + " values, expected " +
                                  std::to_string(out_size));
    const Scalar* data = arr.data();
    // The result may be (k,) or (k, 1); ensure() made it contiguous.
    std::copy(data, data + out_size, out.data());
  }
};

template <class Scalar>
void register_scalar(py::module_& m, const std::string& suffix) {
  using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ColMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  using Opt = std::optional<PyArray<Scalar>>;

  // Dense: A must be C- or F-contiguous (the Python layer ensures it); no copy.
  m.def(("_solve_dense_" + suffix).c_str(),
        [](py::array_t<Scalar> a, PyArray<Scalar> b, Opt x0, SolveArgs args) {
          if (a.ndim() != 2) throw std::invalid_argument("difflsq: A must be 2-D");
          const Index rows = a.shape(0), cols = a.shape(1);
          if (a.flags() & py::array::c_style) {
            Eigen::Map<const RowMajor> map(a.data(), rows, cols);
            return run(DenseOperator<decltype(map)>(map), b, x0, args, true);
          }
          if (a.flags() & py::array::f_style) {
            Eigen::Map<const ColMajor> map(a.data(), rows, cols);
            return run(DenseOperator<decltype(map)>(map), b, x0, args, true);
          }
          throw std::invalid_argument("difflsq: dense A must be C- or F-contiguous");
        });

  // Sparse CSR (row-major) or CSC (column-major) with int32 or int64 indices; no copy.
  auto sparse = [&m, &suffix]<class StorageIndex>(StorageIndex) {
    const std::string idx = sizeof(StorageIndex) == 4 ? "i32" : "i64";
    m.def(("_solve_sparse_" + suffix + "_" + idx).c_str(),
          [](bool csr, Index rows, Index cols, CArray<Scalar> data, CArray<StorageIndex> indices,
             CArray<StorageIndex> indptr, PyArray<Scalar> b, Opt x0, SolveArgs args) {
            const Index nnz =
                compressed_nonzeros(csr ? rows : cols, csr ? cols : rows, indptr, indices, data);
            const SparseOptions sparse_options = sparse_options_for(nnz);
            if (csr) {
              Eigen::Map<const Eigen::SparseMatrix<Scalar, Eigen::RowMajor, StorageIndex>> map(
                  rows, cols, nnz, indptr.data(), indices.data(), data.data());
              return run(CompressedOperator(map, sparse_options), b, x0, args, true);
            }
            Eigen::Map<const Eigen::SparseMatrix<Scalar, Eigen::ColMajor, StorageIndex>> map(
                rows, cols, nnz, indptr.data(), indices.data(), data.data());
            return run(CompressedOperator(map, sparse_options), b, x0, args, true);
          });
  };
  sparse(std::int32_t{});
  sparse(std::int64_t{});

  // LinearOperator: matvec and rmatvec are Python callables.
  m.def(("_solve_callback_" + suffix).c_str(),
        [](Index rows, Index cols, py::function matvec, py::function rmatvec, PyArray<Scalar> b,
           Opt x0, SolveArgs args) {
          auto op = make_operator<Scalar>(rows, cols, PyCallback<Scalar>{matvec, rows, "matvec"},
                                          PyCallback<Scalar>{rmatvec, cols, "rmatvec"});
          return run(op, b, x0, args, true);
        });
}

}  // namespace difflsq::python
