// Tests for the Matrix Market reader/writer (src/io/matrix_market.hpp).
#include <doctest/doctest.h>

#include <zlib.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "matrix_market.hpp"

namespace {

namespace mm = difflsq::io;
namespace fs = std::filesystem;
using cd = std::complex<double>;

mm::MatrixMarket parse(std::string_view text) { return mm::parse_matrix_market(text, "t.mtx"); }

struct Caught {
  bool thrown = false;
  std::size_t line = 0;
  std::string what;
};

// Runs `f` and captures the MatrixMarketError it throws (if any).
template <class F>
Caught capture(F&& f) {
  try {
    f();
  } catch (const mm::MatrixMarketError& e) {
    return {true, e.line(), e.what()};
  }
  return {};
}

Caught capture_parse(std::string_view text) {
  return capture([&] { (void)parse(text); });
}

// Asserts that parsing `text` throws MatrixMarketError on `line` with `fragment` in what().
void check_error(std::string_view text, std::size_t line, std::string_view fragment) {
  INFO("input: \"" << std::string(text) << "\"");
  CHECK_THROWS_AS((void)parse(text), mm::MatrixMarketError);
  const Caught c = capture_parse(text);
  REQUIRE(c.thrown);
  INFO("what(): " << c.what);
  CHECK(c.line == line);
  CHECK(c.what.find(fragment) != std::string::npos);
  CHECK(c.what.rfind("t.mtx:" + std::to_string(line) + ": ", 0) == 0);
}

template <class A, class B>
bool same(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Eigen::Index j = 0; j < a.cols(); ++j)
    for (Eigen::Index i = 0; i < a.rows(); ++i)
      if (a(i, j) != b(i, j)) return false;
  return true;
}

Eigen::MatrixXd dense(const mm::MatrixMarket& m) {
  REQUIRE_FALSE(m.is_complex);
  return Eigen::MatrixXd(m.real);
}

Eigen::MatrixXcd dense_c(const mm::MatrixMarket& m) {
  REQUIRE(m.is_complex);
  return Eigen::MatrixXcd(m.complex);
}

template <class M>
void check_matrix(const M& got, const M& expected) {
  INFO("got:\n" << got << "\nexpected:\n" << expected);
  CHECK(same(got, expected));
}

template <class Vec>
bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(a[0])) == 0);
}

// Reference matrices for the 3x3 variants.
Eigen::MatrixXd real_sym() {
  Eigen::MatrixXd a(3, 3);
  a << 1, 2, 0,  //
      2, 0, 3,   //
      0, 3, 4;
  return a;
}
Eigen::MatrixXd real_skew() {
  Eigen::MatrixXd a(3, 3);
  a << 0, -2, -5,  //
      2, 0, -3,    //
      5, 3, 0;
  return a;
}

// A scratch directory removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("difflsq_mm_test_" + std::to_string(rd()) + "_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_plain(const std::string& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  REQUIRE(out.good());
}

void write_gzip(const std::string& path, std::string_view text) {
  gzFile g = gzopen(path.c_str(), "wb");
  REQUIRE(g != nullptr);
  REQUIRE(gzwrite(g, text.data(), static_cast<unsigned>(text.size())) ==
          static_cast<int>(text.size()));
  REQUIRE(gzclose(g) == Z_OK);
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Valid input: coordinate format
// ------------------------------------------------------------------------------------------

TEST_CASE("coordinate real general") {
  const auto m = parse(
      "%%MatrixMarket matrix coordinate real general\n"
      "% a comment\n"
      "3 4 5\n"
      "1 1 1.5\n"
      "3 1 -2\n"
      "2 2 +3e2\n"
      "1 4 .25\n"
      "3 4 -1E-3\n");
  CHECK(m.header.format == mm::MmFormat::Coordinate);
  CHECK(m.header.field == mm::MmField::Real);
  CHECK(m.header.symmetry == mm::MmSymmetry::General);
  CHECK(m.header.rows == 3);
  CHECK(m.header.cols == 4);
  CHECK(m.header.entries == 5);
  CHECK_FALSE(m.is_complex);
  CHECK(m.real.nonZeros() == 5);
  CHECK(m.real.isCompressed());
  Eigen::MatrixXd e = Eigen::MatrixXd::Zero(3, 4);
  e(0, 0) = 1.5;
  e(2, 0) = -2;
  e(1, 1) = 300;
  e(0, 3) = 0.25;
  e(2, 3) = -1e-3;
  check_matrix(dense(m), e);
}

TEST_CASE("coordinate real symmetric / skew-symmetric / hermitian") {
  SUBCASE("symmetric: mirrored, diagonal not doubled") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate real symmetric\n"
        "3 3 4\n1 1 1\n2 1 2\n3 2 3\n3 3 4\n");
    CHECK(m.header.symmetry == mm::MmSymmetry::Symmetric);
    CHECK(m.real.nonZeros() == 6);
    check_matrix(dense(m), real_sym());
  }
  SUBCASE("skew-symmetric: mirror negated") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate real skew-symmetric\n"
        "3 3 3\n2 1 2\n3 1 5\n3 2 3\n");
    CHECK(m.header.symmetry == mm::MmSymmetry::SkewSymmetric);
    check_matrix(dense(m), real_skew());
  }
  SUBCASE("hermitian with a real field is treated as symmetric") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate real hermitian\n"
        "3 3 4\n1 1 1\n2 1 2\n3 2 3\n3 3 4\n");
    CHECK(m.header.symmetry == mm::MmSymmetry::Hermitian);
    CHECK_FALSE(m.is_complex);
    check_matrix(dense(m), real_sym());
  }
}

