// Safe reading of JSON documents that come from files a user (or an attacker) controls.
//
// Every loader of the library reads its JSON through these helpers, so that hostile input gives a
// clear error of the loader's own documented type (ConfigError, CheckpointError, ...) instead of a
// crash, undefined behaviour or a bare nlohmann exception:
//   - a size cap on the document, and a nesting-depth limit enforced while parsing: nothing in
//     nlohmann (dump(), operator==, copies) may then recurse deeper than the limit;
//   - integer reads that accept only whole, finite values inside a range (nlohmann's get<int>()
//     casts a double such as 1e300 or 7.9 directly, which is undefined or silently truncates);
//   - number reads that reject non-finite values (a json built in code can hold them);
//   - messages that name the file and the field, quote at most a short ASCII prefix of a bad value,
//     and carry no "[json.exception...]" prefixes or raw bytes.
//
// The error type is a template parameter `Error` of the caller's choice: any exception type
// constructible from a std::string, or from a std::vector<std::string> of problems (ConfigError).
//
//   const json doc = json_read::read_file<CheckpointError>(path, "trainer state");
//   const json_read::ObjectReader<CheckpointError> state(doc, path.string());
//   const auto iteration = state.integer<std::int64_t>("iteration", 0);
//   const auto ranks = state.object("data_parallel").integer<int>("ranks", 1);  // "data_parallel.ranks"
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace gemma3::json_read {

using json = nlohmann::json;

// Limits on a JSON document read from outside. The defaults suit every file the library reads
// (configs, trainer state, tokenizer files, safetensors headers are a few levels deep).
struct Limits {
    std::size_t max_bytes = std::size_t{16} << 20;
    int max_depth = 64;  // containers nested in each other, the top-level one included
};

// How much of a bad value a message quotes.
inline constexpr std::size_t max_quoted_chars = 60;

namespace detail {

// Constructs the caller's error type from one message.
template <class Error>
[[noreturn]] void fail(std::string message) {
    if constexpr (std::is_constructible_v<Error, std::string>) {
        throw Error(std::move(message));
    } else {
        throw Error(std::vector<std::string>{std::move(message)});
    }
}

inline void append_quoted_ascii(std::string& out, const json& scalar) {
    out += scalar.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
}

// Writes a prefix of `value` as JSON text into `out`, stopping once `out` reaches `budget`
// characters. Every level of nesting writes at least one character, so the recursion is no deeper
// than the budget, whatever the value's depth.
inline void write_excerpt(const json& value, std::string& out, std::size_t budget) {
    if (out.size() >= budget) return;
    switch (value.type()) {
        case json::value_t::array: {
            out += '[';
            bool first = true;
            for (const auto& element : value) {
                if (out.size() >= budget) return;
                if (!first) out += ',';
                first = false;
                write_excerpt(element, out, budget);
            }
            out += ']';
            return;
        }
        case json::value_t::object: {
            out += '{';
            bool first = true;
            for (const auto& item : value.items()) {
                if (out.size() >= budget) return;
                if (!first) out += ',';
                first = false;
                append_quoted_ascii(out, json(item.key().substr(0, budget)));
                out += ':';
                write_excerpt(item.value(), out, budget);
            }
            out += '}';
            return;
        }
        case json::value_t::string:
            // Only a prefix of a long string is escaped, so a megabyte string costs nothing.
            append_quoted_ascii(out, json(value.get_ref<const std::string&>().substr(0, budget)));
            return;
        case json::value_t::number_float: {
            const double d = value.get<double>();
            if (!std::isfinite(d)) {  // JSON would write these as null
                out += std::isnan(d) ? "nan" : (d > 0 ? "inf" : "-inf");
                return;
            }
            append_quoted_ascii(out, value);
            return;
        }
        default:
            append_quoted_ascii(out, value);
            return;
    }
}

}  // namespace detail

// A value as a message quotes it: JSON text, ASCII only, at most max_quoted_chars characters and
// "..." when cut. Never recurses deeper than that, so it is safe on any value.
inline std::string excerpt(const json& value) {
    std::string text;
    detail::write_excerpt(value, text, max_quoted_chars + 1);
    if (text.size() > max_quoted_chars) {
        text.resize(max_quoted_chars);
        text += "...";
    }
    return text;
}

// The JSON kind of a value, for "value X is <kind>; expected ..." messages.
inline std::string kind(const json& value) {
    switch (value.type()) {
        case json::value_t::null: return "null";
        case json::value_t::boolean: return "a boolean";
        case json::value_t::string: return "a string";
        case json::value_t::array: return "an array";
        case json::value_t::object: return "an object";
        case json::value_t::number_float: return "a number with a fraction";
        default: return "a number";
    }
}

// An exception message of nlohmann (or anything else) made fit for ours: the "[json.exception.
// parse_error.101] " prefix removed, bytes outside printable ASCII written as \xNN, and at most
// 200 characters (nlohmann quotes the whole token it last read, which may be megabytes).
inline std::string clean_message(std::string_view message) {
    if (message.starts_with("[json.")) {
        if (const auto end = message.find("] "); end != std::string_view::npos) message.remove_prefix(end + 2);
    }
    constexpr std::size_t max_chars = 200;
    std::string text;
    for (const char c : message) {
        if (text.size() >= max_chars) {
            text += "...";
            break;
        }
        const auto byte = static_cast<unsigned char>(c);
        if (byte >= 0x20 && byte < 0x7f) {
            text += c;
        } else {
            constexpr std::string_view hex = "0123456789abcdef";
            text += "\\x";
            text += hex[byte >> 4];
            text += hex[byte & 0xf];
        }
    }
    return text;
}

// Parses JSON text, refusing more than limits.max_bytes and nesting deeper than limits.max_depth.
// Errors name `source`. When `duplicate_keys` is given, it receives each key that appears more than
// once in the top-level object (a parser keeps only one of the values, so such a document does not
// say what it means); otherwise duplicates are left to nlohmann (the last value wins).
template <class Error>
json parse(std::string_view text, std::string_view source, const Limits& limits = {},
           std::vector<std::string>* duplicate_keys = nullptr) {
    if (text.size() > limits.max_bytes) {
        detail::fail<Error>(std::string(source) + ": is larger than " + std::to_string(limits.max_bytes) +
                            " bytes, too large for this JSON file");
    }
    // Thrown from the parser callback to stop at the first container that is too deep, before it
    // is built (nlohmann's parser itself is iterative; only what is built can recurse).
    struct TooDeep {};
    std::vector<std::string> seen;
    const json::parser_callback_t check = [&](int depth, json::parse_event_t event, json& parsed) {
        if (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) {
            if (depth + 1 > limits.max_depth) throw TooDeep{};
        } else if (duplicate_keys && event == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
            const auto& key = parsed.get_ref<const std::string&>();
            if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
                if (std::find(duplicate_keys->begin(), duplicate_keys->end(), key) == duplicate_keys->end()) {
                    duplicate_keys->push_back(key);
                }
            } else {
                seen.push_back(key);
            }
        }
        return true;
    };
    try {
        return json::parse(text.begin(), text.end(), check);
    } catch (const TooDeep&) {
        detail::fail<Error>(std::string(source) + ": is nested deeper than " + std::to_string(limits.max_depth) +
                            " levels, too deep for this JSON file");
    } catch (const json::exception& e) {
        detail::fail<Error>(std::string(source) + ": not valid JSON: " + clean_message(e.what()));
    }
}

