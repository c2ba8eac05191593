"""Architectures and size presets: built from transformers' own configs, saved models load anywhere."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from clmkit import Plugins, hookimpl
from clmkit.builtins.architectures import GPT2_SIZES
from clmkit.generation import default_generation_config
from clmkit.models import (
    PRESETS,
    build_model,
    model_config,
    non_embedding_parameters,
    padded_vocab_size,
    sized_config,
    suppress_padding_tokens,
)

ARCHITECTURES = sorted(Plugins(autoload=False).registry("architectures"))


@pytest.mark.parametrize("preset", PRESETS)
def test_sizes_match_across_architectures(preset):
    """Every architecture's preset has the course GPT-2's non-embedding parameters within 10% (checked on the
    configs' shapes: a meta-device model allocates nothing, even at ``base``)."""
    counts = {}
    for architecture in ARCHITECTURES:
        with torch.device("meta"):
            model = build_model(model_config(architecture, preset, 8192, 128, 0))
        counts[architecture] = non_embedding_parameters(model)
    for architecture, count in counts.items():
        assert abs(count / counts["gpt2"] - 1) <= 0.10, (architecture, counts)
    if preset == "base":
        assert 84e6 < counts["gpt2"] < 86e6  # GPT-2 124M: 85M outside the embeddings and the tied head


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_vocabulary_is_padded_to_a_multiple_of_64(architecture):
    config = model_config(architecture, "test", 300, 64, 0)
    assert config.vocab_size == padded_vocab_size(300) == 320


def test_modern_architectures_are_what_they_claim(clmkit_model):
    llama, qwen3 = clmkit_model(architecture="llama"), clmkit_model(architecture="qwen3")
    for model in (llama, qwen3):
        names = [n for n, _ in model.named_parameters()]
        assert not any(n.endswith(".bias") for n in names)  # no biases
        assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied head
        assert type(model.model.norm).__name__.endswith("RMSNorm")
        assert {"gate_proj", "up_proj", "down_proj"} <= {n.split(".")[-2] for n in names}  # SwiGLU
        assert model.config.rope_parameters["rope_theta"] == 10000.0
    qwen3_names = {n for n, _ in qwen3.named_parameters()}
    assert "model.layers.0.self_attn.q_norm.weight" in qwen3_names  # QK-norm
    assert not any("q_norm" in n for n, _ in llama.named_parameters())


def test_overriding_width_keeps_heads_consistent():
    config = model_config(
        "llama",
        "tiny",
        8192,
        128,
        0,
        {"hidden_size": 384, "num_attention_heads": 6, "num_key_value_heads": 6, "intermediate_size": 1024},
    )
    model = build_model(config)
    assert config.head_dim == 64 and model.model.layers[0].self_attn.q_proj.weight.shape == (384, 384)
    assert model_config("llama", "tiny", 8192, 128, 0, {"tie_word_embeddings": True}).tie_word_embeddings
    shallow = model_config("qwen3", "tiny", 8192, 128, 0, {"num_hidden_layers": 1})
    assert shallow.layer_types == ["full_attention"] and len(build_model(shallow).model.layers) == 1


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_saved_model_loads_with_auto_classes_and_generates_only_real_tokens(architecture, clmkit_tokenizer, tmp_path):
    tokenizer = clmkit_tokenizer
    model = build_model(model_config(architecture, "test", len(tokenizer) + 10, 64, tokenizer.eos_token_id))
    assert model.config.vocab_size == padded_vocab_size(len(tokenizer) + 10) > len(tokenizer)
    model.generation_config = default_generation_config(tokenizer.eos_token_id, 8)
    suppress_padding_tokens(model, len(tokenizer))
    with torch.no_grad():  # make the padding rows the likeliest tokens: generation must still never emit them
        model.lm_head.weight[len(tokenizer) :] = 10 * model.model.embed_tokens.weight[:1].sign()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    ids = tokenizer("def f(x):", return_tensors="pt").input_ids
    out = loaded.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert int(out.max()) < len(tokenizer)
    text = pipeline("text-generation", model=str(tmp_path))("def f(x):", max_new_tokens=4)[0]["generated_text"]
    assert text.startswith("def f(x):")


class Tall:
    """A plugin architecture: a deeper, narrower Llama, registered by name."""

    @staticmethod
    def tall(preset, vocab_size, context_length, eos_token_id):
        from transformers import LlamaConfig

        sizes = {"test": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}}
        return sized_config(
            LlamaConfig,
            sizes,
            preset,
            vocab_size=vocab_size,
            max_position_embeddings=context_length,
            eos_token_id=eos_token_id,
        )

    @hookimpl
    def clmkit_register_architectures(self, register):
        register("tall", self.tall)


def test_a_plugin_architecture_is_built_by_name():
    plugins = Plugins(autoload=False, extra=[Tall()])
    config = model_config("tall", "test", 100, 32, 0, plugins=plugins)
    assert config.num_hidden_layers == 4 and config.vocab_size == 128
    with pytest.raises(Exception, match="unknown model preset 'tiny'; presets: test"):
        model_config("tall", "tiny", 100, 32, 0, plugins=plugins)


def test_gpt2_base_is_the_courses_model():
    config = model_config("gpt2", "base", 50257, 1024, 0)
    assert (config.n_layer, config.n_head, config.n_embd) == (12, 12, 768) and GPT2_SIZES["base"]["n_layer"] == 12
    assert config.vocab_size == 50304  # nanoGPT's padding of GPT-2's 50,257
