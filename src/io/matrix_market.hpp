// Matrix Market (https://math.nist.gov/MatrixMarket/formats.html) reader and writer.
//
// Reading
// -------
// Accepted input, keywords case-insensitive:
//
//   %%MatrixMarket matrix <coordinate|array> <real|complex|integer|pattern>
//                         <general|symmetric|skew-symmetric|hermitian>
//   % any number of comment lines
//   <rows> <cols> <entries>          (coordinate)   |   <rows> <cols>   (array)
//   <entries, one per line>
//
// * The banner must be the first line (a UTF-8 byte-order mark before it is ignored). After
//   the banner, lines whose first non-blank character is '%' are comments and blank lines are
//   ignored, both anywhere (also between and after the entries). Lines may end in "\r\n".
// * Coordinate entries are "i j [value [imaginary]]" with 1-based indices; array entries are
//   "value [imaginary]", column-major. Each line holds exactly one entry; anything after it is
//   an error. A leading '+' on any number is accepted. Integer-field values and all indices
//   must be integers; real values use the usual decimal syntax ("1", "-2.5", ".5", "1e-3").
//   Values that overflow a double, "nan" and "inf" are errors; values that underflow become a
//   (signed) zero.
// * Exactly <entries> coordinate entries must be present. Duplicate coordinate entries are
//   SUMMED (in file order; for pattern matrices each duplicate adds 1). A sum that overflows to
//   infinity is an error naming the line of the entry that made it overflow.
// * Symmetry: only the lower triangle (i >= j) may be stored; an entry above the diagonal is an
//   error (it would otherwise be silently added to its mirror). "symmetric" mirrors each
//   off-diagonal entry (the diagonal is not doubled); "skew-symmetric" mirrors with negation and
//   must not contain diagonal entries (coordinate) / stores the strictly lower triangle (array);
//   "hermitian" mirrors with conjugation and requires real diagonal entries. "hermitian" with a
//   real or integer field is accepted and treated as "symmetric". Symmetric kinds require a
//   square matrix.
// * Rejected combinations: "array pattern", "pattern skew-symmetric", "pattern hermitian".
// * Array-format values are all stored, zeros included (so -0.0 survives a round trip);
//   header.entries is then the number of values in the file (rows*cols, n(n+1)/2 or n(n-1)/2).
// * Size limits: the result uses 32-bit sparse indices, so rows, cols and the number of stored
//   entries (after symmetric expansion) must not exceed 2^31-1; array matrices must have at
//   most 2^31-1 elements; a coordinate matrix cannot declare more entries than rows*cols.
//   Because the compressed column-major result costs one index per column even when the
//   column is empty, cols may not exceed 2^22 + 8*entries ("absurd" header: a tiny file could
//   otherwise force gigabytes of allocation). Apart from that bounded per-column cost, memory is
//   only reserved in proportion to the bytes actually present in the input, never from the
//   declared sizes alone.
// * The result is compressed column-major with sorted row indices (the same layout
//   setFromTriplets gives). It is assembled directly by a counting sort over columns, so
//   memory and time are O(entries + cols), independent of the number of rows.
//
// Every malformed input throws MatrixMarketError whose what() reads "<name>:<line>: <problem>"
// (1-based line) or "<name>: <problem>" when the problem is not tied to a line (line() == 0:
// file cannot be opened, gzip data corrupt, wrong shape for a vector, ...).
//
// Writing
// -------
// Vectors are written as "array <real|complex> general" with n rows and 1 column, one value
// (complex: real and imaginary part) per line with 17 significant digits (the "%.17g" format,
// produced locale-independently), so a read-back is exact to the bit, including -0.0.
// Non-finite values cannot be represented in Matrix Market and throw MatrixMarketError.
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include <Eigen/Core>
#include <Eigen/SparseCore>

namespace difflsq::io {

enum class MmFormat { Coordinate, Array };
enum class MmField { Real, Complex, Integer, Pattern };
enum class MmSymmetry { General, Symmetric, SkewSymmetric, Hermitian };

struct MmHeader {
  MmFormat format;
  MmField field;
  MmSymmetry symmetry;
  std::int64_t rows = 0, cols = 0, entries = 0;
};

class MatrixMarketError : public std::runtime_error {
 public:
  MatrixMarketError(std::string name, std::size_t line, const std::string& what);
  // 1-based line of the problem, 0 when it is not tied to a line.
  std::size_t line() const noexcept { return line_; }
  // The input's name (path or the name given to parse_matrix_market).
  const std::string& name() const noexcept { return name_; }

 private:
  std::string name_;
  std::size_t line_;
};

struct MatrixMarket {
  MmHeader header;
  bool is_complex = false;                                             // field == Complex
  Eigen::SparseMatrix<double, Eigen::ColMajor> real;                   // set when !is_complex
  Eigen::SparseMatrix<std::complex<double>, Eigen::ColMajor> complex;  // set when is_complex
};

// Parses Matrix Market text; `name` is used in error messages.
MatrixMarket parse_matrix_market(std::string_view text, std::string_view name = "<memory>");

// Reads a plain or gzip-compressed file (gzip is recognised by its magic bytes 1f 8b, not by
// the file name). Errors name the path.
MatrixMarket read_matrix_market(const std::string& path);

// The matrix as a dense vector when it has exactly one column or exactly one row (a 1x1 matrix
// is a 1-vector); otherwise MatrixMarketError(name, 0, ...) describing the shape.
// to_real_vector also throws for complex matrices; to_complex_vector promotes real ones.
Eigen::VectorXd to_real_vector(const MatrixMarket& mm, std::string_view name);
Eigen::VectorXcd to_complex_vector(const MatrixMarket& mm, std::string_view name);

// Writers (array format, general, n x 1). Files are plain text.
void write_matrix_market(const std::string& path, const Eigen::VectorXd& x);
void write_matrix_market(const std::string& path, const Eigen::VectorXcd& x);
std::string format_matrix_market(const Eigen::VectorXd& x);
std::string format_matrix_market(const Eigen::VectorXcd& x);

}  // namespace difflsq::io
