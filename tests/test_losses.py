"""Built-in losses: values against the model, the course recipe and a hand computation; exactness under accumulation."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch.nn import CrossEntropyLoss
from transformers import Trainer, TrainerCallback

from clmkit import ClmTrainer, Plugins
from clmkit.errors import ConfigError
from clmkit.testing import padded_examples

KEYWORDS = ["self", "def", "None", "return", "plt"]


def keytoken_weighted_loss(inputs, logits, keytoken_ids, alpha=1.0):
    """The course's loss (chapter 7, section 6), verbatim but for ``reduction="none"`` (``reduce=False`` is gone)."""
    # Shift so that tokens < n predict n
    shift_labels = inputs[..., 1:].contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    # Calculate per-token loss
    loss_fct = CrossEntropyLoss(reduction="none")
    loss = loss_fct(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
    # Resize and average loss per sample
    loss_per_sample = loss.view(shift_logits.size(0), shift_logits.size(1)).mean(axis=1)
    # Calculate and scale weighting
    weights = torch.stack([(inputs == kt).float() for kt in keytoken_ids]).sum(axis=[0, 2])
    weights = alpha * (1.0 + weights)
    # Calculate weighted average
    weighted_loss = (loss_per_sample * weights).mean()
    return weighted_loss


def course_keytoken_ids(tokenizer, keywords):
    """The course's way: each keyword with and without a leading space, kept when it is one token."""
    variants = [v for kw in keywords for v in (kw, " " + kw)]
    return [tokenizer([v]).input_ids[0][0] for v in variants if len(tokenizer([v]).input_ids[0]) == 1]


@pytest.fixture
def model(clmkit_model):
    return clmkit_model().eval()


def code_batch(tokenizer, texts, lengths):
    """Consecutive rows of real code (email/contentmanager.py, dense in key tokens), collated by ``causal``."""
    collate = Plugins(autoload=False).build("collators", "causal", tokenizer)
    ids = tokenizer(texts[7])["input_ids"]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return collate([{"input_ids": ids[s : s + n]} for s, n in zip(starts, lengths, strict=True)])


@pytest.fixture
def unpadded_batch(clmkit_tokenizer, clmkit_corpus):
    """4 x 48 tokens, a key token at position 0 of the first row."""
    batch = code_batch(clmkit_tokenizer, clmkit_corpus, [48] * 4)
    batch["input_ids"][0, 0] = batch["labels"][0, 0] = course_keytoken_ids(clmkit_tokenizer, ["self"])[0]
    return batch


@pytest.fixture
def padded_batch(clmkit_tokenizer, clmkit_corpus):
    batch = code_batch(clmkit_tokenizer, clmkit_corpus, [48, 30, 41, 17, 45])
    assert (batch["labels"] == -100).sum() == 5 * 48 - (48 + 30 + 41 + 17 + 45)
    return batch


def loss_value(model, tokenizer, clmkit_args, batch, loss="cross_entropy", chunked_loss=True, **loss_kwargs):
    """What ClmTrainer.compute_loss returns for one micro-batch, and the gradients it produces."""
    args = clmkit_args(loss=loss, loss_kwargs=loss_kwargs, chunked_loss=chunked_loss)
    trainer = ClmTrainer(model, args, processing_class=tokenizer)
    model.zero_grad()
    value = trainer.compute_loss(model, dict(batch))
    value.backward()
    return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_gradients(got: dict, expected: dict, rtol: float = 1e-5) -> None:
    for name, grad in expected.items():
        error = (got[name] - grad).norm() / grad.norm().clamp(min=1e-12)
        assert error <= rtol, f"{name}: relative gradient error {error:.2e}"


def gradient_difference(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).norm() / b[n].norm()) for n in b)


chunked = pytest.mark.parametrize("chunked_loss", [True, False], ids=["chunked", "logits"])


@chunked
@pytest.mark.parametrize("batch_name", ["unpadded_batch", "padded_batch"])
def test_cross_entropy_equals_the_models_own_loss(
    model, clmkit_tokenizer, clmkit_args, request, batch_name, chunked_loss
):
    batch = request.getfixturevalue(batch_name)
    ours, our_grads = loss_value(model, clmkit_tokenizer, clmkit_args, batch, chunked_loss=chunked_loss)
    model.zero_grad()
    own = model(**batch).loss
    own.backward()
    torch.testing.assert_close(ours, own.detach(), rtol=1e-6, atol=0)
    assert_same_gradients(our_grads, {n: p.grad for n, p in model.named_parameters()})