TEST_CASE("coordinate integer general / symmetric / skew-symmetric / hermitian") {
  SUBCASE("general") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate integer general\n"
        "2 3 3\n1 1 7\n2 3 -4\n1 2 +9007199254740992\n");
    CHECK(m.header.field == mm::MmField::Integer);
    Eigen::MatrixXd e = Eigen::MatrixXd::Zero(2, 3);
    e(0, 0) = 7;
    e(1, 2) = -4;
    e(0, 1) = 9007199254740992.0;
    check_matrix(dense(m), e);
  }
  SUBCASE("symmetric") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate integer symmetric\n"
        "3 3 4\n1 1 1\n2 1 2\n3 2 3\n3 3 4\n");
    check_matrix(dense(m), real_sym());
  }
  SUBCASE("skew-symmetric") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate integer skew-symmetric\n"
        "3 3 3\n2 1 2\n3 1 5\n3 2 3\n");
    check_matrix(dense(m), real_skew());
  }
  SUBCASE("hermitian (treated as symmetric)") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate integer hermitian\n"
        "3 3 4\n1 1 1\n2 1 2\n3 2 3\n3 3 4\n");
    check_matrix(dense(m), real_sym());
  }
}

TEST_CASE("coordinate pattern general / symmetric") {
  SUBCASE("general: entries are 1") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate pattern general\n"
        "2 3 3\n1 1\n2 3\n1 2\n");
    CHECK(m.header.field == mm::MmField::Pattern);
    Eigen::MatrixXd e = Eigen::MatrixXd::Zero(2, 3);
    e(0, 0) = e(1, 2) = e(0, 1) = 1;
    check_matrix(dense(m), e);
  }
  SUBCASE("symmetric") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate pattern symmetric\n"
        "3 3 3\n1 1\n2 1\n3 3\n");
    Eigen::MatrixXd e = Eigen::MatrixXd::Zero(3, 3);
    e(0, 0) = e(1, 0) = e(0, 1) = e(2, 2) = 1;
    check_matrix(dense(m), e);
  }
}

TEST_CASE("coordinate complex general / symmetric / skew-symmetric / hermitian") {
  const char* lower = "3 3 4\n1 1 1 0\n2 1 2 1\n3 2 3 -2\n3 3 4 0\n";
  SUBCASE("general") {
    const auto m = parse(std::string("%%MatrixMarket matrix coordinate complex general\n") +
                         "2 2 2\n1 2 1.5 -2.5\n2 1 0 +1\n");
    CHECK(m.is_complex);
    CHECK(m.header.field == mm::MmField::Complex);
    CHECK(m.real.nonZeros() == 0);
    Eigen::MatrixXcd e = Eigen::MatrixXcd::Zero(2, 2);
    e(0, 1) = cd(1.5, -2.5);
    e(1, 0) = cd(0, 1);
    check_matrix(dense_c(m), e);
  }
  Eigen::MatrixXcd l = Eigen::MatrixXcd::Zero(3, 3);
  l(0, 0) = 1;
  l(1, 0) = cd(2, 1);
  l(2, 1) = cd(3, -2);
  l(2, 2) = 4;
  SUBCASE("symmetric: mirror without conjugation") {
    const auto m = parse(std::string("%%MatrixMarket matrix coordinate complex symmetric\n") + lower);
    Eigen::MatrixXcd e = l;
    e(0, 1) = l(1, 0);
    e(1, 2) = l(2, 1);
    check_matrix(dense_c(m), e);
  }
  SUBCASE("hermitian: mirror conjugated") {
    const auto m = parse(std::string("%%MatrixMarket matrix coordinate complex hermitian\n") + lower);
    Eigen::MatrixXcd e = l;
    e(0, 1) = std::conj(l(1, 0));
    e(1, 2) = std::conj(l(2, 1));
    check_matrix(dense_c(m), e);
    CHECK(same(Eigen::MatrixXcd(e.adjoint()), e));
  }
  SUBCASE("skew-symmetric: mirror negated") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate complex skew-symmetric\n"
        "3 3 2\n2 1 2 1\n3 2 3 -2\n");
    Eigen::MatrixXcd e = Eigen::MatrixXcd::Zero(3, 3);
    e(1, 0) = cd(2, 1);
    e(0, 1) = -cd(2, 1);
    e(2, 1) = cd(3, -2);
    e(1, 2) = -cd(3, -2);
    check_matrix(dense_c(m), e);
  }
}

// ------------------------------------------------------------------------------------------
// Valid input: array format
// ------------------------------------------------------------------------------------------

