// Op-level timings of the CPU back end at the seed config's training shapes (batch 4 x 128 tokens),
// with Google Benchmark: where a training step's time goes, op by op. Each benchmark reports the
// bytes it moves or the FLOPs it does, so its rate can be read against the machine's limits
// (gemma3-bench --mode limits).
//
//   build/bin/gemma3-ops-bench [--benchmark_filter=attention]
#include <gemma3/core/configs.hpp>
#include <gemma3/ops/attention.hpp>
#include <gemma3/ops/cross_entropy.hpp>
#include <gemma3/ops/embedding.hpp>
#include <gemma3/ops/geglu.hpp>
#include <gemma3/ops/linear.hpp>
#include <gemma3/ops/packed_linear.hpp>
#include <gemma3/ops/rmsnorm.hpp>
#include <gemma3/ops/rope.hpp>
#include <gemma3/train/optimizer.hpp>
#include <gemma3/core/parameters.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <vector>

namespace {

using namespace gemma3;
using D = Dims<configs::Gemma3_270M>;
constexpr Index batch = 4, seq = 128, n = batch * seq;

Buffer<float> random_buffer(std::size_t size, float scale = 1.0f, unsigned seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, scale);
    Buffer<float> b(size);
    for (auto& x : b) x = normal(rng);
    return b;
}