@chunked
def test_keytoken_course_reproduces_the_seeds_loss(model, clmkit_tokenizer, clmkit_args, unpadded_batch, chunked_loss):
    ids = course_keytoken_ids(clmkit_tokenizer, KEYWORDS)
    assert (unpadded_batch["input_ids"][:, 1:, None] == torch.tensor(ids)).any(-1).sum() >= 4
    ours, _ = loss_value(
        model,
        clmkit_tokenizer,
        clmkit_args,
        unpadded_batch,
        "keytoken",
        chunked_loss,
        keywords=KEYWORDS,
        alpha=0.7,
        normalize="course",
    )
    with torch.no_grad():
        logits = model(input_ids=unpadded_batch["input_ids"]).logits
    seed = keytoken_weighted_loss(unpadded_batch["input_ids"], logits, ids, alpha=0.7)
    torch.testing.assert_close(ours, seed, rtol=1e-6, atol=0)


@chunked
def test_keytoken_weights_targets_only_ignores_masked_labels_and_normalizes_by_weights(
    model, clmkit_tokenizer, clmkit_args, padded_batch, chunked_loss
):
    ids = torch.tensor(course_keytoken_ids(clmkit_tokenizer, KEYWORDS))
    batch = {k: v.clone() for k, v in padded_batch.items()}
    batch["input_ids"][:, 0] = batch["labels"][:, 0] = ids[0]  # position 0 is never a target
    key_positions = torch.isin(batch["labels"], ids).nonzero()
    batch["labels"][tuple(key_positions[-1])] = -100  # a masked key token does not count either
    ours, _ = loss_value(
        model, clmkit_tokenizer, clmkit_args, batch, "keytoken", chunked_loss, keywords=KEYWORDS, alpha=2.0
    )

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    valid = targets != -100
    token_ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none", ignore_index=-100)
    per_sample = (token_ce * valid).sum(1) / valid.sum(1)
    weights = 1.0 + 2.0 * (torch.isin(batch["input_ids"][:, 1:], ids) & valid).sum(1)
    assert weights.max() > 1.0
    torch.testing.assert_close(ours, (weights * per_sample).sum() / weights.sum(), rtol=1e-6, atol=0)


@chunked
def test_keytoken_alpha_sets_emphasis_not_scale(model, clmkit_tokenizer, clmkit_args, unpadded_batch, chunked_loss):
    absent = next(
        i for i in range(len(clmkit_tokenizer)) if i not in set(unpadded_batch["input_ids"].flatten().tolist())
    )
    batch = {k: v.clone() for k, v in unpadded_batch.items()}
    batch["input_ids"][:, 0] = batch["labels"][:, 0] = absent  # a key token only where it is never a target

    def keytoken(batch, alpha, **kwargs):
        return float(
            loss_value(model, clmkit_tokenizer, clmkit_args, batch, "keytoken", chunked_loss, alpha=alpha, **kwargs)[0]
        )

    assert keytoken(batch, 1.0, keytoken_ids=[absent]) == pytest.approx(keytoken(batch, 5.0, keytoken_ids=[absent]))
    course = [keytoken(batch, a, keytoken_ids=[absent], normalize="course") for a in (1.0, 5.0)]
    assert course[1] == pytest.approx(5 * course[0])  # the course recipe: alpha only rescales the loss

    cross_entropy = float(
        loss_value(model, clmkit_tokenizer, clmkit_args, unpadded_batch, chunked_loss=chunked_loss)[0]
    )
    assert keytoken(unpadded_batch, 0.0, keywords=KEYWORDS) == pytest.approx(cross_entropy, rel=1e-6)
    assert keytoken(unpadded_batch, 3.0, keywords=KEYWORDS) != pytest.approx(cross_entropy, rel=1e-3)


def test_keywords_that_are_not_one_token_are_reported(clmkit_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="clmkit.builtins.losses"):
        loss = Plugins(autoload=False).build("losses", "keytoken", tokenizer=clmkit_tokenizer, keywords=["self", "plt"])
    assert "'plt'" in caplog.text and "' plt'" in caplog.text and "'self'" not in caplog.text
    assert loss.not_single_token == ["plt", " plt"]
    assert sorted(loss.keytoken_ids.tolist()) == sorted(course_keytoken_ids(clmkit_tokenizer, ["self"]))
    with pytest.raises(ConfigError, match="no key token"):
        Plugins(autoload=False).build("losses", "keytoken", tokenizer=clmkit_tokenizer, keywords=["plt", "zzqx"])