TEST_CASE("array real / integer: general, symmetric, skew-symmetric, hermitian") {
  for (const char* field : {"real", "integer"}) {
    CAPTURE(field);
    const std::string banner = std::string("%%MatrixMarket matrix array ") + field + " ";
    {  // general, column-major
      const auto m = parse(banner + "general\n2 3\n1\n2\n3\n4\n5\n6\n");
      CHECK(m.header.format == mm::MmFormat::Array);
      CHECK(m.header.entries == 6);
      Eigen::MatrixXd e(2, 3);
      e << 1, 3, 5, 2, 4, 6;
      check_matrix(dense(m), e);
    }
    {  // symmetric: lower triangle column by column
      const auto m = parse(banner + "symmetric\n3 3\n1\n2\n0\n0\n3\n4\n");
      CHECK(m.header.entries == 6);
      check_matrix(dense(m), real_sym());
    }
    {  // skew-symmetric: strictly lower triangle
      const auto m = parse(banner + "skew-symmetric\n3 3\n2\n5\n3\n");
      CHECK(m.header.entries == 3);
      check_matrix(dense(m), real_skew());
    }
    {  // hermitian on a real field == symmetric
      const auto m = parse(banner + "hermitian\n3 3\n1\n2\n0\n0\n3\n4\n");
      check_matrix(dense(m), real_sym());
    }
  }
}

TEST_CASE("array complex: general, symmetric, skew-symmetric, hermitian") {
  const std::string banner = "%%MatrixMarket matrix array complex ";
  {
    const auto m = parse(banner + "general\n2 2\n1 1\n2 -2\n3 0.5\n4 0\n");
    Eigen::MatrixXcd e(2, 2);
    e << cd(1, 1), cd(3, 0.5), cd(2, -2), cd(4, 0);
    check_matrix(dense_c(m), e);
  }
  {
    const auto m = parse(banner + "symmetric\n2 2\n1 1\n2 -2\n3 0.5\n");
    Eigen::MatrixXcd e(2, 2);
    e << cd(1, 1), cd(2, -2), cd(2, -2), cd(3, 0.5);
    check_matrix(dense_c(m), e);
  }
  {
    const auto m = parse(banner + "hermitian\n2 2\n1 0\n2 -2\n3 0\n");
    Eigen::MatrixXcd e(2, 2);
    e << cd(1, 0), cd(2, 2), cd(2, -2), cd(3, 0);
    check_matrix(dense_c(m), e);
  }
  {
    const auto m = parse(banner + "skew-symmetric\n2 2\n2 -2\n");
    Eigen::MatrixXcd e(2, 2);
    e << cd(0, 0), -cd(2, -2), cd(2, -2), cd(0, 0);
    check_matrix(dense_c(m), e);
  }
}

TEST_CASE("array format keeps zeros, including -0.0") {
  const auto m = parse("%%MatrixMarket matrix array real general\n3 1\n0\n-0\n2\n");
  CHECK(m.real.nonZeros() == 3);
  const Eigen::VectorXd v = mm::to_real_vector(m, "v");
  CHECK(v[0] == 0.0);
  CHECK_FALSE(std::signbit(v[0]));
  CHECK(std::signbit(v[1]));
  CHECK(v[2] == 2.0);
}

// ------------------------------------------------------------------------------------------
// Valid input: lexical details, duplicates, ordering, empty matrices
// ------------------------------------------------------------------------------------------

TEST_CASE("keywords are case-insensitive; comments, blank lines, CRLF and BOM are accepted") {
  const auto m = parse(
      "\xEF\xBB\xBF%%matrixmarket MATRIX Coordinate REAL General\r\n"
      "%comment\r\n"
      "\r\n"
      "   % indented comment\n"
      "\t\n"
      "  2   2\t2  \r\n"
      "1 1 1\r\n"
      "\n"
      "% comment between entries\n"
      "\t2\t2\t+2.\r\n"
      "\n"
      "% trailing comment\n"
      "   \n");
  Eigen::MatrixXd e = Eigen::MatrixXd::Zero(2, 2);
  e(0, 0) = 1;
  e(1, 1) = 2;
  check_matrix(dense(m), e);
}

TEST_CASE("last line without newline") {
  const auto m = parse("%%MatrixMarket matrix coordinate real general\n1 1 1\n1 1 42");
  CHECK(dense(m)(0, 0) == 42);
}

TEST_CASE("numbers: signs, exponents, underflow, extremes") {
  const auto m = parse(
      "%%MatrixMarket matrix array real general\n8 1\n"
      "+1.5\n-.5\n1e-400\n-1e-400\n4.9406564584124654e-324\n1.7976931348623157e308\n"
      "0.1000000000000000000000000000000000000000001\n000012\n");
  const Eigen::VectorXd v = mm::to_real_vector(m, "v");
  CHECK(v[0] == 1.5);
  CHECK(v[1] == -0.5);
  CHECK(v[2] == 0.0);
  CHECK_FALSE(std::signbit(v[2]));
  CHECK(v[3] == 0.0);
  CHECK(std::signbit(v[3]));
  CHECK(v[4] == std::numeric_limits<double>::denorm_min());
  CHECK(v[5] == DBL_MAX);
  CHECK(v[6] == 0.1);
  CHECK(v[7] == 12.0);
}

