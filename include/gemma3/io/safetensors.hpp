// Reading and writing Hugging Face safetensors files.
//
// Layout: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON (possibly padded with trailing
// spaces), then the data buffer. The JSON object maps each tensor name to
//   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
// with offsets relative to the start of the data buffer, plus an optional "__metadata__" object of
// string -> string. The ranges must tile the data buffer exactly: no overlaps, no holes.
//
// There is no maintained C++ safetensors library in Debian, and the format is small, so we
// implement it here on top of nlohmann/json. The reader treats the file as untrusted: every number
// in the header is checked (with overflow-checked arithmetic) before it is used, so no input can
// make it read outside the mapped file.
#pragma once

#include <gemma3/core/bf16_bits.hpp>
#include <gemma3/detail/text.hpp>
#include <gemma3/io/file_io.hpp>
#include <gemma3/io/json_read.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <ostream>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace gemma3 {

// ---------------------------------------------------------------------------------------------
// Element types. The names are the safetensors spellings.

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, U16, U32, U64, BOOL };

inline constexpr std::array<DType, 13> all_dtypes{DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                                                  DType::I32, DType::I16, DType::I8,  DType::U8,   DType::U16,
                                                  DType::U32, DType::U64, DType::BOOL};

constexpr std::string_view dtype_name(DType dtype) {
    switch (dtype) {
        case DType::F64: return "F64";
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::I64: return "I64";
        case DType::I32: return "I32";
        case DType::I16: return "I16";
        case DType::I8: return "I8";
        case DType::U8: return "U8";
        case DType::U16: return "U16";
        case DType::U32: return "U32";
        case DType::U64: return "U64";
        case DType::BOOL: return "BOOL";
    }
    return "?";
}

// Bytes per element.
constexpr std::size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::F64:
        case DType::I64:
        case DType::U64: return 8;
        case DType::F32:
        case DType::I32:
        case DType::U32: return 4;
        case DType::F16:
        case DType::BF16:
        case DType::I16:
        case DType::U16: return 2;
        case DType::I8:
        case DType::U8:
        case DType::BOOL: return 1;
    }
    return 0;
}

constexpr bool dtype_is_floating(DType dtype) {
    return dtype == DType::F64 || dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16;
}
constexpr bool dtype_is_signed_integer(DType dtype) {
    return dtype == DType::I64 || dtype == DType::I32 || dtype == DType::I16 || dtype == DType::I8;
}
constexpr bool dtype_is_unsigned_integer(DType dtype) {
    return dtype == DType::U64 || dtype == DType::U32 || dtype == DType::U16 || dtype == DType::U8;
}

// The dtype spelled `name` ("F32", "BF16", ...), or nullopt for anything else (case-sensitive, as
// in the format).
constexpr std::optional<DType> parse_dtype(std::string_view name) {
    for (DType dtype : all_dtypes)
        if (dtype_name(dtype) == name) return dtype;
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// 16-bit floating-point conversions (also used by the CUDA back end, hence constexpr and
// dependency-free).
//
// bfloat16 <-> float: bf16_to_float and float_to_bf16 (core/bf16_bits.hpp, shared with the matrix
// products of core/blas.hpp).

// double -> bfloat16 with a single rounding (nearest, ties to even). Going through float with two
// round-to-nearest steps would be wrong in rare cases (1 + 2^-8 + 2^-40 would become the tie
// 1 + 2^-8 in float and then round down to 1). Instead the first step rounds to odd: truncate
// toward zero and set the last bit if anything was lost. Rounding to odd at 24 bits followed by
// rounding to nearest at 8 bits equals rounding to nearest directly, since 24 >= 8 + 2.
// Finite values beyond float's range round to +-inf (bf16's largest finite is below FLT_MAX).
inline std::uint16_t double_to_bf16(double value) {
    const std::uint16_t sign = std::signbit(value) ? 0x8000u : 0u;
    if (std::isnan(value)) return static_cast<std::uint16_t>(sign | 0x7FC0u);
    if (std::fabs(value) > static_cast<double>(std::numeric_limits<float>::max()))
        return static_cast<std::uint16_t>(sign | 0x7F80u);
    const float nearest = static_cast<float>(value);  // in range, so well defined
    if (static_cast<double>(nearest) == value) return float_to_bf16(nearest);
    std::uint32_t bits = std::bit_cast<std::uint32_t>(nearest);
    if (std::fabs(static_cast<double>(nearest)) > std::fabs(value)) bits -= 1;  // now truncated toward zero
    bits |= 1u;                                                                  // sticky: "something was lost"
    return float_to_bf16(std::bit_cast<float>(bits));
}

// IEEE binary16 -> float, exact for every input: normals, subnormals, +-0, +-inf and NaN
// (a NaN keeps its sign and payload, so it stays a NaN).
constexpr float f16_to_float(std::uint16_t half) {
    const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
    const std::uint32_t exponent = (half >> 10) & 0x1Fu;
    std::uint32_t mantissa = half & 0x3FFu;
    std::uint32_t bits = 0;
    if (exponent == 0x1F) {
        bits = sign | 0x7F80'0000u | (mantissa << 13);  // inf or NaN
    } else if (exponent != 0) {
        bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;  // +-0
    } else {
        // Subnormal: mantissa * 2^-24. Normalise so the leading 1 becomes the implicit bit.
        int shift = 0;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            ++shift;
        }
        bits = sign | (static_cast<std::uint32_t>(127 - 14 - shift) << 23) | ((mantissa & 0x3FFu) << 13);
    }
    return std::bit_cast<float>(bits);
}

