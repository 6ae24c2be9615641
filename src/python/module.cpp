// The compiled core of the `difflsq` Python package (difflsq._core). The public, SciPy-compatible
// functions live in difflsq/__init__.py, which chooses the entry point by matrix kind and dtype.
#include "bindings.hpp"

namespace difflsq::python {
void register_f32(py::module_& m);
void register_f64(py::module_& m);
void register_c64(py::module_& m);
void register_c128(py::module_& m);
void register_layers(py::module_& m);
void register_complex_layers(py::module_& m);
}  // namespace difflsq::python

PYBIND11_MODULE(_core, m) {
  namespace py = pybind11;
  using difflsq::python::SolveArgs;
  m.doc() = "difflsq compiled solvers (use the difflsq package, not this module)";
  py::class_<SolveArgs>(m, "SolveArgs")
      .def(py::init([](std::string method, double damp, double atol, double btol, double conlim,
                       long long maxiter, bool show, bool calc_var) {
             return SolveArgs{std::move(method), damp, atol, btol, conlim, maxiter, show, calc_var};
           }),
           py::arg("method"), py::arg("damp"), py::arg("atol"), py::arg("btol"),
           py::arg("conlim"), py::arg("maxiter"), py::arg("show"), py::arg("calc_var"));
  difflsq::python::register_f32(m);
  difflsq::python::register_f64(m);
  difflsq::python::register_c64(m);
  difflsq::python::register_c128(m);
  difflsq::python::register_layers(m);
  difflsq::python::register_complex_layers(m);
}