TEST_CASE("duplicate coordinate entries are summed") {
  SUBCASE("general") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate real general\n"
        "2 3 5\n1 1 1\n2 2 5\n1 1 2.5\n1 1 -0.5\n2 1 1\n");
    CHECK(m.real.nonZeros() == 3);
    Eigen::MatrixXd e = Eigen::MatrixXd::Zero(2, 3);
    e(0, 0) = 3;
    e(1, 1) = 5;
    e(1, 0) = 1;
    check_matrix(dense(m), e);
  }
  SUBCASE("summing to zero keeps an explicit zero") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate real general\n2 2 2\n2 1 1\n2 1 -1\n");
    CHECK(m.real.nonZeros() == 1);
    CHECK(m.real.coeff(1, 0) == 0.0);
  }
  SUBCASE("symmetric duplicates are summed in both triangles") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate real symmetric\n"
        "2 2 3\n2 1 1\n2 1 2\n1 1 4\n");
    Eigen::MatrixXd e(2, 2);
    e << 4, 3, 3, 0;
    check_matrix(dense(m), e);
  }
  SUBCASE("pattern duplicates count") {
    const auto m = parse("%%MatrixMarket matrix coordinate pattern general\n2 2 3\n1 1\n1 1\n1 1\n");
    CHECK(dense(m)(0, 0) == 3.0);
  }
  SUBCASE("complex") {
    const auto m = parse(
        "%%MatrixMarket matrix coordinate complex general\n1 2 2\n1 2 1 2\n1 2 3 -1\n");
    CHECK(dense_c(m)(0, 1) == cd(4, 1));
  }
}

TEST_CASE("unsorted entries give a sorted compressed matrix identical to setFromTriplets") {
  std::mt19937 gen(12345);
  for (int round = 0; round < 20; ++round) {
    const int rows = 1 + static_cast<int>(gen() % 40), cols = 1 + static_cast<int>(gen() % 40);
    // Many duplicates, but (as required) no more entries than rows*cols.
    const int n = static_cast<int>(gen() % static_cast<unsigned>(std::min(300, rows * cols) + 1));
    std::vector<Eigen::Triplet<double>> t;
    std::string text = "%%MatrixMarket matrix coordinate integer general\n" +
                       std::to_string(rows) + " " + std::to_string(cols) + " " +
                       std::to_string(n) + "\n";
    for (int k = 0; k < n; ++k) {
      const int i = static_cast<int>(gen() % static_cast<unsigned>(rows));
      const int j = static_cast<int>(gen() % static_cast<unsigned>(cols));
      const int v = static_cast<int>(gen() % 201) - 100;
      t.emplace_back(i, j, v);
      text += std::to_string(i + 1) + " " + std::to_string(j + 1) + " " + std::to_string(v) + "\n";
    }
    Eigen::SparseMatrix<double> ref(rows, cols);
    ref.setFromTriplets(t.begin(), t.end());
    const auto m = parse(text);
    REQUIRE(m.real.isCompressed());
    CHECK(m.real.nonZeros() == ref.nonZeros());
    bool identical = true;
    for (int j = 0; j <= cols; ++j) identical &= m.real.outerIndexPtr()[j] == ref.outerIndexPtr()[j];
    for (Eigen::Index k = 0; k < ref.nonZeros(); ++k) {
      identical &= m.real.innerIndexPtr()[k] == ref.innerIndexPtr()[k];
      identical &= m.real.valuePtr()[k] == ref.valuePtr()[k];
    }
    CHECK(identical);
  }
}

TEST_CASE("empty matrices") {
  auto a = parse("%%MatrixMarket matrix coordinate real general\n0 0 0\n");
  CHECK(a.real.rows() == 0);
  CHECK(a.real.cols() == 0);
  auto b = parse("%%MatrixMarket matrix coordinate real general\n5 3 0\n% nothing\n");
  CHECK(b.real.rows() == 5);
  CHECK(b.real.cols() == 3);
  CHECK(b.real.nonZeros() == 0);
  auto c = parse("%%MatrixMarket matrix array complex general\n0 4\n");
  CHECK(c.is_complex);
  CHECK(c.complex.cols() == 4);
  auto d = parse("%%MatrixMarket matrix array real skew-symmetric\n1 1\n");
  CHECK(dense(d)(0, 0) == 0.0);
  // Rows are free (column-major storage does not allocate per row).
  auto e = parse("%%MatrixMarket matrix coordinate real general\n2147483647 1 1\n2147483647 1 3\n");
  CHECK(e.real.rows() == 2147483647);
  CHECK(e.real.coeff(2147483646, 0) == 3.0);
}

// ------------------------------------------------------------------------------------------
// Malformed input: the exception and its line number
// ------------------------------------------------------------------------------------------