// ---------------------------------------------------------------------------------------------

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<std::int64_t> shape;  // [] is a scalar (one element)
    std::size_t begin = 0;            // byte range within the data buffer
    std::size_t end = 0;

    // Always fits: the constructor of SafetensorsFile checked numel * dtype_size for overflow.
    std::int64_t numel() const {
        std::int64_t count = 1;
        for (std::int64_t dim : shape) count *= dim;
        return count;
    }
};

class SafetensorsError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

// The largest header we accept, as the reference implementation does: protects against a
// corrupt length making us parse (and allocate for) gigabytes of "JSON".
inline constexpr std::uint64_t max_safetensors_header_bytes = 100'000'000;

template <class U>
U load_little_endian(const std::byte* source) {
    static_assert(std::is_unsigned_v<U>);
    U value = 0;
    if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(&value, source, sizeof(U));
    } else {
        for (std::size_t i = 0; i < sizeof(U); ++i) value |= static_cast<U>(std::to_integer<U>(source[i])) << (8 * i);
    }
    return value;
}

template <class U>
void store_little_endian(char* destination, U value) {
    static_assert(std::is_unsigned_v<U>);
    if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(destination, &value, sizeof(U));
    } else {
        for (std::size_t i = 0; i < sizeof(U); ++i) destination[i] = static_cast<char>((value >> (8 * i)) & 0xFFu);
    }
}

// a * b, or nullopt if it does not fit.
inline std::optional<std::uint64_t> checked_multiply(std::uint64_t a, std::uint64_t b) {
    if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return std::nullopt;
    return a * b;
}

// The number of elements of `shape` times `element_size` as a byte count, or nullopt on overflow
// (of int64 for the element count, or of size_t for the bytes).
inline std::optional<std::size_t> checked_byte_size(std::span<const std::int64_t> shape, std::size_t element_size) {
    std::uint64_t count = 1;
    for (std::int64_t dim : shape) {
        if (dim < 0) return std::nullopt;
        auto product = checked_multiply(count, static_cast<std::uint64_t>(dim));
        if (!product || *product > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
            return std::nullopt;
        count = *product;
    }
    auto bytes = checked_multiply(count, element_size);
    if (!bytes || *bytes > std::numeric_limits<std::size_t>::max()) return std::nullopt;
    return static_cast<std::size_t>(*bytes);
}

inline std::string shape_to_string(std::span<const std::int64_t> shape) {
    std::string text = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i > 0) text += ", ";
        text += std::to_string(shape[i]);
    }
    return text + "]";
}

// Names and JSON snippets from a hostile file can be huge; messages show at most a prefix.
inline std::string clip(std::string text, std::size_t limit = 120) {
    if (text.size() > limit) {
        text.resize(limit);
        text += "...";
    }
    return text;
}

inline std::string quote(std::string_view name) {
    std::string text(1, '\'');
    text += clip(std::string(name));
    text += '\'';
    return text;
}

