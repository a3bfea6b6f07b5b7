#!/usr/bin/env python3
"""Writes tests/data/hf/tiny_transformers_config/config.json: the config.json transformers' own
save_pretrained writes for config/tiny_model_config.json's architecture (Gemma3TextConfig), so that
test_load_pretrained loads a directory in transformers' format, not only in ours.

  .venv/bin/python tools/make_hf_config_fixture.py
"""
import json
import os

from transformers import Gemma3TextConfig

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
with open(os.path.join(root, "config", "tiny_model_config.json")) as f:
    ours = json.load(f)
config = Gemma3TextConfig(
    vocab_size=ours["vocab_size"], hidden_size=ours["emb_dim"], intermediate_size=ours["hidden_dim"],
    num_hidden_layers=ours["n_layers"], num_attention_heads=ours["n_heads"], num_key_value_heads=ours["n_kv_groups"],
    head_dim=ours["head_dim"], max_position_embeddings=ours["context_length"], sliding_window=ours["sliding_window"],
    query_pre_attn_scalar=ours["query_pre_attn_scalar"], layer_types=ours["layer_types"],
    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": ours["rope_base"]},
                     "sliding_attention": {"rope_type": "default", "rope_theta": ours["rope_local_base"]}},
    tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None)
out = os.path.join(root, "tests", "data", "hf", "tiny_transformers_config")
config.save_pretrained(out)
print("wrote", os.path.join(out, "config.json"))