TEST_CASE("malformed banner") {
  check_error("", 1, "missing %%MatrixMarket banner");
  check_error("hello\n1 1 1\n", 1, "garbled");
  check_error("%MatrixMarket matrix coordinate real general\n1 1 0\n", 1, "banner");
  check_error("\n%%MatrixMarket matrix coordinate real general\n1 1 0\n", 1, "banner");
  check_error("%%MatrixMarket\n", 1, "missing object");
  check_error("%%MatrixMarket matrix coordinate real\n1 1 0\n", 1, "missing symmetry");
  check_error("%%MatrixMarket vector coordinate real general\n", 1, "unsupported object 'vector'");
  check_error("%%MatrixMarket matrix sparse real general\n", 1, "unknown format 'sparse'");
  check_error("%%MatrixMarket matrix coordinate double general\n", 1, "unknown field 'double'");
  check_error("%%MatrixMarket matrix coordinate real upper\n", 1, "unknown symmetry 'upper'");
  check_error("%%MatrixMarket matrix coordinate real general extra\n1 1 0\n", 1,
              "unexpected text 'extra'");
  check_error("%%MatrixMarket matrix array pattern general\n1 1\n", 1, "coordinate format");
  check_error("%%MatrixMarket matrix coordinate pattern skew-symmetric\n1 1 0\n", 1,
              "cannot be skew-symmetric");
  check_error("%%MatrixMarket matrix coordinate pattern hermitian\n1 1 0\n", 1,
              "cannot be hermitian");
}

TEST_CASE("malformed size line") {
  const std::string co = "%%MatrixMarket matrix coordinate real general\n";
  const std::string ar = "%%MatrixMarket matrix array real general\n";
  check_error(co, 2, "missing size line");
  check_error(co + "% only a comment\n\n", 4, "missing size line");
  check_error(co + "% c\n2 x 1\n", 3, "invalid number of columns 'x'");
  check_error(co + "2 2\n", 2, "missing number of entries");
  check_error(co + "-2 2 1\n", 2, "negative number of rows");
  check_error(co + "2 2 -1\n", 2, "negative number of entries");
  check_error(co + "2 2 1 7\n", 2, "unexpected text '7'");
  check_error(ar + "2 1 2\n", 2, "unexpected text '2'");
  check_error(co + "2.0 2 1\n", 2, "invalid number of rows '2.0'");
  check_error(co + "2 2 5\n", 2, "5 entries do not fit in a 2x2 matrix");
  check_error(co + "99999999999999999999 1 0\n", 2, "integer overflow");
  check_error(co + "3000000000 1 0\n", 2, "exceeds the limit");
  check_error(co + "1 2000000000 0\n", 2, "absurd size");
  check_error(ar + "0 2000000000\n", 2, "absurd size");
  check_error(ar + "100000 100000\n", 2, "more than 2147483647 elements");
  check_error("%%MatrixMarket matrix coordinate real symmetric\n2 3 1\n", 2, "must be square");
  check_error("%%MatrixMarket matrix array complex hermitian\n3 2\n", 2, "must be square");
}

TEST_CASE("malformed coordinate entries") {
  const std::string co = "%%MatrixMarket matrix coordinate real general\n2 2 2\n";
  check_error(co + "1 1 1\n3 1 1\n", 4, "row index 3 out of range 1..2");
  check_error(co + "0 1 1\n", 3, "row index 0 out of range");
  check_error(co + "1 1 1\n1 0 1\n", 4, "column index 0 out of range");
  check_error(co + "1 99999999999999999999 1\n", 3, "integer overflow");
  check_error(co + "1 -3 1\n", 3, "column index -3 out of range");
  check_error(co + "1 1 abc\n", 3, "invalid value 'abc'");
  check_error(co + "1 1 1\n% c\n2 2 nan\n", 5, "non-finite value 'nan'");
  check_error(co + "1 1 -inf\n", 3, "non-finite value '-inf'");
  check_error(co + "1 1 1e999\n", 3, "out of the range of a double");
  check_error(co + "1 1 1.0 2.0\n", 3, "unexpected text '2.0'");
  check_error(co + "1 1\n", 3, "missing value");
  check_error(co + "1 1 1.0D+00\n", 3, "invalid value '1.0D+00'");
  check_error(co + "1 1 0x10\n", 3, "invalid value '0x10'");
  check_error(co + "1 1 +-1\n", 3, "invalid value '+-1'");
  check_error(co + "1 1 1\n2 2 1\x01\n", 4, "\\x01");
  check_error(co + "1.5 1 1\n", 3, "invalid row index '1.5'");
  // too few / too many
  check_error(co + "1 1 1\n", 4, "expected 2 entries, found 1");
  check_error(co + "1 1 1\n\n% c\n", 6, "expected 2 entries, found 1");
  check_error(co + "1 1 1", 3, "expected 2 entries, found 1");
  check_error(co + "1 1 1\n2 2 2\n% c\n1 2 3\n", 6, "too many entries");
  // field-specific
  check_error("%%MatrixMarket matrix coordinate complex general\n1 1 1\n1 1 1.0\n", 3,
              "missing imaginary part");
  check_error("%%MatrixMarket matrix coordinate complex general\n1 1 1\n1 1 1.0 inf\n", 3,
              "non-finite imaginary part");
  check_error("%%MatrixMarket matrix coordinate integer general\n1 1 1\n1 1 1.5\n", 3,
              "invalid integer value '1.5'");
  check_error("%%MatrixMarket matrix coordinate pattern general\n1 1 1\n1 1 1\n", 3,
              "unexpected text '1'");
  // symmetry
  check_error("%%MatrixMarket matrix coordinate real skew-symmetric\n2 2 2\n2 1 1\n2 2 1\n", 4,
              "diagonal entry (2, 2) in a skew-symmetric matrix");
  check_error("%%MatrixMarket matrix coordinate real symmetric\n2 2 1\n1 2 1\n", 3,
              "above the diagonal");
  check_error("%%MatrixMarket matrix coordinate complex hermitian\n2 2 2\n2 1 1 1\n2 2 1 1\n", 4,
              "must be real");
  // duplicates summing to infinity: the line that overflows
  check_error(
      "%%MatrixMarket matrix coordinate real general\n2 2 4\n1 1 1e308\n2 2 1\n"
      "1 1 1e308\n1 1 -1e308\n",
      5, "sum of duplicate entries at (1, 1) is not finite");
  check_error(
      "%%MatrixMarket matrix coordinate real symmetric\n2 2 3\n2 1 1e308\n1 1 1\n2 1 1e308\n", 5,
      "is not finite");
}

