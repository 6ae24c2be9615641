#include "matrix_market.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <system_error>
#include <utility>
#include <vector>

#include <zlib.h>

namespace difflsq::io {

namespace {

std::string compose_message(const std::string& name, std::size_t line, const std::string& what) {
  if (line == 0) return name + ": " + what;
  return name + ":" + std::to_string(line) + ": " + what;
}

}  // namespace

MatrixMarketError::MatrixMarketError(std::string name, std::size_t line, const std::string& what)
    : std::runtime_error(compose_message(name, line, what)), name_(std::move(name)), line_(line) {}

namespace {

using StorageIndex = Eigen::SparseMatrix<double, Eigen::ColMajor>::StorageIndex;  // int
static_assert(std::is_same_v<StorageIndex,
                             Eigen::SparseMatrix<std::complex<double>, Eigen::ColMajor>::StorageIndex>);

constexpr std::int64_t kMaxIndex = std::numeric_limits<StorageIndex>::max();  // 2^31 - 1
// Columns that are always allowed, and additional columns allowed per stored entry.
constexpr std::int64_t kFreeColumns = std::int64_t{1} << 22;
constexpr std::int64_t kColumnsPerEntry = 8;

inline bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// A token for an error message: printable, bounded in length, quoted.
std::string quote(std::string_view tok) {
  constexpr std::size_t kMax = 40;
  std::string out = "'";
  const std::size_t n = std::min(tok.size(), kMax);
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(tok[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (tok.size() > n) out += "...";
  out += "'";
  return out;
}

const char* symmetry_name(MmSymmetry s) {
  switch (s) {
    case MmSymmetry::General: return "general";
    case MmSymmetry::Symmetric: return "symmetric";
    case MmSymmetry::SkewSymmetric: return "skew-symmetric";
    case MmSymmetry::Hermitian: return "hermitian";
  }
  return "?";
}

std::string shape(std::int64_t rows, std::int64_t cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

// Decides whether a decimal number that std::from_chars reported as out of range underflowed
// (true) or overflowed (false). `s` matched [+-] digits [. digits] [eE [+-] digits].
bool decimal_underflows(std::string_view s) {
  std::size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  // Decimal exponent of the first significant digit, ignoring the explicit exponent:
  // "123.4" -> 2, "0.001" -> -3.
  std::int64_t magnitude = 0, integer_digits = 0, fraction_digits = 0;
  bool found = false, in_fraction = false;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '.') {
      in_fraction = true;
      continue;
    }
    if (!is_digit(c)) break;
    if (in_fraction) {
      ++fraction_digits;
      if (!found && c != '0') {
        found = true;
        magnitude = -fraction_digits;
      }
    } else {
      if (found) ++integer_digits;
      if (!found && c != '0') found = true;
    }
  }
  if (!found) return true;  // all zeros: cannot overflow
  if (magnitude == 0) magnitude = integer_digits;  // first significant digit in the integer part
  std::int64_t exponent = 0;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool negative = false;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
    constexpr std::int64_t kSaturate = std::int64_t{1} << 58;
    for (; i < s.size() && is_digit(s[i]); ++i) {
      if (exponent < kSaturate) exponent = exponent * 10 + (s[i] - '0');
    }
    if (negative) exponent = -exponent;
  }
  // |magnitude| is bounded by the input length (< 2^58), so the sum cannot overflow.
  return magnitude + exponent < 0;
}

// Line-oriented scanner over the whole input.
class Scanner {
 public:
  Scanner(std::string_view text, std::string_view name)
      : begin_(text.data()), pos_(text.data()), end_(text.data() + text.size()), name_(name) {}

  [[noreturn]] void fail(std::size_t line, const std::string& what) const {
    throw MatrixMarketError(std::string(name_), line, what);
  }
  [[noreturn]] void fail(const std::string& what) const { fail(line_, what); }

  // Advances to the next line; false at the end of the input.
  bool next_line() {
    if (pos_ >= end_) return false;
    const void* nl = std::memchr(pos_, '\n', static_cast<std::size_t>(end_ - pos_));
    cur_ = pos_;
    lend_ = nl ? static_cast<const char*>(nl) : end_;
    pos_ = nl ? lend_ + 1 : end_;
    ++line_;
    return true;
  }

