// difflsq — choosing the Krylov method at run time.
#pragma once

#include "cgls.hpp"
#include "lsmr.hpp"
#include "lsqr.hpp"

namespace difflsq {

/// The three solvers of the library, as a value.
enum class Method { Lsqr, Lsmr, Cgls };

inline const char* to_string(Method m) {
  switch (m) {
    case Method::Lsqr:
      return "LSQR";
    case Method::Lsmr:
      return "LSMR";
    case Method::Cgls:
      return "CGLS";
  }
  return "unknown method";
}

/// The iteration limit of `method` on an m × n operator when Options::max_iterations ≤ 0
/// (SciPy's: 2n for LSQR and CGLS, min(m, n) for LSMR).
inline Index default_max_iterations(Method method, Index m, Index n) {
  switch (method) {
    case Method::Lsqr:
      return detail::LsqrMethod::default_max_iterations(m, n);
    case Method::Lsmr:
      return detail::LsmrMethod::default_max_iterations(m, n);
    case Method::Cgls:
      return detail::CglsMethod::default_max_iterations(m, n);
  }
  return 0;
}

/// Runs `method` on A in a reusable workspace (the solution is left in ws.x).
template <OperatorLike A>
Report<RealOf<ScalarOf<A>>> solve(Method method, Workspace<ScalarOf<A>>& ws, const A& a,
                                  Eigen::Ref<const Vector<ScalarOf<A>>> b,
                                  const Options<ScalarOf<A>>& opts = {}) {
  switch (method) {
    case Method::Lsqr:
      return lsqr(ws, a, b, opts);
    case Method::Lsmr:
      return lsmr(ws, a, b, opts);
    case Method::Cgls:
      return cgls(ws, a, b, opts);
  }
  throw std::invalid_argument("difflsq::solve: unknown method");
}

/// Runs `method` on A and returns x with the report.
template <OperatorLike A>
Result<ScalarOf<A>> solve(Method method, const A& a, Eigen::Ref<const Vector<ScalarOf<A>>> b,
                          const Options<ScalarOf<A>>& opts = {}) {
  Workspace<ScalarOf<A>> ws;
  auto report = solve(method, ws, a, b, opts);
  return detail::to_result(report, ws);
}

}  // namespace difflsq
