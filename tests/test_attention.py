"""CPU attention under half-precision autocast: small blocks in fp32, the model's config untouched outside."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from clmkit.models import build_model, model_config
from clmkit.training.attention import NAME, clmkit_attention, cpu_sdpa_attention, fp32_is_faster
from clmkit.training.forward import forward_for_loss


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


@pytest.mark.parametrize("architecture", ["gpt2", "qwen3"])
def test_forward_uses_it_on_cpu_and_restores_the_config(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_config(architecture, "test", 128, 32, 0))
    assert model.config._attn_implementation == "sdpa"
    batch = {"input_ids": torch.randint(0, 128, (2, 32)), "labels": torch.randint(0, 128, (2, 32))}
    seen: list[str] = []
    hook = model.model if hasattr(model, "model") else model.transformer
    handle = hook.register_forward_pre_hook(lambda *_: seen.append(model.config._attn_implementation))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forward_for_loss(model, batch, hidden_states=True)
    handle.remove()
    assert seen == [NAME]
    assert model.config._attn_implementation == "sdpa"
    assert "clmkit" not in model.config.to_json_string()


def test_the_config_is_restored_when_the_forward_raises() -> None:
    model = build_model(model_config("gpt2", "test", 128, 32, 0))
    with pytest.raises(RuntimeError), clmkit_attention(model):
        assert model.config._attn_implementation == NAME
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_eager_attention_is_left_alone() -> None:
    model = build_model(model_config("gpt2", "test", 128, 32, 0))
    model.config._attn_implementation = "eager"
    with clmkit_attention(model):
        assert model.config._attn_implementation == "eager"
