// Loading model weights from safetensors files with Hugging Face's Gemma 3 tensor names.
#pragma once

#include <gemma3/core/parameters.hpp>
#include <gemma3/io/safetensors.hpp>

#include <algorithm>
#include <filesystem>
#include <span>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace gemma3 {

class WeightsError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

// Checks that `file` holds exactly the tensors of C with their shapes and floating dtypes; one
// WeightsError lists every problem.
template <ModelConfig C>
void check_weights_fit(const SafetensorsFile& file, const std::filesystem::path& path) {
    const auto tensors = parameter_tensors<C>();
    std::vector<std::string> problems;
    std::set<std::string> expected;
    for (const auto& t : tensors) expected.insert(t.name);

    for (const auto& t : tensors) {
        const TensorInfo* info = file.find(t.name);
        if (!info) {
            if (t.name == "lm_head.weight") {
                problems.push_back("no tensor 'lm_head.weight': the file was saved from a model whose output head is tied "
                                   "to the embedding, but the compiled config " +
                                   std::string(config_name<C>()) + " has tie_word_embeddings = false");
            } else {
                problems.push_back("missing tensor '" + t.name + "'");
            }
            continue;
        }
        if (info->shape != t.shape) {
            problems.push_back("tensor '" + t.name + "' has shape " + detail::shape_to_string(info->shape) +
                               ", the compiled config " + std::string(config_name<C>()) + " expects " +
                               detail::shape_to_string(t.shape));
            continue;
        }
        if (!dtype_is_floating(info->dtype)) {
            problems.push_back("tensor '" + t.name + "' has dtype " + std::string(dtype_name(info->dtype)) +
                               ", expected F64, F32, F16 or BF16");
            continue;
        }
    }
    for (const auto& info : file.tensors()) {
        if (expected.count(info.name)) continue;
        if (info.name == "lm_head.weight") {
            problems.push_back("unexpected tensor 'lm_head.weight': the compiled config " + std::string(config_name<C>()) +
                               " ties the output head to the embedding (tie_word_embeddings = true), the file has a "
                               "separate head");
        } else {
            problems.push_back("unexpected tensor " + detail::quote(info.name) + " (not part of " +
                               std::string(config_name<C>()) + ")");
        }
    }
    if (!problems.empty()) {
        std::string message = path.string() + ": the weights do not fit the model:";
        const std::size_t shown = std::min<std::size_t>(problems.size(), 20);
        for (std::size_t i = 0; i < shown; ++i) message += "\n  " + problems[i];
        if (problems.size() > shown) message += "\n  ... and " + std::to_string(problems.size() - shown) + " more";
        throw WeightsError(message);
    }
}

// Reads every tensor of C from `path` into `out` (ParameterLayout<C>::total values). On an error
// `out` may be partly written: callers that promise all-or-nothing read into a scratch buffer.
template <ModelConfig C, class T>
void read_weights(const std::filesystem::path& path, std::span<T> out) {
    const SafetensorsFile file(path);
    check_weights_fit<C>(file, path);
    // Conversions can still fail after the checks above (an F64 value beyond float's range).
    for (const auto& t : parameter_tensors<C>()) file.read<T>(t.name, t.shape, out.subspan(t.offset, t.numel()));
}

}  // namespace detail

// Fills `params` from a safetensors file written by transformers' save_pretrained (or by us).
// Every tensor of the layout must be present with its exact shape; stored dtypes F64/F32/F16/BF16 are
// converted to T. Missing, unexpected or misshapen tensors are all listed in one WeightsError; a value
// that does not convert (an F64 beyond float's range) is a SafetensorsError naming the tensor and
// element. Either way `params` is left unchanged: the values go into a scratch copy first, which
// costs one model's worth of memory while loading.
template <ModelConfig C, class T>
void load_weights(const std::filesystem::path& path, Parameters<C, T>& params) {
    std::vector<T> scratch(params.size());
    detail::read_weights<C>(path, std::span<T>(scratch));
    std::copy(scratch.begin(), scratch.end(), params.data());
}

}  // namespace gemma3