void set_bytes(benchmark::State& state, double bytes) {
    state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void set_flops(benchmark::State& state, double flops) {
    state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// The projections of one block, forward and backward: x W^T, then dy W and dy^T x.
void linear(benchmark::State& state) {
    const Index in = state.range(0), out = state.range(1);
    auto x = random_buffer(static_cast<std::size_t>(n * in)), w = random_buffer(static_cast<std::size_t>(out * in), 0.02f),
         y = random_buffer(static_cast<std::size_t>(n * out)), dx = x, dw = w;
    const bool backward = state.range(2) != 0;
    for (auto _ : state) {
        if (backward) {
            linear_backward<float>(const_view(x.data(), n, in), const_view(w.data(), out, in), const_view(y.data(), n, out),
                                   matrix_view(dx.data(), n, in), matrix_view(dw.data(), out, in));
        } else {
            linear_forward<float>(const_view(x.data(), n, in), const_view(w.data(), out, in), matrix_view(y.data(), n, out));
        }
    }
    set_flops(state, (backward ? 4.0 : 2.0) * static_cast<double>(n * in * out));
}
BENCHMARK(linear)
    ->ArgNames({"in", "out", "backward"})
    ->Args({D::model, D::qkv, 0})
    ->Args({D::model, D::qkv, 1})
    ->Args({D::q, D::model, 0})
    ->Args({D::q, D::model, 1})
    ->Args({D::model, 2 * D::ffn, 0})
    ->Args({D::model, 2 * D::ffn, 1})
    ->Args({D::ffn, D::model, 0})
    ->Args({D::ffn, D::model, 1})
    ->Unit(benchmark::kMillisecond);

// The engines of the projections' products, y [512, out] = x [512, in] W^T, at the seed's shapes
// (qkv, o, gate|up, down, head): CBLAS fp32 (OpenBLAS, as the environment sets its kernels), and
// blas.hpp's gemm() in fp32 and with bf16 inputs (oneDNN when built with it). state.range(2):
// 0 = CBLAS fp32, 1 = gemm() fp32, 2 = gemm() bf16 inputs with fp32 output.
void gemm_engine(benchmark::State& state) {
    const Index in = state.range(0), out = state.range(1);
    const auto x = random_buffer(static_cast<std::size_t>(n * in)), w = random_buffer(static_cast<std::size_t>(out * in), 0.02f);
    Buffer<float> y(static_cast<std::size_t>(n * out));
    const RowMatrix<bf16> x16 = const_view(x.data(), n, in).cast<bf16>(), w16 = const_view(w.data(), out, in).cast<bf16>();
    for (auto _ : state) {
        switch (state.range(2)) {
            case 0:
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n), static_cast<blasint>(out),
                            static_cast<blasint>(in), 1.0f, x.data(), static_cast<blasint>(in), w.data(),
                            static_cast<blasint>(in), 0.0f, y.data(), static_cast<blasint>(out));
                break;
            case 1:
                gemm(const_view(x.data(), n, in), Op::none, const_view(w.data(), out, in), Op::transpose,
                     matrix_view(y.data(), n, out));
                break;
            default:
                gemm(x16, Op::none, w16, Op::transpose, matrix_view(y.data(), n, out));
        }
    }
    set_flops(state, 2.0 * static_cast<double>(n * in * out));
    state.SetLabel(state.range(2) == 0 ? "cblas fp32" : (state.range(2) == 1 ? "gemm fp32: " : "gemm bf16: ") + gemm_engine_name());
}
BENCHMARK(gemm_engine)
    ->ArgNames({"in", "out", "engine"})
    ->ArgsProduct({{D::model}, {D::qkv}, {0, 1, 2}})
    ->ArgsProduct({{D::q}, {D::model}, {0, 1, 2}})
    ->ArgsProduct({{D::model}, {2 * D::ffn}, {0, 1, 2}})
    ->ArgsProduct({{D::ffn}, {D::model}, {0, 1, 2}})
    ->ArgsProduct({{D::model}, {D::vocab}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond);

void rmsnorm(benchmark::State& state) {
    const Index cols = state.range(0), rows = n * (cols == D::head ? D::heads : 1);
    auto x = random_buffer(static_cast<std::size_t>(rows * cols)), w = random_buffer(static_cast<std::size_t>(cols), 0.1f),
         y = x, dw = w;
    std::vector<float> rstd(static_cast<std::size_t>(rows));
    const bool backward = state.range(1) != 0;
    for (auto _ : state) {
        if (backward) {
            rmsnorm_backward<float>(const_view(x.data(), rows, cols), w.data(), rstd.data(), const_view(x.data(), rows, cols),
                                    matrix_view(y.data(), rows, cols), dw.data());
        } else {
            rmsnorm_forward<float>(const_view(x.data(), rows, cols), w.data(), 1e-6f, matrix_view(y.data(), rows, cols),
                                   rstd.data());
        }
    }
    set_bytes(state, 4.0 * static_cast<double>(rows * cols) * (backward ? 3 : 2));
}
BENCHMARK(rmsnorm)->ArgNames({"cols", "backward"})->Args({D::model, 0})->Args({D::model, 1})->Args({D::head, 0})->Args({D::head, 1});

void rope(benchmark::State& state) {
    auto q = random_buffer(static_cast<std::size_t>(n * D::q));
    const RopeTable<float> table(1e4, D::head, seq);
    std::vector<std::int32_t> positions(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % seq);
    for (auto _ : state) rope_forward<float>(matrix_view(q.data(), n, D::q), D::head, positions, table);
    set_bytes(state, 8.0 * static_cast<double>(n * D::q));
}
BENCHMARK(rope);

void geglu(benchmark::State& state) {
    auto gate_up = random_buffer(static_cast<std::size_t>(n * 2 * D::ffn)), z = random_buffer(static_cast<std::size_t>(n * D::ffn)),
         d_gate_up = gate_up;
    const auto gu = const_view(gate_up.data(), n, 2 * D::ffn);
    const bool backward = state.range(0) != 0;
    for (auto _ : state) {
        if (backward) {
            auto d = matrix_view(d_gate_up.data(), n, 2 * D::ffn);
            geglu_backward<float>(column_block(gu, 0, D::ffn), column_block(gu, D::ffn, D::ffn), const_view(z.data(), n, D::ffn),
                                  column_block(d, 0, D::ffn), column_block(d, D::ffn, D::ffn));
        } else {
            geglu_forward<float>(column_block(gu, 0, D::ffn), column_block(gu, D::ffn, D::ffn), matrix_view(z.data(), n, D::ffn));
        }
    }
    set_bytes(state, 4.0 * static_cast<double>(n * D::ffn) * (backward ? 5 : 3));
}
BENCHMARK(geglu)->ArgNames({"backward"})->Arg(0)->Arg(1);

void attention(benchmark::State& state) {
    auto q = random_buffer(static_cast<std::size_t>(n * D::q)), k = random_buffer(static_cast<std::size_t>(n * D::kv)),
         v = random_buffer(static_cast<std::size_t>(n * D::kv)), out = q, dq = q, dk = k, dv = v;
    Buffer<float> probs(static_cast<std::size_t>(batch * D::heads * seq * seq));
    const AttentionShape shape{batch, seq, D::heads, D::kv_heads, D::head, 0, 1.0 / 16};
    attention_forward<float>(const_view(q.data(), n, D::q), const_view(k.data(), n, D::kv), const_view(v.data(), n, D::kv),
                             shape, matrix_view(out.data(), n, D::q), probs.data());
    const bool backward = state.range(0) != 0;
    for (auto _ : state) {
        if (backward) {
            attention_backward<float>(const_view(q.data(), n, D::q), const_view(k.data(), n, D::kv), const_view(v.data(), n, D::kv),
                                      probs.data(), const_view(out.data(), n, D::q), shape, matrix_view(dq.data(), n, D::q),
                                      matrix_view(dk.data(), n, D::kv), matrix_view(dv.data(), n, D::kv));
        } else {
            attention_forward<float>(const_view(q.data(), n, D::q), const_view(k.data(), n, D::kv),
                                     const_view(v.data(), n, D::kv), shape, matrix_view(out.data(), n, D::q), probs.data());
        }
    }
    // QK^T and PV over the causal half of each sequence: 2 products of 2 * seq^2/2 * head_dim FLOPs.
    set_flops(state, (backward ? 2.0 : 1.0) * 2.0 * batch * D::heads * seq * seq * D::head);
}
BENCHMARK(attention)->ArgNames({"backward"})->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// The tiled attention the model trains with, one sequence of `seq` tokens (the seed's 4 query heads
// on 1 kv head, head_dim 256), for each layer kind: a sliding layer (window 512) should grow as
// seq * window, a full one as seq^2. backward: the forward (which keeps the log-sum-exps) once,
// then the timed backward.
//   build/bin/gemma3-ops-bench --benchmark_filter=flash_attention
void flash_attention(benchmark::State& state) {
    const Index length = state.range(0), window = state.range(1) != 0 ? D::window : 0;
    const bool backward = state.range(2) != 0;
    auto q = random_buffer(static_cast<std::size_t>(length * D::q), 1.0f, 1),
         k = random_buffer(static_cast<std::size_t>(length * D::kv), 1.0f, 2),
         v = random_buffer(static_cast<std::size_t>(length * D::kv), 1.0f, 3), out = q, d_out = q, dq = q, dk = k, dv = v;
    Buffer<float> lse(static_cast<std::size_t>(D::heads * length));
    const AttentionShape shape{1, length, D::heads, D::kv_heads, D::head, window, 1.0 / 16};
    const auto cq = const_view(q.data(), length, D::q), ck = const_view(k.data(), length, D::kv),
               cv = const_view(v.data(), length, D::kv);
    flash_attention_forward<float>(cq, ck, cv, shape, matrix_view(out.data(), length, D::q), lse.data());
    for (auto _ : state) {
        if (backward) {
            flash_attention_backward<float>(cq, ck, cv, const_view(out.data(), length, D::q), lse.data(),
                                            const_view(d_out.data(), length, D::q), shape,
                                            matrix_view(dq.data(), length, D::q), matrix_view(dk.data(), length, D::kv),
                                            matrix_view(dv.data(), length, D::kv));
        } else {
            flash_attention_forward<float>(cq, ck, cv, shape, matrix_view(out.data(), length, D::q), lse.data());
        }
    }
    double keys = 0;  // visible (query, key) pairs
    for (Index i = 0; i < length; ++i) keys += static_cast<double>(i - shape.first_key(i) + 1);
    // QK^T and PV: 2 products of 2 * head_dim FLOPs per visible pair and head (backward: 5 products).
    set_flops(state, (backward ? 5.0 : 2.0) * 2.0 * D::heads * D::head * keys);
}
BENCHMARK(flash_attention)
    ->ArgNames({"seq", "sliding", "backward"})
    ->ArgsProduct({{512, 2048, 8192}, {1, 0}, {0, 1}})
    ->UseRealTime()  // OpenMP threads do the work: rates per wall-clock second
    ->Unit(benchmark::kMillisecond);

void classifier(benchmark::State& state) {
    auto h = random_buffer(static_cast<std::size_t>(n * D::model)), w = random_buffer(static_cast<std::size_t>(D::vocab * D::model), 0.02f),
         dh = h, dw = w;
    std::vector<std::int32_t> targets(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) targets[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % D::vocab);
    Buffer<float> chunk;
    for (auto _ : state) {
        benchmark::DoNotOptimize(classifier_forward_backward<float>(const_view(h.data(), n, D::model),
                                                                    const_view(w.data(), D::vocab, D::model), targets,
                                                                    1.0f / n, dh.data(), dw.data(), chunk));
    }
    set_flops(state, 6.0 * static_cast<double>(n * D::model * D::vocab));
}
BENCHMARK(classifier)->Unit(benchmark::kMillisecond);

void embedding(benchmark::State& state) {
    auto table = random_buffer(static_cast<std::size_t>(D::vocab * D::model)), out = random_buffer(static_cast<std::size_t>(n * D::model));
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) tokens[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % D::vocab);
    const bool backward = state.range(0) != 0;
    for (auto _ : state) {
        if (backward) {
            embedding_backward<float>(tokens, 25.3f, const_view(out.data(), n, D::model), matrix_view(table.data(), D::vocab, D::model));
        } else {
            embedding_forward<float>(const_view(table.data(), D::vocab, D::model), tokens, 25.3f, matrix_view(out.data(), n, D::model));
        }
    }
    set_bytes(state, 8.0 * static_cast<double>(n * D::model));
}
BENCHMARK(embedding)->ArgNames({"backward"})->Arg(0)->Arg(1);