  std::size_t line() const { return line_; }
  // The line on which the end of the input lies (1 + number of newlines).
  std::size_t eof_line() const {
    const bool ends_with_newline = end_ == begin_ || end_[-1] == '\n';
    return ends_with_newline ? line_ + 1 : line_;
  }
  std::size_t offset() const { return static_cast<std::size_t>(pos_ - begin_); }
  std::size_t remaining() const { return static_cast<std::size_t>(end_ - pos_); }

  // Restarts scanning at a line start previously obtained with offset()/line().
  void rewind(std::size_t offset, std::size_t line) {
    pos_ = begin_ + offset;
    cur_ = lend_ = pos_;
    line_ = line;
  }

  void skip_bom() {
    if (lend_ - cur_ >= 3 && std::memcmp(cur_, "\xEF\xBB\xBF", 3) == 0) cur_ += 3;
  }

  void skip_ws() {
    while (cur_ < lend_ && is_space(*cur_)) ++cur_;
  }

  // True when the current line is empty, blank or a comment.
  bool ignorable() {
    skip_ws();
    return cur_ == lend_ || *cur_ == '%';
  }

  // Skips ignorable lines; false at the end of the input.
  bool next_data_line() {
    while (next_line()) {
      if (!ignorable()) return true;
    }
    return false;
  }

  // The next whitespace-delimited token on the current line (empty at end of line).
  std::string_view token() {
    skip_ws();
    const char* start = cur_;
    while (cur_ < lend_ && !is_space(*cur_)) ++cur_;
    return {start, static_cast<std::size_t>(cur_ - start)};
  }

  // The token starting at the current position, without consuming it.
  std::string_view peek_token() const {
    const char* e = cur_;
    while (e < lend_ && !is_space(*e)) ++e;
    return {cur_, static_cast<std::size_t>(e - cur_)};
  }

  std::int64_t parse_int(const char* what) {
    skip_ws();
    if (cur_ == lend_) fail(std::string("missing ") + what);
    const std::string_view tok = peek_token();
    const char* p = cur_;
    if (*p == '+' && p + 1 < lend_ && is_digit(p[1])) ++p;
    std::int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(p, lend_, v);
    if (ec == std::errc::invalid_argument || (ptr < lend_ && !is_space(*ptr))) {
      fail(std::string("invalid ") + what + " " + quote(tok) + " (expected an integer)");
    }
    if (ec == std::errc::result_out_of_range) {
      fail(std::string(what) + " " + quote(tok) + " is out of range (integer overflow)");
    }
    cur_ = ptr;
    return v;
  }

  double parse_real(const char* what) {
    skip_ws();
    if (cur_ == lend_) fail(std::string("missing ") + what);
    const std::string_view tok = peek_token();
    const char* p = cur_;
    if (*p == '+' && p + 1 < lend_ && (is_digit(p[1]) || p[1] == '.')) ++p;
    double v = 0;
    const auto [ptr, ec] = std::from_chars(p, lend_, v, std::chars_format::general);
    if (ec == std::errc::invalid_argument || (ptr < lend_ && !is_space(*ptr))) {
      fail(std::string("invalid ") + what + " " + quote(tok) + " (expected a number)");
    }
    if (ec == std::errc::result_out_of_range) {
      const std::string_view number(p, static_cast<std::size_t>(ptr - p));
      if (!decimal_underflows(number)) {
        fail(std::string(what) + " " + quote(tok) + " is out of the range of a double");
      }
      v = *p == '-' ? -0.0 : 0.0;
    }
    if (!std::isfinite(v)) fail(std::string("non-finite ") + what + " " + quote(tok));
    cur_ = ptr;
    return v;
  }

  // Requires that nothing but whitespace is left on the current line.
  void expect_end(const char* after) {
    skip_ws();
    if (cur_ != lend_) fail(std::string("unexpected text ") + quote(peek_token()) + " after " + after);
  }

