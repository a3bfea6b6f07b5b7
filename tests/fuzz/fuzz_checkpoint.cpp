// Fuzz harness: checkpoint state. Each input is put in place of trainer_state.json in a valid
// checkpoint of a small model and loaded with load_checkpoint; it is also read as metrics.jsonl,
// line by line, as a resume does. Promises checked:
//   - load_checkpoint either succeeds or throws CheckpointError, and a failed load leaves the
//     weights, AdamW state and gradients unchanged (issue 13, findings 4 and 7);
//   - a state that loads has a non-negative iteration and step count, at least one rank and
//     sampler states that restore, and survives save_checkpoint + load_checkpoint unchanged;
//   - parse_metrics_line never throws, and what it accepts has a non-negative iteration
//     (finding 6: nlohmann errors escaped from --resume).
#include "fuzz_support.hpp"

#include <gemma3/io/checkpoint.hpp>
#include <gemma3/train/trainer.hpp>

#include <cmath>
#include <cstring>
#include <sstream>

namespace {

using namespace gemma3;
using Micro = fuzz::Micro;
namespace fs = std::filesystem;

TrainingConfig training_config() {
    return parse_training_config(nlohmann::json{{"learning_rate", 1e-3}, {"warmup_steps", 1}, {"min_lr", 0.0},
                                                {"max_iters", 10}, {"eval_iters", 5}, {"batch_size", 2},
                                                {"block_size", 8}, {"gradient_accumulation_steps", 2},
                                                {"device", "cpu"}, {"dtype", "float32"}, {"ptdtype", "float32"}},
                                 "fuzz training config");
}

std::string generator_state(std::uint64_t seed) {
    std::ostringstream out;
    out << std::mt19937_64(seed);
    return out.str();
}

struct Saved {
    Parameters<Micro, float> params, grads;
    AdamW<float> adamw;
    TrainerState state;
    fs::path dir;
    std::string state_text;  // trainer_state.json as written
};

void fill(Parameters<Micro, float>& p, float base) {
    for (std::size_t i = 0; i < p.size(); ++i) p.data()[i] = base + 0.001f * static_cast<float>(i);
}

Saved save_one(const fs::path& out, TrainerState state) {
    Saved s;
    fill(s.params, 0.5f);
    fill(s.grads, -0.25f);
    s.adamw = AdamW<float>(s.params.size(), {});
    s.adamw.step(s.params.data(), s.grads.data(), 1e-3);
    s.state = std::move(state);
    s.dir = save_checkpoint(out, "latest", s.params, s.adamw, s.state, config_file_of<Micro>(), training_config(),
                            s.state.pending_gradients ? &s.grads : nullptr);
    std::ifstream in(s.dir / "trainer_state.json", std::ios::binary);
    s.state_text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    return s;
}

TrainerState base_state(bool data_parallel) {
    TrainerState state;
    state.iteration = 7;
    state.optimizer_steps = 1;
    state.last_eval_iteration = 5;
    state.pending_gradients = true;
    state.best_val_loss = 3.25;
    state.train_sampler = generator_state(1);
    state.eval_train_sampler = generator_state(2);
    state.eval_val_sampler = generator_state(3);
    if (data_parallel) {
        state.ranks = 2;
        state.batch_sampling = "per-rank";
        state.rank_train_samplers = {generator_state(4)};
    }
    return state;
}

const Saved& base() {
    static const Saved saved = save_one(fuzz::scratch_dir() / "base", base_state(false));
    return saved;
}

bool same_bytes(const Parameters<Micro, float>& a, const float* b) {
    return std::memcmp(a.data(), b, a.size() * sizeof(float)) == 0;
}

void check_same_state(const TrainerState& a, const TrainerState& b) {
    const bool same_loss = std::isinf(a.best_val_loss) ? std::isinf(b.best_val_loss) : a.best_val_loss == b.best_val_loss;
    fuzz::check(a.iteration == b.iteration && a.optimizer_steps == b.optimizer_steps &&
                    a.last_eval_iteration == b.last_eval_iteration && a.pending_gradients == b.pending_gradients &&
                    same_loss && a.train_sampler == b.train_sampler && a.eval_train_sampler == b.eval_train_sampler &&
                    a.eval_val_sampler == b.eval_val_sampler && a.ranks == b.ranks &&
                    a.rank_train_samplers == b.rank_train_samplers,
                "the trainer state changed through save_checkpoint and load_checkpoint");
}

void check_loaded(const TrainerState& state, const Parameters<Micro, float>& params, const Parameters<Micro, float>& grads,
                  const AdamW<float>& adamw) {
    const Saved& b = base();
    fuzz::check(state.iteration >= 0 && state.optimizer_steps >= 0 && state.ranks >= 1, "a loaded state is out of range");
    for (const auto* sampler : {&state.train_sampler, &state.eval_train_sampler, &state.eval_val_sampler}) {
        fuzz::check(BatchSampler::is_valid_state(*sampler), "a loaded sampler state does not restore");
    }
    fuzz::check(same_bytes(params, b.params.data()), "loaded weights differ from the saved ones");
    fuzz::check(adamw.steps() == state.optimizer_steps, "AdamW's step count is not the state's");
    // Save what was loaded, load it again: the same state.
    const auto out = fuzz::scratch_dir() / "again";
    fs::remove_all(out);
    const auto dir = save_checkpoint(out, "latest", params, adamw, state, config_file_of<Micro>(), training_config(),
                                     state.pending_gradients ? &grads : nullptr);
    Parameters<Micro, float> p2, g2;
    AdamW<float> a2(p2.size(), {});
    const TrainerState again = load_checkpoint(dir, p2, a2, g2);
    TrainerState expected = state;
    if (state.ranks <= 1 && state.rank_train_samplers.empty()) expected.batch_sampling.clear();  // not written
    check_same_state(again, expected);
    fuzz::check(same_bytes(p2, params.data()) && same_bytes(g2, grads.data()), "weights or gradients changed in a round trip");
}

}  // namespace

std::vector<std::pair<std::string, std::string>> gemma3::fuzz::generated_seeds() {
    const auto parallel = save_one(scratch_dir() / "seed", base_state(true));
    return {{"trainer_state.json", base().state_text}, {"trainer_state_data_parallel.json", parallel.state_text}};
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace gemma3;
    const std::string_view input = fuzz::as_text(data, size);
    const Saved& b = base();
    fuzz::write_file(b.dir / "trainer_state.json", input);

    Parameters<Micro, float> params, grads;
    fill(params, 9.0f);
    fill(grads, -9.0f);
    AdamW<float> adamw(params.size(), {});
    const Parameters<Micro, float> params_before = params, grads_before = grads;
    std::optional<TrainerState> state;
    try {
        state = load_checkpoint(b.dir, params, adamw, grads);
    } catch (const CheckpointError&) {
        fuzz::check(same_bytes(params, params_before.data()) && same_bytes(grads, grads_before.data()) &&
                        adamw.steps() == 0,
                    "a failed load_checkpoint changed the model");
    }
    if (state) check_loaded(*state, params, grads, adamw);

    std::size_t start = 0;
    while (start <= input.size()) {
        const std::size_t end = std::min(input.find('\n', start), input.size());
        const auto record = parse_metrics_line(input.substr(start, end - start));
        if (record) fuzz::check(record->iter >= 0, "a metrics record with a negative iteration");
        start = end + 1;
    }
    return 0;
}
