// Helpers the config and JSON tests share (test_config_file.cpp, test_hf_config.cpp, test_json_read.cpp).
#pragma once

#include <doctest/doctest.h>

#include <gemma3/io/config_file.hpp>

#include <string>

namespace gemma3::test {

// The ConfigError a call throws; fails the test when it throws nothing.
template <class F>
ConfigError config_error_of(F&& call) {
    try {
        call();
    } catch (const ConfigError& e) {
        return e;
    }
    FAIL("expected a ConfigError, but nothing was thrown");
    return ConfigError({});
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Error messages quote hostile input only as printable ASCII (and line breaks).
inline bool printable_ascii(const std::string& text) {
    for (char c : text) {
        const auto b = static_cast<unsigned char>(c);
        if ((b < 0x20 && c != '\n') || b >= 0x7f) return false;
    }
    return true;
}

}  // namespace gemma3::test