 private:
  const char* begin_;
  const char* pos_;  // start of the next line
  const char* end_;
  const char* cur_ = nullptr;   // position within the current line
  const char* lend_ = nullptr;  // end of the current line (excluding '\n')
  std::size_t line_ = 0;
  std::string_view name_;
};

MmHeader parse_banner(Scanner& s) {
  if (!s.next_line()) s.fail(1, "empty input: missing %%MatrixMarket banner");
  s.skip_bom();
  const std::string_view first = s.token();
  if (!iequals(first, "%%MatrixMarket")) {
    s.fail("missing or garbled %%MatrixMarket banner (found " + quote(first) + ")");
  }
  MmHeader h{};
  const std::string_view object = s.token();
  if (object.empty()) s.fail("incomplete banner: missing object type");
  if (!iequals(object, "matrix")) {
    s.fail("unsupported object " + quote(object) + " (only 'matrix' is supported)");
  }
  const std::string_view format = s.token();
  if (format.empty()) s.fail("incomplete banner: missing format");
  if (iequals(format, "coordinate")) {
    h.format = MmFormat::Coordinate;
  } else if (iequals(format, "array")) {
    h.format = MmFormat::Array;
  } else {
    s.fail("unknown format " + quote(format) + " (expected coordinate or array)");
  }
  const std::string_view field = s.token();
  if (field.empty()) s.fail("incomplete banner: missing field");
  if (iequals(field, "real")) {
    h.field = MmField::Real;
  } else if (iequals(field, "complex")) {
    h.field = MmField::Complex;
  } else if (iequals(field, "integer")) {
    h.field = MmField::Integer;
  } else if (iequals(field, "pattern")) {
    h.field = MmField::Pattern;
  } else {
    s.fail("unknown field " + quote(field) + " (expected real, complex, integer or pattern)");
  }
  const std::string_view symmetry = s.token();
  if (symmetry.empty()) s.fail("incomplete banner: missing symmetry");
  if (iequals(symmetry, "general")) {
    h.symmetry = MmSymmetry::General;
  } else if (iequals(symmetry, "symmetric")) {
    h.symmetry = MmSymmetry::Symmetric;
  } else if (iequals(symmetry, "skew-symmetric")) {
    h.symmetry = MmSymmetry::SkewSymmetric;
  } else if (iequals(symmetry, "hermitian")) {
    h.symmetry = MmSymmetry::Hermitian;
  } else {
    s.fail("unknown symmetry " + quote(symmetry) +
           " (expected general, symmetric, skew-symmetric or hermitian)");
  }
  s.expect_end("the banner");
  if (h.field == MmField::Pattern && h.format == MmFormat::Array) {
    s.fail("the pattern field is only valid with the coordinate format");
  }
  if (h.field == MmField::Pattern &&
      (h.symmetry == MmSymmetry::SkewSymmetric || h.symmetry == MmSymmetry::Hermitian)) {
    s.fail(std::string("a pattern matrix cannot be ") + symmetry_name(h.symmetry));
  }
  return h;
}

void parse_size_line(Scanner& s, MmHeader& h) {
  if (!s.next_data_line()) s.fail(s.eof_line(), "unexpected end of input: missing size line");
  h.rows = s.parse_int("number of rows");
  h.cols = s.parse_int("number of columns");
  if (h.format == MmFormat::Coordinate) {
    h.entries = s.parse_int("number of entries");
    s.expect_end("the size line (expected: rows columns entries)");
  } else {
    s.expect_end("the size line (expected: rows columns)");
  }
  if (h.rows < 0) s.fail("negative number of rows");
  if (h.cols < 0) s.fail("negative number of columns");
  if (h.entries < 0) s.fail("negative number of entries");
  if (h.rows > kMaxIndex || h.cols > kMaxIndex) {
    s.fail("matrix size " + shape(h.rows, h.cols) + " exceeds the limit of " +
           std::to_string(kMaxIndex) + " rows/columns");
  }
  if (h.symmetry != MmSymmetry::General && h.rows != h.cols) {
    s.fail(std::string("a ") + symmetry_name(h.symmetry) + " matrix must be square, got " +
           shape(h.rows, h.cols));
  }
  const std::int64_t elements = h.rows * h.cols;  // < 2^62
  if (h.format == MmFormat::Coordinate) {
    if (h.entries > elements) {
      s.fail(std::to_string(h.entries) + " entries do not fit in a " + shape(h.rows, h.cols) +
             " matrix");
    }
    const std::int64_t expanded = h.symmetry == MmSymmetry::General ? h.entries : 2 * h.entries;
    if (expanded > kMaxIndex) {
      s.fail(std::to_string(h.entries) + " entries exceed the limit of 32-bit sparse indices");
    }
  } else {
    if (elements > kMaxIndex) {
      s.fail("an array matrix of size " + shape(h.rows, h.cols) + " has more than " +
             std::to_string(kMaxIndex) + " elements");
    }
    const std::int64_t n = h.rows;
    switch (h.symmetry) {
      case MmSymmetry::General: h.entries = elements; break;
      case MmSymmetry::Symmetric:
      case MmSymmetry::Hermitian: h.entries = n * (n + 1) / 2; break;
      case MmSymmetry::SkewSymmetric: h.entries = n * (n - 1) / 2; break;
    }
  }
  if (h.cols > kFreeColumns + kColumnsPerEntry * h.entries) {
    s.fail("absurd size " + shape(h.rows, h.cols) + " for " + std::to_string(h.entries) +
           " entries (at most " + std::to_string(kFreeColumns) + " + " +
           std::to_string(kColumnsPerEntry) + " x entries columns are allowed)");
  }
}

template <class Scalar>
struct Entry {
  StorageIndex row, col;
  Scalar value;
};

template <class Scalar>
constexpr bool kIsComplex = !std::is_same_v<Scalar, double>;

template <class Scalar>
bool all_finite(const Scalar& v) {
  if constexpr (kIsComplex<Scalar>) {
    return std::isfinite(v.real()) && std::isfinite(v.imag());
  } else {
    return std::isfinite(v);
  }
}

template <class Scalar>
Scalar read_value(Scanner& s, MmField field) {
  if constexpr (kIsComplex<Scalar>) {
    const double re = s.parse_real("real part");
    const double im = s.parse_real("imaginary part");
    return {re, im};
  } else {
    switch (field) {
      case MmField::Real: return s.parse_real("value");
      case MmField::Integer: return static_cast<double>(s.parse_int("integer value"));
      default: return 1.0;  // pattern
    }
  }
}

// Parses the entries following the size line and calls sink(row, col, value) (0-based) for
// every stored element, including mirrored ones.
template <class Scalar, class Sink>
void parse_body(Scanner& s, const MmHeader& h, Sink&& sink) {
  MmSymmetry sym = h.symmetry;
  if (!kIsComplex<Scalar> && sym == MmSymmetry::Hermitian) sym = MmSymmetry::Symmetric;

  auto emit = [&](std::int64_t r, std::int64_t c, const Scalar& v) {
    const auto ri = static_cast<StorageIndex>(r), ci = static_cast<StorageIndex>(c);
    if (sym == MmSymmetry::General) {
      sink(ri, ci, v);
      return;
    }
    if (r < c) {
      s.fail("entry (" + std::to_string(r + 1) + ", " + std::to_string(c + 1) +
             ") is above the diagonal; a " + symmetry_name(sym) +
             " matrix stores only its lower triangle");
    }
    switch (sym) {
      case MmSymmetry::Symmetric:
        sink(ri, ci, v);
        if (r != c) sink(ci, ri, v);
        break;
      case MmSymmetry::SkewSymmetric:
        if (r == c) {
          s.fail("diagonal entry (" + std::to_string(r + 1) + ", " + std::to_string(c + 1) +
                 ") in a skew-symmetric matrix");
        }
        sink(ri, ci, v);
        sink(ci, ri, Scalar(-v));
        break;
      case MmSymmetry::Hermitian:
        if constexpr (kIsComplex<Scalar>) {
          if (r == c && v.imag() != 0.0) {
            s.fail("diagonal entry (" + std::to_string(r + 1) + ", " + std::to_string(c + 1) +
                   ") of a hermitian matrix must be real");
          }
          sink(ri, ci, v);
          if (r != c) sink(ci, ri, std::conj(v));
        }
        break;
      case MmSymmetry::General: break;
    }
  };

  if (h.format == MmFormat::Coordinate) {
    for (std::int64_t k = 0; k < h.entries; ++k) {
      if (!s.next_data_line()) {
        s.fail(s.eof_line(), "unexpected end of input: expected " + std::to_string(h.entries) +
                                 " entries, found " + std::to_string(k));
      }
      const std::int64_t i = s.parse_int("row index");
      const std::int64_t j = s.parse_int("column index");
      if (i < 1 || i > h.rows) {
        s.fail("row index " + std::to_string(i) + " out of range 1.." + std::to_string(h.rows));
      }
      if (j < 1 || j > h.cols) {
        s.fail("column index " + std::to_string(j) + " out of range 1.." +
               std::to_string(h.cols));
      }
      const Scalar v = read_value<Scalar>(s, h.field);
      s.expect_end("the entry");
      emit(i - 1, j - 1, v);
    }
  } else {
    std::int64_t k = 0;
    for (std::int64_t j = 0; j < h.cols; ++j) {
      const std::int64_t first = sym == MmSymmetry::General         ? 0
                                 : sym == MmSymmetry::SkewSymmetric ? j + 1
                                                                    : j;
      for (std::int64_t i = first; i < h.rows; ++i, ++k) {
        if (!s.next_data_line()) {
          s.fail(s.eof_line(), "unexpected end of input: expected " + std::to_string(h.entries) +
                                   " values, found " + std::to_string(k));
        }
        const Scalar v = read_value<Scalar>(s, h.field);
        s.expect_end("the value");
        emit(i, j, v);
      }
    }
  }
  if (s.next_data_line()) {
    s.fail("too many entries: expected " + std::to_string(h.entries) +
           (h.format == MmFormat::Coordinate ? " entries" : " values"));
  }
}

// Builds the compressed column-major matrix, summing duplicates in input order. Returns false
// (with the offending cell) if a sum of duplicates is not finite.
template <class Scalar>
bool assemble(const std::vector<Entry<Scalar>>& entries, std::int64_t rows, std::int64_t cols,
              Eigen::SparseMatrix<Scalar, Eigen::ColMajor>& m, StorageIndex& bad_row,
              StorageIndex& bad_col) {
  m.resize(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  const auto n = static_cast<Eigen::Index>(entries.size());
  m.resizeNonZeros(n);
  StorageIndex* outer = m.outerIndexPtr();
  StorageIndex* inner = m.innerIndexPtr();
  Scalar* value = m.valuePtr();

  // Counting sort by column (stable, so duplicates stay in input order). Columns whose rows
  // do not arrive strictly increasing are remembered: only they need sorting and merging.
  for (const auto& e : entries) ++outer[e.col + 1];
  for (std::int64_t c = 0; c < cols; ++c) outer[c + 1] += outer[c];
  std::vector<StorageIndex> unsorted;
  {
    std::vector<StorageIndex> next(outer, outer + cols);
    for (const auto& e : entries) {
      const StorageIndex p = next[static_cast<std::size_t>(e.col)]++;
      if (p > outer[e.col] && inner[p - 1] >= e.row) unsorted.push_back(e.col);
      inner[p] = e.row;
      value[p] = e.value;
    }
  }
  if (unsorted.empty()) return true;  // the usual case: sorted input without duplicates
  std::sort(unsorted.begin(), unsorted.end());
  unsorted.erase(std::unique(unsorted.begin(), unsorted.end()), unsorted.end());

  // Sort those columns by row and sum duplicates, compacting everything after the first one.
  std::vector<std::pair<StorageIndex, Scalar>> tmp;
  std::size_t next_unsorted = 0;
  StorageIndex w = outer[unsorted.front()];
  for (std::int64_t c = unsorted.front(); c < cols; ++c) {
    const StorageIndex b = outer[c], e = outer[c + 1];
    outer[c] = w;
    if (next_unsorted == unsorted.size() || unsorted[next_unsorted] != c) {
      if (w != b) {
        std::copy(inner + b, inner + e, inner + w);
        std::copy(value + b, value + e, value + w);
      }
      w += e - b;
      continue;
    }
    ++next_unsorted;
    tmp.clear();
    for (StorageIndex k = b; k < e; ++k) tmp.emplace_back(inner[k], value[k]);
    std::stable_sort(tmp.begin(), tmp.end(),
                     [](const auto& x, const auto& y) { return x.first < y.first; });
    const StorageIndex start = w;
    for (const auto& [r, v] : tmp) {
      if (w > start && inner[w - 1] == r) {
        value[w - 1] += v;
        if (!all_finite(value[w - 1])) {
          bad_row = r;
          bad_col = static_cast<StorageIndex>(c);
          return false;
        }
      } else {
        inner[w] = r;
        value[w] = v;
        ++w;
      }
    }
  }
  outer[cols] = w;
  if (w != n) {
    m.resizeNonZeros(w);
    m.data().squeeze();
  }
  return true;
}

template <class Scalar>
Eigen::SparseMatrix<Scalar, Eigen::ColMajor> parse_entries(Scanner& s, const MmHeader& h) {
  const std::size_t body_offset = s.offset();
  const std::size_t body_line = s.line();

  // Reserve no more than the remaining input could possibly describe.
  const std::size_t min_bytes = h.format == MmFormat::Coordinate ? 4 : 2;  // "1 1\n", "0\n"
  const std::size_t mult = h.symmetry == MmSymmetry::General ? 1 : 2;
  const std::size_t possible = (s.remaining() / min_bytes + 1) * mult;
  const auto expected = static_cast<std::size_t>(h.entries) * mult;
  std::vector<Entry<Scalar>> entries;
  entries.reserve(std::min(expected, possible));
  parse_body<Scalar>(s, h, [&](StorageIndex r, StorageIndex c, const Scalar& v) {
    entries.push_back({r, c, v});
  });

  Eigen::SparseMatrix<Scalar, Eigen::ColMajor> m;
  StorageIndex bad_row = 0, bad_col = 0;
  if (assemble(entries, h.rows, h.cols, m, bad_row, bad_col)) return m;

  // A sum of duplicates overflowed: rescan to find the line that made it overflow.
  entries = {};
  m = {};
  const std::string what = "sum of duplicate entries at (" + std::to_string(bad_row + 1) +
                           ", " + std::to_string(bad_col + 1) + ") is not finite";
  s.rewind(body_offset, body_line);
  Scalar sum{};
  bool seen = false;
  parse_body<Scalar>(s, h, [&](StorageIndex r, StorageIndex c, const Scalar& v) {
    if (r != bad_row || c != bad_col) return;
    sum = seen ? Scalar(sum + v) : v;
    seen = true;
    if (!all_finite(sum)) s.fail(what);
  });
  s.fail(0, what);  // not reached: the rescan sees the same sums
}

// ----- files -----------------------------------------------------------------------------

std::string read_plain(std::FILE* f, const std::string& path, std::string data) {
  constexpr std::size_t kChunk = std::size_t{1} << 20;
  for (;;) {
    const std::size_t old = data.size();
    data.resize(old + kChunk);
    const std::size_t got = std::fread(data.data() + old, 1, kChunk, f);
    data.resize(old + got);
    if (got < kChunk) break;
  }
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) throw MatrixMarketError(path, 0, std::string("read error: ") + std::strerror(err));
  return data;
}

std::string read_gzip(const std::string& path) {
  gzFile g = gzopen(path.c_str(), "rb");
  if (g == nullptr) {
    throw MatrixMarketError(path, 0, std::string("cannot open file: ") + std::strerror(errno));
  }
  gzbuffer(g, 1u << 17);
  constexpr unsigned kChunk = 1u << 20;
  std::string data;
  for (;;) {
    const std::size_t old = data.size();
    data.resize(old + kChunk);
    const int got = gzread(g, data.data() + old, kChunk);
    if (got < 0) {
      int code = 0;
      const std::string msg = gzerror(g, &code);
      gzclose(g);
      throw MatrixMarketError(path, 0, "gzip error: " + msg);
    }
    data.resize(old + static_cast<std::size_t>(got));
    if (got == 0) break;
  }
  int code = Z_OK;
  const std::string msg = gzerror(g, &code);
  gzclose(g);
  if (code == Z_BUF_ERROR) throw MatrixMarketError(path, 0, "gzip error: truncated gzip data");
  if (code != Z_OK) throw MatrixMarketError(path, 0, "gzip error: " + msg);
  return data;
}

// ----- vectors -----------------------------------------------------------------------------

template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, 1> dense_vector(
    const Eigen::SparseMatrix<Scalar, Eigen::ColMajor>& m, const MmHeader& h,
    std::string_view name) {
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using It = typename Eigen::SparseMatrix<Scalar, Eigen::ColMajor>::InnerIterator;
  if (m.cols() == 1) {
    Vec v = Vec::Zero(m.rows());
    for (It it(m, 0); it; ++it) v[it.row()] = it.value();
    return v;
  }
  if (m.rows() == 1) {
    Vec v = Vec::Zero(m.cols());
    for (Eigen::Index c = 0; c < m.cols(); ++c) {
      for (It it(m, c); it; ++it) v[c] = it.value();
    }
    return v;
  }
  throw MatrixMarketError(std::string(name), 0,
                          "expected a vector (one column or one row), but the matrix is " +
                              shape(h.rows, h.cols));
}

// ----- writers -----------------------------------------------------------------------------

void append_number(std::string& out, double v) {
  char buf[40];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general, 17);
  out.append(buf, r.ptr);
}

template <class Vec>
std::string format_vector(const Vec& x, const std::string& name) {
  constexpr bool complex = !std::is_same_v<typename Vec::Scalar, double>;
  std::string out = complex ? "%%MatrixMarket matrix array complex general\n"
                            : "%%MatrixMarket matrix array real general\n";
  out += std::to_string(x.size());
  out += " 1\n";
  out.reserve(out.size() + static_cast<std::size_t>(x.size()) * (complex ? 50 : 25));
  for (Eigen::Index i = 0; i < x.size(); ++i) {
    if (!all_finite(x[i])) {
      throw MatrixMarketError(name, 0,
                              "cannot write non-finite value at index " + std::to_string(i) +
                                  " (Matrix Market has no representation for it)");
    }
    if constexpr (complex) {
      append_number(out, x[i].real());
      out += ' ';
      append_number(out, x[i].imag());
    } else {
      append_number(out, x[i]);
    }
    out += '\n';
  }
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    throw MatrixMarketError(path, 0,
                            std::string("cannot open file for writing: ") + std::strerror(errno));
  }
  const std::size_t put = std::fwrite(text.data(), 1, text.size(), f);
  int err = put == text.size() ? 0 : errno;
  if (std::fclose(f) != 0 && err == 0) err = errno;
  if (put != text.size() || err != 0) {
    throw MatrixMarketError(path, 0, std::string("write error: ") + std::strerror(err ? err : EIO));
  }
}

}  // namespace