// Reads a whole file of at most `max_bytes`, refusing directories, missing files and anything
// larger (reading stops just past the cap, so a wrong path such as /dev/zero or a token file fails
// fast instead of filling memory; pipes still work). `what` names the expected content in messages
// ("model config" gives "expected a model config JSON file").
template <class Error>
std::string read_text(const std::filesystem::path& path, std::string_view what,
                      std::size_t max_bytes = Limits{}.max_bytes) {
    const std::string name = path.string();
    const std::string expected = "expected a " + std::string(what) + " JSON file";
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (status.type() == std::filesystem::file_type::not_found) {
        detail::fail<Error>(name + ": no such file (" + expected + ")");
    }
    if (ec) detail::fail<Error>(name + ": cannot be examined: " + ec.message() + " (" + expected + ")");
    if (std::filesystem::is_directory(status)) detail::fail<Error>(name + ": is a directory (" + expected + ")");
    errno = 0;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int error = errno;
        detail::fail<Error>(name + ": cannot be opened for reading" +
                            (error != 0 ? ": " + std::generic_category().message(error) : std::string()));
    }
    std::string text;
    std::array<char, 1 << 16> chunk{};
    while (in && text.size() <= max_bytes) {
        in.read(chunk.data(), chunk.size());
        text.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
    }
    if (in.bad()) detail::fail<Error>(name + ": read error (" + expected + ")");
    if (text.size() > max_bytes) {
        detail::fail<Error>(name + ": is larger than " + std::to_string(max_bytes) + " bytes, too large for a " +
                            std::string(what) + " JSON file");
    }
    return text;
}

