// One scalar type per translation unit, so the solvers compile in parallel.
#include "bindings.hpp"

namespace difflsq::python {
void register_f32(py::module_& m) { register_scalar<float>(m, "f32"); }
}  // namespace difflsq::python