inline std::string json_snippet(const nlohmann::json& value) {
    return clip(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

template <class T>
std::string number_to_string(T value) {
    std::array<char, 64> buffer{};
    const auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value);
    return std::string(buffer.data(), result.ptr);
}

template <class T>
std::string value_type_name() {
    if constexpr (std::is_same_v<T, float>) return "float";
    else if constexpr (std::is_same_v<T, double>) return "double";
    else if constexpr (std::is_same_v<T, bool>) return "bool";
    else return std::string(std::is_signed_v<T> ? "int" : "uint") + std::to_string(8 * sizeof(T));
}

inline std::string supported_dtype_list() {
    std::string text;
    for (DType dtype : all_dtypes) {
        if (!text.empty()) text += ", ";
        text += dtype_name(dtype);
    }
    return text;
}

// The non-negative integer held by `value`, or nullopt if it is not one (floats such as 2.0 are
// refused: the format stores integers).
inline std::optional<std::uint64_t> non_negative_integer(const nlohmann::json& value) {
    if (value.is_number_unsigned()) return value.get<std::uint64_t>();
    if (value.is_number_integer() && value.get<std::int64_t>() >= 0)
        return static_cast<std::uint64_t>(value.get<std::int64_t>());
    return std::nullopt;
}

// A SAX pass over the header that builds nothing and rejects what the DOM parser would hide:
// duplicate keys (nlohmann/json silently keeps the last one, so two entries of the same name would
// be ambiguous) and absurd nesting (a real header nests 3 levels: root, entry, shape). We use SAX
// rather than the parser callback because the callback parser rescans the enclosing object at
// every object end, which is quadratic in the number of tensors.
class HeaderStructureCheck : public nlohmann::json::json_sax_t {
public:
    // The depth limit of every JSON document the library reads (json_read.hpp). The size limit
    // stays the format's own (max_safetensors_header_bytes): headers of large models exceed
    // json_read's default, and this SAX pass costs nothing to build.
    static constexpr auto max_depth = static_cast<std::size_t>(json_read::Limits{}.max_depth);
    std::string problem;  // set when a method returns false

    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return open(); }
    bool end_object() override { return close(); }
    bool start_array(std::size_t) override { return open(); }
    bool end_array() override { return close(); }

    bool key(string_t& key) override {
        Frame& frame = frames_.back();
        if (!frame.keys.insert(key).second) {
            if (frames_.size() == 1) problem = "duplicate tensor name " + quote(key) + " in the header";
            else if (frames_.size() == 2) problem = "duplicate key " + quote(key) + " in the entry " + quote(frames_[0].last_key);
            else problem = "duplicate key " + quote(key) + " in the header";
            return false;
        }
        frame.last_key = key;
        return true;
    }

    bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception& error) override {
        problem = "header is not valid JSON (" + std::string(error.what()) + ")";
        return false;
    }

private:
    struct Frame {
        std::set<std::string, std::less<>> keys;  // empty for arrays
        std::string last_key;
    };

    bool open() {
        if (frames_.size() >= max_depth) {
            problem = "header nests JSON arrays or objects more than " + std::to_string(max_depth) + " levels deep";
            return false;
        }
        frames_.emplace_back();
        return true;
    }
    bool close() {
        frames_.pop_back();
        return true;
    }

    std::vector<Frame> frames_;
};

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Reader

// A read-only view of a safetensors file, memory-mapped. The constructor validates the whole
// header and the layout of the data buffer; afterwards every access is in bounds.
class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::filesystem::path& path) : file_(open(path)) { validate(); }

    const std::filesystem::path& path() const noexcept { return file_.path(); }

    // Sorted by data offset (that is, in the order the data lie in the file).
    const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }

    const TensorInfo* find(std::string_view name) const {
        const auto found = index_.find(name);
        return found == index_.end() ? nullptr : &tensors_[found->second];
    }

    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

    // The stored bytes of a tensor (little-endian elements, not necessarily aligned).
    std::span<const std::byte> raw(const TensorInfo& info) const {
        if (info.begin > info.end || info.end > data_.size())
            throw SafetensorsError(prefix() + "tensor " + detail::quote(info.name) + " is not a tensor of this file");
        return data_.subspan(info.begin, info.end - info.begin);
    }

    // Copies tensor `name` into `out`, converting from the stored dtype. Floating T (float, double)
    // accepts F64/F32/F16/BF16; integer T accepts the integer dtypes and BOOL, range-checked; bool
    // accepts BOOL. The tensor must have exactly `expected_shape`, and `out` exactly its size.
    template <class T>
    void read(std::string_view name, std::span<const std::int64_t> expected_shape, std::span<T> out) const {
        const TensorInfo& info = require(name);
        if (!std::equal(info.shape.begin(), info.shape.end(), expected_shape.begin(), expected_shape.end()))
            throw SafetensorsError(prefix() + "tensor " + detail::quote(info.name) + " has shape " +
                                   detail::shape_to_string(info.shape) + ", expected " +
                                   detail::shape_to_string(expected_shape));
        convert(info, out);
    }

    template <class T>
    void read(std::string_view name, std::initializer_list<std::int64_t> expected_shape, std::span<T> out) const {
        read(name, std::span<const std::int64_t>(expected_shape.begin(), expected_shape.size()), out);
    }

    // The whole tensor, whatever its shape, flattened in row-major order.
    template <class T>
    std::vector<T> read_all(std::string_view name) const {
        const TensorInfo& info = require(name);
        std::vector<T> values(static_cast<std::size_t>(info.numel()));
        if constexpr (std::is_same_v<T, bool>) {
            // std::vector<bool> has no contiguous storage; go through bytes.
            if (info.dtype != DType::BOOL)
                fail("tensor " + detail::quote(info.name) + " has dtype " + std::string(dtype_name(info.dtype)) +
                     ", which cannot be read as bool");
            std::vector<std::uint8_t> bytes(values.size());
            convert(info, std::span<std::uint8_t>(bytes));
            std::copy(bytes.begin(), bytes.end(), values.begin());
        } else {
            convert(info, std::span<T>(values));
        }
        return values;
    }

