// One scalar type per translation unit, so the solvers compile in parallel.
#include "bindings.hpp"

namespace difflsq::python {
void register_f64(py::module_& m) { register_scalar<double>(m, "f64"); }
}  // namespace difflsq::python
