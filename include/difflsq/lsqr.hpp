// difflsq — LSQR [PS82].
//
// Solves  min ‖A x − b‖² + damp²‖x − x0‖²  by Golub–Kahan bidiagonalization of A started at
// r0 = b − A x0 and a QR factorization of the (damped) bidiagonal, updated by Givens rotations.
// Mathematically equivalent to CG on the normal equations (Aᴴ A + damp² I) Δx = Aᴴ r0; the
// residual ‖r_k‖ decreases monotonically.
//
// Per iteration: one A·v, one Aᴴ·u, 2 norms, 3 vector updates of length n and 1 of length m.
// Stopping rules and estimates (r1norm, r2norm, anorm, acond, arnorm, xnorm) follow [PS82 §5–6]
// as SciPy's lsqr.py does, so `status` equals SciPy's istop, with the exceptions listed in
// docs/solvers.md (scale invariance, the ε guards, ‖Ā‖ when β = 0).
//
// [PS82] C. C. Paige and M. A. Saunders, LSQR: An algorithm for sparse linear equations and
//        sparse least squares, ACM TOMS 8(1), 43–71, 1982.
#pragma once

#include "detail/golub_kahan.hpp"
#include "workspace.hpp"

namespace difflsq {
namespace detail {

struct LsqrMethod {
  static constexpr bool kEstimatesR1 = true;
  static Index default_max_iterations(Index /*m*/, Index n) { return 2 * n; }