private:
    static MappedFile open(const std::filesystem::path& path) {
        try {
            return MappedFile(path);
        } catch (const FileError& error) {
            throw SafetensorsError(error.what());
        }
    }

    std::string prefix() const { return file_.path().string() + ": "; }

    [[noreturn]] void fail(const std::string& message) const { throw SafetensorsError(prefix() + message); }

    const TensorInfo& require(std::string_view name) const {
        if (const TensorInfo* info = find(name)) return *info;
        // Suggest the few closest names: a typo or a naming-convention mismatch is the usual cause.
        std::vector<std::pair<std::size_t, const std::string*>> candidates;
        for (const TensorInfo& info : tensors_)
            candidates.emplace_back(text::edit_distance(name.substr(0, 200), std::string_view(info.name).substr(0, 200)),
                                    &info.name);
        std::sort(candidates.begin(), candidates.end(),
                  [](const auto& a, const auto& b) { return a.first != b.first ? a.first < b.first : *a.second < *b.second; });
        std::string message = "no tensor named " + detail::quote(name);
        if (candidates.empty()) {
            message += "; the file has no tensors";
        } else {
            message += "; closest names:";
            for (std::size_t i = 0; i < std::min<std::size_t>(3, candidates.size()); ++i)
                message += std::string(i == 0 ? " " : ", ") + detail::quote(*candidates[i].second);
            message += " (of " + std::to_string(tensors_.size()) + " tensors)";
        }
        fail(message);
    }

    template <class T>
    void convert(const TensorInfo& info, std::span<T> out) const {
        static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_integral_v<T>,
                      "read into float, double, bool or an integer type");
        const auto count = static_cast<std::size_t>(info.numel());
        if (out.size() != count)
            fail("tensor " + detail::quote(info.name) + " has " + std::to_string(count) +
                 " elements, but the output buffer holds " + std::to_string(out.size()));
        const std::byte* source = raw(info).data();
        const std::size_t stride = dtype_size(info.dtype);
        const auto cannot_read_as = [&] {
            fail("tensor " + detail::quote(info.name) + " has dtype " + std::string(dtype_name(info.dtype)) +
                 ", which cannot be read as " + detail::value_type_name<T>());
        };

        // Same representation: one copy.
        if constexpr (std::endian::native == std::endian::little && !std::is_same_v<T, bool>) {
            const bool same = (std::is_same_v<T, float> && info.dtype == DType::F32) ||
                              (std::is_same_v<T, double> && info.dtype == DType::F64) ||
                              (std::is_integral_v<T> && std::is_signed_v<T> && dtype_is_signed_integer(info.dtype) &&
                               sizeof(T) == stride) ||
                              (std::is_integral_v<T> && std::is_unsigned_v<T> &&
                               dtype_is_unsigned_integer(info.dtype) && sizeof(T) == stride);
            if (same) {
                if (count > 0) std::memcpy(out.data(), source, count * sizeof(T));
                return;
            }
        }

        if constexpr (std::is_floating_point_v<T>) {
            const auto store = [&](std::size_t i, auto value) {
                if constexpr (std::is_same_v<T, float> && std::is_same_v<decltype(value), double>) {
                    // Narrowing a finite double beyond float's range is undefined behaviour; refuse it.
                    if (std::isfinite(value) && std::fabs(value) > std::numeric_limits<float>::max())
                        fail("tensor " + detail::quote(info.name) + " element " + std::to_string(i) + " is " +
                             detail::number_to_string(value) + ", which is out of the range of float");
                }
                out[i] = static_cast<T>(value);
            };
            switch (info.dtype) {
                case DType::F64:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, std::bit_cast<double>(detail::load_little_endian<std::uint64_t>(source + i * 8)));
                    return;
                case DType::F32:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, std::bit_cast<float>(detail::load_little_endian<std::uint32_t>(source + i * 4)));
                    return;
                case DType::F16:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, f16_to_float(detail::load_little_endian<std::uint16_t>(source + i * 2)));
                    return;
                case DType::BF16:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, bf16_to_float(detail::load_little_endian<std::uint16_t>(source + i * 2)));
                    return;
                default: cannot_read_as();
            }
        } else {
            const auto store = [&](std::size_t i, auto value) {
                if constexpr (std::is_same_v<T, bool>) {
                    out[i] = value != 0;
                } else {
                    if (!std::in_range<T>(value))
                        fail("tensor " + detail::quote(info.name) + " element " + std::to_string(i) + " is " +
                             std::to_string(value) + ", which does not fit in " + detail::value_type_name<T>());
                    out[i] = static_cast<T>(value);
                }
            };
            if (std::is_same_v<T, bool> && info.dtype != DType::BOOL) cannot_read_as();
            switch (info.dtype) {
                case DType::I64:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, static_cast<std::int64_t>(detail::load_little_endian<std::uint64_t>(source + i * 8)));
                    return;
                case DType::I32:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, static_cast<std::int32_t>(detail::load_little_endian<std::uint32_t>(source + i * 4)));
                    return;
                case DType::I16:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, static_cast<std::int16_t>(detail::load_little_endian<std::uint16_t>(source + i * 2)));
                    return;
                case DType::I8:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, static_cast<std::int8_t>(detail::load_little_endian<std::uint8_t>(source + i)));
                    return;
                case DType::U64:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, detail::load_little_endian<std::uint64_t>(source + i * 8));
                    return;
                case DType::U32:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, detail::load_little_endian<std::uint32_t>(source + i * 4));
                    return;
                case DType::U16:
                    for (std::size_t i = 0; i < count; ++i)
                        store(i, detail::load_little_endian<std::uint16_t>(source + i * 2));
                    return;
                case DType::U8:
                    for (std::size_t i = 0; i < count; ++i) store(i, detail::load_little_endian<std::uint8_t>(source + i));
                    return;
                case DType::BOOL:
                    for (std::size_t i = 0; i < count; ++i) {
                        const auto byte = detail::load_little_endian<std::uint8_t>(source + i);
                        if (byte > 1)
                            fail("tensor " + detail::quote(info.name) + " element " + std::to_string(i) +
                                 " is the byte " + std::to_string(byte) + ", but a BOOL must be 0 or 1");
                        store(i, byte);
                    }
                    return;
                default: cannot_read_as();
            }
        }
    }

    // Parses the header and checks everything the rest of the class relies on.
    void validate() {
        const std::span<const std::byte> bytes = file_.bytes();
        if (bytes.size() < 8)
            fail("file is " + std::to_string(bytes.size()) +
                 " bytes, too short for a safetensors file (it starts with an 8-byte header length)");
        const std::uint64_t header_length = detail::load_little_endian<std::uint64_t>(bytes.data());
        if (header_length > detail::max_safetensors_header_bytes)
            fail("header length " + std::to_string(header_length) + " is larger than the limit of " +
                 std::to_string(detail::max_safetensors_header_bytes) + " bytes (corrupt or not a safetensors file)");
        if (header_length > bytes.size() - 8)
            fail("header length " + std::to_string(header_length) + " exceeds the file size (" +
                 std::to_string(bytes.size() - 8) + " bytes after the 8-byte length; truncated or corrupt file)");
        const auto header_begin = reinterpret_cast<const char*>(bytes.data() + 8);
        const auto header_end = header_begin + header_length;
        data_ = bytes.subspan(8 + static_cast<std::size_t>(header_length));

        const nlohmann::json header = parse_header(header_begin, header_end);
        if (!header.is_object()) fail("header must be a JSON object, got " + std::string(header.type_name()));

        for (const auto& [name, entry] : header.items()) {
            if (name == "__metadata__") {
                read_metadata(entry);
                continue;
            }
            tensors_.push_back(parse_entry(name, entry));
        }

        std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
            if (a.begin != b.begin) return a.begin < b.begin;
            if (a.end != b.end) return a.end < b.end;
            return a.name < b.name;
        });
        check_tiling();
        for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
    }

    nlohmann::json parse_header(const char* begin, const char* end) const {
        // nlohmann/json stops at a NUL byte as if the input ended there, which would let bytes
        // after it pass unchecked; the format pads with spaces only.
        if (const void* nul = std::memchr(begin, '\0', static_cast<std::size_t>(end - begin)))
            fail("header contains a NUL byte at offset " +
                 std::to_string(8 + (static_cast<const char*>(nul) - begin)) + " (the JSON may only be padded with spaces)");

        // First pass: syntax, duplicate keys and nesting depth, without building anything.
        detail::HeaderStructureCheck check;
        if (!nlohmann::json::sax_parse(begin, end, &check)) fail(check.problem);
        // Second pass: the tree. Both passes are linear in the header size.
        try {
            return nlohmann::json::parse(begin, end);
        } catch (const nlohmann::json::exception& error) {
            fail("header is not valid JSON (" + std::string(error.what()) + ")");
        }
    }

    void read_metadata(const nlohmann::json& entry) {
        if (!entry.is_object())
            fail("\"__metadata__\" must be an object of string values, got " + std::string(entry.type_name()));
        for (const auto& [key, value] : entry.items()) {
            if (!value.is_string())
                fail("\"__metadata__\" value of " + detail::quote(key) + " must be a string, got " +
                     std::string(value.type_name()) + " " + detail::json_snippet(value));
            metadata_.emplace(key, value.get<std::string>());
        }
    }

    TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const {
        const std::string where = "tensor " + detail::quote(name) + ": ";
        if (!entry.is_object())
            fail(where + "entry must be a JSON object with \"dtype\", \"shape\" and \"data_offsets\", got " +
                 std::string(entry.type_name()));
        const auto field = [&](const char* key) -> const nlohmann::json& {
            const auto found = entry.find(key);
            if (found == entry.end()) fail(where + "missing \"" + key + "\"");
            return *found;
        };
        TensorInfo info;
        info.name = name;

        const nlohmann::json& dtype = field("dtype");
        if (!dtype.is_string()) fail(where + "\"dtype\" must be a string, got " + detail::json_snippet(dtype));
        const auto parsed_dtype = parse_dtype(dtype.get_ref<const std::string&>());
        if (!parsed_dtype)
            fail(where + "unknown or unsupported dtype " + detail::json_snippet(dtype) + " (expected one of " +
                 detail::supported_dtype_list() + ")");
        info.dtype = *parsed_dtype;

        const nlohmann::json& shape = field("shape");
        if (!shape.is_array())
            fail(where + "\"shape\" must be an array of non-negative integers, got " + detail::json_snippet(shape));
        for (std::size_t i = 0; i < shape.size(); ++i) {
            const auto dim = detail::non_negative_integer(shape[i]);
            if (!dim)
                fail(where + "shape[" + std::to_string(i) + "] is " + detail::json_snippet(shape[i]) +
                     ", expected a non-negative integer");
            if (*dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                fail(where + "shape[" + std::to_string(i) + "] is " + detail::json_snippet(shape[i]) + ", which is too large");
            info.shape.push_back(static_cast<std::int64_t>(*dim));
        }
        const auto byte_size = detail::checked_byte_size(info.shape, dtype_size(info.dtype));
        if (!byte_size)
            fail(where + "shape " + detail::shape_to_string(info.shape) + " with dtype " +
                 std::string(dtype_name(info.dtype)) + " is too large (the byte size overflows)");

        const nlohmann::json& offsets = field("data_offsets");
        if (!offsets.is_array() || offsets.size() != 2)
            fail(where + "\"data_offsets\" must be [begin, end], got " + detail::json_snippet(offsets));
        const auto begin = detail::non_negative_integer(offsets[0]);
        const auto end = detail::non_negative_integer(offsets[1]);
        if (!begin || !end)
            fail(where + "\"data_offsets\" must be two non-negative integers, got " + detail::json_snippet(offsets));
        const std::string range = "[" + std::to_string(*begin) + ", " + std::to_string(*end) + "]";
        if (*begin > *end) fail(where + "data_offsets " + range + " have begin > end");
        if (*end > data_.size())
            fail(where + "data_offsets " + range + " reach past the end of the data buffer (" +
                 std::to_string(data_.size()) + " bytes; truncated or corrupt file)");
        info.begin = static_cast<std::size_t>(*begin);
        info.end = static_cast<std::size_t>(*end);
        if (info.end - info.begin != *byte_size)
            fail(where + "data_offsets " + range + " cover " + std::to_string(info.end - info.begin) +
                 " bytes, but dtype " + std::string(dtype_name(info.dtype)) + " with shape " +
                 detail::shape_to_string(info.shape) + " needs " + std::to_string(*byte_size) + " bytes");
        return info;
    }

    // The format requires the ranges to cover the data buffer exactly once. `tensors_` is sorted.
    void check_tiling() const {
        std::size_t covered_to = 0;
        const TensorInfo* last_nonempty = nullptr;
        for (const TensorInfo& info : tensors_) {
            if (info.begin < covered_to)
                fail("tensors " + detail::quote(last_nonempty->name) + " [" + std::to_string(last_nonempty->begin) +
                     ", " + std::to_string(last_nonempty->end) + ") and " + detail::quote(info.name) + " [" +
                     std::to_string(info.begin) + ", " + std::to_string(info.end) + ") overlap");
            if (info.begin > covered_to)
                fail("data buffer bytes [" + std::to_string(covered_to) + ", " + std::to_string(info.begin) +
                     ") belong to no tensor (the format requires the buffer to be fully indexed)");
            if (info.end > info.begin) {
                covered_to = info.end;
                last_nonempty = &info;
            }
        }
        if (covered_to != data_.size())
            fail("data buffer bytes [" + std::to_string(covered_to) + ", " + std::to_string(data_.size()) +
                 ") belong to no tensor (the format requires the buffer to be fully indexed)");
    }

    MappedFile file_;
    std::span<const std::byte> data_;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, std::size_t, std::less<>> index_;
    std::map<std::string, std::string> metadata_;
};

