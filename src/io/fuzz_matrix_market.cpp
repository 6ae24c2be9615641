// libFuzzer target for the Matrix Market reader:
//   fuzz_matrix_market -max_total_time=60 CORPUS_DIR tests/fuzz_corpus
// Every input must either parse or throw difflsq::io::MatrixMarketError; any other exception,
// crash or sanitizer report is a bug. Parsed vectors must survive a write/read round trip
// exactly (bit for bit).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "matrix_market.hpp"

namespace {

namespace mm = difflsq::io;

// Vectors larger than this are not round-tripped (they are valid, just slow to fuzz).
constexpr std::int64_t kMaxRoundTrip = std::int64_t{1} << 16;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz_matrix_market: %s\n", what);
  std::abort();
}

template <class Vec>
bool same_bits(const Vec& a, const Vec& b) {
  if (a.size() != b.size()) return false;
  if (a.size() == 0) return true;
  return std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(a[0])) == 0;
}

void round_trip(const mm::MatrixMarket& m) {
  const mm::MmHeader& h = m.header;
  if (h.rows != 1 && h.cols != 1) return;
  if (h.rows * h.cols > kMaxRoundTrip) return;
  try {
    if (m.is_complex) {
      const Eigen::VectorXcd x = mm::to_complex_vector(m, "fuzz");
      const mm::MatrixMarket back = mm::parse_matrix_market(mm::format_matrix_market(x), "back");
      if (!back.is_complex || !same_bits(x, mm::to_complex_vector(back, "back"))) {
        die("complex round trip mismatch");
      }
    } else {
      const Eigen::VectorXd x = mm::to_real_vector(m, "fuzz");
      const mm::MatrixMarket back = mm::parse_matrix_market(mm::format_matrix_market(x), "back");
      if (back.is_complex || !same_bits(x, mm::to_real_vector(back, "back"))) {
        die("real round trip mismatch");
      }
    }
  } catch (const mm::MatrixMarketError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    die("round trip of a parsed vector threw");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  mm::MatrixMarket m;
  try {
    m = mm::parse_matrix_market(text, "fuzz");
  } catch (const mm::MatrixMarketError& e) {
    if (e.line() > size + 1) die("error line beyond the end of the input");
    return 0;
  }
  // Consistency of the result with its header.
  const auto& h = m.header;
  const Eigen::Index r = m.is_complex ? m.complex.rows() : m.real.rows();
  const Eigen::Index c = m.is_complex ? m.complex.cols() : m.real.cols();
  if (r != h.rows || c != h.cols) die("matrix shape differs from the header");
  if (m.is_complex != (h.field == mm::MmField::Complex)) die("is_complex inconsistent");
  round_trip(m);
  return 0;
}