  template <LinearOperator Op>
  static void run(const Op& op, Workspace<typename Op::Scalar>& ws,
                  const LoopParams<typename Op::Scalar>& p,
                  Report<RealOf<typename Op::Scalar>>& rep) {
    using Scalar = typename Op::Scalar;
    using Real = RealOf<Scalar>;
    auto& v = ws.v;
    auto& w = ws.w1;

    // Start: β₁u₁ = r0, α₁v₁ = Aᴴu₁ [PS82, (3.3)].
    GolubKahan<Op> gk(op, ws, rep);
    if (!gk.begin()) return;
    Real alpha = gk.alpha, beta = gk.beta;
    // The recurrences run for the unit right-hand side u₁ = r0/β₁ (φ̄₁ = 1 instead of β₁):
    // φ, φ̄, τ, ψ, z, ‖r̄‖ and ‖x‖ below are 1/β₁ times SciPy's, and β₁ enters only the update
    // of x and the reported estimates. From β₁, ‖b‖'s scale, SciPy squares φ̄ and ψ: for ‖b‖
    // below 1e-154 ‖r̄‖ underflowed to 0 and test 1 accepted a wrong x (error 77% at 1e-170).
    const Real beta1 = beta;
    w = v;
    Real rhobar = alpha, phibar = 1;  // [PS82, (4.12)] initial values
    // dd = √Σ‖d_k‖², xxn = √Σz_k² and res = √Σψ_k², kept as norms by hypot rather than as
    // SciPy's sums of squares (ddnorm, xxnorm, res2), which over- or underflow for ‖A‖ beyond
    // 1e±154.
    Real anorm = 0, acond = 0, dd = 0, res = 0, xnorm = 0, xxn = 0, z = 0;
    Real cs2 = -1, sn2 = 0;

    Index itn = 0;
    while (itn < p.max_iterations) {
      ++itn;
      // Bidiagonalization step [PS82, (3.4)]: βu = A v − αu, then αv = Aᴴu − βv.
      const Real alpha_k = alpha;
      gk.step(alpha, beta);
      // ‖Ā‖_F estimate √(‖Ā‖² + α² + β² + λ²) [PS82 §5.1], by hypot: no over- or underflow of
      // the squares for ‖A‖ beyond 1e±154. Also when β = 0: lsqr.py skips the update then, and
      // reports ‖Ā‖ = 0 when the first step ends the bidiagonalization (a 1 × n A, a selection
      // of rows), where ‖A‖ ≥ α₁ > 0; the layer reads this estimate (strong damping, G11).
      anorm = std::hypot(std::hypot(anorm, alpha_k), std::hypot(beta, p.damp));
      if (!gk.finite) {
        rep.status = Status::NonFinite;  // x still holds the previous, finite iterate
        --itn;
        break;
      }
      // Eliminate the damping parameter [PS82, §4.4 / SciPy]: rotate (ρ̄, damp) → ρ̄₁.
      Real rhobar1 = rhobar, psi = 0;
      if (p.damp > 0) {
        rhobar1 = std::hypot(rhobar, p.damp);
        const Real cs1 = rhobar / rhobar1, sn1 = p.damp / rhobar1;
        psi = sn1 * phibar;
        phibar = cs1 * phibar;
      }
      // Plane rotation eliminating β from the bidiagonal [PS82, (4.6)–(4.8)].
      const auto rot = sym_ortho(rhobar1, beta);
      const Real cs = rot.c, sn = rot.s, rho = rot.r;
      const Real theta = sn * alpha;
      rhobar = -cs * alpha;
      const Real phi = cs * phibar;
      phibar = sn * phibar;
      const Real tau = sn * phi;

      // x += (φ/ρ) w,  w = v − (θ/ρ) w  [PS82, (4.12)], with SciPy's φ = β₁·phi (β₁ last: the
      // product is then of x's scale, β₁·phi of b's, which may be subnormal).
      const Real t1 = beta1 * (phi / rho), t2 = -theta / rho;
      if (!std::isfinite(t1) || !std::isfinite(t2)) {
        rep.status = Status::NonFinite;
        --itn;
        break;
      }
      if (p.calc_var) {  // var += |D d_k|², d_k = w/ρ: diag((ĀᴴĀ)⁻¹) estimate [PS82, §5.4]
        if (p.scaling)
          ws.var += (p.scaling->cwiseProduct(w.cwiseAbs()) / rho).cwiseAbs2();
        else
          ws.var += (w.cwiseAbs() / rho).cwiseAbs2();
      }
      // ‖d_k‖² for cond(Ā) [PS82, §5.3]; x += t1·w; w = v + t2·w, in one pass.
      dd = std::hypot(dd, std::sqrt(lsqr_update(ws.x, w, v, t1, t2, p.scaling)) / rho);

      // ‖x‖ estimate via a second rotation on the lower bidiagonal [PS82, §5.2].
      const Real delta = sn2 * rho, gambar = -cs2 * rho;
      const Real rhs = phi - delta * z;
      const Real zbar = rhs / gambar;
      xnorm = beta1 * std::hypot(xxn, zbar);
      const Real gamma = std::hypot(gambar, theta);
      cs2 = gambar / gamma;
      sn2 = theta / gamma;
      z = rhs / gamma;
      xxn = std::hypot(xxn, z);

      // Norm estimates [PS82, §5.1–5.3], the b-linear ones times β₁.
      acond = anorm * dd;
      res = std::hypot(res, psi);
      const Real rnorm = std::hypot(phibar, res);  // ‖r̄‖/β₁
      rep.arnorm = beta1 * (alpha * std::abs(tau));
      rep.r2norm = beta1 * rnorm;
      // SciPy's signed r1norm, √(‖r̄‖² − damp²‖x‖²), without the squares.
      rep.r1norm = p.damp > 0 ? beta1 * signed_root_of_difference(rnorm, p.damp * xxn) : rep.r2norm;
      rep.anorm = anorm;
      rep.acond = acond;
      rep.xnorm = xnorm;
      rep.iterations = itn;

      const Real test1 = rnorm * (beta1 / p.bnorm);
      // test2 = ‖Āᴴr̄‖/(‖Ā‖‖r̄‖) as a product of ratios: ‖Āᴴr̄‖ and ‖Ā‖‖r̄‖ scale as ‖A‖‖b‖.
      // lsqr.py adds eps to the denominators of test2 and test3 against a division by zero;
      // for ‖A‖‖r̄‖ below ~1e-14 (a small A, float data in small units) it dominates and test2
      // stops the solve early with a wrong x. As LSMR: no eps, infinity for a zero ‖r̄‖ or ‖Ā‖.
      const Real test2 = rnorm > 0 && anorm > 0 ? (alpha / anorm) * (std::abs(tau) / rnorm)
                                                : std::numeric_limits<Real>::infinity();
      const Real test3 = 1 / acond;
      rep.status = stopping_test(itn, p.max_iterations, test1, test2, test3, anorm, xnorm, p.bnorm,
                                 p.atol, p.btol, p.ctol);
      if (end_of_iteration(p, rep,
                           IterationInfo<Scalar>{itn, ws.x, rep.r1norm, rep.r2norm, rep.arnorm,
                                                 anorm, acond, xnorm}))
        break;
    }
    rep.iterations = itn;
  }
};

}  // namespace detail

/// LSQR on A (a LinearOperator or an Eigen dense/sparse matrix) in a reusable workspace; the
/// solution is left in ws.x. Allocates nothing when ws already has the right sizes.
template <OperatorLike A>
Report<RealOf<ScalarOf<A>>> lsqr(Workspace<ScalarOf<A>>& ws, const A& a,
                                 Eigen::Ref<const Vector<ScalarOf<A>>> b,
                                 const Options<ScalarOf<A>>& opts = {}) {
  return detail::solve_matrix<detail::LsqrMethod>(ws, a, b, opts);
}

/// LSQR on A: returns x with the report. See the file comment for the method.
template <OperatorLike A>
Result<ScalarOf<A>> lsqr(const A& a, Eigen::Ref<const Vector<ScalarOf<A>>> b,
                         const Options<ScalarOf<A>>& opts = {}) {
  return detail::solve_matrix<detail::LsqrMethod>(a, b, opts);
}

}  // namespace difflsq
