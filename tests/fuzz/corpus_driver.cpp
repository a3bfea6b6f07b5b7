// A plain main() for a fuzz harness: feeds each file named on the command line (directories:
// every file in them, sorted) and every generated seed of the harness to LLVMFuzzerTestOneInput,
// once. ctest runs the committed corpora this way, in every build (the sanitizer build included);
// libFuzzer itself is only needed to search for new inputs (scripts/fuzz.sh).
#include "fuzz_support.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

void run_one(const std::string& name, const std::string& bytes, bool verbose) {
    if (verbose) std::fprintf(stderr, "input %s (%zu bytes)\n", name.c_str(), bytes.size());
    // A copy in its own allocation, so ASan sees reads past the end as libFuzzer would.
    std::vector<std::uint8_t> copy(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(copy.data(), copy.size());
}

}  // namespace

int main(int argc, char** argv) {
    namespace fs = std::filesystem;
    bool verbose = false;
    std::vector<fs::path> files;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-v") {
            verbose = true;
        } else if (fs::is_directory(arg)) {
            std::vector<fs::path> in_dir;
            for (const auto& entry : fs::directory_iterator(arg)) {
                if (entry.is_regular_file()) in_dir.push_back(entry.path());
            }
            std::sort(in_dir.begin(), in_dir.end());
            files.insert(files.end(), in_dir.begin(), in_dir.end());
        } else if (fs::is_regular_file(arg)) {
            files.emplace_back(arg);
        } else {
            std::fprintf(stderr, "%s: no such file or directory\n", arg.c_str());
            return 2;
        }
    }
    const auto start = std::chrono::steady_clock::now();
    std::size_t count = 0;
    for (const auto& path : files) {
        std::ifstream in(path, std::ios::binary);
        const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        run_one(path.string(), bytes, verbose);
        ++count;
    }
    for (const auto& [name, bytes] : gemma3::fuzz::generated_seeds()) {
        run_one("generated:" + name, bytes, verbose);
        ++count;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%zu inputs (%zu files, %zu generated) in %.2f s, every promise kept\n", count, files.size(),
                count - files.size(), seconds);
    return count == 0 ? 2 : 0;
}
