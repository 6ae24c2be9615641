// difflsq — CGLS (CGNR) [HS52; Björck 1996, §7.4.1].
//
// Conjugate gradients on the damped normal equations (AᴴA + damp² I) Δx = Aᴴ r0, Δx = x − x0,
// written so that AᴴA is never formed:
//
//     r = b − A x0,  s = Aᴴ r,  p = s,  γ = ‖s‖²
//     repeat:  q = A p,  δ = ‖q‖² + damp²‖p‖²,  α = γ/δ,
//              Δx += α p,  r −= α q,  s = Aᴴ r − damp² Δx,  γ⁺ = ‖s‖²,  p = s + (γ⁺/γ) p.
//
// In exact arithmetic the iterates equal LSQR's; LSQR is the more stable on ill-conditioned
// problems, CGLS is the simplest and a little cheaper per iteration.
//
// Per iteration: one A·p, one Aᴴ·r, 6 norms (3 of them for the report), 3 vector updates of
// length n and 1 of m.
// ‖r‖ and ‖s‖ are the recursively updated quantities. ‖Ā‖ is estimated by the largest
// ‖A p‖/‖p‖ seen (a lower bound on ‖A‖₂, combined with damp); cond(Ā) is not estimated, so the
// conlim tests (status 3 and 6) never fire for CGLS. The other tests are SciPy's LSQR tests.
//
// [HS52] M. R. Hestenes and E. Stiefel, Methods of conjugate gradients for solving linear
//        systems, J. Res. Nat. Bur. Standards 49, 409–436, 1952.
#pragma once

#include <algorithm>

#include "workspace.hpp"

namespace difflsq {
namespace detail {

struct CglsMethod {
  static constexpr bool kEstimatesR1 = true;
  static Index default_max_iterations(Index /*m*/, Index n) { return 2 * n; }