TEST_CASE("malformed array entries") {
  const std::string ar = "%%MatrixMarket matrix array real general\n2 2\n";
  check_error(ar + "1\n2\n3\n", 6, "expected 4 values, found 3");
  check_error(ar + "1\n2\n3\n4\n5\n", 7, "too many entries");
  check_error(ar + "1 2\n3\n4\n", 3, "unexpected text '2'");
  check_error(ar + "1\n2\n-\n4\n", 5, "invalid value '-'");
  check_error(ar + "1\n2\n3\nNaN\n", 6, "non-finite value 'NaN'");
  check_error("%%MatrixMarket matrix array complex general\n1 1\n7\n", 3, "missing imaginary part");
  check_error("%%MatrixMarket matrix array complex hermitian\n2 2\n1 0\n2 3\n4 1\n", 5,
              "must be real");
  check_error("%%MatrixMarket matrix array real symmetric\n2 2\n1\n2\n3\n4\n", 6, "too many");
  check_error("%%MatrixMarket matrix array real skew-symmetric\n2 2\n1\n2\n", 4, "too many");
}

TEST_CASE("error type and message format") {
  const Caught c = capture_parse("%%MatrixMarket matrix coordinate real general\n1 1 1\n1 1 x\n");
  REQUIRE(c.thrown);
  CHECK(c.line == 3);
  CHECK(c.what.rfind("t.mtx:3: ", 0) == 0);
  const Caught d = capture([] { (void)mm::parse_matrix_market("bad", "custom-name"); });
  CHECK(d.what.rfind("custom-name:1: ", 0) == 0);
  const Caught e = capture([] { (void)mm::parse_matrix_market("bad"); });
  CHECK(e.what.rfind("<memory>:1: ", 0) == 0);
  // A huge junk token is truncated in the message.
  const Caught f = capture_parse(std::string("%%MatrixMarket matrix coordinate ") +
                                 std::string(10000, 'z') + " general\n");
  CHECK(f.line == 1);
  CHECK(f.what.size() < 200);
  // Derived from std::runtime_error.
  CHECK_THROWS_AS((void)parse("x"), std::runtime_error);
}

// ------------------------------------------------------------------------------------------
// Dense vector helpers
// ------------------------------------------------------------------------------------------

TEST_CASE("to_real_vector / to_complex_vector") {
  const auto col = parse("%%MatrixMarket matrix coordinate real general\n4 1 2\n2 1 5\n4 1 -1\n");
  Eigen::VectorXd e(4);
  e << 0, 5, 0, -1;
  CHECK(same(mm::to_real_vector(col, "b"), e));
  const auto row = parse("%%MatrixMarket matrix coordinate real general\n1 4 2\n1 2 5\n1 4 -1\n");
  CHECK(same(mm::to_real_vector(row, "b"), e));
  const Eigen::VectorXcd promoted = mm::to_complex_vector(col, "b");
  CHECK(same(promoted, Eigen::VectorXcd(e.cast<cd>())));

  const auto cplx = parse("%%MatrixMarket matrix array complex general\n2 1\n1 2\n3 4\n");
  Eigen::VectorXcd ec(2);
  ec << cd(1, 2), cd(3, 4);
  CHECK(same(mm::to_complex_vector(cplx, "z"), ec));
  CHECK_THROWS_AS((void)mm::to_real_vector(cplx, "z"), mm::MatrixMarketError);
  const Caught c = capture([&] { (void)mm::to_real_vector(cplx, "z"); });
  CHECK(c.line == 0);
  CHECK(c.what == "z: expected a real vector, but the matrix is complex");

  const auto mat = parse("%%MatrixMarket matrix array real general\n2 3\n1\n2\n3\n4\n5\n6\n");
  const Caught d = capture([&] { (void)mm::to_real_vector(mat, "rhs.mtx"); });
  REQUIRE(d.thrown);
  CHECK(d.line == 0);
  CHECK(d.what.find("rhs.mtx: ") == 0);
  CHECK(d.what.find("2x3") != std::string::npos);
  CHECK_THROWS_AS((void)mm::to_complex_vector(mat, "m"), mm::MatrixMarketError);

  const auto one = parse("%%MatrixMarket matrix array real general\n1 1\n7\n");
  CHECK(mm::to_real_vector(one, "s").size() == 1);
  const auto empty = parse("%%MatrixMarket matrix array real general\n0 1\n");
  CHECK(mm::to_real_vector(empty, "s").size() == 0);
  const auto none = parse("%%MatrixMarket matrix array real general\n0 0\n");
  CHECK_THROWS_AS((void)mm::to_real_vector(none, "s"), mm::MatrixMarketError);
}

