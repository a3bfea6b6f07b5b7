// Fuzz harness: a safetensors file (SafetensorsFile) and load_weights into a model.
// Promises checked:
//   - opening either succeeds or throws SafetensorsError;
//   - every tensor of an opened file reads as its kind (floating dtypes as double, integers as
//     int64 unless a U64 value exceeds it, BOOL as bool), or throws SafetensorsError;
//   - an opened file round-trips: writing its tensors and metadata back (floating as F64, integers
//     as I64) and reading that gives the same names, shapes, values (bit for bit) and metadata;
//   - load_weights either fills the model with exactly the file's values or throws WeightsError /
//     SafetensorsError and leaves the model unchanged (finding 7 of issue 13).
#include "fuzz_support.hpp"

#include <gemma3/core/parameters.hpp>
#include <gemma3/io/safetensors.hpp>
#include <gemma3/io/weights_io.hpp>

#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>

namespace {

using namespace gemma3;
using Micro = fuzz::Micro;

std::string file_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The Micro model's tensors from `values` (one per parameter), each stored as `dtype`.
std::string micro_model_file(const std::vector<double>& values, DType dtype, const std::string& name) {
    std::vector<TensorToWrite> tensors;
    for (const auto& t : parameter_tensors<Micro>()) {
        tensors.push_back({t.name, t.shape, std::span<const double>(values.data() + t.offset, t.numel()), dtype});
    }
    const auto path = fuzz::scratch_dir() / name;
    write_safetensors(path, tensors, {{"format", "pt"}});
    return file_bytes(path);
}

void check_same_bits(double a, double b, const std::string& what) {
    fuzz::check(std::bit_cast<std::uint64_t>(a) == std::bit_cast<std::uint64_t>(b), what + ": value changed");
}

void check_round_trip(const SafetensorsFile& file) {
    // Everything that reads, rewritten in the widest dtype of its kind.
    std::vector<std::vector<double>> floats;
    std::vector<std::vector<std::int64_t>> integers;
    std::vector<TensorToWrite> writes;
    floats.reserve(file.tensors().size());
    integers.reserve(file.tensors().size());
    for (const TensorInfo& info : file.tensors()) {
        if (dtype_is_floating(info.dtype)) {
            floats.push_back(file.read_all<double>(info.name));
            // F32 data read as float is the same as read as double then narrowed.
            if (info.dtype != DType::F64) {
                const auto narrow = file.read_all<float>(info.name);
                for (std::size_t i = 0; i < narrow.size(); ++i) {
                    const double wide = floats.back()[i];
                    fuzz::check(std::isnan(wide) ? std::isnan(narrow[i]) : static_cast<double>(narrow[i]) == wide,
                                "tensor " + info.name + " reads differently as float and double");
                }
            }
            writes.push_back({info.name, info.shape, std::span<const double>(floats.back()), DType::F64});
        } else if (info.dtype == DType::BOOL) {
            std::vector<bool> bits;
            try {
                bits = file.read_all<bool>(info.name);
            } catch (const SafetensorsError&) {
                return;  // a byte other than 0 or 1: refused, as documented
            }
            integers.emplace_back(bits.begin(), bits.end());
            writes.push_back({info.name, info.shape, std::span<const std::int64_t>(integers.back()), DType::I64});
        } else {
            try {
                integers.push_back(file.read_all<std::int64_t>(info.name));
            } catch (const SafetensorsError&) {
                fuzz::check(info.dtype == DType::U64, "tensor " + info.name + " of an integer dtype did not read as int64");
                return;  // a U64 beyond int64: refused, as documented
            }
            writes.push_back({info.name, info.shape, std::span<const std::int64_t>(integers.back()), DType::I64});
        }
    }
    const auto path = fuzz::scratch_dir() / "round_trip.safetensors";
    write_safetensors(path, writes, file.metadata());
    const SafetensorsFile again(path);
    fuzz::check(again.tensors().size() == file.tensors().size(), "round trip changed the tensor count");
    fuzz::check(again.metadata() == file.metadata(), "round trip changed the metadata");
    std::size_t f = 0, n = 0;
    for (const TensorInfo& info : file.tensors()) {
        const TensorInfo* copy = again.find(info.name);
        fuzz::check(copy != nullptr, "round trip lost tensor " + info.name);
        fuzz::check(copy->shape == info.shape, "round trip changed the shape of " + info.name);
        if (dtype_is_floating(info.dtype)) {
            const auto values = again.read_all<double>(info.name);
            for (std::size_t i = 0; i < values.size(); ++i) check_same_bits(values[i], floats[f][i], info.name);
            ++f;
        } else {
            fuzz::check(again.read_all<std::int64_t>(info.name) == integers[n], "round trip changed " + info.name);
            ++n;
        }
    }
}

void check_load_weights(const std::filesystem::path& path) {
    Parameters<Micro, float> params;
    for (std::size_t i = 0; i < params.size(); ++i) params.data()[i] = static_cast<float>(i) + 0.25f;
    const Parameters<Micro, float> before = params;
    try {
        load_weights(path, params);
    } catch (const WeightsError&) {
    } catch (const SafetensorsError&) {
    }
    if (std::memcmp(params.data(), before.data(), params.size() * sizeof(float)) == 0) return;
    // Changed: then the load succeeded and the model holds exactly the file's values.
    const SafetensorsFile file(path);
    for (const auto& t : parameter_tensors<Micro>()) {
        const auto values = file.read_all<float>(t.name);
        fuzz::check(std::memcmp(values.data(), params.data() + t.offset, values.size() * sizeof(float)) == 0,
                    "load_weights changed the model but not to the file's values (" + t.name + ")");
    }
}

}  // namespace

