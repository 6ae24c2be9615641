// One scalar type per translation unit, so the solvers compile in parallel.
#include "bindings.hpp"

namespace difflsq::python {
void register_c128(py::module_& m) { register_scalar<std::complex<double>>(m, "c128"); }
}  // namespace difflsq::python
