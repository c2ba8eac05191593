"""clmkit-zloss: values match their definitions on both loss paths, exact under accumulation, z-loss lowers log Z."""

from __future__ import annotations

import clmkit_zloss
import pytest
import torch
import torch.nn.functional as F
from clmkit_zloss import LabelSmoothing, ZLoss

from clmkit import ClmTrainer
from clmkit.builtins.collators import CausalCollator
from clmkit.errors import ConfigError
from clmkit.testing import assert_exact_under_accumulation, padded_examples
from clmkit.training.forward import forward_for_loss


@pytest.fixture
def batch(clmkit_tokenizer):
    """8 padded examples of uneven length, as the causal collator batches them."""
    return CausalCollator(clmkit_tokenizer)(list(padded_examples(clmkit_tokenizer, count=8)))


def log_z(model, batch):
    """log Z (the softmax normalizer) at every target position, and the mask of those positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    return torch.logsumexp(logits, dim=-1), batch["labels"][:, 1:] != -100


def reference(model, batch, z_coef, label_smoothing):
    """The definition: mean over target tokens of label-smoothed CE + z_coef * log(Z)^2, from full logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2), targets, label_smoothing=label_smoothing, reduction="sum")
    lse, valid = log_z(model, batch)
    return (ce + z_coef * (lse.square() * valid).sum()) / valid.sum()


@pytest.mark.parametrize("hidden_states", [True, False], ids=["chunked", "logits"])
@pytest.mark.parametrize(("z_coef", "label_smoothing"), [(0.0, 0.0), (1e-2, 0.0), (0.0, 0.1), (1e-3, 0.2)])
def test_loss_and_gradients_match_the_definition(clmkit_model, batch, hidden_states, z_coef, label_smoothing):
    model = clmkit_model().eval()
    loss = ZLoss(z_coef=z_coef, label_smoothing=label_smoothing)
    inputs, _ = forward_for_loss(model, batch, hidden_states, chunk_size=37)
    value = loss.loss_sum(inputs) / loss.normalizer(batch)
    expected = reference(model, batch, z_coef, label_smoothing)
    weight = model.get_input_embeddings().weight
    (grad,) = torch.autograd.grad(value, weight)
    (expected_grad,) = torch.autograd.grad(expected, weight)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("chunked_loss", [True, False], ids=["chunked", "logits"])
def test_exact_under_gradient_accumulation(chunked_loss):
    assert_exact_under_accumulation(
        "z_loss",
        loss_kwargs={"z_coef": 1e-2, "label_smoothing": 0.1},
        plugins=[clmkit_zloss],
        chunked_loss=chunked_loss,
    )


def test_z_loss_pulls_log_z_towards_zero(clmkit_tokenizer, clmkit_model, clmkit_args):
    """From the same start and data, training with a strong z-loss leaves |log Z| far smaller than without."""
    data = padded_examples(clmkit_tokenizer, count=64)
    probe = CausalCollator(clmkit_tokenizer)(list(padded_examples(clmkit_tokenizer, count=16)))
    mean_abs_log_z = {}
    for z_coef in (0.0, 1.0):
        model = clmkit_model()
        args = clmkit_args(loss="z_loss", loss_kwargs={"z_coef": z_coef}, max_steps=12, learning_rate=1e-2)
        trainer = ClmTrainer(
            model=model, args=args, processing_class=clmkit_tokenizer, train_dataset=data, plugins=[clmkit_zloss]
        )
        trainer.train()
        with torch.no_grad():
            lse, valid = log_z(model.eval(), probe)
        mean_abs_log_z[z_coef] = float(lse.abs()[valid].mean())
    assert mean_abs_log_z[1.0] < 0.75 * mean_abs_log_z[0.0], mean_abs_log_z


def test_label_smoothing_is_registered_with_its_own_defaults(clmkit_plugins, clmkit_tokenizer):
    plugins = clmkit_plugins(clmkit_zloss)
    loss = plugins.build("losses", "label_smoothing", tokenizer=clmkit_tokenizer)
    assert isinstance(loss, LabelSmoothing) and (loss.label_smoothing, loss.z_coef) == (0.1, 0.0)
    assert plugins.get("losses", "z_loss").plugin == plugins.get("losses", "label_smoothing").plugin


@pytest.mark.parametrize("kwargs", [{"z_coef": -1e-4}, {"label_smoothing": 1.0}, {"label_smoothing": -0.1}])
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        ZLoss(**kwargs)
