// The example kernels and the runtime layer, on the emulator and (when built with nvcc and a GPU
// is present) on the device: one source, compiled for both backends into the same test binary.
// Every expected value comes from a CPU computation or from the documented semantics, never from
// the code under test.
#include "cuda_test.hpp"
#include "example_kernels.cuh"
#include "guarded_buffer.hpp"

#include <gemma3/io/safetensors.hpp>  // float_to_bf16 / bf16_to_float / double_to_bf16: the CPU reference

#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace {

namespace cu = ::gemma3::cuda;
namespace ex = ::gemma3::cuda::examples;
using cu::test::contains;

}  // namespace

GEMMA3_CUDA_TEST_CASE("block sums in static and dynamic shared memory equal the exact per-block sums") {
    // Multiples of 1/64 of magnitude at most 100/64: every partial sum of up to 10^5 of them is a
    // multiple of 1/64 below 2^24/64, so float sums are exact in any order.
    const int n = 100'003;
    std::vector<float> x(n);
    for (int i = 0; i < n; ++i) x[i] = static_cast<float>((i * 7919) % 201 - 100) / 64.0f;
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    cu::Stream stream;

    const auto expected_sums = [&](int blocks, int threads) {
        std::vector<double> sums(blocks, 0.0);
        for (int i = 0; i < n; ++i) sums[(i / threads) % blocks] += x[i];
        return sums;
    };

    constexpr int static_threads = 256;
    const int static_blocks = 37;
    cu::DeviceBuffer<float> static_sums(static_blocks);
    cu::launch(ex::block_sum_static<static_threads>, static_blocks, static_threads, 0, stream, device_x.data(), n,
               static_sums.data());
    const std::vector<float> static_result = static_sums.download();
    const std::vector<double> static_expected = expected_sums(static_blocks, static_threads);
    for (int b = 0; b < static_blocks; ++b) CHECK(static_cast<double>(static_result[b]) == static_expected[b]);

    const int dynamic_threads = 96;
    const int dynamic_blocks = 50;
    cu::DeviceBuffer<float> dynamic_sums(dynamic_blocks);
    cu::launch(ex::block_sum_dynamic, dynamic_blocks, dynamic_threads, dynamic_threads * sizeof(float), stream,
               device_x.data(), n, dynamic_sums.data());
    const std::vector<float> dynamic_result = dynamic_sums.download();
    const std::vector<double> dynamic_expected = expected_sums(dynamic_blocks, dynamic_threads);
    for (int b = 0; b < dynamic_blocks; ++b) CHECK(static_cast<double>(dynamic_result[b]) == dynamic_expected[b]);
}

GEMMA3_CUDA_TEST_CASE("warp shuffles: butterfly and shift-down sums, broadcast, segmented scan, half-warp sums") {
    const dim3 block(64, 2, 1);  // 128 threads: 4 warps of consecutive linear thread indices
    const int blocks = 3;
    const int total = blocks * 128;
    std::vector<float> x(total);
    std::vector<int> counts(total);
    for (int i = 0; i < total; ++i) {
        x[i] = static_cast<float>((i * 37) % 23) - 11.0f;  // small integers: sums are exact
        counts[i] = (i * 13) % 7;
    }
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    const auto device_counts = cu::DeviceBuffer<int>::from_host(counts);
    cu::DeviceBuffer<float> xor_sums(total), down_sums(total / 32), lane5(total), half_sums(total);
    cu::DeviceBuffer<__nv_bfloat16> lane5_bf16(total);
    cu::DeviceBuffer<int> segment_scan(total);
    cu::Stream stream;
    cu::launch(ex::warp_shuffles, blocks, block, 0, stream, device_x.data(), device_counts.data(), xor_sums.data(),
               down_sums.data(), lane5.data(), lane5_bf16.data(), segment_scan.data(), half_sums.data());

    const std::vector<float> xor_result = xor_sums.download(), down_result = down_sums.download(),
                             lane5_result = lane5.download(), half_result = half_sums.download();
    const std::vector<__nv_bfloat16> lane5_bf16_result = lane5_bf16.download();
    const std::vector<int> scan_result = segment_scan.download();
    for (int warp = 0; warp < total / 32; ++warp) {
        float warp_sum = 0.0f;
        for (int lane = 0; lane < 32; ++lane) warp_sum += x[warp * 32 + lane];
        CHECK(down_result[warp] == warp_sum);
        for (int lane = 0; lane < 32; ++lane) {
            const int i = warp * 32 + lane;
            CHECK(xor_result[i] == warp_sum);
            CHECK(lane5_result[i] == x[warp * 32 + 5]);
            CHECK(cu::test::bf16_bits(lane5_bf16_result[i]) == gemma3::float_to_bf16(x[warp * 32 + 5]));
            const int segment_start = i - i % 8;
            int prefix = 0;
            for (int j = segment_start; j <= i; ++j) prefix += counts[j];
            CHECK(scan_result[i] == prefix);
            const int half_start = i - i % 16;
            float half = 0.0f;
            for (int j = half_start; j < half_start + 16; ++j) half += x[j];
            CHECK(half_result[i] == half);
        }
    }
}