@pytest.mark.parametrize(
    ("loss", "kwargs", "accepted"),
    [("keytoken", {"alpah": 2.0}, "keywords, keytoken_ids, alpha, normalize"), ("cross_entropy", {"alpha": 1}, "")],
)
def test_loss_kwargs_the_loss_does_not_take(clmkit_tokenizer, clmkit_args, loss, kwargs, accepted):
    with pytest.raises(ConfigError) as info:
        ClmTrainer(args=clmkit_args(loss=loss, loss_kwargs=kwargs), processing_class=clmkit_tokenizer)
    assert f"loss {loss!r}" in str(info.value) and repr(next(iter(kwargs))) in str(info.value)
    assert f"{accepted}. Fix" in str(info.value)


def test_keytoken_normalize_must_be_known(clmkit_tokenizer):
    with pytest.raises(ConfigError, match="'weights' or 'course'"):
        Plugins(autoload=False).build("losses", "keytoken", tokenizer=clmkit_tokenizer, normalize="mean")


# ---- exactness under gradient accumulation ---------------------------------------------------------


class GradientCapture(TrainerCallback):
    """The gradients as they reach the optimizer (after any clipping, before the step)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


class RecordingCollator:
    """Wraps a collator and records the examples in the order the trainer asked for them."""

    def __init__(self, collate) -> None:
        self.collate, self.rows = collate, []

    def __call__(self, examples):
        self.rows += [list(ex["input_ids"]) for ex in examples]
        return self.collate(examples)


def one_step_gradients(
    trainer_cls, clmkit_model, tokenizer, clmkit_args, dataset, batch_size, accumulation, **arg_overrides
):
    """Gradients of one optimizer step over the 32 examples, in dataset order, without dropout or clipping."""
    args = clmkit_args(
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        **arg_overrides,
    )
    capture = GradientCapture()
    collator = RecordingCollator(Plugins(autoload=False).build("collators", "causal", tokenizer))
    model = clmkit_model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    trainer = trainer_cls(
        model, args, data_collator=collator, train_dataset=dataset, processing_class=tokenizer, callbacks=[capture]
    )
    if trainer_cls is Trainer:
        trainer.model_accepts_loss_kwargs = False  # the naive way: mean loss per micro-batch, divided by 4
    trainer.train()
    assert collator.rows == [list(ids) for ids in dataset["input_ids"]]  # same examples, same order
    return capture.grads


LOSSES = {
    "cross_entropy": {},
    "keytoken": {"keywords": KEYWORDS, "alpha": 2.0},
    "keytoken_course": {"keywords": KEYWORDS, "alpha": 2.0, "normalize": "course"},
}


@chunked
@pytest.mark.parametrize("loss", list(LOSSES))
def test_accumulation_reaches_the_optimizer_with_the_big_batch_gradients(
    clmkit_model, clmkit_tokenizer, clmkit_args, loss, chunked_loss
):
    examples = padded_examples(clmkit_tokenizer)
    settings = {"loss": loss.removesuffix("_course"), "loss_kwargs": LOSSES[loss], "chunked_loss": chunked_loss}
    big = one_step_gradients(ClmTrainer, clmkit_model, clmkit_tokenizer, clmkit_args, examples, 32, 1, **settings)
    accumulated = one_step_gradients(
        ClmTrainer, clmkit_model, clmkit_tokenizer, clmkit_args, examples, 8, 4, **settings
    )
    assert_same_gradients(accumulated, big)


def test_naive_mean_per_micro_batch_is_not_exact(clmkit_model, clmkit_tokenizer, clmkit_args):
    """The comparison above can fail: a plain Trainer averaging each padded micro-batch differs."""
    examples = padded_examples(clmkit_tokenizer)
    big = one_step_gradients(Trainer, clmkit_model, clmkit_tokenizer, clmkit_args, examples, 32, 1)
    accumulated = one_step_gradients(Trainer, clmkit_model, clmkit_tokenizer, clmkit_args, examples, 8, 4)
    ours = one_step_gradients(ClmTrainer, clmkit_model, clmkit_tokenizer, clmkit_args, examples, 32, 1)
    assert_same_gradients(big, ours)  # with one micro-batch, naive and exact agree
    assert gradient_difference(accumulated, big) > 1e-2
