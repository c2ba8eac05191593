"""The chunked cross-entropy primitive: the unchunked loss's values and gradients, without B x T x V logits."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from clmkit import ClmTrainer, Loss, Plugins, hookimpl, linear_cross_entropy
from clmkit.testing import padded_examples
from clmkit.training.cross_entropy import default_chunk_size, token_statistics
from clmkit.training.forward import forward_for_loss

N, H, V = 53, 16, 97  # 53 tokens in chunks of 7: eight chunks, the last one short


def autocast(dtype: torch.dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()


def close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """1e-5 in fp32; in bf16, 2% of the largest entry (bf16 keeps 8 bits of mantissa)."""
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    else:
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2 * float(expected.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_primitive_equals_unchunked_loss_and_gradients(dtype, padded, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=bias)
    hidden = torch.randn(N, H, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    if padded:
        targets[::4] = -100
    weights = torch.rand(N) + 0.5
    upstream = 0.37  # a loss divided by its normalizer: backward must scale the precomputed gradients
    params = [hidden, *head.parameters()]

    with autocast(dtype):
        logits = head(hidden)
        expected = (F.cross_entropy(logits.float(), targets, reduction="none") * weights).sum()
    expected_grads = torch.autograd.grad(expected * upstream, params)
    with autocast(dtype):
        got = linear_cross_entropy(hidden, head.weight, head.bias, targets, weights, chunk_size=7)
    got_grads = torch.autograd.grad(got * upstream, params)

    close(got, expected.detach(), dtype)
    for g, e in zip(got_grads, expected_grads, strict=True):
        assert g.dtype == e.dtype
        close(g, e, dtype)
    if padded:
        assert not got_grads[0][::4].any()  # ignored positions get no gradient


def test_frozen_head_and_a_chunk_without_targets():
    torch.manual_seed(2)
    head = torch.nn.Linear(H, V).requires_grad_(False)
    hidden, targets = torch.randn(N, H, requires_grad=True), torch.randint(0, V, (N,))
    expected = torch.autograd.grad(F.cross_entropy(head(hidden), targets, reduction="sum"), hidden)[0]
    got = torch.autograd.grad(linear_cross_entropy(hidden, head.weight, head.bias, targets, chunk_size=7), hidden)[0]
    close(got, expected, torch.float32)
    nothing = linear_cross_entropy(hidden, head.weight, head.bias, torch.full((N,), -100), chunk_size=7)
    assert nothing.item() == 0 and not torch.autograd.grad(nothing, hidden)[0].any()


def test_token_statistics_match_per_token_cross_entropy_and_argmax():
    torch.manual_seed(1)
    head = torch.nn.Linear(H, V)
    hidden, targets = torch.randn(N, H), torch.randint(0, V, (N,))
    targets[5:9] = -100
    losses, correct = token_statistics(hidden, head.weight, head.bias, targets, chunk_size=7)
    logits = head(hidden).detach()
    torch.testing.assert_close(losses, F.cross_entropy(logits, targets, reduction="none"), rtol=1e-5, atol=1e-6)
    assert torch.equal(correct, (logits.argmax(1) == targets) & (targets != -100))


def test_default_chunk_holds_a_few_million_logits():
    assert default_chunk_size(50257) * 50257 <= 2**22 < (default_chunk_size(50257) + 1) * 50257
    assert default_chunk_size(50257, "cuda") > 8 * default_chunk_size(50257)
    assert default_chunk_size(10**9) == 16  # never degenerate chunks


class Allocations(TorchDispatchMode):
    """Records the shape of every tensor an aten op allocates (views allocate nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[torch.Size] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.shapes += [t.shape for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def first_batch(tokenizer, dataset, size: int = 8) -> dict[str, torch.Tensor]:
    return Plugins(autoload=False).build("collators", "causal", tokenizer)([dataset[i] for i in range(size)])


def test_no_vocabulary_sized_tensor_beyond_one_chunk(clmkit_model, clmkit_tokenizer):
    examples = padded_examples(clmkit_tokenizer)
    model = clmkit_model()
    batch = first_batch(clmkit_tokenizer, examples)
    vocab, tokens = model.config.vocab_size, batch["input_ids"].numel()
    with Allocations() as ops:
        inputs, _ = forward_for_loss(model, batch, hidden_states=True, chunk_size=7)
        inputs.cross_entropy().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0
    vocab_sized = [s for s in ops.shapes if s and s[-1] == vocab]
    assert vocab_sized, "the head's logits were never computed"
    assert max(s.numel() for s in vocab_sized) <= 7 * vocab
    assert max(s.numel() for s in ops.shapes) < tokens * vocab


def test_hidden_states_keep_the_autocast_dtype_for_a_loss_computed_after_the_forward(
    clmkit_model, clmkit_tokenizer, clmkit_corpus
):
    """accelerate autocasts inside the model's forward only; the head's matmuls must still run in bf16."""
    model = clmkit_model()
    batch = first_batch(
        clmkit_tokenizer, Dataset.from_dict({"input_ids": [clmkit_tokenizer(clmkit_corpus[0])["input_ids"][:20]]}), 1
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inputs, _ = forward_for_loss(model, batch, hidden_states=True)
        assert model.transformer.ln_f(torch.zeros(1, 64)).dtype == torch.float32  # what the head receives
    assert inputs.hidden_states.dtype == torch.bfloat16
    inputs, _ = forward_for_loss(model, batch, hidden_states=True)
    assert inputs.hidden_states.dtype == torch.float32


# ---- through the real trainer ----------------------------------------------------------------------


class StepRecorder(TrainerCallback):
    """Gradients as they reach the optimizer, one dict per optimizer step."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})


def train_steps(model, tokenizer, clmkit_args, dataset, plugins=(), **overrides):
    """Train ``model`` on ``dataset`` in order without clipping; the gradients and logged losses of each step."""
    settings = {"max_grad_norm": 0.0, "train_sampling_strategy": "sequential", "logging_steps": 1}
    args = clmkit_args(**{**settings, "logging_strategy": "steps", **overrides})
    recorder = StepRecorder()
    trainer = ClmTrainer(
        model, args, train_dataset=dataset, processing_class=tokenizer, callbacks=[recorder], plugins=plugins
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return recorder.grads, losses


def assert_same_steps(got, expected, rtol: float) -> None:
    (got_grads, got_losses), (grads, losses) = got, expected
    assert got_losses == pytest.approx(losses, rel=rtol)
    for step, (g, e) in enumerate(zip(got_grads, grads, strict=True)):
        for name in e:
            error = float((g[name] - e[name]).norm() / e[name].norm().clamp(min=1e-12))
            assert error <= rtol, f"step {step}, {name}: relative gradient error {error:.1e}"


LOSSES = {
    "cross_entropy": {"loss": "cross_entropy"},
    "keytoken": {"loss": "keytoken", "loss_kwargs": {"keywords": ["self", "def", "None", "return"], "alpha": 2.0}},
    "keytoken_course": {
        "loss": "keytoken",
        "loss_kwargs": {"keywords": ["self", "def", "None", "return"], "alpha": 2.0, "normalize": "course"},
    },
}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_trainer_chunked_equals_logits_path(clmkit_model, clmkit_tokenizer, clmkit_args, loss, precision):
    """One padded step of 8 examples: same logged loss and gradients with and without chunking."""
    examples = padded_examples(clmkit_tokenizer)
    runs = [
        train_steps(
            clmkit_model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
            clmkit_tokenizer,
            clmkit_args,
            examples,
            max_steps=1,
            chunked_loss=chunked,
            loss_chunk_size=7,
            bf16=precision == "bf16",
            **LOSSES[loss],
        )
        for chunked in (True, False)
    ]
    assert_same_steps(*runs, rtol=1e-5 if precision == "fp32" else 2e-2)


def test_gradient_accumulation_stays_exact_with_chunking(clmkit_model, clmkit_tokenizer, clmkit_args):
    """Two SGD steps, padded examples in a fixed order: 32 x 1 and 8 x 4 reach the optimizer equal."""
    examples = padded_examples(clmkit_tokenizer)
    dataset = concatenate_datasets([examples, examples.select(range(31, -1, -1))])
    runs = [
        train_steps(
            clmkit_model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
            clmkit_tokenizer,
            clmkit_args,
            dataset,
            max_steps=2,
            optim="sgd",
            learning_rate=0.1,
            loss_chunk_size=7,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
        )
        for batch, accumulation in ((32, 1), (8, 4))
    ]
    assert len(runs[0][0]) == 2
    assert_same_steps(*runs, rtol=1e-5)


def test_llama_style_model_with_untied_head(clmkit_tokenizer, clmkit_args):
    examples = padded_examples(clmkit_tokenizer)

    def llama():
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(clmkit_tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            bos_token_id=clmkit_tokenizer.eos_token_id,
            eos_token_id=clmkit_tokenizer.eos_token_id,
            pad_token_id=clmkit_tokenizer.eos_token_id,
        )
        return LlamaForCausalLM(config)

    model = llama()
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    runs = [
        train_steps(llama(), clmkit_tokenizer, clmkit_args, examples, max_steps=1, chunked_loss=c, loss_chunk_size=7)
        for c in (True, False)
    ]
    assert runs[0][0][0]["lm_head.weight"].abs().sum() > 0
    assert_same_steps(*runs, rtol=1e-5)


# ---- third-party losses: logits or hidden states -----------------------------------------------------


class SeedStyle(Loss):
    """Consumes logits, as the course's code does: a plain summed cross-entropy."""

    consumes = "logits"

    def __init__(self, tokenizer=None) -> None:
        self.saw: set[str] = set()

    def loss_sum(self, inputs):
        self.saw.add("logits" if inputs.hidden_states is None else "hidden_states")
        logits = inputs.logits[:, :-1].flatten(0, 1)
        return F.cross_entropy(logits.float(), inputs.targets.flatten(), reduction="sum")


class SecondHalf(Loss):
    """Consumes hidden states and calls the shared primitive itself: targets in the second half of each row."""

    def __init__(self, tokenizer=None) -> None:
        self.saw: set[str] = set()

    def weights(self, batch):
        targets = batch["labels"][:, 1:]
        weights = (targets != -100).float()
        weights[:, : targets.shape[1] // 2] = 0
        return weights

    def normalizer(self, batch):
        return self.weights(batch).sum()

    def loss_sum(self, inputs):
        self.saw.add("logits" if inputs.hidden_states is None else "hidden_states")
        hidden = inputs.hidden_states[:, :-1].flatten(0, 1)
        head = inputs.lm_head
        weights = self.weights(inputs.batch).flatten()
        return linear_cross_entropy(hidden, head.weight, head.bias, inputs.targets.flatten(), weights, chunk_size=7)


class ThirdPartyLosses:
    def __init__(self) -> None:
        self.seed_style, self.second_half = SeedStyle(), SecondHalf()

    @hookimpl
    def clmkit_register_losses(self, register):
        register("seed_style", lambda tokenizer=None: self.seed_style)
        register("second_half", lambda tokenizer=None: self.second_half)


def test_third_party_losses_consume_logits_or_hidden_states(clmkit_model, clmkit_tokenizer, clmkit_args):
    examples = padded_examples(clmkit_tokenizer)
    plugin = ThirdPartyLosses()
    model = clmkit_model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    batch = first_batch(clmkit_tokenizer, examples)

    def run(loss):
        return train_steps(
            clmkit_model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
            clmkit_tokenizer,
            clmkit_args,
            examples,
            plugins=[plugin],
            loss=loss,
            max_steps=1,
        )

    def by_hand(weights):
        model.zero_grad()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        token_losses = F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none")
        loss = (token_losses * weights).sum() / weights.sum()
        loss.backward()
        return [{n: p.grad.clone() for n, p in model.named_parameters()}], [loss.item()]

    assert_same_steps(run("seed_style"), by_hand((batch["labels"][:, 1:] != -100).float()), rtol=1e-5)
    assert_same_steps(run("second_half"), by_hand(plugin.second_half.weights(batch)), rtol=1e-5)
    assert plugin.seed_style.saw == {"logits"} and plugin.second_half.saw == {"hidden_states"}