GEMMA3_CUDA_TEST_CASE("warp votes and block-wide counting barriers agree with the predicate") {
    const int threads = 96;  // 3 warps per block
    const int blocks = 4;
    const int total = threads * blocks;
    std::vector<int> values(total);
    for (int i = 0; i < total; ++i) {
        const int warp = i / 32;
        if (warp % 4 == 0) values[i] = 1;             // all positive
        else if (warp % 4 == 1) values[i] = -1;       // none
        else values[i] = (i * 37) % 5 == 0 ? 3 : 0;  // some
    }
    values[threads * 3 + 7] = 5;  // block 3: make sure it has some positives
    const auto device_values = cu::DeviceBuffer<int>::from_host(values);
    const int warps = total / 32;
    cu::DeviceBuffer<unsigned> ballots(warps), low_half(warps);
    cu::DeviceBuffer<int> any(warps), all(warps), block_counts(blocks), block_all(blocks), block_any(blocks);
    cu::Stream stream;
    cu::launch(ex::warp_votes, blocks, threads, 0, stream, device_values.data(), ballots.data(), any.data(), all.data(),
               low_half.data(), block_counts.data(), block_all.data(), block_any.data());

    const auto ballot_result = ballots.download(), low_result = low_half.download();
    const auto any_result = any.download(), all_result = all.download();
    for (int warp = 0; warp < warps; ++warp) {
        unsigned expected = 0;
        for (int lane = 0; lane < 32; ++lane)
            if (values[warp * 32 + lane] > 0) expected |= 1u << lane;
        CHECK(ballot_result[warp] == expected);
        CHECK(low_result[warp] == (expected & 0xFFFFu));
        CHECK(any_result[warp] == (expected != 0 ? 1 : 0));
        CHECK(all_result[warp] == (expected == 0xFFFF'FFFFu ? 1 : 0));
    }
    const auto count_result = block_counts.download(), all_block = block_all.download(), any_block = block_any.download();
    for (int b = 0; b < blocks; ++b) {
        int positive = 0;
        for (int t = 0; t < threads; ++t) positive += values[b * threads + t] > 0 ? 1 : 0;
        CHECK(count_result[b] == positive);
        CHECK((all_block[b] != 0) == (positive == threads));
        CHECK((any_block[b] != 0) == (positive > 0));
    }
}

GEMMA3_CUDA_TEST_CASE("atomics from many blocks: exact integer results, float sum within the summation bound") {
    const int n = 50'000;
    const int bins = 17;
    const std::vector<float> x = cu::test::random_floats(n, -1.0f, 1.0f, 20250101u);
    std::vector<int> keys(n);
    for (int i = 0; i < n; ++i) keys[i] = static_cast<int>((static_cast<std::uint32_t>(i) * 2654435761u) % 1000u);
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    const auto device_keys = cu::DeviceBuffer<int>::from_host(keys);

    ex::AtomicTotals initial{};
    initial.max_key = INT_MIN;
    initial.min_key = INT_MAX;
    auto totals = cu::DeviceBuffer<ex::AtomicTotals>::from_host(std::vector<ex::AtomicTotals>{initial});
    cu::DeviceBuffer<int> histogram(bins);
    histogram.fill_bytes(0);
    auto bf16_count = cu::DeviceBuffer<__nv_bfloat16>::from_host(std::vector<__nv_bfloat16>{cu::test::bf16_from_bits(0)});
    cu::Stream stream;
    cu::launch(ex::atomics, 40, 128, 0, stream, device_x.data(), device_keys.data(), n, bins, totals.data(),
               histogram.data(), bf16_count.data());

    const ex::AtomicTotals result = totals.download()[0];
    double exact = 0.0, magnitude = 0.0, key_sum = 0.0;
    std::vector<int> expected_histogram(bins, 0);
    std::uint32_t index_sum = 0;  // sum of i + 1, modulo 2^32 like the kernel's unsigned arithmetic
    for (int i = 0; i < n; ++i) {
        exact += x[i];
        magnitude += std::fabs(x[i]);
        key_sum += keys[i];
        ++expected_histogram[keys[i] % bins];
        index_sum += static_cast<std::uint32_t>(i) + 1u;
    }
    // Any order of n - 1 float additions is within (n - 1) u sum|x| of the exact sum (u = 2^-24).
    const double bound = (n - 1) * std::ldexp(1.0, -24) * magnitude;
    CHECK(std::fabs(static_cast<double>(result.float_total) - exact) <= bound);
    CHECK(result.double_total == key_sum);
    CHECK(result.count == static_cast<unsigned long long>(n));
    CHECK(result.max_key == *std::max_element(keys.begin(), keys.end()));
    CHECK(result.min_key == *std::min_element(keys.begin(), keys.end()));
    CHECK(result.cas_count == static_cast<unsigned>(n));
    CHECK(result.exchange_slot >= 1u);
    CHECK(result.exchange_slot <= static_cast<unsigned>(n));
    CHECK(result.exchanged_sum + result.exchange_slot == index_sum);  // every value written was read back once
    CHECK(histogram.download() == expected_histogram);
    CHECK(cu::test::bf16_bits(bf16_count.download()[0]) == gemma3::float_to_bf16(200.0f));
}

namespace {

// Round-to-nearest-even to bf16 by definition: pick the nearer of the two bf16 neighbours (exact
// distances in double), the even one on a tie. Independent of the bit trick in float_to_bf16.
std::uint16_t bf16_by_definition(float value) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    const std::uint16_t down = static_cast<std::uint16_t>(bits >> 16);  // toward zero
    if ((bits & 0xFFFFu) == 0) return down;
    const std::uint16_t up = static_cast<std::uint16_t>(down + 1);      // away from zero (may become inf)
    const double low = std::fabs(static_cast<double>(gemma3::bf16_to_float(down)));
    const double high = std::fabs(static_cast<double>(gemma3::bf16_to_float(up)));
    const double magnitude = std::fabs(static_cast<double>(value));
    // For the step to infinity, measure against the next power of two (2^128), as IEEE rounding does.
    const double high_value = std::isinf(high) ? std::ldexp(1.0, 128) : high;
    if (magnitude - low < high_value - magnitude) return down;
    if (magnitude - low > high_value - magnitude) return up;
    return (down & 1u) == 0 ? down : up;
}

std::vector<float> conversion_inputs() {
    std::vector<float> inputs;
    const std::uint16_t low_halves[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xC3A5, 0xFFFF};
    for (std::uint32_t high = 0; high <= 0xFFFFu; high += 1)
        for (const std::uint16_t low : low_halves)
            if ((high * 7u + low) % 3u == 0u || low == 0x8000 || low == 0x7FFF)  // every tie and near-tie, a third of the rest
                inputs.push_back(std::bit_cast<float>((high << 16) | low));
    for (const float special : {0.0f, -0.0f, 1.0f, std::numeric_limits<float>::max(), std::numeric_limits<float>::infinity(),
                                -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                                std::numeric_limits<float>::denorm_min(), std::bit_cast<float>(0x7F80'0001u),
                                std::bit_cast<float>(0xFFC0'0000u)})
        inputs.push_back(special);
    return inputs;
}

}  // namespace

GEMMA3_CUDA_TEST_CASE("bf16 conversions round to nearest even bit-exactly; NaN becomes the canonical 0x7FFF") {
    const std::vector<float> inputs = conversion_inputs();
    const int n = static_cast<int>(inputs.size());
    const auto device_inputs = cu::DeviceBuffer<float>::from_host(inputs);
    cu::DeviceBuffer<__nv_bfloat16> rounded(n), rounded_rn(n);
    cu::DeviceBuffer<float> widened(n);
    cu::DeviceBuffer<__nv_bfloat162> pairs(n / 2);
    cu::Stream stream;
    cu::launch(ex::bf16_conversions, 512, 256, 0, stream, device_inputs.data(), n, rounded.data(), rounded_rn.data(),
               widened.data(), pairs.data());
    const auto rounded_result = rounded.download(), rounded_rn_result = rounded_rn.download();
    const auto widened_result = widened.download();
    const auto pair_result = pairs.download();

    int mismatches = 0;
    for (int i = 0; i < n; ++i) {
        const float input = inputs[i];
        const std::uint16_t got = cu::test::bf16_bits(rounded_result[i]);
        const std::uint16_t got_rn = cu::test::bf16_bits(rounded_rn_result[i]);
        std::uint16_t expected;
        if (std::isnan(input)) {
            expected = 0x7FFF;  // cuda_bf16.hpp and PTX cvt.rn.bf16.f32: NaN -> canonical NaN
        } else {
            expected = gemma3::float_to_bf16(input);
            if (expected != bf16_by_definition(input)) {
                FAIL_CHECK("the references disagree for " << input);
            }
        }
        const float expected_widened = gemma3::bf16_to_float(expected);
        const bool widened_ok = std::bit_cast<std::uint32_t>(widened_result[i]) == std::bit_cast<std::uint32_t>(expected_widened);
        if (got != expected || got_rn != expected || !widened_ok) {
            if (++mismatches <= 10)
                FAIL_CHECK("input bits 0x" << std::hex << std::bit_cast<std::uint32_t>(input) << ": got 0x" << got << " / 0x"
                                           << got_rn << ", expected 0x" << expected);
        }
        if (i % 2 == 0 && i + 1 < n) {
            const __nv_bfloat162 pair = pair_result[i / 2];
            const std::uint16_t pair_x = cu::test::bf16_bits(pair.x), pair_y = cu::test::bf16_bits(pair.y);
            const std::uint16_t expect_x = std::isnan(input) ? 0x7FFF : gemma3::float_to_bf16(input);
            const std::uint16_t expect_y = std::isnan(inputs[i + 1]) ? 0x7FFF : gemma3::float_to_bf16(inputs[i + 1]);
            if (pair_x != expect_x || pair_y != expect_y) ++mismatches;
        }
    }
    INFO(n << " conversions checked");
    CHECK(mismatches == 0);
}

GEMMA3_CUDA_TEST_CASE("bf16 arithmetic rounds the exact sum, difference and product once") {
    const int n = 20'000;
    std::mt19937 generator(7u);
    std::uniform_real_distribution<double> mantissa(1.0, 2.0);
    std::uniform_int_distribution<int> exponent(-30, 30);
    std::vector<__nv_bfloat16> a(n), b(n);
    std::vector<double> a_values(n), b_values(n);
    for (int i = 0; i < n; ++i) {
        // Nearby exponents for a quarter of the pairs, so that sums are often ties or cancel.
        const int ea = exponent(generator);
        const int eb = i % 4 == 0 ? ea + i % 3 - 1 : exponent(generator);
        const double sign_a = i % 3 == 0 ? -1.0 : 1.0, sign_b = i % 5 == 0 ? -1.0 : 1.0;
        const std::uint16_t bits_a = gemma3::double_to_bf16(sign_a * std::ldexp(mantissa(generator), ea));
        const std::uint16_t bits_b = gemma3::double_to_bf16(sign_b * std::ldexp(mantissa(generator), eb));
        a[i] = cu::test::bf16_from_bits(bits_a);
        b[i] = cu::test::bf16_from_bits(bits_b);
        a_values[i] = gemma3::bf16_to_float(bits_a);
        b_values[i] = gemma3::bf16_to_float(bits_b);
    }
    // 1 + 2^-8 is halfway between two bf16 values; the even neighbour is 1.
    a[0] = cu::test::bf16_from_bits(gemma3::float_to_bf16(1.0f));
    b[0] = cu::test::bf16_from_bits(gemma3::float_to_bf16(std::ldexp(1.0f, -8)));
    a_values[0] = 1.0;
    b_values[0] = std::ldexp(1.0, -8);

    const auto device_a = cu::DeviceBuffer<__nv_bfloat16>::from_host(a);
    const auto device_b = cu::DeviceBuffer<__nv_bfloat16>::from_host(b);
    cu::DeviceBuffer<__nv_bfloat16> sums(n), differences(n), products(n);
    cu::Stream stream;
    cu::launch(ex::bf16_arithmetic, 40, 128, 0, stream, device_a.data(), device_b.data(), n, sums.data(), differences.data(),
               products.data());
    const auto sum_result = sums.download(), difference_result = differences.download(), product_result = products.download();
    int mismatches = 0;
    for (int i = 0; i < n; ++i) {
        // Products of two 8-bit significands are exact in double; sums and differences may round in
        // double, but rounding to double (53 bits) and then to bf16 (8 bits) gives the bf16 rounding of
        // the exact value (53 >= 2 x 8 + 2), which is what the device's single rounding gives.
        const std::uint16_t expected_sum = gemma3::double_to_bf16(a_values[i] + b_values[i]);
        const std::uint16_t expected_difference = gemma3::double_to_bf16(a_values[i] - b_values[i]);
        const std::uint16_t expected_product = gemma3::double_to_bf16(a_values[i] * b_values[i]);
        if (cu::test::bf16_bits(sum_result[i]) != expected_sum || cu::test::bf16_bits(difference_result[i]) != expected_difference ||
            cu::test::bf16_bits(product_result[i]) != expected_product) {
            if (++mismatches <= 10)
                FAIL_CHECK("element " << i << ": " << a_values[i] << " and " << b_values[i]);
        }
    }
    CHECK(mismatches == 0);
    CHECK(cu::test::bf16_bits(sum_result[0]) == gemma3::float_to_bf16(1.0f));
}

GEMMA3_CUDA_TEST_CASE("threadIdx, blockIdx, blockDim and gridDim follow CUDA's x-fastest numbering") {
    const dim3 grid(3, 2, 2), block(8, 4, 2);
    const int blocks = 12, threads = 64;
    cu::DeviceBuffer<unsigned> out(12 * blocks * threads);
    cu::Stream stream;
    cu::launch(ex::thread_coordinates, grid, block, 0, stream, out.data());
    const std::vector<unsigned> result = out.download();
    int slot = 0;
    int mismatches = 0;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx, ++slot) {
                            const unsigned expected[12] = {tx, ty, tz, bx, by, bz, 8, 4, 2, 3, 2, 2};
                            for (int j = 0; j < 12; ++j) mismatches += result[12 * slot + j] != expected[j] ? 1 : 0;
                        }
    CHECK(slot == blocks * threads);
    CHECK(mismatches == 0);
}

GEMMA3_CUDA_TEST_CASE("device buffers: upload, download, device-to-device copy, memset, size checks") {
    const std::vector<int> values{1, -2, 3, -4, 5, -6, 7};
    auto first = cu::DeviceBuffer<int>::from_host(values);
    CHECK(first.size() == values.size());
    CHECK(first.size_bytes() == values.size() * sizeof(int));
    CHECK(first.download() == values);

    cu::DeviceBuffer<int> second(values.size());
    cu::copy_device_to_device(second.data(), first.data(), values.size());
    CHECK(second.download() == values);

    second.fill_bytes(0);
    CHECK(second.download() == std::vector<int>(values.size(), 0));
    cu::memset_device(second.data() + 2, 0xFF, 2 * sizeof(int));
    CHECK(second.download() == std::vector<int>{0, 0, -1, -1, 0, 0, 0});

    cu::DeviceBuffer<int> moved = std::move(first);
    CHECK(first.empty());  // NOLINT(bugprone-use-after-move): moved-from buffers are documented as empty
    CHECK(moved.download() == values);

    std::vector<int> wrong_size(3);
    const std::string message = cu::test::thrown_message<std::invalid_argument>([&] { moved.download(wrong_size); });
    CHECK(contains(message, "3 elements"));

    cu::Stream stream;
    std::vector<int> back(values.size());
    cu::copy_to_device_async(second.data(), values.data(), values.size(), stream);
    cu::copy_to_host_async(back.data(), second.data(), values.size(), stream);
    stream.synchronize();
    CHECK(back == values);
    cu::synchronize();
}

GEMMA3_CUDA_TEST_CASE("the runtime reports the backend and its device") {
    CHECK(cu::is_emulated() == (std::string(cu::backend_name()) == "emulated"));
    CHECK(cu::device_count() >= 1);  // device cases only run when a GPU is present
    CHECK_FALSE(cu::device_name().empty());
}

GEMMA3_CUDA_TEST_CASE("failed runtime calls throw CudaError naming the call, the file and the error") {
    std::vector<float> host(4, 1.0f);
    const std::string message = cu::test::thrown_message<cu::CudaError>(
        [&] { cu::copy_to_device<float>(nullptr, host.data(), host.size()); });
    CHECK(contains(message, "cudaMemcpy("));
    CHECK(contains(message, "runtime.hpp:"));
    CHECK(contains(message, "cudaErrorInvalidValue"));
    // The error was consumed: the next launch is not blamed for it.
    cu::DeviceBuffer<int> out(4);
    cu::Stream stream;
    cu::launch(ex::write_range, 1, 32, 0, stream, out.data(), 0, 4);
    CHECK(out.download() == std::vector<int>{1000, 1001, 1002, 1003});
}

GEMMA3_CUDA_TEST_CASE("an invalid launch throws CudaError naming the kernel, the configuration and the launch site") {
    cu::DeviceBuffer<int> out(4);
    cu::Stream stream;
    const int line = __LINE__ + 2;
    const std::string message = cu::test::thrown_message<cu::CudaError>(
        [&] { cu::launch(ex::write_range, 1, 2048, 0, stream, out.data(), 0, 4); });
    CHECK(contains(message, "write_range"));
    CHECK(contains(message, "block (2048,1,1)"));
    CHECK(contains(message, "test_cuda_kernels.cu:" + std::to_string(line)));
    CHECK(contains(message, "cudaErrorInvalidConfiguration"));

    CHECK_THROWS_AS(cu::launch(ex::write_range, dim3(0), 32, 0, stream, out.data(), 0, 4), cu::CudaError);
    CHECK_THROWS_AS(cu::launch(ex::write_range, 1, dim3(32, 32, 2), 0, stream, out.data(), 0, 4), cu::CudaError);
}

GEMMA3_CUDA_TEST_CASE("dynamic shared memory above 48 KiB needs the per-kernel opt-in") {
    const int threads = 64, blocks = 4, n = 1000;
    std::vector<float> x(n);
    std::iota(x.begin(), x.end(), 0.0f);
    const auto device_x = cu::DeviceBuffer<float>::from_host(x);
    cu::DeviceBuffer<float> sums(blocks);
    cu::Stream stream;
    const std::size_t large = 64 * 1024;
    CHECK_THROWS_AS(cu::launch(ex::block_sum_dynamic, blocks, threads, large, stream, device_x.data(), n, sums.data()),
                    cu::CudaError);
    cu::set_max_dynamic_shared_bytes(ex::block_sum_dynamic, large);
    cu::launch(ex::block_sum_dynamic, blocks, threads, large, stream, device_x.data(), n, sums.data());
    const std::vector<float> result = sums.download();
    for (int b = 0; b < blocks; ++b) {
        double expected = 0.0;
        for (int i = 0; i < n; ++i)
            if ((i / threads) % blocks == b) expected += x[i];
        CHECK(static_cast<double>(result[b]) == expected);
    }
    cu::set_max_dynamic_shared_bytes(ex::block_sum_dynamic, 48 * 1024);  // back to the default for other cases
}

GEMMA3_CUDA_TEST_CASE("guarded buffers detect writes before the start and past the end") {
    cu::Stream stream;
    cu::test::GuardedBuffer<int> inside(100);
    cu::launch(ex::write_range, 4, 32, 0, stream, inside.data(), 0, 100);
    CHECK(inside.corruption_report() == "");
    const std::vector<int> written = inside.download();
    for (int i = 0; i < 100; ++i) CHECK(written[i] == 1000 + i);

    cu::test::GuardedBuffer<int> overrun(100);
    cu::launch(ex::write_range, 4, 32, 0, stream, overrun.data(), 0, 101);  // one element too many
    const std::string after = overrun.corruption_report();
    CHECK(contains(after, "bytes 0 to 3 after the end"));
    CHECK_FALSE(contains(after, "before"));

    cu::test::GuardedBuffer<int> underrun(100);
    cu::launch(ex::write_range, 4, 32, 0, stream, underrun.data(), -2, 102);  // starts two elements early
    const std::string before = underrun.corruption_report();
    CHECK(contains(before, "bytes 8 to 1 before the start"));
    CHECK_FALSE(contains(before, "after"));
}
