"""The clmkit command line, run in-process (``main([...])``) and as the console script on a tiny corpus."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_flags import TINY as TINY_FLAGS
from support import pinned_env

from clmkit.cli import main
from clmkit.cli.options import TRAIN_DEFAULTS, parse_train_args

TINY = [*TINY_FLAGS, "--max_steps", "20"]
LAYOUT = [
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.yaml",
    "metrics.json",
    "loss_curve.png",
    "README.md",
]


@pytest.fixture(scope="module")
def run(corpus_dir, tmp_path_factory):
    """One real training run through the CLI; its output folder and what it printed."""
    out = tmp_path_factory.mktemp("runs") / "out"
    assert main(["train", "--dataset", str(corpus_dir), *TINY, "--output_dir", str(out)]) == 0
    return out


def console(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the command line in a new process, as the ``clmkit`` console script does, with this process's threads."""
    env = pinned_env(HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "clmkit.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


def fails(capsys, args: list[str], expected: str) -> str:
    """Run ``clmkit ARGS``; it must exit with 2 and one line on stderr that contains ``expected``."""
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    return lines[0]


# ---- the default run and the output folder -------------------------------------------------------


def test_defaults_are_the_cpu_job():
    source, tok, run_options, args, values = parse_train_args([])
    assert source.dataset is None and tok.tokenizer is None and tok.vocab_size == 8192
    assert run_options.model_preset == "tiny" and run_options.prompts == ["def fibonacci(n):", "import os\n"]
    assert args.output_dir == "clmkit-out" and args.context_length == 128 and args.chunker == "concat"
    assert args.max_steps == TRAIN_DEFAULTS["max_steps"] and args.lr_scheduler_type.value == "warmup_stable_decay"
    assert args.eval_strategy.value == "steps" and args.warmup_steps > 0
    assert run_options.architecture == "qwen3" and args.optimizer == "muon" and args.lr_decay_fraction == 0.4
    assert values["max_steps"] == TRAIN_DEFAULTS["max_steps"] and "resume_from_checkpoint" not in values


def test_kebab_and_snake_case_flags_and_epochs():
    *_, args, _ = parse_train_args(["--learning-rate", "1e-3", "--per_device_train_batch_size", "4"])
    assert args.learning_rate == 1e-3 and args.per_device_train_batch_size == 4
    *_, args, _ = parse_train_args(["--num_train_epochs", "2"])
    assert args.max_steps == -1 and args.num_train_epochs == 2  # epochs asked for: no step budget


def test_output_folder_layout_and_metrics(run):
    for name in LAYOUT:
        assert (run / name).is_file(), name
    assert not list(run.glob(".*tmp*"))  # no temporary file left behind
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 20
    assert math.isclose(metrics["eval_perplexity"], math.exp(metrics["eval_loss"]), rel_tol=1e-9)
    assert 0 < metrics["eval_bits_per_byte"] < 8
    assert metrics["eval_loss"] < math.log(512)  # learned something beyond uniform
    assert metrics["tokens_seen"] > 0 and metrics["tokens_per_second"] > 0 and metrics["wall_time_seconds"] > 0
    assert metrics["corpus"]["documents"]["validation"] >= 1
    config = json.loads((run / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["num_hidden_layers"] == 1  # the default architecture
    assert config["max_position_embeddings"] == 64 and config["vocab_size"] == 512
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (run / "README.md").read_text()
    assert "| eval bits per byte |" in card and "clmkit train --dataset" in card and "def fibonacci(n):" in card


def test_summary_names_model_perplexity_and_completions(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--dataset", str(corpus_dir), *TINY, "--max_steps", "2", "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"model saved in {out.resolve()}" in printed
    assert "eval perplexity" in printed and "bits per byte" in printed
    assert "def fibonacci(n):" in printed and "import os\n" in printed


def test_config_file_reproduces_the_run(run, tmp_path):
    saved = yaml.safe_load((run / "training_args.yaml").read_text())
    assert (
        saved["max_steps"] == 20
        and saved["config_overrides"] == "num_hidden_layers=1"
        and saved["prompts"][1] == "import os\n"
    )
    again = tmp_path / "again"
    # a fresh process, as a user would run it (a second run inside one process starts from other RNG states),
    # with this process's thread count: sums split over other threads round differently
    result = console(["train", "--config", str(run / "training_args.yaml"), "--output_dir", str(again)], tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (run, again))
    assert second["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-9)
    assert second["tokens_seen"] == first["tokens_seen"]
    assert (again / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()


def test_flags_override_the_config_file(run):
    path = str(run / "training_args.yaml")
    *_, args, values = parse_train_args(["--config", path, "--max_steps", "3", "--learning_rate", "0.01"])
    assert args.max_steps == 3 and args.learning_rate == 0.01 and values["max_steps"] == 3
    assert args.per_device_train_batch_size == 8  # from the file


def test_resume_from_the_last_checkpoint_continues(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert (copy / "checkpoint-20").is_dir()
    args = ["train", "--config", str(copy / "training_args.yaml"), "--output_dir", str(copy), "--max_steps", "24"]
    assert main([*args, "--resume_from_checkpoint", "last"]) == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["global_step"] == 24
    assert metrics["tokens_seen"] > json.loads((run / "metrics.json").read_text())["tokens_seen"]  # counts continue


def test_prepare_then_train(corpus_dir, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    prep_args = ["--dataset", str(corpus_dir), "--vocab_size", "512", "--context_length", "64"]
    assert main(["prepare", *prep_args, "--valid_split_percentage", "20", "--output_dir", str(prepared)]) == 0
    stats = json.loads((prepared / "prepare_stats.json").read_text())
    assert json.loads(capsys.readouterr().out)["splits"] == stats["splits"]
    assert stats["context_length"] == 64 and stats["chunker"] == "concat" and stats["vocab_size"] == 512
    assert stats["splits"]["train"]["examples"] == stats["splits"]["train"]["tokens_kept"] // 64 > 0
    out = tmp_path / "out"
    assert main(["train", "--dataset", str(prepared), *TINY, "--max_steps", "3", "--output_dir", str(out)]) == 0
    assert (out / "tokenizer.json").read_text() == (prepared / "tokenizer.json").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["eval_tokens"]
        == stats["splits"]["validation"]["tokens_kept"] - stats["splits"]["validation"]["examples"]
    )  # every prepared example evaluated: one target fewer than tokens per example
    fails(
        capsys,
        ["train", "--dataset", str(prepared), "--tokenizer", str(out), "--output_dir", str(tmp_path / "x")],
        "drop --tokenizer",
    )


def test_eval_matches_the_final_evaluation_of_training(run, corpus_dir, capsys):
    assert main(["eval", str(run), "--dataset", str(corpus_dir), "--valid_split_percentage", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["eval_tokens"] == metrics["eval_tokens"]
    assert result["eval_bits_per_byte"] == pytest.approx(metrics["eval_bits_per_byte"], rel=1e-5)


def test_generate_is_seeded_and_truncates_long_prompts(run, capsys):
    args = ["generate", str(run), "def parse(text):", "--max-new-tokens", "6", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("def parse(text):")
    long_prompt = "x = [" + ", ".join(str(i) for i in range(200)) + "]\n"
    assert main(["generate", str(run), long_prompt, "--max_new_tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "keeping its last 60 tokens" in captured.err
    assert "199]" in captured.out and "x = [0," not in captured.out  # the start of the prompt was cut
    fails(capsys, ["generate", str(run), "x", "--max_new_tokens", "64"], "leaves no room")


def test_plugins_prints_json(capsys):
    assert main(["plugins"]) == 0
    records = json.loads(capsys.readouterr().out)
    registered = {name for r in records for names in r["registered"].values() for name in names}
    assert {"concat", "overflow", "causal", "cross_entropy", "keytoken"} <= registered


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("train", ["--dataset", "--vocab_size", "--config-overrides", "--learning_rate", "--resume_from_checkpoint"]),
        ("prepare", ["--dataset", "--context_length", "--chunker", "--output_dir"]),
        ("eval", ["MODEL_DIR", "--dataset", "--split"]),
        ("generate", ["MODEL_DIR", "PROMPT", "--max_new_tokens", "--temperature", "--top_p", "--seed"]),
        ("plugins", ["JSON"]),
    ],
)
def test_help_of_every_command(command, flags, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text


def test_no_command_prints_the_commands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("train", "prepare", "eval", "generate", "plugins"))
    assert main([]) == 2


# ---- bad input: one line on stderr, exit code 2 ----------------------------------------------------


def test_bad_inputs(corpus_dir, tmp_path, capsys):
    def check(args: list[str], expected: str) -> None:
        fails(capsys, args, expected)

    out = ["--output_dir", str(tmp_path / "never")]
    check(["train", "--dataset", str(tmp_path / "missing"), *out], "does not exist")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("text")
    check(["train", "--dataset", str(tmp_path / "docs"), *out], "holds no file ending in .py")
    (tmp_path / "data.jsonl").write_text('{"text": "x = 1", "id": 1}\n')
    check(["train", "--dataset", str(tmp_path / "data.jsonl"), *out], "its columns are ['text', 'id']")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.py").write_text("")
    check(["train", "--dataset", str(tmp_path / "empty"), *out], "is empty")
    (tmp_path / "bad.yaml").write_text("learning_rate: [1e-3\nmax_steps: 3\n")
    check(["train", "--config", str(tmp_path / "bad.yaml"), *out], "is not valid YAML")
    (tmp_path / "typo.yaml").write_text("learning_rat: 0.001\n")
    check(["train", "--config", str(tmp_path / "typo.yaml"), *out], "did you mean 'learning_rate'?")
    check(["train", "--config_overrides", "n_layers=3", *out], "Qwen3Config does not have")
    check(["train", "--config_overrides", "n_layer", *out], "is not field=value")
    check(["train", "--loss_kwargs", "{alpha: 1}", *out], "not valid JSON")
    check(["train", "--no-such-flag", "1"], "unrecognized arguments: --no-such-flag")
    check(["eval", str(tmp_path)], "is not a saved model folder")
    check(["train", "--resume_from_checkpoint", str(tmp_path / "checkpoint-9"), *out], "does not exist")
    assert not (tmp_path / "never").exists()  # no failed start leaves an output folder behind


def test_unknown_loss_fails_before_training(corpus_dir, tmp_path, capsys):
    args = ["train", "--dataset", str(corpus_dir), *TINY, "--loss", "nope", "--output_dir", str(tmp_path / "o")]
    fails(capsys, args, "unknown loss 'nope'; registered names:")


def test_output_folder_with_another_run_is_refused(run, corpus_dir, capsys, tmp_path):
    args = ["train", "--dataset", str(corpus_dir), *TINY]
    fails(capsys, [*args, "--max_steps", "5", "--output_dir", str(run)], "its training_args.yaml differs in max_steps")
    stranger = tmp_path / "home"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    fails(capsys, [*args, "--output_dir", str(stranger)], "already holds files that are not this run's")
    assert (
        main(
            [
                "train",
                "--dataset",
                str(corpus_dir),
                *TINY,
                "--max_steps",
                "2",
                "--overwrite",
                "--output_dir",
                str(stranger),
            ]
        )
        == 0
    )
    assert (stranger / "notes.txt").read_text() == "mine" and (stranger / "model.safetensors").is_file()


def test_console_script_error_has_no_traceback(tmp_path):
    result = console(["train", "--dataset", str(tmp_path / "nope")], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(corpus_dir, tmp_path):
    out = tmp_path / "out"
    args = [*TINY, "--max_steps", "100000", "--logging_steps", "1", "--save_strategy", "no"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "clmkit.cli", "train", "--dataset", str(corpus_dir), *args, "--output_dir", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=pinned_env(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"),
    )
    for line in proc.stdout:  # training logs one line per step: training has started
        if "'loss'" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    hint = err.strip().splitlines()[-1]
    assert "Resume with: clmkit train --config" in hint and "--resume_from_checkpoint" in hint
    resume = shlex.split(hint.split("Resume with: ")[1])
    checkpoint = Path(resume[-1])
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    step = int(checkpoint.name.split("-")[1])
    resume = [*resume[1:], "--max_steps", str(step + 2)]
    assert main(resume) == 0
    assert json.loads((out / "metrics.json").read_text())["global_step"] == step + 2
