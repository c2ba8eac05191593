"""Composite modules swapped for fused ones: the same function, the same saved model, on both paths."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from clmkit import ClmTrainer
from clmkit.training.fused import RMSNormFunction, fuse_modules, is_llama_rms_norm
from clmkit.training.loop import ClmLoop


def gelus(model: torch.nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, (NewGELUActivation, FastGELUActivation, GELUTanh))]


def fused_norms(model: torch.nn.Module) -> list[bool]:
    """For every Llama-style RMSNorm of ``model``: whether its forward was swapped."""
    return ["forward" in vars(m) for m in model.modules() if is_llama_rms_norm(m)]


@pytest.mark.parametrize("composite", [NewGELUActivation, FastGELUActivation])
def test_the_fused_gelu_computes_the_same_function(composite: type) -> None:
    x = torch.randn(100_000, dtype=torch.float64) * 4
    exact = composite()(x)  # the composite formula in float64 is the reference for both
    for module in (composite(), GELUTanh()):
        error = (module(x.float()).double() - exact).abs().max().item()
        assert error < 1e-6, (module, error)


def test_every_gelu_new_is_swapped_and_nothing_else_changes(clmkit_model) -> None:
    model = clmkit_model(seed=1)
    assert model.config.activation_function == "gelu_new"
    original = copy.deepcopy(model)

    class Different(NewGELUActivation):  # a subclass may compute something else: left alone
        pass

    model.transformer.h[0].mlp.act = Different()
    original.transformer.h[0].mlp.act = Different()
    swapped = fuse_modules(model)

    layers = model.config.n_layer
    assert swapped == {"NewGELUActivation": layers - 1}
    assert gelus(model) == [Different] + [GELUTanh] * (layers - 1)
    assert model.config.to_dict() == original.config.to_dict()
    state, before = model.state_dict(), original.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    logits, expected = model.eval()(input_ids=ids).logits, original.eval()(input_ids=ids).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert fuse_modules(model) == {}  # a second call finds nothing left to swap


def test_the_fused_rms_norm_is_the_same_forward_bit_for_bit_and_the_same_gradients() -> None:
    torch.manual_seed(0)
    norm = Qwen3RMSNorm(48, eps=1e-6)
    norm.weight.data.normal_()
    fused = copy.deepcopy(norm)
    assert fuse_modules(fused) == {"Qwen3RMSNorm": 1}
    x = torch.randn(3, 5, 4, 48, dtype=torch.float64).float().requires_grad_()  # QK-norm's (..., heads, dims)
    upstream = torch.randn(3, 5, 4, 48)
    grads = []
    for module in (norm, fused):
        out = module(x)
        grads.append((out, *torch.autograd.grad(out, [x, module.weight], upstream)))
    (out, grad_x, grad_w), (fused_out, fused_grad_x, fused_grad_w) = grads
    assert torch.equal(fused_out, out)
    torch.testing.assert_close(fused_grad_x, grad_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_grad_w, grad_w, rtol=1e-5, atol=1e-5)
    inputs = (torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64), 1e-6)
    assert torch.autograd.gradcheck(RMSNormFunction.apply, tuple(t.requires_grad_() for t in inputs[:2]) + inputs[2:])


def test_half_precision_norms_keep_their_own_forward_and_other_norms_are_not_touched() -> None:
    norm = LlamaRMSNorm(16).to(torch.bfloat16)
    fused = copy.deepcopy(norm)
    fuse_modules(fused)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert torch.equal(fused(x), norm(x))  # bf16 weights: the module's own forward ran

    class Scaled(LlamaRMSNorm):  # another forward: not Llama's, left alone
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(hidden_states)

    model = torch.nn.Sequential(GemmaRMSNorm(16), Scaled(16), LlamaRMSNorm(16))
    assert fuse_modules(model) == {"LlamaRMSNorm": 1}
    assert [is_llama_rms_norm(m) for m in model] == [False, False, True]


def test_a_fused_model_survives_pickle_and_deepcopy() -> None:
    model = torch.nn.Sequential(LlamaRMSNorm(8), NewGELUActivation())
    fuse_modules(model)
    x = torch.randn(2, 8)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert torch.equal(clone(x), model(x))
        assert type(clone[1]) is GELUTanh and fused_norms(clone) == [True]
        assert clone[0].forward.args[0] is clone[0]  # its own norm, not the original's


@pytest.mark.parametrize("path", [ClmTrainer, ClmLoop])
@pytest.mark.parametrize("architecture", ["gpt2", "qwen3"])
def test_both_paths_train_fused_and_save_the_models_own_modules(
    path, architecture, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets, tmp_path
) -> None:
    model = clmkit_model(architecture=architecture)
    args = clmkit_args(max_steps=2)
    trainer = path(model=model, args=args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["train"])
    fused = set(gelus(trainer.model)) == {GELUTanh} if architecture == "gpt2" else all(fused_norms(trainer.model))
    assert fused
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert not any(fused_norms(reloaded)) and GELUTanh not in gelus(reloaded)
    ids = torch.randint(0, reloaded.config.vocab_size, (2, 32))
    trained = trainer.model.eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=1e-4)