std::vector<std::pair<std::string, std::string>> gemma3::fuzz::generated_seeds() {
    std::vector<double> values(ParameterLayout<Micro>::total);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.01 * static_cast<double>(i % 97) - 0.3;
    std::vector<std::pair<std::string, std::string>> seeds;
    seeds.emplace_back("micro_f32.safetensors", micro_model_file(values, DType::F32, "seed.safetensors"));
    seeds.emplace_back("micro_bf16.safetensors", micro_model_file(values, DType::BF16, "seed.safetensors"));
    // Issue 13, finding 7: valid shapes and dtypes, but the last tensor (lm_head.weight) holds a
    // value beyond float's range, found only after the earlier tensors were read.
    values[parameter_tensors<Micro>().back().offset + 1] = 1e306;
    seeds.emplace_back("load_weights_partial_update_f64_1e306.safetensors",
                       micro_model_file(values, DType::F64, "seed.safetensors"));
    // Integer tensors and metadata.
    const std::vector<std::int64_t> ids{0, -1, 1LL << 40, 7};
    const std::vector<std::int32_t> small{3, -3};
    const std::vector<TensorToWrite> mixed{{"ids", {2, 2}, std::span<const std::int64_t>(ids), DType::I64},
                                           {"small", {2}, std::span<const std::int32_t>(small), DType::I32},
                                           {"scalar", {}, std::span<const double>(values.data(), 1), DType::F32},
                                           {"empty", {0, 3}, std::span<const double>(), DType::F64}};
    write_safetensors(scratch_dir() / "seed.safetensors", mixed, {{"k", "v"}, {"adamw_steps", "3"}});
    seeds.emplace_back("integers_and_metadata.safetensors", file_bytes(scratch_dir() / "seed.safetensors"));
    return seeds;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto path = gemma3::fuzz::input_file("input.safetensors", gemma3::fuzz::as_text(data, size));
    std::optional<gemma3::SafetensorsFile> file;
    try {
        file.emplace(path);
    } catch (const gemma3::SafetensorsError&) {
        return 0;
    }
    check_round_trip(*file);
    check_load_weights(path);
    return 0;
}
