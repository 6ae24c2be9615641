// Bad input, non-finite operators, degenerate problems, iteration limits, the monitor, float
// tolerance clamping, and "no allocation inside the iterations".
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <difflsq/difflsq.hpp>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "test_problems.hpp"

using namespace difflsq;
using namespace difflsq::test;

// --- allocation counting ----------------------------------------------------------------------
// Eigen allocates with malloc, not operator new, so malloc itself is counted: this executable
// interposes glibc's malloc/calloc/realloc (not under AddressSanitizer, which owns them).
#if defined(__SANITIZE_ADDRESS__)
#define DIFFLSQ_COUNT_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DIFFLSQ_COUNT_ALLOCATIONS 0
#endif
#endif
#ifndef DIFFLSQ_COUNT_ALLOCATIONS
#define DIFFLSQ_COUNT_ALLOCATIONS 1
#endif

namespace {
std::atomic<long> g_allocations{0};
}
#if DIFFLSQ_COUNT_ALLOCATIONS
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* malloc(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
void* calloc(std::size_t n, std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, size);
}
}
#endif

namespace {
std::string message_of(auto&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("bad input throws std::invalid_argument naming the sizes or values") {
  KnownSvdProblem<double> p(30, 10, spread(10, 3.0), 1);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    const Eigen::VectorXd b_short = Eigen::VectorXd::Ones(29);
    auto msg = message_of([&] { solve(method, p.a, b_short, Options<double>{}); });
    CHECK(msg.find("29") != std::string::npos);
    CHECK(msg.find("30 x 10") != std::string::npos);

    Eigen::VectorXd b_nan = p.b;
    b_nan[3] = std::numeric_limits<double>::quiet_NaN();
    CHECK(message_of([&] { solve(method, p.a, b_nan, Options<double>{}); }).find("b[3] = nan") !=
          std::string::npos);

    CHECK(message_of([&] { solve(method, p.a, p.b, Options<double>{.damp = -1}); })
              .find("damp") != std::string::npos);
    CHECK(message_of([&] {
            solve(method, p.a, p.b, Options<double>{.damp = std::numeric_limits<double>::infinity()});
          }).find("damp") != std::string::npos);
    CHECK(message_of([&] { solve(method, p.a, p.b, Options<double>{.atol = -1e-6}); })
              .find("atol") != std::string::npos);
    CHECK(message_of([&] { solve(method, p.a, p.b, Options<double>{.btol = -1}); })
              .find("btol") != std::string::npos);
    CHECK(message_of([&] { solve(method, p.a, p.b, Options<double>{.conlim = -1}); })
              .find("conlim") != std::string::npos);
    Options<double> o;
    o.x0 = Eigen::VectorXd::Zero(11);
    msg = message_of([&] { solve(method, p.a, p.b, o); });
    CHECK(msg.find("x0") != std::string::npos);
    CHECK(msg.find("11") != std::string::npos);
    o.x0 = Eigen::VectorXd::Zero(10);
    (*o.x0)[2] = std::numeric_limits<double>::infinity();
    CHECK(message_of([&] { solve(method, p.a, p.b, o); }).find("x0[2] = inf") != std::string::npos);
    Options<double> s;
    s.column_scaling = Eigen::VectorXd::Ones(10);
    (*s.column_scaling)[4] = 0;
    CHECK(message_of([&] { solve(method, p.a, p.b, s); }).find("column_scaling[4]") !=
          std::string::npos);
  }
  CHECK_THROWS_AS(make_operator(-1, 3, [](const auto&, auto&) {}, [](const auto&, auto&) {}),
                  std::invalid_argument);
}

TEST_CASE("inputs are never modified") {
  KnownSvdProblem<double> p(30, 10, spread(10, 3.0), 2);
  const Eigen::MatrixXd a_copy = p.a;
  const Eigen::VectorXd b_copy = p.b;
  Options<double> o{.damp = 0.3};
  o.x0 = Eigen::VectorXd::LinSpaced(10, -1, 1);
  const Eigen::VectorXd x0_copy = *o.x0;
  for (Method method : kMethods) {
    solve(method, p.a, p.b, o);
    CHECK(p.a == a_copy);
    CHECK(p.b == b_copy);
    CHECK(*o.x0 == x0_copy);
  }
}

TEST_CASE("an operator producing NaN/Inf stops with Status::NonFinite and the last finite x") {
  KnownSvdProblem<double> p(40, 15, spread(15, 100.0), 3);
  for (double bad : {std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
    for (Method method : kMethods) {
      const std::string method_name = name(method);
    CAPTURE(method_name);
      // Poisons A·v from its 4th application on.
      int calls = 0;
      auto op = make_operator(
          40, 15,
          [&](const auto& x, auto& y) {
            y.noalias() = p.a * x;
            if (++calls >= 4) y[7] = bad;
          },
          [&](const auto& u, auto& v) { v.noalias() = p.a.transpose() * u; });
      const auto r = solve(method, op, p.b, Options<double>{.atol = 1e-12, .btol = 1e-12});
      CHECK(r.status == Status::NonFinite);
      CHECK(!r.converged());
      CHECK(r.x.allFinite());
      CHECK(std::isfinite(r.r1norm));
      // The last finite iterate is the one an honest run stopped at that iteration returns.
      Options<double> lim{.atol = 1e-12, .btol = 1e-12};
      lim.max_iterations = r.iterations;
      if (r.iterations > 0) {
        const auto ok = solve(method, p.a, p.b, lim);
        CHECK((ok.x - r.x).norm() <= 1e-12 * ok.x.norm());
      }
    }
  }
  // Non-finite at the very start (A x0): status NonFinite, x = x0.
  auto nan_op = make_operator(
      40, 15, [&](const auto&, auto& y) { y.setConstant(std::nan("")); },
      [&](const auto& u, auto& v) { v.noalias() = p.a.transpose() * u; });
  Options<double> o;
  o.x0 = Eigen::VectorXd::Ones(15);
  for (Method method : kMethods) {
    const auto r = solve(method, nan_op, p.b, o);
    CHECK(r.status == Status::NonFinite);
    CHECK(r.x == *o.x0);
  }
}

TEST_CASE("extreme scales of A: a correct x, or a status that says it is not") {
  // Where SciPy's recurrences over- or underflow although every product is finite: ‖A‖ = 1e155
  // (‖A‖² = ∞: rtol = ∞ or test2 = 0, "converged" after one iteration), ‖A‖ = 1e-100 (lsqr.py's
  // test2 guard +eps: stopped at once with a wrong x), ‖A‖ = 1e-170 (‖Aᴴb‖² = 0: "x = 0 is the
  // exact solution"). LSQR and LSMR keep norms by hypot and solve the whole range; CGLS's
  // product A p (p ~ Aᴴr) covers less (cgls_solves); whatever a method cannot solve, it must not
  // report converged.
  // Dense column- and row-major and sparse row-major matrices: each fuses its two products in
  // one pass over A (Aᴴ(βu), A(αv)), which must not lose digits where β or α underflows in
  // them (‖A‖ = 1e-160: the fused products were ~1e-320, subnormal, and LSQR reported
  // convergence with a relative error of 1e-4).
  KnownSvdProblem<double> p(30, 10, spread(10, 10.0), 9);
  auto check = [&](auto scalar, double scale, double accuracy, bool cgls_solves) {
    using Real = decltype(scalar);
    const Eigen::Matrix<Real, -1, -1> a = (p.a * scale).template cast<Real>();
    const Eigen::Matrix<Real, -1, -1, Eigen::RowMajor> a_rows = a;
    const Eigen::SparseMatrix<Real, Eigen::RowMajor> a_sparse = a.sparseView();
    const Eigen::Matrix<Real, -1, 1> b = p.b.template cast<Real>();
    const Eigen::VectorXd exact = p.solution(0) / scale;
    for (Method method : kMethods) {
      const std::string method_name = name(method);
      CAPTURE(method_name);
      CAPTURE(scale);
      const Options<Real> o{.max_iterations = 200};
      for (const auto& r : {solve(method, a, b, o), solve(method, a_rows, b, o),
                            solve(method, CompressedOperator(a_sparse), b, o)}) {
        CHECK(r.x.allFinite());
        if (r.converged())
          CHECK((r.x.template cast<double>() - exact).norm() <= accuracy * exact.norm());
        if (method != Method::Cgls || cgls_solves) CHECK(r.converged());
      }
    }
  };
  for (double scale : {1e-140, 1e-100, 1e100, 1e140}) check(0.0, scale, 1e-6, true);
  for (double scale : {1e-300, 1e-200, 1e-160, 1e155, 1e200}) check(0.0, scale, 1e-6, false);
  for (double scale : {1e-18, 1e-10, 1e10, 1e16}) check(0.0f, scale, 1e-3, true);
  for (double scale : {1e-30, 1e-25, 1e-20, 1e18, 1e21}) check(0.0f, scale, 1e-3, false);
  // CGLS outside its range (A p over- or underflows): NonFinite, not a false exact solution.
  const Eigen::MatrixXd big = p.a * 1e160, tiny = p.a * 1e-160;
  CHECK(solve(Method::Cgls, big, p.b, Options<double>{}).status == Status::NonFinite);
  CHECK(solve(Method::Cgls, tiny, p.b, Options<double>{}).status == Status::NonFinite);
  // ‖Aᴴb‖² overflows at the start (Aᴴb is finite), A p in the first iteration: the report says
  // so, with finite estimates.
  const Eigen::MatrixXd huge = p.a * 1e200;
  const auto r = solve(Method::Cgls, huge, p.b, Options<double>{});
  CHECK(r.status == Status::NonFinite);
  CHECK(std::isfinite(r.arnorm));
  CHECK(std::abs(r.arnorm - (huge.transpose() * p.b).stableNorm()) <= 1e-12 * r.arnorm);
}

TEST_CASE("the stopping tests do not depend on the scale of A and b") {
  // LSMR's cond(A) estimate (SciPy's starts from the constants 1 and 1e100), and the eps added
  // to ‖A‖‖r‖ in the test2 of LSQR and CGLS, used to stop small- or large-scale problems early:
  // istop 3 after one iteration for ‖A‖ = 1e-9, float solves stopped by test 2 at 1e-6. Scaling by
  // powers of two is exact, so a scale-invariant method makes the same iterations, with x scaled
  // exactly.
  KnownSvdProblem<double> p(40, 15, spread(15, 100.0), 10);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    const Options<double> opts{.max_iterations = 200};
    const auto ref = solve(method, p.a, p.b, opts);
    REQUIRE(ref.converged());
    for (int e : {-30, -10, 30, 400}) {
      CAPTURE(e);
      const double s = std::ldexp(1.0, e);
      const Eigen::MatrixXd as = p.a * s;
      const auto r = solve(method, as, p.b, opts);
      CHECK(r.status == ref.status);
      CHECK(r.iterations == ref.iterations);
      CHECK((r.x * s - ref.x).norm() <= 1e-12 * ref.x.norm());
      CHECK(std::abs(r.acond - ref.acond) <= 1e-12 * ref.acond);
    }
    // float: A and b scaled together by 2^-20 (about 1e-6).
    const Eigen::MatrixXf af = p.a.cast<float>();
    const Eigen::VectorXf bf = p.b.cast<float>();
    const Options<float> fopts{.max_iterations = 200};
    const auto rf = solve(method, af, bf, fopts);
    const Eigen::MatrixXf af_small = af * std::ldexp(1.0f, -20);
    const Eigen::VectorXf bf_small = bf * std::ldexp(1.0f, -20);
    const auto rs = solve(method, af_small, bf_small, fopts);
    CHECK(rs.status == rf.status);
    CHECK(rs.iterations == rf.iterations);
    CHECK((rs.x - rf.x).norm() <= 1e-5f * rf.x.norm());
  }
}

TEST_CASE("extreme scales of b, and of A and b together: the same iterations, x scaled") {
  // SciPy's LSQR and LSMR carry ‖b‖'s scale in φ̄ and ζ̄ = α₁β₁ and square it: ‖r‖ underflowed
  // to 0 for ‖b‖ < 1e-154 and test 1 accepted a wrong x (LSQR: istop 1 after one iteration,
  // error 77% at 1e-170), ζ̄ underflowed for ‖A‖ = ‖b‖ = 1e-165 ("x = 0 is exact"), and for a
  // large A and b ‖A‖‖x‖ overflowed. Their recurrences now run for r0/‖r0‖. Powers of two scale
  // exactly, so the same iterations must come out, with x and the estimates scaled exactly.
  // CGLS's A p scales as ‖A‖² (documented range), so it is scaled in b, and A at 2^-100 only.
  // A subnormal b (2^-1040), whose digits are fewer, comes with a small A, so that x stays
  // normal, and is checked against the solution.
  KnownSvdProblem<double> p(40, 15, spread(15, 100.0), 10);
  for (Method method : kMethods) {
    for (double damp : {0.0, 0.5}) {
      const std::string method_name = name(method);
      CAPTURE(method_name);
      CAPTURE(damp);
      Options<double> opts{.damp = damp, .atol = 1e-12, .btol = 1e-12, .max_iterations = 200};
      const auto ref = solve(method, p.a, p.b, opts);
      REQUIRE(ref.converged());
      for (const auto& e : std::vector<std::pair<int, int>>{{-100, -1040},
                                                            {0, -600},
                                                            {0, -540},
                                                            {0, 540},
                                                            {0, 600},
                                                            {-560, -560},
                                                            {500, 500},
                                                            {-400, 300}}) {
        const int ea = e.first, eb = e.second;
        if (method == Method::Cgls && ea != 0 && ea != -100) continue;
        CAPTURE(ea);
        CAPTURE(eb);
        const double sa = std::ldexp(1.0, ea), sb = std::ldexp(1.0, eb);
        const Eigen::MatrixXd as = p.a * sa;
        const Eigen::VectorXd bs = p.b * sb;
        Options<double> o = opts;
        o.damp = damp * sa;  // damp has the units of A
        const auto r = solve(method, as, bs, o);
        if (eb < -1022) {  // a subnormal b, and ‖b‖ with 34 bits: x to the digits it allows
          CHECK(r.converged());
          CHECK((r.x * (sa / sb) - ref.x).norm() <= 1e-8 * ref.x.norm());
          continue;
        }
        // Against the same A with the unscaled b: below 2^-487 the products of A are made
        // unfused (golub_kahan.hpp), which rounds differently from the reference's path.
        const auto same_a = ea == 0 ? ref : solve(method, as, p.b, o);
        CHECK((same_a.x * sa - ref.x).norm() <= 1e-6 * ref.x.norm());
        CHECK(r.status == same_a.status);
        CHECK(r.iterations == same_a.iterations);
        CHECK((r.x / sb - same_a.x).norm() <= 1e-12 * same_a.x.norm());
        CHECK(std::abs(r.r2norm / sb - same_a.r2norm) <= 1e-12 * same_a.r2norm);
        CHECK(std::abs(r.r1norm / sb - same_a.r1norm) <= 1e-12 * same_a.r2norm);
        CHECK(std::abs(r.xnorm / sb - same_a.xnorm) <= 1e-12 * same_a.xnorm);
        CHECK(std::abs(r.anorm - same_a.anorm) <= 1e-12 * same_a.anorm);
      }
    }
  }
  // float: ‖b‖ at 1e-30 and 1e30 (squares out of float's range), A and b at 2^-70 (‖A‖‖b‖ below
  // float's smallest normal).
  const Eigen::MatrixXf af = p.a.cast<float>();
  const Eigen::VectorXf bf = p.b.cast<float>();
  for (Method method : {Method::Lsqr, Method::Lsmr}) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    const Options<float> fopts{.max_iterations = 200};
    const auto ref = solve(method, af, bf, fopts);
    REQUIRE(ref.converged());
    for (const auto& e :
         std::vector<std::pair<int, int>>{{-20, -135}, {0, -100}, {0, 100}, {-70, -70}}) {
      const int ea = e.first, eb = e.second;
      CAPTURE(ea);
      CAPTURE(eb);
      const float sa = std::ldexp(1.0f, ea), sb = std::ldexp(1.0f, eb);
      const Eigen::MatrixXf as = af * sa;
      const Eigen::VectorXf bs = bf * sb;
      const auto r = solve(method, as, bs, fopts);
      if (eb < -126) {  // a subnormal b
        CHECK(r.converged());
        CHECK((r.x * (sa / sb) - ref.x).norm() <= 1e-3f * ref.x.norm());
        continue;
      }
      const auto same_a = solve(method, as, bf, fopts);
      CHECK((same_a.x * sa - ref.x).norm() <= 1e-3f * ref.x.norm());
      CHECK(r.status == same_a.status);
      CHECK(r.iterations == same_a.iterations);
      CHECK((r.x / sb - same_a.x).norm() <= 1e-5f * same_a.x.norm());
    }
  }
}

