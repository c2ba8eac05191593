"""Built-in grouping ``decay_except_bias_and_norm``: norms found by module type, not by the course's names."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from clmkit import ClmTrainer, Plugins


def grouper():
    return Plugins(autoload=False).get("param_groupers", "decay_except_bias_and_norm").obj


def names_by_group(model, groups) -> list[set[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [{name_of[id(p)] for p in group["params"]} for group in groups]


def course_grouped_params(model, weight_decay, no_decay=["bias", "LayerNorm.weight"]):  # noqa: B006 (verbatim)
    """The course's ``get_grouped_params`` (chapter 7, section 6), with ``weight_decay`` made an argument."""
    params_with_wd, params_without_wd = [], []
    for n, p in model.named_parameters():
        if any(nd in n for nd in no_decay):
            params_without_wd.append(p)
        else:
            params_with_wd.append(p)
    return [
        {"params": params_with_wd, "weight_decay": weight_decay},
        {"params": params_without_wd, "weight_decay": 0.0},
    ]


GPT2_NORM = re.compile(r"(h\.\d+\.ln_[12]|ln_f)\.weight$")


def test_gpt2_norm_weights_and_biases_are_not_decayed(clmkit_model):
    model = clmkit_model()
    groups = grouper()(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    decay, plain = names_by_group(model, groups)

    assert {n for n in plain if GPT2_NORM.search(n)} == {
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_2.weight",
        "transformer.h.1.ln_1.weight",
        "transformer.h.1.ln_2.weight",
        "transformer.ln_f.weight",
    }
    assert plain == {n for n, _ in model.named_parameters() if n.endswith(".bias") or GPT2_NORM.search(n)}
    # Conv1D weights (attention and MLP) and both embeddings are decayed
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight"} <= decay
    assert {"transformer.h.1.attn.c_proj.weight", "transformer.h.1.mlp.c_fc.weight"} <= decay
    assert decay == {n for n, _ in model.named_parameters()} - plain


def test_every_trainable_parameter_exactly_once(clmkit_model):
    model = clmkit_model()
    model.transformer.wpe.weight.requires_grad_(False)
    groups = grouper()(model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}  # lm_head is tied to wte: once


def test_the_course_name_list_decays_gpt2_norms(clmkit_model):
    model = clmkit_model()
    decay, plain = names_by_group(model, course_grouped_params(model, 0.1))
    assert "transformer.ln_f.weight" in decay and "transformer.h.0.ln_1.weight" in decay
    assert not any(GPT2_NORM.search(n) for n in plain)


def test_rms_norms_of_other_architectures_are_found_by_type():
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    decay, plain = names_by_group(model, grouper()(model, 0.1))
    assert plain == {n for n, _ in model.named_parameters() if "norm" in n}
    assert "model.layers.0.self_attn.q_proj.weight" in decay


@pytest.mark.parametrize(("optim", "optimizer_cls"), [("adamw_torch", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_the_trainers_optimizer_has_these_groups(clmkit_model, clmkit_tokenizer, clmkit_args, optim, optimizer_cls):
    model = clmkit_model()
    trainer = ClmTrainer(model, clmkit_args(weight_decay=0.05, optim=optim), processing_class=clmkit_tokenizer)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, optimizer_cls)
    groups = optimizer.param_groups
    got = {
        (g["weight_decay"], frozenset(names)) for g, names in zip(groups, names_by_group(model, groups), strict=True)
    }
    decay, plain = names_by_group(model, grouper()(model, 0.05))
    assert got == {(0.05, frozenset(decay)), (0.0, frozenset(plain))}
