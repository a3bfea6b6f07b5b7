// Tests of the safetensors reader/writer and the file helpers.
//
// Reference data: tests/data/safetensors/*.safetensors were written by Hugging Face's `safetensors`
// package (tools/make_safetensors_fixtures.py) from closed-form formulas that this file recomputes
// independently; rounded values (BF16, F16) were produced by torch/numpy and stored next to them.
#include <doctest/doctest.h>

#include <gemma3/io/file_io.hpp>
#include <gemma3/io/safetensors.hpp>

#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace gemma3;
namespace fs = std::filesystem;

namespace {

fs::path fixture(const char* name) { return fs::path(GEMMA3_TEST_DATA_DIR) / "safetensors" / name; }

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
public:
    TempDir() {
        static std::atomic<int> counter{0};
        path_ = fs::temp_directory_path() /
                ("gemma3_test_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const fs::path& path() const { return path_; }
    fs::path operator/(const std::string& name) const { return path_ / name; }

    std::vector<std::string> entries() const {
        std::vector<std::string> names;
        for (const auto& entry : fs::directory_iterator(path_)) names.push_back(entry.path().filename().string());
        std::sort(names.begin(), names.end());
        return names;
    }

private:
    fs::path path_;
};

void write_bytes(const fs::path& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
}

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream content;
    content << in.rdbuf();
    return content.str();
}

std::string little_endian_u64(std::uint64_t value) {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<char>((value >> (8 * i)) & 0xFF);
    return bytes;
}

// A safetensors file from a header text and data bytes (the length prefix is the header's size).
std::string safetensors_bytes(const std::string& header, const std::string& data) {
    return little_endian_u64(header.size()) + header + data;
}

// The message of the SafetensorsError thrown by `action`, or a note saying what happened instead.
std::string safetensors_error_of(const std::function<void()>& action) {
    try {
        action();
    } catch (const SafetensorsError& error) {
        return error.what();
    } catch (const std::exception& error) {
        return std::string("<wrong exception type: ") + error.what() + ">";
    }
    return "<no exception>";
}

// Writes `bytes` to a file named after the case and checks that opening it throws a
// SafetensorsError naming the file and containing `phrase`.
void check_rejected(const TempDir& dir, const std::string& case_name, const std::string& bytes,
                    const std::string& phrase) {
    const fs::path path = dir / (case_name + ".safetensors");
    write_bytes(path, bytes);
    const std::string message = safetensors_error_of([&] { SafetensorsFile file(path); });
    INFO("case: ", case_name);
    INFO("message: ", message);
    CHECK(message.find(path.filename().string()) != std::string::npos);
    CHECK(message.find(phrase) != std::string::npos);
}

// The formulas of tools/make_safetensors_fixtures.py.
double float_formula(std::size_t i, int k) { return (static_cast<double>(i) + 1.0) / 7.0 - static_cast<double>(k); }

template <class T>
T int_formula(std::size_t i, std::uint64_t k) {
    constexpr std::uint64_t golden = 0x9E37'79B9'7F4A'7C15ull;
    const std::uint64_t wrapped = static_cast<std::uint64_t>(i) * golden + k;  // mod 2^64
    using Unsigned = std::make_unsigned_t<T>;
    return std::bit_cast<T>(static_cast<Unsigned>(wrapped));  // mod 2^bits, two's complement
}

bool same_bits(double a, double b) { return std::bit_cast<std::uint64_t>(a) == std::bit_cast<std::uint64_t>(b); }

std::uint16_t raw_u16(const SafetensorsFile& file, const TensorInfo& info, std::size_t i) {
    const auto bytes = file.raw(info);
    return static_cast<std::uint16_t>(std::to_integer<unsigned>(bytes[2 * i]) |
                                      (std::to_integer<unsigned>(bytes[2 * i + 1]) << 8));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// bf16 / f16 conversions against bit patterns worked out by hand from the IEEE definitions.

static_assert(float_to_bf16(1.0f) == 0x3F80);
static_assert(bf16_to_float(0xC000) == -2.0f);
static_assert(f16_to_float(0x3C00) == 1.0f);

TEST_CASE("bf16 conversion matches known bit patterns") {
    CHECK(float_to_bf16(1.0f) == 0x3F80);
    CHECK(bf16_to_float(0x3F80) == 1.0f);
    CHECK(float_to_bf16(-2.0f) == 0xC000);
    CHECK(bf16_to_float(0xC000) == -2.0f);
    CHECK(float_to_bf16(0.0f) == 0x0000);
    CHECK(float_to_bf16(-0.0f) == 0x8000);

    // Largest finite bfloat16: (2 - 2^-7) * 2^127 = 255 * 2^120.
    const float largest = std::ldexp(255.0f, 120);
    CHECK(bf16_to_float(0x7F7F) == largest);
    CHECK(float_to_bf16(largest) == 0x7F7F);
    CHECK(float_to_bf16(-largest) == 0xFF7F);
    // FLT_MAX is above the midpoint between the largest finite bf16 and 2^128: rounds to inf.
    CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);

    const float inf = std::numeric_limits<float>::infinity();
    CHECK(float_to_bf16(inf) == 0x7F80);
    CHECK(float_to_bf16(-inf) == 0xFF80);
    CHECK(bf16_to_float(0x7F80) == inf);
    CHECK(bf16_to_float(0xFF80) == -inf);

    // NaN stays NaN, also one whose payload lies only in the dropped low bits, and comes out quiet.
    const std::uint16_t quiet = float_to_bf16(std::numeric_limits<float>::quiet_NaN());
    CHECK(std::isnan(bf16_to_float(quiet)));
    const std::uint16_t from_signaling = float_to_bf16(std::bit_cast<float>(0x7F80'0001u));
    CHECK(std::isnan(bf16_to_float(from_signaling)));
    CHECK((from_signaling & 0x0040) != 0);
    CHECK(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(0xFFFF'FFFFu)))));

    // Exact midpoints round to the even neighbour, in both directions.
    CHECK(float_to_bf16(std::bit_cast<float>(0x3F80'8000u)) == 0x3F80);  // 1 + 2^-8: down to even
    CHECK(float_to_bf16(std::bit_cast<float>(0x3F81'8000u)) == 0x3F82);  // 1 + 3 * 2^-8: up to even
    CHECK(float_to_bf16(std::bit_cast<float>(0xBF80'8000u)) == 0xBF80);
    CHECK(float_to_bf16(std::bit_cast<float>(0xBF81'8000u)) == 0xBF82);
    CHECK(float_to_bf16(std::bit_cast<float>(0x3F80'8001u)) == 0x3F81);  // just above a midpoint
    CHECK(float_to_bf16(std::bit_cast<float>(0x3F81'7FFFu)) == 0x3F81);  // just below a midpoint

    // Subnormals: the smallest bf16 subnormal is 2^-133.
    CHECK(bf16_to_float(0x0001) == std::ldexp(1.0f, -133));
    CHECK(float_to_bf16(std::ldexp(1.0f, -133)) == 0x0001);
    CHECK(float_to_bf16(std::ldexp(1.0f, -134)) == 0x0000);              // midpoint 0 / 0x0001: even is 0
    CHECK(float_to_bf16(std::ldexp(3.0f, -134)) == 0x0002);              // midpoint 0x0001 / 0x0002
    CHECK(bf16_to_float(0x007F) == std::ldexp(127.0f, -133));            // largest subnormal
}

TEST_CASE("double to bf16 rounds once, not twice through float") {
    // 1 + 2^-8 + 2^-40 is just above a midpoint: nearest is 0x3F81. Via float it would first become
    // the midpoint 1 + 2^-8 and then round to even 0x3F80.
    CHECK(double_to_bf16(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)) == 0x3F81);
    CHECK(double_to_bf16(1.0 + std::ldexp(1.0, -8) - std::ldexp(1.0, -40)) == 0x3F80);
    CHECK(double_to_bf16(1.0 + std::ldexp(1.0, -8)) == 0x3F80);
    CHECK(double_to_bf16(-(1.0 + 3 * std::ldexp(1.0, -8))) == 0xBF82);
    CHECK(double_to_bf16(1.0 / 3.0) == 0x3EAB);  // 1.0101010|1010... * 2^-2 rounds up
    CHECK(double_to_bf16(1e300) == 0x7F80);
    CHECK(double_to_bf16(-1e300) == 0xFF80);
    CHECK(double_to_bf16(1e-300) == 0x0000);
    CHECK(double_to_bf16(-1e-300) == 0x8000);
    CHECK(double_to_bf16(std::ldexp(1.0, -133)) == 0x0001);
    CHECK(double_to_bf16(std::ldexp(1.0, -134) + std::ldexp(1.0, -160)) == 0x0001);  // above the midpoint
    CHECK(std::isnan(bf16_to_float(double_to_bf16(std::numeric_limits<double>::quiet_NaN()))));
    CHECK(double_to_bf16(std::numeric_limits<double>::infinity()) == 0x7F80);
}

TEST_CASE("f16 to float handles normals, subnormals, infinities and NaN") {
    CHECK(f16_to_float(0x3C00) == 1.0f);
    CHECK(f16_to_float(0xC000) == -2.0f);
    CHECK(f16_to_float(0x7BFF) == 65504.0f);
    CHECK(f16_to_float(0x0400) == std::ldexp(1.0f, -14));      // smallest normal
    CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));      // smallest subnormal
    CHECK(f16_to_float(0x03FF) == std::ldexp(1023.0f, -24));   // largest subnormal
    CHECK(f16_to_float(0x8001) == -std::ldexp(1.0f, -24));
    CHECK(f16_to_float(0x0200) == std::ldexp(1.0f, -15));
    CHECK(f16_to_float(0x3555) == std::ldexp(0x555 | 0x400, -12));  // 0.333251953125
    CHECK(f16_to_float(0x7C00) == std::numeric_limits<float>::infinity());
    CHECK(f16_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
    CHECK(std::isnan(f16_to_float(0x7E00)));
    CHECK(std::isnan(f16_to_float(0x7C01)));
    CHECK(std::signbit(f16_to_float(0x8000)));
    CHECK(f16_to_float(0x8000) == 0.0f);
}

TEST_CASE("dtype names, sizes and parsing") {
    for (DType dtype : all_dtypes) {
        CHECK(parse_dtype(dtype_name(dtype)) == dtype);
    }
    CHECK(dtype_size(DType::BF16) == 2);
    CHECK(dtype_size(DType::F64) == 8);
    CHECK(dtype_size(DType::BOOL) == 1);
    CHECK(dtype_size(DType::U32) == 4);
    CHECK_FALSE(parse_dtype("f32").has_value());
    CHECK_FALSE(parse_dtype("F8_E4M3").has_value());
    CHECK_FALSE(parse_dtype("").has_value());
}

// ---------------------------------------------------------------------------------------------
// Files written by Hugging Face's safetensors package.

TEST_CASE("reads every dtype from a file written by the Python safetensors package (numpy)") {
    const SafetensorsFile file(fixture("numpy_all_dtypes.safetensors"));

    SUBCASE("metadata") {
        const std::map<std::string, std::string> expected{
            {"format", "np"}, {"generator", "tools/make_safetensors_fixtures.py"}, {"unicode", "h\xC3\xA9llo \xE2\x9C\x93"}};
        CHECK(file.metadata() == expected);
    }

    SUBCASE("the tensors tile the data buffer in offset order") {
        REQUIRE(!file.tensors().empty());
        std::size_t position = 0;
        for (const TensorInfo& info : file.tensors()) {
            CHECK(info.begin == position);
            CHECK(info.end - info.begin == static_cast<std::size_t>(info.numel()) * dtype_size(info.dtype));
            position = info.end;
            CHECK(file.find(info.name) == &info);
        }
        CHECK(file.tensors().size() == 25);
    }

    SUBCASE("F64 and F32 equal the formula exactly") {
        std::vector<double> f64(12);
        file.read<double>("f64.matrix", {3, 4}, f64);
        for (std::size_t i = 0; i < f64.size(); ++i) CHECK(same_bits(f64[i], float_formula(i, 1)));

        std::vector<float> f32(24);
        file.read<float>("f32.tensor3", {2, 3, 4}, f32);
        for (std::size_t i = 0; i < f32.size(); ++i) CHECK(f32[i] == static_cast<float>(float_formula(i, 2)));
        // Widening to double is exact.
        const auto widened = file.read_all<double>("f32.tensor3");
        for (std::size_t i = 0; i < widened.size(); ++i) CHECK(widened[i] == static_cast<double>(f32[i]));
        CHECK(file.find("f32.tensor3")->dtype == DType::F32);
        CHECK(file.find("f32.tensor3")->shape == std::vector<std::int64_t>{2, 3, 4});
    }

    SUBCASE("scalars and zero-size tensors") {
        const TensorInfo* scalar = file.find("f32.scalar");
        REQUIRE(scalar != nullptr);
        CHECK(scalar->shape.empty());
        CHECK(scalar->numel() == 1);
        std::array<float, 1> value{};
        file.read<float>("f32.scalar", std::span<const std::int64_t>{}, value);
        CHECK(value[0] == static_cast<float>(float_formula(0, 5)));

        CHECK(file.find("f32.empty")->shape == std::vector<std::int64_t>{0});
        CHECK(file.read_all<float>("f32.empty").empty());
        CHECK(file.find("i64.empty")->shape == std::vector<std::int64_t>{2, 0});
        CHECK(file.find("i64.empty")->numel() == 0);
        CHECK(file.read_all<std::int64_t>("i64.empty").empty());
    }

    SUBCASE("F16 equals numpy's rounding and is within half an ulp of the formula") {
        const auto values = file.read_all<float>("f16.values");
        const auto expected = file.read_all<double>("f16.values.expected");
        REQUIRE(values.size() == 10);
        REQUIRE(expected.size() == 10);
        for (std::size_t i = 0; i < values.size(); ++i) {
            CHECK(static_cast<double>(values[i]) == expected[i]);
            const double exact = float_formula(i, 3);
            CHECK(std::fabs(exact - values[i]) <= std::ldexp(std::fabs(exact), -11));
        }
        const auto specials = file.read_all<float>("f16.specials");
        const float inf = std::numeric_limits<float>::infinity();
        REQUIRE(specials.size() == 13);
        CHECK(specials[0] == 0.0f);
        CHECK_FALSE(std::signbit(specials[0]));
        CHECK(specials[1] == 0.0f);
        CHECK(std::signbit(specials[1]));
        CHECK(specials[2] == 1.0f);
        CHECK(specials[3] == -2.0f);
        CHECK(specials[4] == 65504.0f);
        CHECK(specials[5] == -65504.0f);
        CHECK(specials[6] == std::ldexp(1.0f, -14));
        CHECK(specials[7] == std::ldexp(1.0f, -24));
        CHECK(specials[8] == std::ldexp(3.0f, -24));
        CHECK(specials[9] == std::ldexp(1023.0f, -24));
        CHECK(specials[10] == inf);
        CHECK(specials[11] == -inf);
        CHECK(std::isnan(specials[12]));
    }

    SUBCASE("integer dtypes equal the formula, extremes included") {
        const auto check_values = [&]<class T>(const char* prefix, std::uint64_t k) {
            INFO("dtype: ", prefix);
            const auto values = file.read_all<T>(std::string(prefix) + ".values");
            REQUIRE(values.size() == 6);
            for (std::size_t i = 0; i < values.size(); ++i) CHECK(values[i] == int_formula<T>(i, k));
            // Also widened into a 64-bit integer of the same signedness.
            using Wide = std::conditional_t<std::is_signed_v<T>, std::int64_t, std::uint64_t>;
            const auto wide = file.read_all<Wide>(std::string(prefix) + ".values");
            for (std::size_t i = 0; i < wide.size(); ++i) CHECK(wide[i] == static_cast<Wide>(int_formula<T>(i, k)));
            const auto extremes = file.read_all<T>(std::string(prefix) + ".extremes");
            REQUIRE(extremes.size() == 2);
            CHECK(extremes[0] == std::numeric_limits<T>::min());
            CHECK(extremes[1] == std::numeric_limits<T>::max());
        };
        check_values.operator()<std::int8_t>("i8", 11);
        check_values.operator()<std::uint8_t>("u8", 12);
        check_values.operator()<std::int16_t>("i16", 13);
        check_values.operator()<std::uint16_t>("u16", 14);
        check_values.operator()<std::int32_t>("i32", 15);
        check_values.operator()<std::uint32_t>("u32", 16);
        check_values.operator()<std::int64_t>("i64", 17);
        check_values.operator()<std::uint64_t>("u64", 18);
        // Small unsigned values fit a signed type: range checks are per value, not per dtype.
        const auto u8_as_i32 = file.read_all<std::int32_t>("u8.values");
        for (std::size_t i = 0; i < u8_as_i32.size(); ++i) CHECK(u8_as_i32[i] == int_formula<std::uint8_t>(i, 12));
    }

    SUBCASE("BOOL") {
        const auto mask = file.read_all<bool>("bool.mask");
        REQUIRE(mask.size() == 7);
        for (std::size_t i = 0; i < mask.size(); ++i) CHECK(mask[i] == (i % 3 == 0));
        const auto as_int = file.read_all<int>("bool.mask");
        for (std::size_t i = 0; i < as_int.size(); ++i) CHECK(as_int[i] == (i % 3 == 0 ? 1 : 0));
    }
}

TEST_CASE("reads BF16 written by safetensors.torch, matching torch's rounding bit for bit") {
    const SafetensorsFile file(fixture("torch_bf16.safetensors"));
    CHECK(file.metadata().at("format") == "pt");

    const TensorInfo* matrix = file.find("bf16.matrix");
    REQUIRE(matrix != nullptr);
    CHECK(matrix->dtype == DType::BF16);
    std::vector<float> values(24);
    file.read<float>("bf16.matrix", {4, 6}, values);
    const auto expected = file.read_all<double>("bf16.matrix.expected");
    const auto source = file.read_all<float>("bf16.matrix.source");
    REQUIRE(expected.size() == 24);
    REQUIRE(source.size() == 24);
    for (std::size_t i = 0; i < values.size(); ++i) {
        INFO("element ", i);
        const double exact = float_formula(i, 4);
        CHECK(source[i] == static_cast<float>(exact));
        CHECK(static_cast<double>(values[i]) == expected[i]);                       // torch's value
        CHECK(float_to_bf16(source[i]) == raw_u16(file, *matrix, i));               // our rounding == torch's
        CHECK(std::fabs(exact - values[i]) <= std::ldexp(std::fabs(exact), -8));    // within one bf16 ulp
    }

    // Midpoints, overflow, subnormals, inf, NaN: torch's results against ours and against the values
    // worked out by hand (see BF16_SPECIAL_BITS in tools/make_safetensors_fixtures.py).
    const std::array<std::uint32_t, 18> special_inputs{0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000, 0x3F808001,
                                                       0x3F817FFF, 0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF,
                                                       0x7F800000, 0xFF800000, 0x7FC00000, 0x00010000, 0x00008000,
                                                       0x00018000, 0x80000000, 0x3EAAAAAB};
    const std::array<std::uint16_t, 18> special_results{0x3F80, 0x3F82, 0xBF80, 0xBF82, 0x3F81, 0x3F81,
                                                        0x7F7F, 0x7F7F, 0x7F80, 0x7F80, 0x7F80, 0xFF80,
                                                        0x7FC0 /* any NaN */, 0x0001, 0x0000, 0x0002, 0x8000, 0x3EAB};
    const TensorInfo* specials = file.find("bf16.specials");
    REQUIRE(specials != nullptr);
    REQUIRE(specials->numel() == 18);
    const auto special_source = file.read_all<float>("bf16.specials.source");
    const auto special_expected = file.read_all<double>("bf16.specials.expected");
    const auto special_values = file.read_all<float>("bf16.specials");
    for (std::size_t i = 0; i < special_inputs.size(); ++i) {
        INFO("special ", i);
        CHECK(std::bit_cast<std::uint32_t>(special_source[i]) == special_inputs[i]);
        const std::uint16_t torch_bits = raw_u16(file, *specials, i);
        const std::uint16_t our_bits = float_to_bf16(special_source[i]);
        if (std::isnan(special_source[i])) {
            // torch's vectorised conversion writes 0xFFFF for NaN, we keep the input's sign and
            // payload (0x7FC0 here): both are NaN.
            CHECK(std::isnan(bf16_to_float(torch_bits)));
            CHECK(std::isnan(bf16_to_float(our_bits)));
            CHECK(std::isnan(special_values[i]));
            CHECK(std::isnan(special_expected[i]));
        } else {
            CHECK(torch_bits == special_results[i]);
            CHECK(our_bits == special_results[i]);
            CHECK(same_bits(static_cast<double>(special_values[i]), special_expected[i]));
        }
    }

    std::array<float, 1> scalar{};
    file.read<float>("bf16.scalar", std::span<const std::int64_t>{}, scalar);
    CHECK(scalar[0] == 2.5f);
    CHECK(file.find("bf16.empty")->shape == std::vector<std::int64_t>{0, 3});
    CHECK(file.read_all<float>("bf16.empty").empty());
    const auto ints = file.read_all<std::int32_t>("i32.from_torch");
    REQUIRE(ints.size() == 5);
    for (std::size_t i = 0; i < ints.size(); ++i) CHECK(ints[i] == int_formula<std::int32_t>(i, 21));
}

TEST_CASE("read() reports wrong shapes, missing names, bad buffers and values that do not fit") {
    const SafetensorsFile file(fixture("numpy_all_dtypes.safetensors"));
    std::vector<double> twelve(12);

    CHECK_THROWS_WITH_AS(file.read<double>("f64.matrix", {4, 3}, twelve),
                         doctest::Contains("tensor 'f64.matrix' has shape [3, 4], expected [4, 3]"), SafetensorsError);
    CHECK_THROWS_WITH_AS(file.read<double>("f64.matrix", {12}, twelve),
                         doctest::Contains("has shape [3, 4], expected [12]"), SafetensorsError);

    const std::string missing = safetensors_error_of([&] { file.read<double>("f64.matrx", {3, 4}, twelve); });
    CHECK(missing.find("numpy_all_dtypes.safetensors") != std::string::npos);
    CHECK(missing.find("no tensor named 'f64.matrx'") != std::string::npos);
    CHECK(missing.find("closest names: 'f64.matrix'") != std::string::npos);

    std::vector<double> eleven(11);
    CHECK_THROWS_WITH_AS(file.read<double>("f64.matrix", {3, 4}, eleven),
                         doctest::Contains("has 12 elements, but the output buffer holds 11"), SafetensorsError);

    CHECK_THROWS_WITH_AS(file.read_all<std::int8_t>("i32.extremes"),
                         doctest::Contains("tensor 'i32.extremes' element 0 is -2147483648, which does not fit in int8"),
                         SafetensorsError);
    CHECK_THROWS_WITH_AS(file.read_all<std::uint64_t>("i64.extremes"),
                         doctest::Contains("tensor 'i64.extremes' element 0 is -9223372036854775808, which does not fit in uint64"),
                         SafetensorsError);
    CHECK_THROWS_WITH_AS(file.read_all<std::int64_t>("u64.extremes"),
                         doctest::Contains("element 1 is 18446744073709551615, which does not fit in int64"),
                         SafetensorsError);
    CHECK_THROWS_WITH_AS(file.read_all<float>("i32.values"),
                         doctest::Contains("tensor 'i32.values' has dtype I32, which cannot be read as float"),
                         SafetensorsError);
    CHECK_THROWS_WITH_AS(file.read_all<std::int32_t>("f32.tensor3"),
                         doctest::Contains("has dtype F32, which cannot be read as int32"), SafetensorsError);
    CHECK_THROWS_WITH_AS(file.read_all<bool>("u8.values"), doctest::Contains("cannot be read as bool"),
                         SafetensorsError);
}

// ---------------------------------------------------------------------------------------------
// Writer

TEST_CASE("writer round-trip: F32, F64, BF16, I32, I64, scalars, empty tensors, metadata") {
    std::vector<float> f32(12);
    for (std::size_t i = 0; i < f32.size(); ++i) f32[i] = static_cast<float>(float_formula(i, 1));
    std::vector<double> f64(12);
    for (std::size_t i = 0; i < f64.size(); ++i) f64[i] = float_formula(i, 2);
    std::vector<float> bf16_source(15);
    for (std::size_t i = 0; i < bf16_source.size(); ++i) bf16_source[i] = static_cast<float>(float_formula(i, 3));
    // Rounding known by hand: a midpoint just above (nearest up), an exact midpoint (even, down),
    // a midpoint rounding up to even, and 1/3.
    const std::vector<double> bf16_double_source{1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40), 1.0 + std::ldexp(1.0, -8),
                                                 -(1.0 + 3 * std::ldexp(1.0, -8)), 1.0 / 3.0};
    const std::vector<std::uint16_t> bf16_double_bits{0x3F81, 0x3F80, 0xBF82, 0x3EAB};
    const std::vector<std::int32_t> i32{std::numeric_limits<std::int32_t>::min(), -1, 0, 1, 123456,
                                        std::numeric_limits<std::int32_t>::max()};
    const std::vector<std::int64_t> i64{std::numeric_limits<std::int64_t>::min(), -5, 7,
                                        std::numeric_limits<std::int64_t>::max()};
    const std::vector<float> scalar{0.25f};

    const std::vector<TensorToWrite> tensors{
        {"weights.f32", {3, 4}, std::span<const float>(f32), DType::F32},
        {"weights.f64", {2, 3, 2}, std::span<const double>(f64), DType::F64},
        {"weights.bf16", {5, 3}, std::span<const float>(bf16_source), DType::BF16},
        {"weights.bf16_from_double", {4}, std::span<const double>(bf16_double_source), DType::BF16},
        {"weights.f64_from_f32", {12}, std::span<const float>(f32), DType::F64},
        {"weights.f32_from_f64", {12}, std::span<const double>(f64), DType::F32},
        {"counts.i32", {6}, std::span<const std::int32_t>(i32), DType::I32},
        {"counts.i64_from_i32", {2, 3}, std::span<const std::int32_t>(i32), DType::I64},
        {"steps.i64", {2, 2}, std::span<const std::int64_t>(i64), DType::I64},
        {"scalar", {}, std::span<const float>(scalar), DType::F32},
        {"empty", {0}, std::span<const float>(), DType::F32},
    };
    const std::map<std::string, std::string> metadata{{"gemma3.check", "roundtrip-v1"}, {"step", "42"}};

    TempDir dir;
    const fs::path path = dir / "roundtrip.safetensors";
    write_safetensors(path, tensors, metadata);
    // Also keep a copy for tools/check_safetensors_interop.py when asked to.
    if (const char* copy_to = std::getenv("GEMMA3_SAFETENSORS_INTEROP_OUT"); copy_to != nullptr && *copy_to != '\0')
        write_safetensors(copy_to, tensors, metadata);
    CHECK(dir.entries() == std::vector<std::string>{"roundtrip.safetensors"});

    const std::string bytes = read_bytes(path);
    REQUIRE(bytes.size() >= 8);
    std::uint64_t header_length = 0;
    for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
    CHECK(header_length % 8 == 0);  // data buffer 8-byte aligned
    CHECK(bytes[8] == '{');
    CHECK(bytes[8 + header_length - 1] != '\0');

    const SafetensorsFile file(path);
    CHECK(file.metadata() == metadata);
    // Laid out back to back in the order given.
    REQUIRE(file.tensors().size() == tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        CHECK(file.tensors()[i].name == tensors[i].name);
        CHECK(file.tensors()[i].shape == tensors[i].shape);
        CHECK(file.tensors()[i].dtype == tensors[i].dtype);
    }
    CHECK(file.tensors().back().end == bytes.size() - 8 - header_length);

    std::vector<float> f32_back(12);
    file.read<float>("weights.f32", {3, 4}, f32_back);
    CHECK(f32_back == f32);
    CHECK(file.read_all<double>("weights.f64") == f64);
    const auto f64_from_f32 = file.read_all<double>("weights.f64_from_f32");
    for (std::size_t i = 0; i < f32.size(); ++i) CHECK(f64_from_f32[i] == static_cast<double>(f32[i]));
    const auto f32_from_f64 = file.read_all<float>("weights.f32_from_f64");
    for (std::size_t i = 0; i < f64.size(); ++i) CHECK(f32_from_f64[i] == static_cast<float>(f64[i]));

    const TensorInfo* bf16 = file.find("weights.bf16");
    REQUIRE(bf16 != nullptr);
    const auto bf16_back = file.read_all<float>("weights.bf16");
    for (std::size_t i = 0; i < bf16_source.size(); ++i) {
        INFO("element ", i);
        // A bfloat16 value: the low 16 bits of its float are zero...
        CHECK((std::bit_cast<std::uint32_t>(bf16_back[i]) & 0xFFFFu) == 0);
        // ...and one of the two bfloat16 neighbours of the source, the nearer one.
        const float source = bf16_source[i];
        const std::uint32_t truncated = std::bit_cast<std::uint32_t>(source) & 0xFFFF'0000u;
        const float toward_zero = std::bit_cast<float>(truncated);
        const float away = std::bit_cast<float>(truncated + 0x1'0000u);
        CHECK((bf16_back[i] == toward_zero || bf16_back[i] == away));
        const float other = bf16_back[i] == toward_zero ? away : toward_zero;
        CHECK(std::fabs(bf16_back[i] - source) <= std::fabs(other - source));
    }
    const TensorInfo* bf16_double = file.find("weights.bf16_from_double");
    REQUIRE(bf16_double != nullptr);
    for (std::size_t i = 0; i < bf16_double_bits.size(); ++i) CHECK(raw_u16(file, *bf16_double, i) == bf16_double_bits[i]);

    CHECK(file.read_all<std::int32_t>("counts.i32") == i32);
    const auto widened = file.read_all<std::int64_t>("counts.i64_from_i32");
    CHECK(widened == std::vector<std::int64_t>(i32.begin(), i32.end()));
    CHECK(file.read_all<std::int64_t>("steps.i64") == i64);
    CHECK(file.read_all<float>("scalar") == scalar);
    CHECK(file.find("scalar")->shape.empty());
    CHECK(file.read_all<float>("empty").empty());
}

TEST_CASE("writer with no tensors produces a valid empty file") {
    TempDir dir;
    const fs::path path = dir / "empty.safetensors";
    write_safetensors(path, std::span<const TensorToWrite>{});
    const SafetensorsFile file(path);
    CHECK(file.tensors().empty());
    CHECK(file.metadata().empty());
    CHECK(read_bytes(path).size() == 16);  // 8-byte length + "{}" padded to 8
}

TEST_CASE("writer escapes names and metadata, and rejects strings that are not UTF-8") {
    TempDir dir;
    const fs::path path = dir / "names.safetensors";
    const std::vector<float> one{1.5f};
    const std::string odd_name = "quote\" backslash\\ tab\t caf\xC3\xA9 \xE2\x9C\x93";
    const std::map<std::string, std::string> metadata{{"key \"x\"", "line\nbreak"}};
    write_safetensors(path, std::vector<TensorToWrite>{{odd_name, {1}, std::span<const float>(one), DType::F32}}, metadata);
    const SafetensorsFile file(path);
    REQUIRE(file.tensors().size() == 1);
    CHECK(file.tensors()[0].name == odd_name);
    CHECK(file.read_all<float>(odd_name) == one);
    CHECK(file.metadata() == metadata);

    const std::string not_utf8 = safetensors_error_of([&] {
        write_safetensors(path, std::vector<TensorToWrite>{{"bad\xFF", {1}, std::span<const float>(one), DType::F32}});
    });
    CHECK(not_utf8.find("names.safetensors") != std::string::npos);
    CHECK(not_utf8.find("is not valid UTF-8") != std::string::npos);
    CHECK(SafetensorsFile(path).tensors()[0].name == odd_name);  // the old file is intact
}

TEST_CASE("writer rejects inconsistent input and leaves the existing file alone") {
    TempDir dir;
    const fs::path path = dir / "model.safetensors";
    write_bytes(path, "previous checkpoint");
    const std::vector<float> six(6, 1.0f);
    const std::vector<double> huge{1.0, 1e39};
    const std::vector<float> big_float{1.0f, std::numeric_limits<float>::max()};
    const std::vector<std::int64_t> too_wide{1, std::int64_t{1} << 40};

    const auto check_rejects = [&](const std::vector<TensorToWrite>& tensors, const std::string& phrase) {
        const std::string message = safetensors_error_of([&] { write_safetensors(path, tensors); });
        INFO("message: ", message);
        CHECK(message.find("model.safetensors") != std::string::npos);
        CHECK(message.find(phrase) != std::string::npos);
        CHECK(read_bytes(path) == "previous checkpoint");
        CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});
    };
    check_rejects({{"a", {6}, std::span<const float>(six), DType::F32}, {"a", {6}, std::span<const float>(six), DType::F32}},
                  "duplicate tensor name 'a'");
    check_rejects({{"a", {5}, std::span<const float>(six), DType::F32}},
                  "shape [5] has 5 elements, but the source data has 6");
    check_rejects({{"a", {6}, std::span<const float>(six), DType::I32}}, "cannot store floating-point data as I32");
    check_rejects({{"a", {2}, std::span<const std::int64_t>(too_wide), DType::F32}}, "cannot store integer data as F32");
    check_rejects({{"a", {-6}, std::span<const float>(six), DType::F32}}, "negative dimension");
    check_rejects({{"__metadata__", {6}, std::span<const float>(six), DType::F32}}, "reserved");
    // Value errors are found while writing: the temporary is discarded.
    check_rejects({{"a", {2}, std::span<const double>(huge), DType::F32}}, "element 1 is 1e+39, which overflows F32");
    check_rejects({{"a", {2}, std::span<const float>(big_float), DType::BF16}}, "element 1 is 3.4028235e+38, which overflows BF16");
    check_rejects({{"a", {2}, std::span<const std::int64_t>(too_wide), DType::I32}},
                  "element 1 is 1099511627776, which does not fit in I32");
}

TEST_CASE("F64 values beyond float's range are an error when read as float") {
    TempDir dir;
    const fs::path path = dir / "wide.safetensors";
    const std::vector<double> values{1.0, -1e300, std::numeric_limits<double>::infinity()};
    write_safetensors(path, std::vector<TensorToWrite>{{"x", {3}, std::span<const double>(values), DType::F64}});
    const SafetensorsFile file(path);
    CHECK_THROWS_WITH_AS(file.read_all<float>("x"), doctest::Contains("tensor 'x' element 1 is -1e+300, which is out of the range of float"),
                         SafetensorsError);
    const std::vector<double> inf_only{std::numeric_limits<double>::infinity()};
    write_safetensors(path, std::vector<TensorToWrite>{{"x", {1}, std::span<const double>(inf_only), DType::F64}});
    CHECK(SafetensorsFile(path).read_all<float>("x")[0] == std::numeric_limits<float>::infinity());
}

// ---------------------------------------------------------------------------------------------
// Corrupt and hostile files

TEST_CASE("corrupt files are rejected with a message naming the file and the problem") {
    TempDir dir;
    const std::string f32_16 = R"("dtype":"F32","shape":[2,2])";
    const std::string data16(16, '\x01');

    check_rejected(dir, "empty", "", "too short");
    check_rejected(dir, "short", "abc", "too short");
    check_rejected(dir, "length_beyond_file", little_endian_u64(100) + "{}", "header length 100 exceeds the file size");
    check_rejected(dir, "length_2_pow_63", little_endian_u64(std::uint64_t{1} << 63) + "{}",
                   "header length 9223372036854775808 is larger than the limit");
    check_rejected(dir, "not_json", safetensors_bytes("{not json}", ""), "header is not valid JSON");
    check_rejected(dir, "invalid_utf8", safetensors_bytes("{\"a\xFF\":{}}", ""), "header is not valid JSON");
    check_rejected(dir, "trailing_garbage", safetensors_bytes("{} x", ""), "header is not valid JSON");
    check_rejected(dir, "nul_padding", safetensors_bytes(std::string("{}\0\0\0\0\0\0", 8), ""), "header contains a NUL byte at offset 10");
    check_rejected(dir, "not_object", safetensors_bytes("[1, 2]", ""), "header must be a JSON object, got array");
    check_rejected(dir, "entry_not_object", safetensors_bytes(R"({"w": [1]})", ""), "tensor 'w': entry must be a JSON object");
    check_rejected(dir, "missing_offsets", safetensors_bytes(R"({"w":{)" + f32_16 + "}}", data16),
                   "tensor 'w': missing \"data_offsets\"");
    check_rejected(dir, "missing_dtype", safetensors_bytes(R"({"w":{"shape":[4],"data_offsets":[0,16]}})", data16),
                   "tensor 'w': missing \"dtype\"");
    check_rejected(dir, "dtype_not_string", safetensors_bytes(R"({"w":{"dtype":4,"shape":[4],"data_offsets":[0,16]}})", data16),
                   "\"dtype\" must be a string");
    check_rejected(dir, "unknown_dtype", safetensors_bytes(R"({"w":{"dtype":"F17","shape":[4],"data_offsets":[0,16]}})", data16),
                   "tensor 'w': unknown or unsupported dtype \"F17\"");
    check_rejected(dir, "shape_not_array", safetensors_bytes(R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", data16),
                   "\"shape\" must be an array");
    check_rejected(dir, "negative_dim", safetensors_bytes(R"({"w":{"dtype":"F32","shape":[-2,-2],"data_offsets":[0,16]}})", data16),
                   "tensor 'w': shape[0] is -2, expected a non-negative integer");
    check_rejected(dir, "float_dim", safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2.0,2],"data_offsets":[0,16]}})", data16),
                   "shape[0] is 2.0, expected a non-negative integer");
    check_rejected(dir, "overflowing_shape",
                   safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}})", data16),
                   "too large");
    check_rejected(dir, "overflowing_bytes",
                   safetensors_bytes(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,16]}})", data16),
                   "the byte size overflows");
    check_rejected(dir, "offsets_not_pair", safetensors_bytes(R"({"w":{)" + f32_16 + R"(,"data_offsets":[0]}})", data16),
                   "\"data_offsets\" must be [begin, end]");
    check_rejected(dir, "negative_offset", safetensors_bytes(R"({"w":{)" + f32_16 + R"(,"data_offsets":[-1,15]}})", data16),
                   "must be two non-negative integers");
    check_rejected(dir, "size_mismatch", safetensors_bytes(R"({"w":{)" + f32_16 + R"(,"data_offsets":[0,12]}})", data16.substr(0, 12)),
                   "data_offsets [0, 12] cover 12 bytes, but dtype F32 with shape [2, 2] needs 16 bytes");
    check_rejected(dir, "begin_after_end", safetensors_bytes(R"({"w":{)" + f32_16 + R"(,"data_offsets":[16,0]}})", data16),
                   "data_offsets [16, 0] have begin > end");
    check_rejected(dir, "past_the_end", safetensors_bytes(R"({"w":{)" + f32_16 + R"(,"data_offsets":[0,16]}})", data16.substr(0, 8)),
                   "data_offsets [0, 16] reach past the end of the data buffer (8 bytes");
    check_rejected(dir, "huge_offsets",
                   safetensors_bytes(R"({"w":{)" + f32_16 + R"(,"data_offsets":[18446744073709551600,18446744073709551615]}})", data16),
                   "reach past the end of the data buffer");
    check_rejected(dir, "overlap",
                   safetensors_bytes(R"({"a":{)" + f32_16 + R"(,"data_offsets":[0,16]},"b":{)" + f32_16 +
                                         R"(,"data_offsets":[8,24]}})",
                                     std::string(24, '\0')),
                   "tensors 'a' [0, 16) and 'b' [8, 24) overlap");
    check_rejected(dir, "identical_ranges",
                   safetensors_bytes(R"({"a":{)" + f32_16 + R"(,"data_offsets":[0,16]},"b":{)" + f32_16 +
                                         R"(,"data_offsets":[0,16]}})",
                                     data16),
                   "overlap");
    check_rejected(dir, "empty_tensor_inside_another",
                   safetensors_bytes(R"({"a":{)" + f32_16 + R"(,"data_offsets":[0,16]},"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
                                     data16),
                   "overlap");
    check_rejected(dir, "hole",
                   safetensors_bytes(R"({"a":{)" + f32_16 + R"(,"data_offsets":[0,16]},"b":{)" + f32_16 +
                                         R"(,"data_offsets":[24,40]}})",
                                     std::string(40, '\0')),
                   "data buffer bytes [16, 24) belong to no tensor");
    check_rejected(dir, "hole_at_start", safetensors_bytes(R"({"a":{)" + f32_16 + R"(,"data_offsets":[8,24]}})", std::string(24, '\0')),
                   "data buffer bytes [0, 8) belong to no tensor");
    check_rejected(dir, "trailing_bytes", safetensors_bytes(R"({"a":{)" + f32_16 + R"(,"data_offsets":[0,16]}})", std::string(20, '\0')),
                   "data buffer bytes [16, 20) belong to no tensor");
    check_rejected(dir, "data_without_tensors", safetensors_bytes("{}", "x"), "data buffer bytes [0, 1) belong to no tensor");
    check_rejected(dir, "duplicate_names",
                   safetensors_bytes(R"({"w":{)" + f32_16 + R"(,"data_offsets":[0,16]},"w":{)" + f32_16 +
                                         R"(,"data_offsets":[16,32]}})",
                                     std::string(32, '\0')),
                   "duplicate tensor name 'w'");
    check_rejected(dir, "duplicate_field",
                   safetensors_bytes(R"({"w":{"dtype":"F64","dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", data16),
                   "duplicate key 'dtype' in the entry 'w'");
    check_rejected(dir, "metadata_not_string",
                   safetensors_bytes(R"({"__metadata__":{"format":"pt","step":5},"w":{)" + f32_16 + R"(,"data_offsets":[0,16]}})", data16),
                   "\"__metadata__\" value of 'step' must be a string, got number");
    check_rejected(dir, "metadata_not_object", safetensors_bytes(R"({"__metadata__":["pt"]})", ""),
                   "\"__metadata__\" must be an object");
    check_rejected(dir, "deep_nesting", safetensors_bytes("{\"w\":" + std::string(200, '[') + std::string(200, ']') + "}", ""),
                   "more than 64 levels deep");

    // A valid file written by Hugging Face's library, cut short in the data and in the header.
    const std::string valid = read_bytes(fixture("torch_bf16.safetensors"));
    REQUIRE(valid.size() > 100);
    check_rejected(dir, "truncated_data", valid.substr(0, valid.size() - 10), "reach past the end of the data buffer");
    check_rejected(dir, "truncated_header", valid.substr(0, 50), "exceeds the file size");
    // Padding after the JSON is allowed (the format pads with spaces); the untouched file loads.
    write_bytes(dir / "valid.safetensors", valid);
    CHECK_NOTHROW(SafetensorsFile(dir / "valid.safetensors"));
}

TEST_CASE("a missing file or a directory gives a SafetensorsError naming the path") {
    TempDir dir;
    const std::string missing = safetensors_error_of([&] { SafetensorsFile(dir / "nope.safetensors"); });
    CHECK(missing.find("nope.safetensors") != std::string::npos);
    CHECK(missing.find("No such file or directory") != std::string::npos);
    const std::string directory = safetensors_error_of([&] { SafetensorsFile file(dir.path()); });
    CHECK(directory.find("not a regular file") != std::string::npos);
}

TEST_CASE("random corruptions of a valid file load or throw SafetensorsError, never crash") {
    // Under AddressSanitizer this also proves that no mutation makes the reader touch memory
    // outside the mapping. Deterministic: fixed seed.
    const std::string valid = read_bytes(fixture("numpy_all_dtypes.safetensors"));
    TempDir dir;
    const fs::path path = dir / "mutated.safetensors";
    std::mt19937_64 random(12345);
    int loaded = 0;
    int rejected = 0;
    for (int round = 0; round < 600; ++round) {
        std::string bytes = valid;
        const int mutations = 1 + static_cast<int>(random() % 4);
        for (int m = 0; m < mutations; ++m) {
            switch (random() % 4) {
                case 0:  // flip a byte in the length prefix or the header, where it matters most
                    bytes[random() % std::min<std::size_t>(bytes.size(), 1800)] = static_cast<char>(random());
                    break;
                case 1:  // truncate
                    bytes.resize(random() % bytes.size());
                    break;
                case 2:  // replace a digit of the header by another digit
                {
                    const std::size_t at = 8 + random() % 1790;
                    if (at < bytes.size() && bytes[at] >= '0' && bytes[at] <= '9')
                        bytes[at] = static_cast<char>('0' + random() % 10);
                    break;
                }
                default:  // append junk
                    bytes.append(random() % 16, static_cast<char>(random()));
                    break;
            }
            if (bytes.empty()) break;
        }
        write_bytes(path, bytes);
        try {
            const SafetensorsFile file(path);
            ++loaded;
            for (const TensorInfo& info : file.tensors()) {
                try {
                    if (dtype_is_floating(info.dtype)) (void)file.read_all<double>(info.name);
                    else if (dtype_is_unsigned_integer(info.dtype)) (void)file.read_all<std::uint64_t>(info.name);
                    else (void)file.read_all<std::int64_t>(info.name);
                } catch (const SafetensorsError&) {
                    // BOOL bytes other than 0/1 are reported; anything else is a bug.
                    CHECK(info.dtype == DType::BOOL);
                }
            }
        } catch (const SafetensorsError&) {
            ++rejected;
        }
    }
    CHECK(loaded + rejected == 600);
    CHECK(rejected > 0);
    MESSAGE("loaded ", loaded, ", rejected ", rejected);
}

// ---------------------------------------------------------------------------------------------
// File helpers

TEST_CASE("MappedFile maps whole files, empty ones included, and is move-only") {
    static_assert(!std::is_copy_constructible_v<MappedFile>);
    static_assert(std::is_nothrow_move_constructible_v<MappedFile>);
    TempDir dir;
    write_bytes(dir / "empty.bin", "");
    const MappedFile empty(dir / "empty.bin");
    CHECK(empty.bytes().empty());

    write_bytes(dir / "abc.bin", "abc");
    MappedFile first(dir / "abc.bin");
    REQUIRE(first.bytes().size() == 3);
    CHECK(static_cast<char>(first.bytes()[1]) == 'b');
    MappedFile second(std::move(first));
    CHECK(second.bytes().size() == 3);
    CHECK(second.path() == dir / "abc.bin");
    CHECK(static_cast<char>(second.bytes()[2]) == 'c');
    MappedFile third(dir / "empty.bin");
    third = std::move(second);
    CHECK(static_cast<char>(third.bytes()[0]) == 'a');

    CHECK_THROWS_WITH_AS(MappedFile(dir / "missing.bin"), doctest::Contains("missing.bin': No such file or directory"), FileError);
}

TEST_CASE("write_file_atomically replaces the file, or leaves it untouched if writing fails") {
    TempDir dir;
    const fs::path path = dir / "checkpoint.bin";
    write_bytes(path, "old contents");

    CHECK_THROWS_WITH_AS(write_file_atomically(path,
                                               [](std::ostream& out) {
                                                   out << "partial new contents";
                                                   throw std::runtime_error("killed while writing");
                                               }),
                         "killed while writing", std::runtime_error);
    CHECK(read_bytes(path) == "old contents");
    CHECK(dir.entries() == std::vector<std::string>{"checkpoint.bin"});

    // A stream that went bad counts as a failure too.
    CHECK_THROWS_WITH_AS(write_file_atomically(path,
                                               [](std::ostream& out) {
                                                   out << "partial";
                                                   out.setstate(std::ios::failbit);
                                               }),
                         doctest::Contains("checkpoint.bin': the output stream failed"), FileError);
    CHECK(read_bytes(path) == "old contents");
    CHECK(dir.entries() == std::vector<std::string>{"checkpoint.bin"});

    // Large writes (past the internal buffer) arrive complete.
    const std::string large(200'000, 'x');
    write_file_atomically(path, [&](std::ostream& out) {
        out << "new contents ";
        out.write(large.data(), static_cast<std::streamsize>(large.size()));
        out << " end";
    });
    CHECK(read_bytes(path) == "new contents " + large + " end");
    CHECK(dir.entries() == std::vector<std::string>{"checkpoint.bin"});

    // Writing into a directory that does not exist fails with the path in the message.
    CHECK_THROWS_WITH_AS(write_file_atomically(dir / "no_such_dir" / "file.bin", [](std::ostream& out) { out << "x"; }),
                         doctest::Contains("no_such_dir"), FileError);
}
