"""The ``TrainingArguments`` options that only ``ClmTrainer`` implements, so ``ClmLoop`` refuses them up front."""

from __future__ import annotations

from clmkit.args import ClmTrainingArguments


def trainer_only_options(args: ClmTrainingArguments) -> list[str]:
    """The options set in ``args`` that only ``ClmTrainer`` implements, each with what to do instead."""
    accelerate_config = "accelerate launch --config_file docs/accelerate_configs/"
    checks = [
        ("deepspeed", bool(args.deepspeed), f"give DeepSpeed to accelerate: {accelerate_config}deepspeed_zero2.yaml"),
        ("fsdp", bool(args.fsdp), f"give FSDP to accelerate: {accelerate_config}fsdp.yaml"),
        ("parallelism_config", args.parallelism_config is not None, "use data parallelism: DDP, FSDP or ZeRO"),
        ("auto_find_batch_size", args.auto_find_batch_size, "set per_device_train_batch_size"),
        ("load_best_model_at_end", args.load_best_model_at_end, "load the best checkpoint-N after training"),
        ("save_strategy", args.save_strategy == "best", "save by 'steps' or 'epoch'"),
        ("save_only_model", args.save_only_model, "leave it off: loop checkpoints hold the whole training state"),
        ("ignore_data_skip", args.ignore_data_skip, "leave it off: the loop always resumes at the exact batch"),
        (
            "restore_callback_states_from_checkpoint",
            args.restore_callback_states_from_checkpoint,
            "leave it off: a stateful callback reads its state back in on_train_begin, as TokenCounter does",
        ),
        (
            "train_sampling_strategy",
            args.train_sampling_strategy not in ("random", "sequential"),
            "use 'random' or 'sequential'",
        ),
        (
            "lr_scheduler_type",
            args.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy"),
            "use a schedule of the step alone (linear, cosine, constant_with_warmup, ...)",
        ),
        ("neftune_noise_alpha", args.neftune_noise_alpha is not None, "leave it unset"),
        ("use_liger_kernel", args.use_liger_kernel, "leave it off"),
        (
            "include_num_input_tokens_seen",
            args.include_num_input_tokens_seen not in ("no", False),
            "leave it 'no': the loop logs tokens_seen itself",
        ),
        (
            "hub_strategy",
            args.push_to_hub and args.hub_strategy != "end",
            "set hub_strategy 'end': the loop pushes the final model once",
        ),
    ]
    return [f"{name} ({fix})" for name, used, fix in checks if used]
