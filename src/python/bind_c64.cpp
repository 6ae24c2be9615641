// One scalar type per translation unit, so the solvers compile in parallel.
#include "bindings.hpp"

namespace difflsq::python {
void register_c64(py::module_& m) { register_scalar<std::complex<float>>(m, "c64"); }
}  // namespace difflsq::python