// read_text, then parse, with the file's path as the source of messages.
template <class Error>
json read_file(const std::filesystem::path& path, std::string_view what, const Limits& limits = {},
               std::vector<std::string>* duplicate_keys = nullptr) {
    return parse<Error>(read_text<Error>(path, what, limits.max_bytes), path.string(), limits, duplicate_keys);
}

// --- Values ------------------------------------------------------------------------------------
// The checks below return nullopt when the value is unusable and put the reason into `why`, as a
// phrase that follows "value <excerpt> " ("is not a whole number"); callers that collect every
// problem of a file (the config loaders) use these directly.

// An integer of type T in [low, high]. Accepts JSON integers, and numbers written with a fraction
// or an exponent when they are whole (1e3 reads as 1000) and at most 2^53 in magnitude (beyond it
// a double no longer holds every integer, so the text may not mean the value it parsed to).
template <std::integral T>
    requires(!std::same_as<T, bool>)
std::optional<T> to_integer(const json& value, T low, T high, std::string& why) {
    if (value.is_number_unsigned()) {
        const auto u = value.get<std::uint64_t>();
        if (std::cmp_greater(u, high)) {  // also when high < 0
            why = "is out of range";
            return std::nullopt;
        }
        const auto n = static_cast<T>(u);  // fits: 0 <= u <= high
        if (std::cmp_less(n, low)) {
            why = "is out of range";
            return std::nullopt;
        }
        return n;
    }
    if (value.is_number_integer()) {  // negative (nlohmann stores non-negative ones as unsigned)
        const auto s = value.get<std::int64_t>();
        if (std::cmp_less(s, low) || std::cmp_greater(s, high)) {
            why = "is out of range";
            return std::nullopt;
        }
        return static_cast<T>(s);
    }
    if (value.is_number_float()) {
        const double d = value.get<double>();
        if (!std::isfinite(d)) {
            why = "is not a finite number";
            return std::nullopt;
        }
        if (d != std::floor(d)) {
            why = "is not a whole number";
            return std::nullopt;
        }
        if (std::fabs(d) > 9007199254740992.0) {
            why = "is out of range";
            return std::nullopt;
        }
        const auto s = static_cast<std::int64_t>(d);  // exact: |d| <= 2^53
        if (std::cmp_less(s, low) || std::cmp_greater(s, high)) {
            why = "is out of range";
            return std::nullopt;
        }
        return static_cast<T>(s);
    }
    why = "is " + kind(value);
    return std::nullopt;
}

