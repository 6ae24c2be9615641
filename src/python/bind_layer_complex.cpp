// The differentiable layer's Python bindings for complex<float> and complex<double>
// (bind_layer.hpp); register_layers (bind_layer_real.cpp) must run first, for SolveError.
#include <complex>

#include "bind_layer.hpp"

namespace difflsq::python {

void register_complex_layers(py::module_& m) {
  register_layer<std::complex<float>>(m, "c64");
  register_layer<std::complex<double>>(m, "c128");
}

}  // namespace difflsq::python