TEST_CASE("b = 0 gives x = 0 with status 0; A = 0 gives a finite x = 0") {
  KnownSvdProblem<double> p(20, 8, spread(8, 3.0), 4);
  const Eigen::VectorXd zero_b = Eigen::VectorXd::Zero(20);
  const Eigen::MatrixXd zero_a = Eigen::MatrixXd::Zero(20, 8);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    for (double damp : {0.0, 0.5}) {
      const auto r = solve(method, p.a, zero_b, Options<double>{.damp = damp});
      CHECK(r.status == Status::ExactSolution);
      CHECK(r.x == Eigen::VectorXd::Zero(8));
      CHECK(r.iterations == 0);
      const auto z = solve(method, zero_a, p.b, Options<double>{.damp = damp});
      CHECK(z.status == Status::ExactSolution);
      CHECK(z.x == Eigen::VectorXd::Zero(8));
      CHECK(std::abs(z.r1norm - p.b.norm()) < 1e-12);
    }
  }
}

TEST_CASE("iteration limit: status 7 after exactly max_iterations") {
  KnownSvdProblem<double> p(60, 30, spread(30, 1e4), 5);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    const auto r = solve(method, p.a, p.b, Options<double>{.atol = 1e-14, .btol = 1e-14,
                                                           .conlim = 0, .max_iterations = 5});
    CHECK(r.status == Status::IterationLimit);
    CHECK(r.iterations == 5);
    CHECK(!r.converged());
  }
}

