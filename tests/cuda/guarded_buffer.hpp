// A device array between two canary zones, for kernel tests: after a kernel ran,
// corruption_report() says whether it wrote before the start or past the end of its output.
// On the device nothing else would notice such a write; in emulation AddressSanitizer catches
// overruns of plain DeviceBuffers, but the canaries work in every build and on both backends.
// The zones belong to the same allocation, so a stray write into them is harmless.
#pragma once

#include <gemma3/cuda/runtime.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

GEMMA3_CUDA_NAMESPACE_BEGIN
namespace test {

template <class T>
class GuardedBuffer {
public:
    // 256 bytes keep data() as aligned as a cudaMalloc'ed pointer.
    static constexpr std::size_t guard_bytes = 256;

    explicit GuardedBuffer(std::size_t count)
        : count_(count), storage_(guard_bytes + count * sizeof(T) + guard_bytes) {
        std::vector<unsigned char> pattern(storage_.size());
        for (std::size_t i = 0; i < pattern.size(); ++i) pattern[i] = canary(i);
        storage_.upload(pattern);
    }

    T* data() noexcept { return reinterpret_cast<T*>(storage_.data() + guard_bytes); }
    const T* data() const noexcept { return reinterpret_cast<const T*>(storage_.data() + guard_bytes); }
    std::size_t size() const noexcept { return count_; }

    void upload(std::span<const T> host) {
        if (host.size() != count_)
            throw std::invalid_argument("GuardedBuffer::upload: " + std::to_string(host.size()) + " elements for a buffer of " +
                                        std::to_string(count_));
        copy_to_device(data(), host.data(), count_);
    }
    std::vector<T> download() const {
        std::vector<T> host(count_);
        copy_to_host(host.data(), data(), count_);
        return host;
    }

    // "" if both canary zones are intact; otherwise which bytes around the array were overwritten.
    std::string corruption_report() const {
        const std::vector<unsigned char> bytes = storage_.download();
        const std::size_t end = guard_bytes + count_ * sizeof(T);
        std::string report;
        const auto describe = [&](std::size_t from, std::size_t to, const char* where) {
            std::size_t first = to, last = from;
            for (std::size_t i = from; i < to; ++i) {
                if (bytes[i] == canary(i)) continue;
                if (first == to) first = i;
                last = i;
            }
            if (first == to) return;
            if (!report.empty()) report += "; ";
            if (std::string(where) == "before") {
                report += "bytes " + std::to_string(guard_bytes - first) + " to " + std::to_string(guard_bytes - last) +
                          " before the start of the array were overwritten";
            } else {
                report += "bytes " + std::to_string(first - end) + " to " + std::to_string(last - end) +
                          " after the end of the array (element " + std::to_string(count_) + " is byte 0) were overwritten";
            }
        };
        describe(0, guard_bytes, "before");
        describe(end, bytes.size(), "after");
        return report;
    }

private:
    static unsigned char canary(std::size_t offset) noexcept {
        return static_cast<unsigned char>(0xA5u ^ (offset * 151u) ^ (offset >> 8));
    }

    std::size_t count_;
    DeviceBuffer<unsigned char> storage_;
};

}  // namespace test
GEMMA3_CUDA_NAMESPACE_END
