"""Training logs: loss per target token, learning rate, gradient norm, tokens, MFU; the NaN guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from clmkit import ClmTrainer, Loss, NonFiniteLossError, hookimpl
from clmkit.testing import padded_examples
from clmkit.training.flops import (
    datasheet_peak_tflops,
    flops_per_token,
    matmul_parameters,
    measure_peak_tflops,
    peak_tflops,
)


def no_dropout(clmkit_model):
    return clmkit_model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def train(model, tokenizer, clmkit_args, dataset, plugins=(), **overrides):
    settings = {"logging_strategy": "steps", "logging_steps": 1, "train_sampling_strategy": "sequential"}
    args = clmkit_args(**{**settings, **overrides})
    trainer = ClmTrainer(model, args, train_dataset=dataset, processing_class=tokenizer, plugins=plugins)
    trainer.train()
    return trainer, [log for log in trainer.state.log_history if "loss" in log]


def test_every_logging_step_carries_loss_lr_grad_norm_tokens_and_mfu(clmkit_model, clmkit_tokenizer, clmkit_args):
    examples = padded_examples(clmkit_tokenizer)
    model = no_dropout(clmkit_model)
    _, logs = train(
        model, clmkit_tokenizer, clmkit_args, examples, gradient_accumulation_steps=2, max_steps=2, peak_tflops=2.0
    )
    assert len(logs) == 2
    assert [log["learning_rate"] for log in logs] == pytest.approx([3e-3, 1.5e-3])  # linear decay, before each step
    assert all(log["grad_norm"] > 0 and 0 < log["loss"] < 10 for log in logs)
    lengths = [len(ids) for ids in examples["input_ids"]]  # two steps of 2 x 8: every example once
    assert logs[-1]["tokens_seen"] == sum(lengths)
    assert logs[-1]["target_tokens_seen"] == sum(lengths) - len(lengths)
    assert logs[0]["tokens_seen"] == sum(lengths[:16])
    per_token = flops_per_token(model, 64)
    for log in logs:
        assert log["tokens_per_second"] > 0
        assert log["mfu"] == pytest.approx(per_token * log["tokens_per_second"] / 2e12, rel=1e-9)


def test_mfu_defaults_to_the_peak_measured_on_this_cpu(clmkit_model, clmkit_tokenizer, clmkit_args):
    examples = padded_examples(clmkit_tokenizer)
    model = clmkit_model()
    _, logs = train(model, clmkit_tokenizer, clmkit_args, examples, max_steps=1)
    peak = measure_peak_tflops(torch.device("cpu"), torch.float32)
    assert peak == peak_tflops(torch.device("cpu")) and 0.01 < peak < 100  # measured once, then cached
    assert logs[0]["mfu"] == pytest.approx(flops_per_token(model, 64) * logs[0]["tokens_per_second"] / (peak * 1e12))
    assert 0 < logs[0]["mfu"] < 1


@pytest.mark.parametrize(("batch", "accumulation"), [(32, 1), (8, 4)])
def test_logged_loss_is_per_target_token_whatever_the_accumulation(
    clmkit_model, clmkit_tokenizer, clmkit_args, batch, accumulation
):
    """One optimizer step over the 32 padded examples logs their mean token loss under the initial weights."""
    examples = padded_examples(clmkit_tokenizer)
    model = no_dropout(clmkit_model)
    nats = targets = 0.0
    with torch.no_grad():
        for ids in examples["input_ids"]:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            nats += float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            targets += len(ids) - 1
    _, logs = train(
        model,
        clmkit_tokenizer,
        clmkit_args,
        examples,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
    )
    assert logs[0]["loss"] == pytest.approx(nats / targets, rel=1e-5)


def test_flops_per_token_of_a_tied_gpt2_by_hand(clmkit_model):
    model = clmkit_model(context_length=64)  # 2 layers, 64 dims, 2 heads, head tied to the token embedding
    vocab = model.config.vocab_size
    layer = 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64)
    n = 2 * layer + 2 * 64 + vocab * 64  # blocks, ln_f, the head once; no position embedding
    assert matmul_parameters(model) == n
    assert flops_per_token(model, 64) == 6 * n + 12 * 2 * 2 * 32 * 64
    assert model.num_parameters(exclude_embeddings=True) == n - vocab * 64  # transformers leaves the head out


def test_flops_per_token_of_an_untied_llama_by_hand():
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    layer = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * (64 * 128) + 2 * 64  # q, k and v (2 kv heads), o, mlp, norms
    n = 2 * layer + 64 + 300 * 64  # final norm and lm_head; the input embedding is a lookup
    assert matmul_parameters(model) == n
    assert flops_per_token(model, 128) == 6 * n + 12 * 2 * 4 * 16 * 128


def test_datasheet_peaks_of_common_gpus():
    assert datasheet_peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.4
    assert datasheet_peak_tflops("NVIDIA H100 PCIe", torch.bfloat16) == 756.0
    assert datasheet_peak_tflops("NVIDIA A100-SXM4-40GB", torch.float32) == 19.5
    assert datasheet_peak_tflops("NVIDIA GeForce GTX 1080") is None


# ---- the NaN guard ------------------------------------------------------------------------------------


class NaNAtStep(Loss):
    """Cross-entropy that turns NaN at one step, as an overflowing loss would."""

    def __init__(self, tokenizer=None, step: int = 3) -> None:
        self.step, self.calls = step, 0

    def loss_sum(self, inputs):
        self.calls += 1
        total = super().loss_sum(inputs)
        return total * float("nan") if self.calls == self.step else total


class NaNPlugin:
    @hookimpl
    def clmkit_register_losses(self, register):
        register("nan_at_step", NaNAtStep)


def test_nan_loss_stops_training_naming_the_step_and_last_checkpoint(
    clmkit_model, clmkit_tokenizer, clmkit_args, tmp_path
):
    examples = padded_examples(clmkit_tokenizer)
    output = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        train(
            clmkit_model(),
            clmkit_tokenizer,
            clmkit_args,
            examples,
            plugins=[NaNPlugin()],
            loss="nan_at_step",
            loss_kwargs={"step": 3},
            per_device_train_batch_size=4,
            max_steps=6,
            output_dir=str(output),
            save_strategy="steps",
            save_steps=2,
        )
    message = str(info.value)
    assert "nan at optimizer step 3" in message and str(output / "checkpoint-2") in message
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2"]  # nothing trained on after


def test_nan_before_any_checkpoint_says_so(clmkit_model, clmkit_tokenizer, clmkit_args):
    examples = padded_examples(clmkit_tokenizer)
    with pytest.raises(NonFiniteLossError, match="step 1. Last good checkpoint: none saved yet"):
        train(
            clmkit_model(),
            clmkit_tokenizer,
            clmkit_args,
            examples,
            plugins=[NaNPlugin()],
            loss="nan_at_step",
            loss_kwargs={"step": 1},
            max_steps=2,
        )
