"""Exact evaluation: loss, perplexity, bits per byte and accuracy against a hand computation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from support import pinned_env

from clmkit import ClmTrainer
from clmkit.training.metrics import FEATURES, ClmMetrics

ROWS = torch.tensor([[12.5, 5, 19, 2], [3.25, 2, 2, 1], [0.0, 0, 0, 0], [7.0, 4, 9, 4], [1.5, 1, 4, 0]])


def test_metric_survives_add_batch_from_several_calls():
    whole = ClmMetrics()
    whole.add_rows(ROWS)
    expected = whole.compute()
    assert expected["loss"] == pytest.approx(24.25 / 12) and expected["tokens"] == 12
    assert expected["perplexity"] == pytest.approx(math.exp(24.25 / 12))
    assert expected["bits_per_byte"] == pytest.approx(24.25 / (math.log(2) * 34))
    assert expected["accuracy"] == pytest.approx(7 / 12)

    parts = ClmMetrics()
    parts.add_rows(ROWS[:2])
    parts.add_rows(ROWS[2:2])  # an empty batch
    parts.add_batch(**{name: ROWS[2:4, i].tolist() for i, name in enumerate(FEATURES)})
    parts.add_rows(ROWS[4:])
    assert parts.compute() == pytest.approx(expected)
    assert math.isnan(parts.compute()["loss"])  # compute starts a new evaluation


def test_perplexity_overflow_is_inf_not_an_exception():
    metric = ClmMetrics()
    metric.add_rows(torch.tensor([[9000.0, 10, 40, 0]]))
    result = metric.compute()
    assert result["loss"] == 900 and result["perplexity"] == math.inf
    assert result["bits_per_byte"] == pytest.approx(9000 / (math.log(2) * 40))


def test_metric_keeps_its_rows_in_memory_under_a_temporary_directory():
    metric = ClmMetrics()
    metric.add_rows(ROWS)
    metric.compute()
    assert metric.keep_in_memory
    assert Path(metric.data_dir).is_relative_to(tempfile.gettempdir())
    assert not any(Path(metric.data_dir).iterdir())


@pytest.fixture
def eval_examples(clmkit_tokenizer, clmkit_corpus):
    """5 examples of uneven length, two ending with a real EOS, one with multi-byte UTF-8 characters."""
    eos = clmkit_tokenizer.eos_token_id
    ids = [clmkit_tokenizer(t)["input_ids"] for t in clmkit_corpus]
    accents = clmkit_tokenizer("x = 'déjà vu – naïve café 😀'\n")["input_ids"]
    rows = [ids[0][:20], ids[3][5:38] + [eos], accents + [eos], ids[12][:64], ids[1][100:112]]
    return Dataset.from_dict({"input_ids": rows})


def by_hand(model, tokenizer, examples) -> dict[str, float]:
    """Each example alone, unpadded: summed nats, UTF-8 bytes of the decoded targets, argmax hits."""
    nats = tokens = nbytes = correct = 0.0
    with torch.no_grad():
        for ids in examples["input_ids"]:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            targets = torch.tensor(ids[1:])
            nats += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += float((logits.argmax(-1) == targets).sum())
            tokens += len(targets)
            text = tokenizer.decode(ids[1:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            nbytes += len(text.encode("utf-8"))
    return {
        "eval_loss": nats / tokens,
        "eval_perplexity": math.exp(nats / tokens),
        "eval_bits_per_byte": nats / (math.log(2) * nbytes),
        "eval_accuracy": correct / tokens,
        "eval_tokens": tokens,
    }


@pytest.mark.parametrize("chunked_loss", [True, False], ids=["chunked", "logits"])
def test_evaluation_matches_a_hand_computation(
    clmkit_model, clmkit_tokenizer, clmkit_args, eval_examples, chunked_loss
):
    model = clmkit_model(seed=3).eval()
    args = clmkit_args(per_device_eval_batch_size=2, chunked_loss=chunked_loss, loss_chunk_size=7)
    trainer = ClmTrainer(model, args, eval_dataset=eval_examples, processing_class=clmkit_tokenizer)
    got = trainer.evaluate()
    expected = by_hand(model, clmkit_tokenizer, eval_examples)
    assert {k: got[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    assert 0 < got["eval_accuracy"] < 1
    output = trainer.evaluation_loop(trainer.get_eval_dataloader(), "check")  # batches of 2, 2 and 1
    assert output.num_samples == 5 and output.predictions is None


DISTRIBUTED = textwrap.dedent(
    """
    import json, sys
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer, GPT2LMHeadModel
    from clmkit import ClmTrainer, ClmTrainingArguments

    torch.set_num_threads(1)
    work = sys.argv[1]
    args = ClmTrainingArguments(
        output_dir=work + "/out", per_device_eval_batch_size=2, context_length=64,
        report_to="none", use_cpu=True, ddp_backend="gloo", disable_tqdm=True,
    )
    trainer = ClmTrainer(
        GPT2LMHeadModel.from_pretrained(work + "/model"), args,
        eval_dataset=load_from_disk(work + "/data"), processing_class=AutoTokenizer.from_pretrained(work + "/model"),
    )
    metrics = trainer.evaluate()
    if trainer.args.process_index == 0:
        json.dump({**metrics, "world_size": trainer.args.world_size}, open(work + "/metrics.json", "w"))
    """
)


def test_evaluation_over_two_processes_counts_each_sample_once(clmkit_model, clmkit_tokenizer, eval_examples, tmp_path):
    """5 samples on 2 processes in batches of 2: the last batch is uneven and padded with repeats, dropped again."""
    model = clmkit_model(seed=3).eval()
    model.save_pretrained(tmp_path / "model")
    clmkit_tokenizer.save_pretrained(tmp_path / "model")
    eval_examples.save_to_disk(str(tmp_path / "data"))
    (tmp_path / "eval_two_processes.py").write_text(DISTRIBUTED)
    env = pinned_env()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    script = [str(tmp_path / "eval_two_processes.py"), str(tmp_path)]
    run = subprocess.run([*launch, *script], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads((tmp_path / "metrics.json").read_text())
    assert got["world_size"] == 2
    expected = by_hand(model, clmkit_tokenizer, eval_examples)
    assert {k: got[k] for k in expected} == pytest.approx(expected, rel=1e-6)
