"""CPU attention under half-precision autocast: small blocks in fp32; saved models keep sdpa."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from clmkit import ClmTrainer
from clmkit.models import build_model, model_config
from clmkit.training.attention import NAME, cpu_sdpa_attention, fp32_is_faster, use_cpu_attention
from clmkit.training.loop import ClmLoop


def qkv(length: int, head_size: int, dtype: torch.dtype) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(2, 2, length, head_size, dtype=dtype) for _ in range(3)]


def test_small_half_blocks_run_in_fp32_and_come_back_in_their_dtype() -> None:
    module = torch.nn.Module()
    module.is_causal = True
    q, k, v = qkv(16, 8, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: autocast must not cast it back to bf16
        out, _ = cpu_sdpa_attention(module, q, k, v, None)
    expected, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), None)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.to(torch.bfloat16))
    # the bf16 kernel gives a different (less precise) answer, so the fp32 path really ran
    bf16, _ = sdpa_attention_forward(module, q, k, v, None)
    assert not torch.equal(out, bf16)


@pytest.mark.parametrize(
    ("length", "head_size", "dtype", "fp32"),
    [
        (128, 64, torch.bfloat16, True),
        (128, 64, torch.float16, True),
        (128, 128, torch.bfloat16, True),
        (512, 64, torch.bfloat16, False),  # long blocks: bf16 is the faster kernel there
        (256, 128, torch.bfloat16, False),
        (128, 64, torch.float32, False),  # fp32 inputs, no autocast: fp32 already
    ],
)
def test_the_choice_depends_on_the_block_and_the_precision(
    length: int, head_size: int, dtype: torch.dtype, fp32: bool
) -> None:
    block = torch.empty(1, 1, length, head_size, dtype=dtype)
    assert fp32_is_faster(block, block) is fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast would run it in bf16 whatever its inputs
        assert fp32_is_faster(block.float(), block.float()) is (length * head_size <= 128 * 128)


def test_a_query_promoted_to_fp32_by_rotary_positions_still_counts_as_bf16() -> None:
    module = torch.nn.Module()
    module.is_causal = True
    q, k, v = qkv(16, 8, torch.bfloat16)
    out, _ = cpu_sdpa_attention(module, q.float(), k.float(), v, None)  # Qwen3 under autocast hands over these
    expected, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), None)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected.to(torch.bfloat16))


@pytest.mark.parametrize("path", [ClmTrainer, ClmLoop])
@pytest.mark.parametrize("checkpointing", [{}, {"use_reentrant": False, "every_n_layers": 1}])
def test_both_paths_attend_through_it_on_cpu_even_under_gradient_checkpointing_and_save_sdpa(
    path, checkpointing, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets, tmp_path
) -> None:
    model = clmkit_model(architecture="qwen3")
    calls = []
    handle = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, *_: calls.append(module.config._attn_implementation)
    )
    args = clmkit_args(
        max_steps=2, bf16=True, activation_checkpointing=True, activation_checkpointing_kwargs=checkpointing or None
    )
    run = path(model=model, args=args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["train"])
    # the recomputation in backward attends like the forward did (it once ran plain sdpa and failed)
    assert math.isfinite(run.train().training_loss)
    handle.remove()
    assert calls and set(calls) == {NAME}
    run.save_model(str(tmp_path / "saved"))
    assert "clmkit" not in (tmp_path / "saved" / "config.json").read_text()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved").config._attn_implementation == "sdpa"


def test_only_sdpa_on_a_cpu_is_changed() -> None:
    model = build_model(model_config("gpt2", "test", 128, 32, 0))
    assert not use_cpu_attention(model, torch.device("cuda"))
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    assert not use_cpu_attention(model, torch.device("cpu"))
    assert model.config._attn_implementation == "eager"
