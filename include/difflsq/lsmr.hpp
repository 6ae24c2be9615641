// difflsq — LSMR [FS11].
//
// Solves  min ‖A x − b‖² + damp²‖x − x0‖²  with the same Golub–Kahan process as LSQR, but
// chooses x_k to minimize ‖Aᴴr_k − damp²(x_k − x0)‖ over the Krylov space: MINRES on the normal
// equations. ‖Aᴴr_k‖ decreases monotonically, so LSMR can stop earlier than LSQR on
// least-squares (incompatible) problems at the same atol.
//
// Per iteration: one A·v, one Aᴴ·u, 3 norms (one of x), 3 vector updates of length n and 1 of
// length m. Estimates and stopping rules follow [FS11 §3–4] as SciPy's lsmr.py implements them,
// so `status` equals SciPy's istop.
//
// [FS11] D. C.-L. Fong and M. A. Saunders, LSMR: An iterative algorithm for sparse
//        least-squares problems, SIAM J. Sci. Comput. 33(5), 2950–2971, 2011.
#pragma once

#include <algorithm>

#include "detail/golub_kahan.hpp"
#include "workspace.hpp"

namespace difflsq {
namespace detail {

struct LsmrMethod {
  static constexpr bool kEstimatesR1 = false;
  static Index default_max_iterations(Index m, Index n) { return std::min(m, n); }