// ------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------

TEST_CASE("format_matrix_market output") {
  Eigen::VectorXd x(4);
  x << 1, -0.0, 0.1, 1e300;  // %.17g shows 1e300 as 1.0000000000000001e+300
  CHECK(mm::format_matrix_market(x) ==
        "%%MatrixMarket matrix array real general\n4 1\n1\n-0\n0.10000000000000001\n"
        "1.0000000000000001e+300\n");
  Eigen::VectorXcd z(2);
  z << cd(1, -2), cd(0.5, 0);
  CHECK(mm::format_matrix_market(z) ==
        "%%MatrixMarket matrix array complex general\n2 1\n1 -2\n0.5 0\n");
  CHECK(mm::format_matrix_market(Eigen::VectorXd()) ==
        "%%MatrixMarket matrix array real general\n0 1\n");
}

TEST_CASE("writer round trip is exact to the bit") {
  std::vector<double> special = {0.0,
                                 -0.0,
                                 0.1,
                                 -1.0 / 3.0,
                                 3.141592653589793,
                                 DBL_MAX,
                                 -DBL_MAX,
                                 DBL_MIN,
                                 std::numeric_limits<double>::denorm_min(),
                                 -std::numeric_limits<double>::denorm_min(),
                                 2.2250738585072009e-308,
                                 1e22,
                                 9007199254740993.0,
                                 123456789012345678.0};
  std::mt19937_64 gen(7);
  while (special.size() < 2000) {
    std::uint64_t bits = gen();
    double d;
    std::memcpy(&d, &bits, sizeof d);
    if (std::isfinite(d)) special.push_back(d);
  }
  const Eigen::VectorXd x = Eigen::Map<Eigen::VectorXd>(special.data(), static_cast<Eigen::Index>(special.size()));
  const auto back = parse(mm::format_matrix_market(x));
  CHECK(back.header.format == mm::MmFormat::Array);
  CHECK(same_bits(mm::to_real_vector(back, "x"), x));

  Eigen::VectorXcd z(static_cast<Eigen::Index>(special.size() / 2));
  for (Eigen::Index i = 0; i < z.size(); ++i) z[i] = cd(special[2 * i], special[2 * i + 1]);
  const auto zb = parse(mm::format_matrix_market(z));
  CHECK(zb.is_complex);
  CHECK(same_bits(mm::to_complex_vector(zb, "z"), z));
}

TEST_CASE("writer rejects non-finite values") {
  Eigen::VectorXd x(3);
  x << 1, std::numeric_limits<double>::quiet_NaN(), 2;
  CHECK_THROWS_AS((void)mm::format_matrix_market(x), mm::MatrixMarketError);
  Eigen::VectorXcd z(1);
  z << cd(1, std::numeric_limits<double>::infinity());
  const Caught c = capture([&] { (void)mm::format_matrix_market(z); });
  CHECK(c.thrown);
  CHECK(c.what.find("index 0") != std::string::npos);
}

// ------------------------------------------------------------------------------------------
// Files: plain and gzip
// ------------------------------------------------------------------------------------------