TEST_CASE("the monitor sees every iteration and can stop the solve") {
  KnownSvdProblem<double> p(60, 30, spread(30, 1e3), 6);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    std::vector<double> residuals;
    Options<double> o{.atol = 1e-14, .btol = 1e-14};
    o.monitor = [&](const IterationInfo<double>& it) {
      residuals.push_back(it.r1norm);
      CHECK(it.iteration == static_cast<Index>(residuals.size()));
      CHECK(it.x.size() == 30);
      return it.iteration == 3 ? MonitorAction::Stop : MonitorAction::Continue;
    };
    const auto r = solve(method, p.a, p.b, o);
    CHECK(r.status == Status::StoppedByMonitor);
    CHECK(r.iterations == 3);
    CHECK(residuals.size() == 3);
  }
}

TEST_CASE("float: tolerances below machine precision are raised to it and flagged") {
  KnownSvdProblem<float> p(40, 10, spread(10, 3.0), 7);
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    const auto r = solve(method, p.a, p.b,
                         Options<float>{.atol = 1e-12f, .btol = 1e-12f, .max_iterations = 100});
    CHECK(r.tolerances_clamped);
    CHECK(r.converged());
    CHECK(r.iterations < 100);
    const auto d = solve(method, p.a, p.b, Options<float>{});
    CHECK(!d.tolerances_clamped);
  }
  // In double the same tolerances are attainable and left alone.
  KnownSvdProblem<double> q(40, 10, spread(10, 3.0), 7);
  CHECK(!lsqr(q.a, q.b, Options<double>{.atol = 1e-12, .btol = 1e-12}).tolerances_clamped);
}

