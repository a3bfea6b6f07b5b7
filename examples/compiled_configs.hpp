// The config types the command-line programs are compiled for, and the run-time choice among them.
//
// Shapes are compile-time constants, so a program can only run architectures it was compiled for:
// the shipped ones (configs.hpp) named in CMake's GEMMA3_PROGRAM_SHIPPED_CONFIGS (all three by
// default) and those listed in GEMMA3_TRAINER_CONFIGS, generated into trainer_configs.hpp.
// `with_compiled_config` finds the type that matches a model config file.
#pragma once

#include <gemma3/io/config_file.hpp>
#include <gemma3/core/configs.hpp>

#include "trainer_configs.hpp"  // generated: using CompiledConfigTypes = std::tuple<...>

#include <string>
#include <tuple>
#include <utility>

namespace gemma3::programs {

using CompiledConfigs = ::CompiledConfigTypes;

template <class C>
bool matches(const ModelConfigFile& file) {
    try {
        require_matches<C>(file);
        return true;
    } catch (const ConfigError&) {
        return false;
    }
}

// Calls f.template operator()<C>() for the compiled config C matching `file`; returns false when
// none does.
template <class F, std::size_t I = 0>
bool with_compiled_config(const ModelConfigFile& file, F&& f) {
    if constexpr (I == std::tuple_size_v<CompiledConfigs>) {
        return false;
    } else {
        using C = std::tuple_element_t<I, CompiledConfigs>;
        if (matches<C>(file)) {
            f.template operator()<C>();
            return true;
        }
        return with_compiled_config<F, I + 1>(file, std::forward<F>(f));
    }
}

// The message for a config no compiled type matches.
inline std::string no_compiled_config_message(const std::string& source, const std::string& program) {
    std::string names;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
        ((names += "  " + std::string(config_name<std::tuple_element_t<I, CompiledConfigs>>()) + "\n"), ...);
    }(std::make_index_sequence<std::tuple_size_v<CompiledConfigs>>{});
    return "no compiled config type matches " + source + ". " + program + " contains:\n" + names +
           "To run another architecture, add its model config (our model_config.json or Hugging Face's config.json) "
           "to the CMake list GEMMA3_TRAINER_CONFIGS (cmake -DGEMMA3_TRAINER_CONFIGS=\"a.json;b.json\") and rebuild.";
}

}  // namespace gemma3::programs