TEST_CASE("read_matrix_market: plain and gzip files") {
  TempDir dir;
  const std::string text =
      "%%MatrixMarket matrix coordinate real general\n"
      "% file test\n"
      "3 2 3\n1 1 1\n3 2 -2.5\n2 1 4\n";
  Eigen::MatrixXd e = Eigen::MatrixXd::Zero(3, 2);
  e(0, 0) = 1;
  e(2, 1) = -2.5;
  e(1, 0) = 4;

  SUBCASE("plain") {
    const std::string p = dir.file("a.mtx");
    write_plain(p, text);
    check_matrix(dense(mm::read_matrix_market(p)), e);
  }
  SUBCASE("gzip with .gz suffix") {
    const std::string p = dir.file("a.mtx.gz");
    write_gzip(p, text);
    CHECK(read_bytes(p).substr(0, 2) == "\x1f\x8b");
    check_matrix(dense(mm::read_matrix_market(p)), e);
  }
  SUBCASE("gzip detected by magic bytes, not by suffix") {
    const std::string p = dir.file("compressed.mtx");
    write_gzip(p, text);
    check_matrix(dense(mm::read_matrix_market(p)), e);
    const std::string q = dir.file("plain.mtx.gz");
    write_plain(q, text);
    check_matrix(dense(mm::read_matrix_market(q)), e);
  }
  SUBCASE("larger gzip file (several read chunks)") {
    std::string big = "%%MatrixMarket matrix array real general\n300000 1\n";
    for (int i = 0; i < 300000; ++i) big += std::to_string(i) + ".5\n";
    const std::string p = dir.file("big.mtx.gz");
    write_gzip(p, big);
    const Eigen::VectorXd v = mm::to_real_vector(mm::read_matrix_market(p), p);
    REQUIRE(v.size() == 300000);
    CHECK(v[0] == 0.5);
    CHECK(v[299999] == 299999.5);
  }
  SUBCASE("errors in files name the path and the line") {
    const std::string p = dir.file("bad.mtx.gz");
    write_gzip(p, "%%MatrixMarket matrix coordinate real general\n2 2 1\n1 5 1\n");
    const Caught c = capture([&] { (void)mm::read_matrix_market(p); });
    REQUIRE(c.thrown);
    CHECK(c.line == 3);
    CHECK(c.what.rfind(p + ":3: ", 0) == 0);
  }
  SUBCASE("missing file") {
    const std::string p = dir.file("does-not-exist.mtx");
    CHECK_THROWS_AS((void)mm::read_matrix_market(p), mm::MatrixMarketError);
    const Caught c = capture([&] { (void)mm::read_matrix_market(p); });
    CHECK(c.line == 0);
    CHECK(c.what.rfind(p + ": cannot open file", 0) == 0);
  }
  SUBCASE("directory instead of a file") {
    const Caught c = capture([&] { (void)mm::read_matrix_market(dir.path.string()); });
    CHECK(c.thrown);
    CHECK(c.line == 0);
  }
  SUBCASE("empty file") {
    const std::string p = dir.file("empty.mtx");
    write_plain(p, "");
    const Caught c = capture([&] { (void)mm::read_matrix_market(p); });
    CHECK(c.line == 1);
  }
  SUBCASE("truncated and corrupt gzip") {
    const std::string p = dir.file("full.mtx.gz");
    std::string body = "%%MatrixMarket matrix array real general\n2000 1\n";
    for (int i = 0; i < 2000; ++i) body += std::to_string(i * 7919 % 1000) + "\n";
    write_gzip(p, body);
    const std::string bytes = read_bytes(p);
    const std::string t = dir.file("truncated.mtx.gz");
    write_plain(t, std::string_view(bytes).substr(0, bytes.size() / 2));
    const Caught c = capture([&] { (void)mm::read_matrix_market(t); });
    REQUIRE(c.thrown);
    CHECK(c.line == 0);
    CHECK(c.what.find("gzip") != std::string::npos);

    std::string corrupt = bytes;
    for (std::size_t i = 20; i < corrupt.size() - 8; i += 3) corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5a);
    const std::string k = dir.file("corrupt.mtx.gz");
    write_plain(k, corrupt);
    const Caught d = capture([&] { (void)mm::read_matrix_market(k); });
    REQUIRE(d.thrown);
    CHECK(d.line == 0);
  }
}

TEST_CASE("write_matrix_market files round trip") {
  TempDir dir;
  Eigen::VectorXd x(5);
  x << 1.0 / 3.0, -0.0, 1e-310, -7, 2.5e100;
  const std::string p = dir.file("x.mtx");
  mm::write_matrix_market(p, x);
  CHECK(read_bytes(p) == mm::format_matrix_market(x));
  CHECK(same_bits(mm::to_real_vector(mm::read_matrix_market(p), p), x));

  Eigen::VectorXcd z(3);
  z << cd(1.0 / 7.0, -0.0), cd(-1e-300, 5), cd(0, 0);
  const std::string q = dir.file("z.mtx");
  mm::write_matrix_market(q, z);
  const auto back = mm::read_matrix_market(q);
  CHECK(back.is_complex);
  CHECK(same_bits(mm::to_complex_vector(back, q), z));

  const std::string bad = dir.file("no/such/dir/x.mtx");
  const Caught c = capture([&] { mm::write_matrix_market(bad, x); });
  CHECK(c.thrown);
  CHECK(c.line == 0);
  CHECK(c.what.rfind(bad + ": ", 0) == 0);
}

// ------------------------------------------------------------------------------------------
// Real data (optional)
// ------------------------------------------------------------------------------------------

TEST_CASE("Harwell-Boeing least-squares data: illc1850") {
#ifdef DIFFLSQ_HB_DATA_DIR
  const fs::path data_dir = DIFFLSQ_HB_DATA_DIR;
  if (!fs::is_directory(data_dir)) {
    MESSAGE("skipping: data folder " << data_dir.string() << " not found");
    return;
  }
  const auto a = mm::read_matrix_market((data_dir / "illc1850.mtx.gz").string());
  CHECK(a.header.format == mm::MmFormat::Coordinate);
  CHECK(a.header.field == mm::MmField::Real);
  CHECK(a.header.symmetry == mm::MmSymmetry::General);
  CHECK_FALSE(a.is_complex);
  CHECK(a.real.rows() == 1850);
  CHECK(a.real.cols() == 712);
  CHECK(a.real.nonZeros() == 8758);

  const std::string rhs_path = (data_dir / "illc1850_rhs1.mtx.gz").string();
  const auto b = mm::read_matrix_market(rhs_path);
  CHECK(b.header.format == mm::MmFormat::Array);
  const Eigen::VectorXd rhs = mm::to_real_vector(b, rhs_path);
  CHECK(rhs.size() == 1850);
  CHECK(rhs.allFinite());
#else
  MESSAGE("skipping: DIFFLSQ_HB_DATA_DIR is not defined");
#endif
}
