// Fuzz harness: a token file (TokenFile) and the batch sampler over it. Each input is opened as a
// uint16 file (vocabulary 512) and a uint32 one (vocabulary 70,000). Promises checked:
//   - opening either succeeds or throws DataError (a file with an id >= the vocabulary, ids of
//     2^31 and more included, is refused: issue 13, finding 8);
//   - every id of an opened file is in [0, vocabulary);
//   - a sampler over fewer than block_size + 1 tokens is refused with DataError (finding 9);
//     otherwise every batch row is a window of the file and y is x shifted by one token;
//   - restoring a saved sampler state replays the same batches; restoring the input as a state
//     either works or throws DataError, and a refused state leaves the sampler unchanged.
#include "fuzz_support.hpp"

#include <gemma3/train/data.hpp>

#include <optional>

namespace {

using namespace gemma3;

void check_batches(const TokenFile& file, std::int64_t vocab, std::int64_t block, std::string_view input) {
    std::optional<BatchSampler> sampler;
    try {
        sampler.emplace(file, 2, block, 1234);
    } catch (const DataError&) {
        fuzz::check(file.size() <= block, "a sampler over enough tokens was refused");
        return;
    }
    fuzz::check(file.size() > block, "a sampler over fewer than block_size + 1 tokens was made");
    const auto n = static_cast<std::size_t>(2 * block);
    std::vector<std::int32_t> x(n), y(n), x2(n), y2(n);
    const std::string saved = sampler->state();
    sampler->next(x, y);
    for (std::size_t row = 0; row < 2; ++row) {
        const std::int32_t* xr = x.data() + row * static_cast<std::size_t>(block);
        const std::int32_t* yr = y.data() + row * static_cast<std::size_t>(block);
        for (std::int64_t t = 0; t < block; ++t) {
            fuzz::check(xr[t] >= 0 && xr[t] < vocab && yr[t] >= 0 && yr[t] < vocab, "a batch id is out of range");
            if (t + 1 < block) fuzz::check(yr[t] == xr[t + 1], "y is not x shifted by one");
        }
        // The row is a window of the file (small files: search every start).
        if (file.size() <= 4096) {
            bool found = false;
            for (std::int64_t s = 0; s + block < file.size() && !found; ++s) {
                std::int64_t t = 0;
                while (t < block && file[s + t] == xr[t] && file[s + t + 1] == yr[t]) ++t;
                found = t == block;
            }
            fuzz::check(found, "a batch row is not a window of the file");
        }
    }
    // A refused state leaves the generator alone; the saved one replays.
    const std::string before = sampler->state();
    try {
        sampler->restore(std::string(input));
    } catch (const DataError&) {
        fuzz::check(sampler->state() == before, "a refused sampler state changed the sampler");
    }
    sampler->restore(saved);
    sampler->next(x2, y2);
    fuzz::check(x2 == x && y2 == y, "a restored sampler did not replay its batches");
}

}  // namespace

std::vector<std::pair<std::string, std::string>> gemma3::fuzz::generated_seeds() {
    const auto u32 = [](std::initializer_list<std::uint32_t> ids) {
        std::string bytes;
        for (const std::uint32_t id : ids) {
            for (int b = 0; b < 4; ++b) bytes.push_back(static_cast<char>((id >> (8 * b)) & 0xFF));
        }
        return bytes;
    };
    std::string counting;
    for (int i = 0; i < 300; ++i) counting += u32({static_cast<std::uint32_t>(i)});
    // Issue 13, finding 8: 0x80000000 in a uint32 file read as -2^31.
    return {{"u32_id_2pow31.bin", u32({1, 0x80000000u, 2})},
            {"u32_id_max.bin", u32({0xFFFFFFFFu})},
            {"u32_counting.bin", counting}};
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace gemma3;
    const std::string_view input = fuzz::as_text(data, size);
    const auto path = fuzz::input_file("tokens.bin", input);
    for (const std::int64_t vocab : {512, 70000}) {
        std::optional<TokenFile> file;
        try {
            file.emplace(path, vocab, 1);
        } catch (const DataError&) {
            continue;
        }
        const int width = token_bytes(vocab);
        fuzz::check(file->size() * width == static_cast<std::int64_t>(size), "the token count does not match the size");
        for (std::int64_t i = 0; i < file->size(); ++i) {
            fuzz::check((*file)[i] >= 0 && (*file)[i] < vocab, "an opened token file holds an id out of range");
        }
        for (const std::int64_t block : {1, 7, 64}) check_batches(*file, vocab, block, input);
    }
    return 0;
}