// ---------------------------------------------------------------------------------------------
// Writer

using TensorSource = std::variant<std::span<const float>, std::span<const double>, std::span<const std::int32_t>,
                                  std::span<const std::int64_t>>;

// One tensor to write: `data` holds numel(shape) values in row-major order, stored as `dtype`.
// Floating sources may be stored as F64, F32 or BF16 (rounded to nearest even); integer sources as
// I32 or I64 (range-checked).
struct TensorToWrite {
    std::string name;
    std::vector<std::int64_t> shape;
    TensorSource data;
    DType dtype = DType::F32;
};

namespace detail {

// Converts `values` chunk by chunk through `encode(value, destination_bytes)` into `out`.
template <class Source, class Encode>
void write_encoded(std::ostream& out, std::span<const Source> values, std::size_t stored_size, Encode encode) {
    constexpr std::size_t chunk_elements = 8192;
    std::vector<char> buffer(chunk_elements * stored_size);
    for (std::size_t first = 0; first < values.size(); first += chunk_elements) {
        const std::size_t count = std::min(chunk_elements, values.size() - first);
        for (std::size_t i = 0; i < count; ++i) encode(first + i, values[first + i], buffer.data() + i * stored_size);
        out.write(buffer.data(), static_cast<std::streamsize>(count * stored_size));
    }
}

inline void write_tensor_data(std::ostream& out, const std::filesystem::path& path, const TensorToWrite& tensor) {
    const auto fail = [&](std::size_t index, const std::string& value, const char* problem) {
        throw SafetensorsError("cannot write " + path.string() + ": tensor " + quote(tensor.name) + " element " +
                               std::to_string(index) + " is " + value + ", which " + problem + " " +
                               std::string(dtype_name(tensor.dtype)));
    };
    std::visit(
        [&](auto values) {
            using Source = typename decltype(values)::value_type;
            using Value = std::remove_const_t<Source>;
            const std::size_t size = dtype_size(tensor.dtype);
            if constexpr (std::is_floating_point_v<Value>) {
                switch (tensor.dtype) {
                    case DType::F64:
                        write_encoded(out, values, size, [](std::size_t, Value value, char* destination) {
                            store_little_endian(destination, std::bit_cast<std::uint64_t>(static_cast<double>(value)));
                        });
                        return;
                    case DType::F32:
                        write_encoded(out, values, size, [&](std::size_t i, Value value, char* destination) {
                            if (std::isfinite(value) && std::fabs(value) > std::numeric_limits<float>::max())
                                fail(i, number_to_string(value), "overflows");
                            store_little_endian(destination, std::bit_cast<std::uint32_t>(static_cast<float>(value)));
                        });
                        return;
                    case DType::BF16:
                        write_encoded(out, values, size, [&](std::size_t i, Value value, char* destination) {
                            const std::uint16_t bits = std::is_same_v<Value, float> ? float_to_bf16(static_cast<float>(value))
                                                                                     : double_to_bf16(static_cast<double>(value));
                            // A finite weight silently becoming inf would be a wrong number.
                            if (std::isfinite(value) && (bits & 0x7F80u) == 0x7F80u) fail(i, number_to_string(value), "overflows");
                            store_little_endian(destination, bits);
                        });
                        return;
                    default: break;
                }
            } else {
                switch (tensor.dtype) {
                    case DType::I64:
                        write_encoded(out, values, size, [](std::size_t, Value value, char* destination) {
                            store_little_endian(destination, static_cast<std::uint64_t>(static_cast<std::int64_t>(value)));
                        });
                        return;
                    case DType::I32:
                        write_encoded(out, values, size, [&](std::size_t i, Value value, char* destination) {
                            if (!std::in_range<std::int32_t>(value)) fail(i, std::to_string(value), "does not fit in");
                            store_little_endian(destination, static_cast<std::uint32_t>(static_cast<std::int32_t>(value)));
                        });
                        return;
                    default: break;
                }
            }
        },
        tensor.data);
}

inline std::size_t source_size(const TensorSource& source) {
    return std::visit([](auto values) { return values.size(); }, source);
}

inline bool source_is_floating(const TensorSource& source) {
    return std::holds_alternative<std::span<const float>>(source) || std::holds_alternative<std::span<const double>>(source);
}

}  // namespace detail