  template <LinearOperator Op>
  static void run(const Op& op, Workspace<typename Op::Scalar>& ws,
                  const LoopParams<typename Op::Scalar>& p,
                  Report<RealOf<typename Op::Scalar>>& rep) {
    using Scalar = typename Op::Scalar;
    using Real = RealOf<Scalar>;
    auto& v = ws.v;
    auto& h = ws.w1;
    auto& hbar = ws.w2;

    GolubKahan<Op> gk(op, ws, rep);
    const bool go_on = gk.begin();
    if (gk.finite) {  // SciPy's report of x0
      rep.anorm = gk.alpha;
      rep.acond = 1;
      rep.xnorm = 0;
    }
    if (!go_on) return;
    Real alpha = gk.alpha, beta = gk.beta;

    // Initial values [FS11, §2.6 / SciPy], for the unit right-hand side u₁ = r0/β₁: ζ, ζ̄,
    // β̈, β̌, β̇, τ̃, τ̇ and ‖r‖ below are 1/β₁ times SciPy's, and β₁ enters only the update of x
    // and the reported estimates. SciPy's ζ̄₁ = α₁β₁ scales as ‖A‖‖b‖: it underflowed to 0 for a
    // small A and b (1e-165 each: x = 0 reported exact), and ‖r‖'s squares for ‖b‖ < 1e-154
    // (test 1 accepted a wrong x).
    const Real beta1 = beta;
    Real zetabar = alpha, alphabar = alpha, rho = 1, rhobar = 1, cbar = 1, sbar = 0;
    h = v;
    hbar.setZero();
    Real betadd = 1, betad = 0, rhodold = 1, tautildeold = 0, thetatilde = 0, zeta = 0, d = 0;
    // SciPy (and Fong & Saunders' lsmr.m) start maxrbar at ρ̄₀ = 1 and minrbar at 1e100,
    // constants that do not scale with A: for ‖A‖ = 1e-9 cond(A) is estimated ~1/‖A‖ and a
    // well-conditioned solve stops by conlim after one iteration; for ‖A‖ > 1e100, likewise.
    // Here both range over the computed ρ̄'s only, so the estimate is invariant under A → sA.
    Real normA_sum = alpha, maxrbar = 0;  // √(α₁² + β₂² + α₂² + …) [FS11 §3.5], by hypot
    Real minrbar = std::numeric_limits<Real>::infinity();
    const Real damp = p.damp;

    Index itn = 0;
    while (itn < p.max_iterations) {
      ++itn;
      // Bidiagonalization [FS11, §2.1].
      gk.step(alpha, beta);
      if (!gk.finite) {
        rep.status = Status::NonFinite;  // x still holds the previous, finite iterate
        --itn;
        break;
      }

      // Rotation P̂_k eliminating damp [FS11, §2.6]: (ᾱ_k, damp) → α̂_k.
      const auto rhat = sym_ortho(alphabar, damp);
      const Real chat = rhat.c, shat = rhat.s, alphahat = rhat.r;

      // Rotation P_k: (α̂_k, β_{k+1}) → ρ_k [FS11, (3.1)].
      const Real rhoold = rho;
      const auto r1 = sym_ortho(alphahat, beta);
      const Real c = r1.c, s = r1.s;
      rho = r1.r;
      const Real thetanew = s * alpha;
      alphabar = c * alpha;

      // Rotation P̄_k: (c̄ ρ_k, θ_{k+1}) → ρ̄_k [FS11, (3.2)].
      const Real rhobarold = rhobar, zetaold = zeta;
      const Real thetabar = sbar * rho, rhotemp = cbar * rho;
      const auto r2 = sym_ortho(cbar * rho, thetanew);
      cbar = r2.c;
      sbar = r2.s;
      rhobar = r2.r;
      zeta = cbar * zetabar;
      zetabar = -sbar * zetabar;

      // h̄, x, h updates [FS11, (3.3)].
      // As ratios of like-scaled quantities (SciPy multiplies first: the products of two
      // ‖A‖-sized numbers over- or underflow for ‖A‖ beyond 1e±154).
      const Real hbar_coef = -((thetabar / rhoold) * (rho / rhobarold));
      const Real x_coef = beta1 * ((zeta / rho) / rhobar);  // SciPy's ζ/(ρ ρ̄), ζ = β₁·zeta
      const Real h_coef = -(thetanew / rho);
      if (!std::isfinite(hbar_coef) || !std::isfinite(x_coef) || !std::isfinite(h_coef)) {
        rep.status = Status::NonFinite;
        --itn;
        break;
      }
      const Real normx = norm_from_squares(
          lsmr_update(ws.x, h, hbar, v, hbar_coef, x_coef, h_coef, p.scaling), ws.x);

      // Estimate of ‖r_k‖ [FS11, §3.4]: apply P̂_k, P_k to (β̈, 0), then P̃_{k−1}.
      const Real betaacute = chat * betadd, betacheck = -shat * betadd;
      const Real betahat = c * betaacute;
      betadd = -s * betaacute;
      const Real thetatildeold = thetatilde;
      const auto rt = sym_ortho(rhodold, thetabar);
      const Real ctildeold = rt.c, stildeold = rt.s, rhotildeold = rt.r;
      thetatilde = stildeold * rhobar;
      rhodold = ctildeold * rhobar;
      betad = -stildeold * betad + ctildeold * betahat;
      tautildeold = (zetaold - thetatildeold * tautildeold) / rhotildeold;
      const Real taud = (zeta - thetatilde * tautildeold) / rhodold;
      d += betacheck * betacheck;
      const Real normr = std::sqrt(d + (betad - taud) * (betad - taud) + betadd * betadd);  // /β₁

      // ‖A‖ estimate (Frobenius norm of the bidiagonal) and cond(A) [FS11, §3.5].
      const Real normA = std::hypot(normA_sum, beta);
      normA_sum = std::hypot(normA, alpha);
      if (itn > 1) {            // ρ̄_{k−1}, from k = 2 on (ρ̄₀ = 1 is no quantity of A)
        maxrbar = std::max(maxrbar, rhobarold);
        minrbar = std::min(minrbar, rhobarold);
      }
      const Real condA = std::max(maxrbar, rhotemp) / std::min(minrbar, rhotemp);

      rep.r2norm = beta1 * normr;
      rep.r1norm = rep.r2norm;  // corrected for damping below when it matters
      rep.arnorm = beta1 * std::abs(zetabar);
      rep.anorm = normA;
      rep.acond = condA;
      rep.xnorm = normx;
      rep.iterations = itn;

      const Real normx_loop = p.scaling ? loop_xnorm(ws.x, p.scaling) : normx;
      const Real test1 = normr * (beta1 / p.bnorm);
      // ‖Aᴴr‖/(‖A‖‖r‖) as a quotient of ratios: ‖Aᴴr‖ and ‖A‖‖r‖ scale as ‖A‖‖b‖.
      const Real test2 = normr > 0 && normA > 0 ? (std::abs(zetabar) / normA) / normr
                                                : std::numeric_limits<Real>::infinity();
      const Real test3 = 1 / condA;
      rep.status = stopping_test(itn, p.max_iterations, test1, test2, test3, normA, normx_loop,
                                 p.bnorm, p.atol, p.btol, p.ctol);
      if (end_of_iteration(p, rep,
                           IterationInfo<Scalar>{itn, ws.x, rep.r2norm, rep.r2norm, rep.arnorm,
                                                 normA, condA, normx}))
        break;
    }
    rep.iterations = itn;
  }
};

}  // namespace detail

/// LSMR on A in a reusable workspace; the solution is left in ws.x.
template <OperatorLike A>
Report<RealOf<ScalarOf<A>>> lsmr(Workspace<ScalarOf<A>>& ws, const A& a,
                                 Eigen::Ref<const Vector<ScalarOf<A>>> b,
                                 const Options<ScalarOf<A>>& opts = {}) {
  return detail::solve_matrix<detail::LsmrMethod>(ws, a, b, opts);
}

/// LSMR on A: returns x with the report. See the file comment for the method.
template <OperatorLike A>
Result<ScalarOf<A>> lsmr(const A& a, Eigen::Ref<const Vector<ScalarOf<A>>> b,
                         const Options<ScalarOf<A>>& opts = {}) {
  return detail::solve_matrix<detail::LsmrMethod>(a, b, opts);
}

}  // namespace difflsq