// The optimizer over all 164.7M parameters: the global norm, then AdamW (clipping folded in; the
// gradients left as they are, so each repetition sees the same ones): 32 bytes per parameter, the
// step's memory-bound part (gemma3-train also clears the gradients in that pass: 36).
void adamw(benchmark::State& state) {
    const std::size_t size = parameter_count<configs::Gemma3_270M>;
    auto params = random_buffer(size, 0.02f), grads = random_buffer(size, 1e-3f);
    AdamW<float> optimizer(size, {});
    for (auto _ : state) {
        const double norm = global_norm(grads.data(), size);
        optimizer.step(params.data(), grads.data(), 1e-4, clip_coefficient(norm, 1.0), false);
    }
    set_bytes(state, 32.0 * static_cast<double>(size));
}
BENCHMARK(adamw)->Unit(benchmark::kMillisecond);

}  // namespace

// Decoding's products: one row, y [1, out] = x [1, in] W^T, at the seed's shapes (gate|up, down,
// head), reported as GB/s of weights read (the limit is memory bandwidth). state.range(2):
// 0 = fp32 gemm() (CBLAS sgemv), 1 = oneDNN fp32 matmul with M = 1, 2 = gemm() with bf16 inputs
// (oneDNN bf16 matmul, M = 1), 3 = packed bf16 kernel, 4 = packed int8 kernel (ops/packed_linear.hpp).
void packed_matvec(benchmark::State& state) {
    const Index in = state.range(0), out = state.range(1);
    const int engine = static_cast<int>(state.range(2));
    const auto x = random_buffer(static_cast<std::size_t>(in)), w = random_buffer(static_cast<std::size_t>(out * in), 0.02f);
    Buffer<float> y(static_cast<std::size_t>(out));
    const auto wv = const_view(w.data(), out, in);
    const RowMatrix<bf16> x16 = const_view(x.data(), 1, in).cast<bf16>(), w16 = engine == 2 ? RowMatrix<bf16>(wv.cast<bf16>()) : RowMatrix<bf16>();
    const auto packed = engine >= 3 ? PackedMatrix::pack(wv, engine == 3 ? WeightFormat::bf16 : WeightFormat::int8) : PackedMatrix{};
    double bytes = 4.0 * static_cast<double>(in * out);
    if (engine == 2) bytes /= 2;
    if (engine >= 3) bytes = static_cast<double>(packed.bytes());
    for (auto _ : state) {
        switch (engine) {
            case 0: gemm(const_view(x.data(), 1, in), Op::none, wv, Op::transpose, matrix_view(y.data(), 1, out)); break;
            case 1:
#ifdef GEMMA3_HAVE_ONEDNN
                detail::onednn_matmul(dnnl_f32, x.data(), false, in, w.data(), true, in, y.data(), out, 1,
                                      out, in, 1.0f, 0.0f);
#else
                state.SkipWithError("built without oneDNN");
#endif
                break;
            case 2: gemm(x16, Op::none, w16, Op::transpose, matrix_view(y.data(), 1, out)); break;
            default: linear_forward<float>(const_view(x.data(), 1, in), packed, matrix_view(y.data(), 1, out));
        }
        benchmark::DoNotOptimize(y.data());
    }
    set_bytes(state, bytes);
    static const char* names[] = {"fp32 sgemv", "oneDNN fp32 M=1", "oneDNN bf16 M=1", "packed bf16", "packed int8"};
    state.SetLabel(std::string(names[engine]) + (engine >= 3 && !packed_kernels_use_avx512() ? " (scalar)" : ""));
}
BENCHMARK(packed_matvec)
    ->ArgNames({"in", "out", "engine"})
    ->ArgsProduct({{D::model}, {2 * D::ffn}, {0, 1, 2, 3, 4}})
    ->ArgsProduct({{D::ffn}, {D::model}, {0, 1, 2, 3, 4}})
    ->ArgsProduct({{D::model}, {D::vocab}, {0, 1, 2, 3, 4}})
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