TEST_CASE("a workspace solve allocates nothing once the workspace is sized" *
          doctest::skip(!DIFFLSQ_COUNT_ALLOCATIONS)) {
  KnownSvdProblem<double> p(80, 30, spread(30, 50.0), 8);
  const Eigen::SparseMatrix<double, Eigen::RowMajor> sparse = p.a.sparseView();
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> row_major = p.a;
  auto op = make_operator(80, 30, [&](const auto& x, auto& y) { y.noalias() = p.a * x; },
                          [&](const auto& u, auto& v) { v.noalias() = p.a.transpose() * u; });
  for (Method method : kMethods) {
    const std::string method_name = name(method);
    CAPTURE(method_name);
    // One workspace per configuration: the damped, preconditioned solve works on [A D; λD],
    // whose vectors are longer.
    Workspace<double> ws, ws_pre;
    Options<double> o{.damp = 0.1, .atol = 1e-12, .btol = 1e-12, .max_iterations = 300};
    Options<double> pre = o;
    pre.column_scaling = column_scaling(p.a);
    pre.x0 = Eigen::VectorXd::Zero(30);
    Options<double> scaled = pre;  // undamped: the fused step through the column scaling
    scaled.damp = 0;
    // First solves size the workspace (and warm up the paths).
    solve(method, ws, p.a, p.b, o);
    solve(method, ws, sparse, p.b, o);
    solve(method, ws, op, p.b, o);
    solve(method, ws_pre, p.a, p.b, pre);
    const CompressedOperator two_threads(sparse, 2);  // owns its scatter buffers
    solve(method, ws, two_threads, p.b, o);
    const CompressedOperator sliced(sparse, SparseOptions{.threads = 2, .transposed_index = true});
    solve(method, ws, sliced, p.b, o);
    solve(method, ws, row_major, p.b, o);
    solve(method, ws, sparse, p.b, scaled);
    long before = g_allocations.load();
    const auto r1 = solve(method, ws, p.a, p.b, o);
    const auto r2 = solve(method, ws, sparse, p.b, o);
    const auto r3 = solve(method, ws, op, p.b, o);
    const auto r4 = solve(method, ws_pre, p.a, p.b, pre);
    const auto r5 = solve(method, ws, two_threads, p.b, o);
    const auto r6 = solve(method, ws, sliced, p.b, o);
    const auto r7 = solve(method, ws, row_major, p.b, o);
    const auto r8 = solve(method, ws, sparse, p.b, scaled);
    long after = g_allocations.load();
    CHECK(r7.converged());
    CHECK(r8.converged());
    CHECK(sliced.sliced());
    CHECK(std::abs(r6.iterations - r2.iterations) <= 2);
    CHECK(std::abs(r5.iterations - r2.iterations) <= 2);  // summation order differs
    // The counter works: a fresh workspace does allocate.
    Workspace<double> fresh;
    const long before_fresh = g_allocations.load();
    solve(method, fresh, p.a, p.b, o);
    CHECK(g_allocations.load() > before_fresh);
    CHECK(r1.iterations > 5);
    CHECK(r4.converged());
    CHECK(after - before == 0);
    (void)r2;
    (void)r3;
  }
}
