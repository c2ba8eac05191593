"""The optimizer registry: ``adamw`` and ``muon`` (``MuonAdamW``), checked against torch's own optimizers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from datasets import Dataset

from clmkit import ClmTrainer, Plugins, hookimpl
from clmkit.builtins.optimizers import hidden_matrices
from clmkit.device import native_bf16
from clmkit.training.components import build_optimizer, param_groups
from clmkit.training.loop import ClmLoop
from clmkit.training.muon import MuonAdamW, iteration_dtype, orthogonalized


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(clmkit_model, clmkit_args):
    model = clmkit_model(architecture="llama")
    optimizer = build_optimizer(Plugins(autoload=False), clmkit_args(optimizer="muon", weight_decay=0.1), model)
    name_of = {id(p): n for n, p in model.named_parameters()}
    muon = {name_of[id(p)] for g in optimizer.param_groups if g["use_muon"] for p in g["params"]}
    adamw = {name_of[id(p)] for g in optimizer.param_groups if not g["use_muon"] for p in g["params"]}
    assert muon | adamw == set(name_of.values()) and not muon & adamw  # every parameter exactly once
    assert "model.embed_tokens.weight" in adamw and "lm_head.weight" in adamw  # embedding and untied head
    assert all(n.endswith("norm.weight") for n in adamw - {"model.embed_tokens.weight", "lm_head.weight"})
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"} <= muon
    assert all(".layers." in n and n.endswith("proj.weight") for n in muon)
    # the grouper's weight decay survives the split: norms are not decayed, matrices are
    decay = {name_of[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay["model.layers.0.self_attn.q_proj.weight"] == 0.1 and decay["model.norm.weight"] == 0.0


def test_gpt2_position_embeddings_stay_with_adamw(clmkit_model):
    model = clmkit_model(architecture="gpt2")
    matrices = {n for n, p in model.named_parameters() if id(p) in hidden_matrices(model)}
    assert "transformer.wpe.weight" not in matrices and "transformer.wte.weight" not in matrices
    assert "transformer.h.0.attn.c_attn.weight" in matrices  # Conv1D weights are matrices too


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_orthogonalized_is_near_the_polar_factor(shape):
    """Five quintic Newton-Schulz steps leave singular values in about [0.7, 1.2] (not exactly 1: the coefficients
    trade convergence for speed) with the singular vectors of the input."""
    torch.manual_seed(0)
    grad = torch.randn(shape)
    result = orthogonalized(grad[None], 5, torch.float32)[0]
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.6 and singular.max() < 1.25
    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
    polar = u @ vh
    cosine = (result * polar).sum() / (result.norm() * polar.norm())
    assert cosine > 0.98


def test_muon_steps_like_torch_muon_and_adamw_like_torch_adamw():
    """One MuonAdamW with a Muon group and an AdamW group moves each parameter as torch.optim.Muon (bfloat16
    iterations, Moonshot's lr scale) and torch.optim.AdamW would, step after step."""
    torch.manual_seed(0)
    matrix, vector = torch.randn(24, 40), torch.randn(40)
    ours = [matrix.clone().requires_grad_(), vector.clone().requires_grad_()]
    theirs = [matrix.clone().requires_grad_(), vector.clone().requires_grad_()]
    optimizer = MuonAdamW(
        [{"params": [ours[0]], "use_muon": True}, {"params": [ours[1]], "weight_decay": 0.0}],
        lr=0.01,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        ns_dtype="bfloat16",
        fused=False,
    )
    muon = torch.optim.Muon([theirs[0]], lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([theirs[1]], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(3):
        grads = [torch.randn(24, 40), torch.randn(40)]
        for params in (ours, theirs):
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad.clone()
        optimizer.step()
        muon.step()
        adamw.step()
        torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-6, msg=f"muon, step {step}")
        torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-6, msg=f"adamw, step {step}")


def test_iteration_dtype_follows_the_device():
    cpu = torch.device("cpu")
    assert iteration_dtype("auto", cpu) == (torch.bfloat16 if native_bf16(cpu) else torch.float32)
    assert iteration_dtype("float32", cpu) == torch.float32


def test_state_dict_round_trip_restores_both_algorithms(clmkit_model, clmkit_args):
    """A MuonAdamW loaded from its state_dict continues exactly as the original (what a resume relies on)."""
    args = clmkit_args(optimizer="muon")
    plugins = Plugins(autoload=False)
    models = [clmkit_model(architecture="llama") for _ in range(2)]
    optimizers = [build_optimizer(plugins, args, m) for m in models]

    def step(model, optimizer, seed):
        torch.manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(models[0], optimizers[0], 1)
    models[1].load_state_dict(models[0].state_dict())
    optimizers[1].load_state_dict(copy.deepcopy(optimizers[0].state_dict()))  # as if read from a file
    assert any("momentum_buffer" in s for s in optimizers[1].state.values())
    assert any("exp_avg" in s for s in optimizers[1].state.values())
    for model, optimizer in zip(models, optimizers, strict=True):
        step(model, optimizer, 2)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class Sign(torch.optim.Optimizer):
    """signSGD: a third-party optimizer in a few lines."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


class SignPlugin:
    @staticmethod
    def sign(model, groups, args, *, scale: float = 1.0):
        return Sign(groups, lr=args.learning_rate * scale)

    @hookimpl
    def clmkit_register_optimizers(self, register):
        register("sign", self.sign)


@pytest.mark.parametrize("cls", [ClmTrainer, ClmLoop])
def test_a_plugin_optimizer_trains_on_both_paths(cls, clmkit_model, clmkit_args, clmkit_tokenizer, clmkit_corpus):
    args = clmkit_args(optimizer="sign", optimizer_kwargs={"scale": 0.5}, max_steps=3, lr_scheduler_type="constant")
    data = Dataset.from_dict({"content": list(clmkit_corpus)})
    run = cls(
        model=clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=data, plugins=[SignPlugin()]
    )
    run.train()
    optimizer = run.optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    assert isinstance(optimizer, Sign) and optimizer.param_groups[0]["lr"] == args.learning_rate * 0.5
    assert all(math.isfinite(e["loss"]) for e in run.state.log_history if "loss" in e)


def test_groups_of_the_grouper_reach_the_optimizer(clmkit_model, clmkit_args):
    model = clmkit_model()
    args = clmkit_args(weight_decay=0.05)
    plugins = Plugins(autoload=False)
    optimizer = build_optimizer(plugins, args, model)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [
        g["weight_decay"] for g in param_groups(plugins, args, model)
    ]