// Writes `tensors` (data back to back, in the given order) and `metadata` to `path`, atomically
// (see write_file_atomically): on any error the previous file at `path` is left as it was.
// The header is padded with spaces so that the data buffer starts at a multiple of 8 bytes.
inline void write_safetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
    const auto fail = [&](const std::string& message) {
        throw SafetensorsError("cannot write " + path.string() + ": " + message);
    };

    // The header text is assembled directly (nlohmann/json only escapes the strings) so that it
    // keeps the given order and stays linear in the number of tensors.
    const auto json_string = [&](const std::string& text) {
        try {
            return nlohmann::json(text).dump();
        } catch (const nlohmann::json::exception& error) {
            throw SafetensorsError("cannot write " + path.string() + ": the string " + detail::quote(text) +
                                   " is not valid UTF-8 (" + std::string(error.what()) + ")");
        }
    };
    std::string header_text = "{";
    if (!metadata.empty()) {
        header_text += "\"__metadata__\":{";
        bool first = true;
        for (const auto& [key, value] : metadata) {
            if (!first) header_text += ',';
            first = false;
            header_text += json_string(key) + ":" + json_string(value);
        }
        header_text += '}';
    }
    std::set<std::string_view> names;
    std::uint64_t offset = 0;
    for (const TensorToWrite& tensor : tensors) {
        const std::string where = "tensor " + detail::quote(tensor.name) + ": ";
        if (tensor.name == "__metadata__") fail(where + "the name is reserved for the metadata");
        if (!names.insert(tensor.name).second) fail("duplicate tensor name " + detail::quote(tensor.name));
        const bool floating_source = detail::source_is_floating(tensor.data);
        const bool allowed = floating_source ? (tensor.dtype == DType::F64 || tensor.dtype == DType::F32 ||
                                                tensor.dtype == DType::BF16)
                                             : (tensor.dtype == DType::I64 || tensor.dtype == DType::I32);
        if (!allowed)
            fail(where + "cannot store " + (floating_source ? "floating-point" : "integer") + " data as " +
                 std::string(dtype_name(tensor.dtype)) + " (supported: " +
                 (floating_source ? "F64, F32, BF16" : "I64, I32") + ")");
        for (std::size_t i = 0; i < tensor.shape.size(); ++i)
            if (tensor.shape[i] < 0)
                fail(where + "shape " + detail::shape_to_string(tensor.shape) + " has a negative dimension");
        const auto byte_size = detail::checked_byte_size(tensor.shape, dtype_size(tensor.dtype));
        if (!byte_size) fail(where + "shape " + detail::shape_to_string(tensor.shape) + " is too large");
        const std::size_t numel = *byte_size / dtype_size(tensor.dtype);
        if (detail::source_size(tensor.data) != numel)
            fail(where + "shape " + detail::shape_to_string(tensor.shape) + " has " + std::to_string(numel) +
                 " elements, but the source data has " + std::to_string(detail::source_size(tensor.data)));

        if (header_text.size() > 1) header_text += ',';
        header_text += json_string(tensor.name) + ":{\"dtype\":\"" + std::string(dtype_name(tensor.dtype)) +
                       "\",\"shape\":[";
        for (std::size_t i = 0; i < tensor.shape.size(); ++i) {
            if (i > 0) header_text += ',';
            header_text += std::to_string(tensor.shape[i]);
        }
        header_text += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + *byte_size) + "]}";
        offset += *byte_size;
    }
    header_text += '}';
    header_text.append((8 - header_text.size() % 8) % 8, ' ');
    if (header_text.size() > detail::max_safetensors_header_bytes)
        fail("the header would be " + std::to_string(header_text.size()) + " bytes, more than readers accept (" +
             std::to_string(detail::max_safetensors_header_bytes) + ")");

    write_file_atomically(path, [&](std::ostream& out) {
        std::array<char, 8> length{};
        detail::store_little_endian(length.data(), static_cast<std::uint64_t>(header_text.size()));
        out.write(length.data(), length.size());
        out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
        for (const TensorToWrite& tensor : tensors) detail::write_tensor_data(out, path, tensor);
    });
}

}  // namespace gemma3