// A finite number (a JSON integer or a number with a fraction).
inline std::optional<double> to_number(const json& value, std::string& why) {
    if (!value.is_number()) {
        why = "is " + kind(value);
        return std::nullopt;
    }
    const double d = value.get<double>();
    if (!std::isfinite(d)) {
        why = "is not a finite number";
        return std::nullopt;
    }
    return d;
}

// "[low, high]" for messages, with the type's own limits written as words.
template <std::integral T>
std::string range_text(T low, T high) {
    if (low == 0 && high == std::numeric_limits<T>::max()) return "an integer >= 0";
    if (low == 1 && high == std::numeric_limits<T>::max()) return "a positive integer";
    if (high == std::numeric_limits<T>::max() && low != std::numeric_limits<T>::min()) {
        return "an integer >= " + std::to_string(low);
    }
    return "an integer in [" + std::to_string(low) + ", " + std::to_string(high) + "]";
}

// --- Objects -----------------------------------------------------------------------------------

// Reads the members of one JSON object, throwing Error at the first problem with a message such as
//   <source>: field "data_parallel.ranks": value 1e+10 is out of range; expected a positive integer
// For documents whose problems are all reported at once, use the value checks above instead.
template <class Error>
class ObjectReader {
public:
    // `path` is the field path of this object inside the document ("" for the top level).
    ObjectReader(const json& object, std::string source, std::string path = {})
        : object_(object), source_(std::move(source)), path_(std::move(path)) {
        if (!object_.is_object()) {
            if (path_.empty()) {
                detail::fail<Error>(source_ + ": expected a JSON object at the top level, found " + kind(object_));
            }
            detail::fail<Error>(source_ + ": field \"" + path_ + "\": value " + excerpt(object_) + " is " +
                                kind(object_) + "; expected an object");
        }
    }

    const json& value() const noexcept { return object_; }
    const std::string& source() const noexcept { return source_; }

    bool has(std::string_view key) const { return object_.contains(key); }

    // The field's name in messages: "key", or "path.key" inside a nested object.
    std::string field(std::string_view key) const {
        return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
    }

    [[noreturn]] void fail(std::string_view key, const std::string& text) const {
        detail::fail<Error>(source_ + ": field \"" + field(key) + "\": " + text);
    }

    // The member `key`; throws when it is missing.
    const json& at(std::string_view key) const {
        const auto it = object_.find(key);
        if (it == object_.end()) fail(key, "missing");
        return *it;
    }

    template <std::integral T>
        requires(!std::same_as<T, bool>)
    T integer(std::string_view key, T low = std::numeric_limits<T>::min(),
              T high = std::numeric_limits<T>::max()) const {
        const json& v = at(key);
        std::string why;
        const auto n = to_integer<T>(v, low, high, why);
        if (!n) fail(key, "value " + excerpt(v) + " " + why + "; expected " + range_text(low, high));
        return *n;
    }

    double number(std::string_view key) const {
        const json& v = at(key);
        std::string why;
        const auto d = to_number(v, why);
        if (!d) fail(key, "value " + excerpt(v) + " " + why + "; expected a finite number");
        return *d;
    }

    bool boolean(std::string_view key) const {
        const json& v = at(key);
        if (!v.is_boolean()) fail(key, "value " + excerpt(v) + " is " + kind(v) + "; expected true or false");
        return v.get<bool>();
    }

    const std::string& string(std::string_view key) const {
        const json& v = at(key);
        if (!v.is_string()) fail(key, "value " + excerpt(v) + " is " + kind(v) + "; expected a string");
        return v.get_ref<const std::string&>();
    }

    // An array member, checked to be one (its elements are the caller's to check).
    const json& array(std::string_view key) const {
        const json& v = at(key);
        if (!v.is_array()) fail(key, "value " + excerpt(v) + " is " + kind(v) + "; expected an array");
        return v;
    }

    ObjectReader object(std::string_view key) const { return ObjectReader(at(key), source_, field(key)); }

private:
    const json& object_;
    std::string source_;
    std::string path_;
};

}  // namespace gemma3::json_read