MatrixMarket parse_matrix_market(std::string_view text, std::string_view name) {
  Scanner s(text, name);
  MatrixMarket mm;
  mm.header = parse_banner(s);
  parse_size_line(s, mm.header);
  if (mm.header.field == MmField::Complex) {
    mm.is_complex = true;
    mm.complex = parse_entries<std::complex<double>>(s, mm.header);
  } else {
    mm.real = parse_entries<double>(s, mm.header);
  }
  return mm;
}

MatrixMarket read_matrix_market(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    throw MatrixMarketError(path, 0, std::string("cannot open file: ") + std::strerror(errno));
  }
  char magic[2] = {0, 0};
  const std::size_t got = std::fread(magic, 1, 2, f);
  std::string text;
  if (got == 2 && static_cast<unsigned char>(magic[0]) == 0x1f &&
      static_cast<unsigned char>(magic[1]) == 0x8b) {
    std::fclose(f);
    text = read_gzip(path);
  } else {
    text = read_plain(f, path, std::string(magic, got));
  }
  return parse_matrix_market(text, path);
}

Eigen::VectorXd to_real_vector(const MatrixMarket& mm, std::string_view name) {
  if (mm.is_complex) {
    throw MatrixMarketError(std::string(name), 0, "expected a real vector, but the matrix is complex");
  }
  return dense_vector(mm.real, mm.header, name);
}

Eigen::VectorXcd to_complex_vector(const MatrixMarket& mm, std::string_view name) {
  if (mm.is_complex) return dense_vector(mm.complex, mm.header, name);
  return dense_vector(mm.real, mm.header, name).cast<std::complex<double>>();
}

void write_matrix_market(const std::string& path, const Eigen::VectorXd& x) {
  write_text(path, format_vector(x, path));
}

void write_matrix_market(const std::string& path, const Eigen::VectorXcd& x) {
  write_text(path, format_vector(x, path));
}

std::string format_matrix_market(const Eigen::VectorXd& x) { return format_vector(x, "<string>"); }

std::string format_matrix_market(const Eigen::VectorXcd& x) {
  return format_vector(x, "<string>");
}

}  // namespace difflsq::io
