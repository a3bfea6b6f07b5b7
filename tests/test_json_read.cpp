// Safe JSON reading (include/gemma3/io/json_read.hpp): limits, range-checked numbers, short messages.
// Expected values are written out by hand from the JSON text and the C++ types' ranges.
#include <doctest/doctest.h>

#include <gemma3/io/config_file.hpp>
#include <gemma3/io/json_read.hpp>

#include "config_test_support.hpp"

#include <cstdint>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

using namespace gemma3;
using gemma3::test::contains;
using gemma3::test::printable_ascii;
using json_read::json;

namespace {

// A loader's error type constructible from one message, like CheckpointError.
struct OneMessageError : std::runtime_error {
    explicit OneMessageError(const std::string& m) : std::runtime_error(m) {}
};

template <class Error, class F>
std::string message_of(F&& call) {
    try {
        call();
    } catch (const Error& e) {
        return e.what();
    }
    FAIL("expected an exception, but nothing was thrown");
    return {};
}

std::string nested_arrays(std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

template <class T>
std::string why_not_integer(const json& v, T low = std::numeric_limits<T>::min(), T high = std::numeric_limits<T>::max()) {
    std::string why;
    const auto n = json_read::to_integer<T>(v, low, high, why);
    if (n) return "ok " + std::to_string(*n);
    return why;
}

}  // namespace

TEST_CASE("integers are read only when whole, finite and in range") {
    CHECK(why_not_integer<int>(json::parse("42")) == "ok 42");
    CHECK(why_not_integer<int>(json::parse("-7")) == "ok -7");
    CHECK(why_not_integer<int>(json::parse("1e3")) == "ok 1000");
    CHECK(why_not_integer<int>(json::parse("6.0")) == "ok 6");
    CHECK(why_not_integer<int>(json::parse("7.9")) == "is not a whole number");
    CHECK(why_not_integer<std::int64_t>(json::parse("1e300")) == "is out of range");
    CHECK(why_not_integer<int>(json::parse("4294967297")) == "is out of range");  // 2^32 + 1, not 1
    CHECK(why_not_integer<int>(json::parse("2147483647")) == "ok 2147483647");
    CHECK(why_not_integer<int>(json::parse("2147483648")) == "is out of range");
    CHECK(why_not_integer<int>(json::parse("-2147483648")) == "ok -2147483648");
    CHECK(why_not_integer<int>(json::parse("-2147483649")) == "is out of range");
    CHECK(why_not_integer<std::uint32_t>(json::parse("-1")) == "is out of range");
    CHECK(why_not_integer<std::int64_t>(json::parse("9223372036854775807")) == "ok 9223372036854775807");
    CHECK(why_not_integer<std::int64_t>(json::parse("9223372036854775808")) == "is out of range");
    CHECK(why_not_integer<std::int64_t>(json::parse("-9223372036854775808")) == "ok -9223372036854775808");
    CHECK(why_not_integer<std::uint64_t>(json::parse("18446744073709551615")) == "ok 18446744073709551615");
    // 2^53 is the last whole double every integer below reaches; beyond it the text may not mean
    // the value it parsed to.
    CHECK(why_not_integer<std::int64_t>(json::parse("9007199254740992.0")) == "ok 9007199254740992");
    CHECK(why_not_integer<std::int64_t>(json::parse("9007199254740994.0")) == "is out of range");
    CHECK(why_not_integer<int>(json::parse("\"5\"")) == "is a string");
    CHECK(why_not_integer<int>(json::parse("true")) == "is a boolean");
    CHECK(why_not_integer<int>(json::parse("null")) == "is null");
    CHECK(why_not_integer<int>(json::parse("[1]")) == "is an array");
    CHECK(why_not_integer<int>(json(std::numeric_limits<double>::quiet_NaN())) == "is not a finite number");
    CHECK(why_not_integer<int>(json(std::numeric_limits<double>::infinity())) == "is not a finite number");
    // Bounds of the caller's range.
    CHECK(why_not_integer<int>(json::parse("0"), 1, 10) == "is out of range");
    CHECK(why_not_integer<int>(json::parse("10"), 1, 10) == "ok 10");
    CHECK(why_not_integer<int>(json::parse("1.1e1"), 1, 10) == "is out of range");
}

TEST_CASE("numbers must be finite") {
    std::string why;
    CHECK(json_read::to_number(json::parse("1e-3"), why) == 1e-3);
    CHECK(json_read::to_number(json::parse("12"), why) == 12.0);
    CHECK_FALSE(json_read::to_number(json(std::numeric_limits<double>::infinity()), why));
    CHECK(why == "is not a finite number");
    CHECK_FALSE(json_read::to_number(json::parse("\"1e-3\""), why));
    CHECK(why == "is a string");
    CHECK_FALSE(json_read::to_number(json::parse("false"), why));
    CHECK(why == "is a boolean");
}

TEST_CASE("a bad value is quoted as a short ASCII prefix") {
    CHECK(json_read::excerpt(json::parse("7.9")) == "7.9");
    CHECK(json_read::excerpt(json::parse("\"x\"")) == "\"x\"");
    CHECK(json_read::excerpt(json::parse("[1, {\"a\": null}]")) == "[1,{\"a\":null}]");
    CHECK(json_read::excerpt(json(std::numeric_limits<double>::infinity())) == "inf");

    const std::string megabyte(1 << 20, 'a');
    const std::string long_string = json_read::excerpt(json(megabyte));
    CHECK(long_string == "\"" + std::string(59, 'a') + "...");

    // Non-ASCII and invalid UTF-8 come out escaped, never as raw bytes.
    CHECK(json_read::excerpt(json("caf\xc3\xa9")) == "\"caf\\u00e9\"");
    CHECK(printable_ascii(json_read::excerpt(json("\xff\xfe"))));

    // A deep value is not walked deeper than the quote is long.
    const json deep = json::parse(nested_arrays(60));
    CHECK(json_read::excerpt(deep) == std::string(60, '[') + "...");
    json wide = json::array();
    for (int i = 0; i < 100000; ++i) wide.push_back(i);
    CHECK(json_read::excerpt(wide).size() == 63);
}

TEST_CASE("parsing refuses documents nested deeper than the limit, however deep") {
    const json_read::Limits limits{};
    CHECK_NOTHROW(json_read::parse<OneMessageError>(nested_arrays(64), "doc.json"));
    CHECK(message_of<OneMessageError>([] { json_read::parse<OneMessageError>(nested_arrays(65), "doc.json"); }) ==
          "doc.json: is nested deeper than 64 levels, too deep for this JSON file");
    CHECK(limits.max_depth == 64);

    // The fuzzers' stack overflow: 200,000 levels (400 KB) inside a field.
    const std::string hostile = "{\"vocab_size\":" + nested_arrays(200000) + "}";
    CHECK(contains(message_of<OneMessageError>([&] { json_read::parse<OneMessageError>(hostile, "deep.json"); }),
                   "is nested deeper than 64 levels"));
    const std::string objects = [] {
        std::string text;
        for (int i = 0; i < 100000; ++i) text += "{\"a\":";
        text += "1";
        for (int i = 0; i < 100000; ++i) text += "}";
        return text;
    }();
    CHECK_THROWS_AS(json_read::parse<OneMessageError>(objects, "deep.json"), OneMessageError);

    // A lower limit of the caller's.
    CHECK_THROWS_AS(json_read::parse<OneMessageError>("[[1]]", "doc", json_read::Limits{1024, 1}), OneMessageError);
    CHECK_NOTHROW(json_read::parse<OneMessageError>("[1]", "doc", json_read::Limits{1024, 1}));
}

TEST_CASE("parse errors carry no nlohmann prefix, no raw bytes and no megabyte of quoted token") {
    const std::string syntax = message_of<OneMessageError>([] { json_read::parse<OneMessageError>("{\"a\": 1,}", "s.json"); });
    CHECK(syntax.starts_with("s.json: not valid JSON: parse error at line 1, column 9"));
    CHECK_FALSE(contains(syntax, "[json.exception"));

    const std::string bytes =
        message_of<OneMessageError>([] { json_read::parse<OneMessageError>("{\"a\": \"\xff\"}", "b.json"); });
    CHECK(bytes.starts_with("b.json: not valid JSON: "));
    CHECK(printable_ascii(bytes));
    CHECK(contains(bytes, "\\xff"));

    const std::string unterminated = "\"" + std::string(1 << 20, 'a');
    const std::string long_token =
        message_of<OneMessageError>([&] { json_read::parse<OneMessageError>(unterminated, "l.json"); });
    CHECK(long_token.size() < 300);

    const std::string overflow = message_of<OneMessageError>([] { json_read::parse<OneMessageError>("[1e999]", "o.json"); });
    CHECK(contains(overflow, "o.json: not valid JSON: number overflow"));
    CHECK(contains(overflow, "1e999"));

    CHECK(message_of<OneMessageError>([] { json_read::parse<OneMessageError>("[1, 2]", "big.json", {4, 64}); }) ==
          "big.json: is larger than 4 bytes, too large for this JSON file");
}

TEST_CASE("duplicate top-level keys are reported when asked for") {
    std::vector<std::string> duplicates;
    const json j = json_read::parse<OneMessageError>(R"({"a": 1, "b": {"a": 2, "a": 3}, "a": 4, "a": 5})", "d", {},
                                                     &duplicates);
    CHECK(duplicates == std::vector<std::string>{"a"});
    CHECK(j.at("a") == 5);
}

TEST_CASE("files: missing, a directory and endless input are refused with the path") {
    const std::string missing = "/nonexistent/dir/x.json";
    CHECK(message_of<OneMessageError>([&] { json_read::read_file<OneMessageError>(missing, "trainer state"); }) ==
          missing + ": no such file (expected a trainer state JSON file)");
    const auto dir = std::filesystem::temp_directory_path().string();
    CHECK(message_of<OneMessageError>([&] { json_read::read_file<OneMessageError>(dir, "trainer state"); }) ==
          dir + ": is a directory (expected a trainer state JSON file)");
    CHECK(message_of<OneMessageError>([] { json_read::read_text<OneMessageError>("/dev/zero", "vocab", 1000); }) ==
          "/dev/zero: is larger than 1000 bytes, too large for a vocab JSON file");
}

TEST_CASE("an object reader names the file and the field path and throws the caller's error type") {
    const json doc = json::parse(R"({"iteration": 1e300, "steps": 7.9, "name": 5, "ok": 12, "flag": true,
                                     "data_parallel": {"ranks": 4294967297, "samplers": "x"}, "loss": "nan"})");
    const json_read::ObjectReader<OneMessageError> r(doc, "state.json");
    CHECK(r.integer<int>("ok", 1) == 12);
    CHECK(r.boolean("flag"));
    CHECK(message_of<OneMessageError>([&] { (void)r.integer<std::int64_t>("iteration", 0); }) ==
          "state.json: field \"iteration\": value 1e+300 is out of range; expected an integer >= 0");
    CHECK(message_of<OneMessageError>([&] { (void)r.integer<std::int64_t>("steps", 0); }) ==
          "state.json: field \"steps\": value 7.9 is not a whole number; expected an integer >= 0");
    CHECK(message_of<OneMessageError>([&] { (void)r.string("name"); }) ==
          "state.json: field \"name\": value 5 is a number; expected a string");
    CHECK(message_of<OneMessageError>([&] { (void)r.number("loss"); }) ==
          "state.json: field \"loss\": value \"nan\" is a string; expected a finite number");
    CHECK(message_of<OneMessageError>([&] { (void)r.at("missing"); }) == "state.json: field \"missing\": missing");
    const auto parallel = r.object("data_parallel");
    CHECK(message_of<OneMessageError>([&] { (void)parallel.integer<int>("ranks", 1); }) ==
          "state.json: field \"data_parallel.ranks\": value 4294967297 is out of range; expected a positive integer");
    CHECK(message_of<OneMessageError>([&] { (void)parallel.array("samplers"); }) ==
          "state.json: field \"data_parallel.samplers\": value \"x\" is a string; expected an array");
    CHECK(message_of<OneMessageError>([&] { (void)r.object("flag"); }) ==
          "state.json: field \"flag\": value true is a boolean; expected an object");
    CHECK(message_of<OneMessageError>([] { json_read::ObjectReader<OneMessageError>(json::array(), "top.json"); }) ==
          "top.json: expected a JSON object at the top level, found an array");
    CHECK(message_of<OneMessageError>([&] { (void)r.integer<int>("ok", 1, 10); }) ==
          "state.json: field \"ok\": value 12 is out of range; expected an integer in [1, 10]");

    // An error type built from a list of problems (ConfigError) works too.
    const json_read::ObjectReader<ConfigError> config(doc, "config.json");
    try {
        (void)config.integer<int>("steps");
        FAIL("expected a ConfigError");
    } catch (const ConfigError& e) {
        CHECK(e.problems() == std::vector<std::string>{
                                  "config.json: field \"steps\": value 7.9 is not a whole number; expected an integer "
                                  "in [-2147483648, 2147483647]"});
    }
}
