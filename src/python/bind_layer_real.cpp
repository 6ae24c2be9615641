// The differentiable layer's Python bindings for float and double (bind_layer.hpp).
#include "bind_layer.hpp"

namespace difflsq::python {

void register_layers(py::module_& m) {
  // Raised for a solve that did not converge (policy 'raise'); the message names the solve.
  py::register_exception<SolveError>(m, "SolveError", PyExc_RuntimeError);
  register_layer<float>(m, "f32");
  register_layer<double>(m, "f64");
}

}  // namespace difflsq::python