  template <LinearOperator Op>
  static void run(const Op& op, Workspace<typename Op::Scalar>& ws,
                  const LoopParams<typename Op::Scalar>& p,
                  Report<RealOf<typename Op::Scalar>>& rep) {
    using Scalar = typename Op::Scalar;
    using Real = RealOf<Scalar>;
    auto& r = ws.u;      // residual b − A x (length m)
    auto& q = ws.wm;     // A p (length m)
    auto& s = ws.v;      // Aᴴ r − damp² Δx (length n)
    auto& pdir = ws.w1;  // search direction (length n)
    auto& dx = ws.w2;    // Δx = x − x0 in preconditioned coordinates (length n)
    const Real dampsq = p.damp * p.damp;

    // The iteration runs for the unit right-hand side r0/β₁, β₁ = ‖r0‖: r, s, p, Δx and the
    // norms below are 1/β₁ times the textbook's, and β₁ enters only the update of x and the
    // reported estimates. Then s = Aᴴr scales as ‖A‖ alone (as ‖A‖‖b‖ otherwise: it underflowed
    // to 0 for ‖A‖ = ‖b‖ = 1e-165, "x = 0 is exact").
    const Real beta1 = norm2(r);
    rep.r1norm = rep.r2norm = beta1;
    rep.arnorm = 0;
    if (beta1 == 0) {
      rep.status = Status::ExactSolution;
      return;
    }
    r /= Scalar(beta1);
    op.apply_adjoint(r, s);
    ++rep.rmatvecs;
    dx.setZero();
    // σ = ‖s‖ = √γ, kept as a norm (scaled where its square would over- or underflow), and
    // α = γ/δ, γ⁺/γ formed as squares of ratios of like-scaled norms: the squares of ‖A‖⁴'s
    // scale (‖Aᴴr‖², ‖Ap‖² with p ~ Aᴴr) never appear. What remains is A p itself, of ‖A‖²'s
    // scale: ‖A‖ within about 1e±150 (double) or 1e±18 (float), and x's update β₁α p.
    Real sigma = norm2(s);
    rep.arnorm = beta1 * sigma;
    if (!std::isfinite(sigma)) {
      rep.status = Status::NonFinite;
      return;
    }
    if (sigma == 0) {
      rep.status = Status::ExactSolution;
      return;
    }
    pdir = s;
    Real anorm = 0;

    Index itn = 0;
    while (itn < p.max_iterations) {
      ++itn;
      op.apply(pdir, q);
      ++rep.matvecs;
      const Real qnorm = norm2(q), pnorm = norm2(pdir);
      const Real nu = std::hypot(qnorm, p.damp * pnorm);  // √δ
      const Real ratio = sigma / nu, alpha = ratio * ratio;
      const Real step = (beta1 * ratio) * ratio;  // x += β₁α p: x's own scale
      if (!std::isfinite(alpha) || !std::isfinite(nu) || !std::isfinite(step)) {
        rep.status = Status::NonFinite;
        --itn;
        break;
      }
      if (nu == 0) {  // A p = 0 and damp = 0: s ⟂ range(Aᴴ) cannot happen unless s = 0
        rep.status = Status::ExactSolution;
        break;
      }
      anorm = std::max(anorm, qnorm / pnorm);
      add_to_x(ws.x, step, pdir, p.scaling);
      dx += alpha * pdir;
      r -= alpha * q;
      op.apply_adjoint(r, s);  // s = Aᴴ r − damp² Δx
      ++rep.rmatvecs;
      if (dampsq > 0) s -= dampsq * dx;
      const Real sigma_new = norm2(s);
      if (!std::isfinite(sigma_new)) {
        // Undo the step: x and Δx go back to the last finite iterate.
        add_to_x(ws.x, -step, pdir, p.scaling);
        rep.status = Status::NonFinite;
        --itn;
        break;
      }
      const Real growth = sigma_new / sigma;
      pdir = s + (growth * growth) * pdir;  // β = γ⁺/γ
      sigma = sigma_new;

      const Real rnorm = norm2(r), r2norm = std::hypot(rnorm, p.damp * norm2(dx));  // /β₁
      const Real xnorm = norm2(ws.x);
      rep.r1norm = beta1 * rnorm;
      rep.r2norm = beta1 * r2norm;
      rep.arnorm = beta1 * sigma;
      rep.anorm = std::hypot(anorm, p.damp);
      rep.acond = 0;
      rep.xnorm = xnorm;
      rep.iterations = itn;

      const Real test1 = r2norm * (beta1 / p.bnorm);
      // As LSMR's (no additive eps: it would not scale with A, and float's would stop a solve
      // with a small A early), a quotient of ratios (‖Aᴴr‖ and ‖A‖‖r‖ scale as ‖A‖‖b‖).
      const Real test2 = r2norm > 0 && rep.anorm > 0 ? (sigma / rep.anorm) / r2norm
                                                     : std::numeric_limits<Real>::infinity();
      // No cond(A) estimate: test3 = 1 with ctol = 0 never fires.
      const Real xnorm_loop = p.scaling ? loop_xnorm(ws.x, p.scaling) : xnorm;
      rep.status = stopping_test(itn, p.max_iterations, test1, test2, Real(1), rep.anorm,
                                 xnorm_loop, p.bnorm, p.atol, p.btol, Real(0));
      if (end_of_iteration(p, rep,
                           IterationInfo<Scalar>{itn, ws.x, rep.r1norm, rep.r2norm, rep.arnorm,
                                                 rep.anorm, Real(0), xnorm}))
        break;
    }
    rep.iterations = itn;
  }
};

}  // namespace detail

/// CGLS on A in a reusable workspace; the solution is left in ws.x.
template <OperatorLike A>
Report<RealOf<ScalarOf<A>>> cgls(Workspace<ScalarOf<A>>& ws, const A& a,
                                 Eigen::Ref<const Vector<ScalarOf<A>>> b,
                                 const Options<ScalarOf<A>>& opts = {}) {
  return detail::solve_matrix<detail::CglsMethod>(ws, a, b, opts);
}

/// CGLS on A: returns x with the report. See the file comment for the method.
template <OperatorLike A>
Result<ScalarOf<A>> cgls(const A& a, Eigen::Ref<const Vector<ScalarOf<A>>> b,
                         const Options<ScalarOf<A>>& opts = {}) {
  return detail::solve_matrix<detail::CglsMethod>(a, b, opts);
}

}  // namespace difflsq
