"""The smaller ``clmkit`` commands: ``prepare``, ``eval``, ``generate``, ``new-plugin`` and ``plugins``."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from clmkit.args import ClmTrainingArguments
from clmkit.cli.options import (
    Parser,
    PrepareOptions,
    SourceOptions,
    TokenizerOptions,
    _parse,
    detected_defaults,
    field_help,
    list_registered_names,
)
from clmkit.data.sources import PREPARED_STATS
from clmkit.errors import ConfigError, DataError
from clmkit.generation import TEMPERATURE, TOP_P, check_prompts, check_sampling
from clmkit.outputs import CLMKIT_FILES, OutputFolder, check_overwritable
from clmkit.paths import storage_errors

logger = logging.getLogger("clmkit")
# what `clmkit prepare` writes (datasets' save_to_disk, the tokenizer, the statistics)
PREPARE_OUTPUTS = frozenset(
    {
        "dataset_dict.json",
        "train",
        "validation",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        PREPARED_STATS,
    }
)


def cmd_prepare(argv: Sequence[str]) -> int:
    """Tokenize and chunk a corpus once; save it with its tokenizer and statistics for `clmkit train`."""
    parser = Parser(
        [SourceOptions, TokenizerOptions, PrepareOptions],
        prog="clmkit prepare",
        usage="%(prog)s [--dataset SRC] [--output_dir DIR] [--context_length N] [--chunker NAME] [...]",
        description="Tokenize and chunk a corpus and save it (datasets.save_to_disk) with its tokenizer and "
        f"statistics ({PREPARED_STATS}). `clmkit train --dataset FOLDER` trains on it without preparing again.",
    )
    list_registered_names(parser)
    source, tok_options, options = _parse(parser, argv)
    folder = OutputFolder(options.output_dir, "prepared")
    out = folder.path
    folder.check_not_in_use()
    check_prepare_folder(folder, options.overwrite)
    if options.overwrite:
        check_overwritable(out, [source.dataset, tok_options.tokenizer])
    args = ClmTrainingArguments(
        output_dir=str(out),
        context_length=options.context_length,
        text_column=options.text_column,
        chunker=options.chunker,
        chunker_kwargs=options.chunker_kwargs,
        filters=options.filters,
        preprocessing_num_workers=options.preprocessing_num_workers,
        report_to="none",
    )
    if source.streaming:
        raise ConfigError("clmkit prepare saves whole splits, so it does not stream. Drop --streaming.")
    from clmkit.args import check_plugin_kwargs
    from clmkit.data.tokenizer import get_tokenizer
    from clmkit.plugins import Plugins

    plugins = Plugins()
    plugins.check_names(args)
    check_plugin_kwargs(args, plugins)  # names and types of every plugin's arguments, before the tokenizer trains
    data = source.load(args.text_column)
    if data.tokenizer is not None:
        raise ConfigError(f"--dataset {source.dataset!r} is already prepared. Pass the raw corpus instead.")
    tokenizer = get_tokenizer(data, tok_options.tokenizer, tok_options.vocab_size, args.text_column)
    if options.compare:
        from clmkit.data.preparation import compare_chunkers, compare_table

        names = [n.strip() for n in options.compare.split(",") if n.strip()]
        rows = compare_chunkers(data.splits["train"], tokenizer, names, args.context_length, args.text_column)
        print(compare_table(rows))
        return 0

    from datasets import DatasetDict

    from clmkit.training.components import assemble

    # the assembly of a training run without a model: plugins' tokens, the collator's check that it can train
    prepared = assemble(None, tokenizer, args, data.splits["train"], data.splits["validation"], who="clmkit prepare")
    stats, reports = prepared.data.stats, prepared.data.filter_reports
    split_name = {"train": "train", "eval": "validation"}  # prepare_datasets' split names -> the saved ones
    info = {
        **data.info,
        "context_length": args.context_length,
        "chunker": args.chunker,
        "chunker_kwargs": args.plugin_kwargs("chunker"),
        "filters": args.filters,
        "vocab_size": len(tokenizer),
        "splits": {split_name[k]: s.as_dict() for k, s in stats.items()},
        "filter_reports": {split_name[k]: [r.as_dict() for r in rs] for k, rs in reports.items()},
    }
    from clmkit import report

    def write(tmp: str) -> None:
        DatasetDict({"train": prepared.data.train, "validation": prepared.data.eval}).save_to_disk(tmp)
        tokenizer.save_pretrained(tmp)
        report.write_json(Path(tmp) / PREPARED_STATS, info)

    with folder.locked(), storage_errors(out):
        check_prepare_folder(folder, options.overwrite)  # again: another run may have written meanwhile
        if options.overwrite:
            replaced = folder.remove_owned()
            if replaced:
                logger.info("--overwrite: removed the previous %s from %s", ", ".join(replaced), out)
        folder.write_with(write)
    print(json.dumps({"output_dir": str(out), **info}, indent=2))
    return 0


def check_prepare_folder(folder: OutputFolder, overwrite: bool) -> None:
    """A prepare writes into a new or empty folder, or with ``--overwrite`` one where it replaces only its own files."""
    out = folder.path
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {str(out)!r} is a file. Pass another --output_dir.")
    if not out.is_dir() or not ({p.name for p in out.iterdir()} - CLMKIT_FILES):
        return
    if not overwrite:
        raise ConfigError(
            f"output folder {str(out)!r} is not empty. Pass --overwrite to replace what clmkit wrote there, "
            "or another --output_dir."
        )
    clashes = sorted(set(folder.foreign()) & PREPARE_OUTPUTS)
    if clashes:
        raise ConfigError(
            f"output folder {str(out)!r} holds {', '.join(clashes)}, which clmkit did not write and a prepare would "
            "replace. Move them away, or pass another --output_dir."
        )


def cmd_eval(argv: Sequence[str]) -> int:
    """Token-weighted loss, perplexity and bits per byte of a saved model over a dataset split."""
    parser = Parser(
        [SourceOptions],
        prog="clmkit eval",
        description="Evaluate a saved model: token-weighted loss, perplexity, bits per byte and next-token accuracy "
        "over one split of a corpus (default: the validation split of this Python's standard library, the one "
        "`clmkit train` holds out). Prints JSON.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="A saved model folder (e.g. clmkit-out).")
    parser.add_argument("--split", default="validation", choices=["validation", "train"], help="Split to evaluate.")
    parser.add_argument("--text_column", "--text-column", default="content", help=field_help("text_column")["help"])
    parser.add_argument("--batch_size", "--batch-size", type=int, default=64, help="Examples per forward pass.")
    source, rest = _parse(parser, argv)
    if rest.batch_size < 1:
        raise ConfigError(f"--batch_size must be a whole number of at least 1, got {rest.batch_size}. Pass e.g. 64.")

    from transformers import AutoModelForCausalLM

    from clmkit.data.tokenizer import load_tokenizer
    from clmkit.generation import check_model_dir, context_size
    from clmkit.training.trainer import ClmTrainer

    model_dir = check_model_dir(rest.model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    data = source.load(rest.text_column)
    if data.tokenizer is not None and data.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise DataError(
            f"prepared dataset {source.dataset!r} was tokenized with another tokenizer than {str(model_dir)!r}'s. "
            "Evaluate on the raw corpus instead."
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with tempfile.TemporaryDirectory() as tmp:
        args = ClmTrainingArguments(
            output_dir=tmp,
            context_length=context_size(model.config) or 128,
            text_column=rest.text_column,
            per_device_eval_batch_size=rest.batch_size,
            report_to="none",
            **detected_defaults(set()),  # the precision of `clmkit train`'s final evaluation on this device
        )
        trainer = ClmTrainer(model=model, args=args, processing_class=tokenizer, eval_dataset=data.splits[rest.split])
        metrics = trainer.evaluate()
    result = {
        "model_dir": str(model_dir),
        "split": rest.split,
        **{k: v for k, v in metrics.items() if k.startswith("eval_") and k not in ("eval_runtime",)},
        "corpus": data.info,
    }
    print(json.dumps(result, indent=2))
    return 0


def cmd_generate(argv: Sequence[str]) -> int:
    """Complete a prompt with a saved model through the text-generation pipeline."""
    parser = Parser(
        prog="clmkit generate",
        description="Complete PROMPT with a saved model (transformers pipeline 'text-generation'). A prompt too long "
        "for the model's context keeps its last tokens, with a warning.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="A saved model folder (e.g. clmkit-out).")
    parser.add_argument("prompt", metavar="PROMPT", help="The text to complete.")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64, help="Tokens to generate.")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="Sampling temperature; 0 means greedy.")
    parser.add_argument("--top_p", "--top-p", type=float, default=TOP_P, help="Nucleus sampling probability mass.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed of the sampling.")
    (options,) = _parse(parser, argv)
    check_sampling(options.max_new_tokens, options.temperature, options.top_p, None)  # before the model loads
    check_prompts([options.prompt])

    from clmkit.generation import complete, load_generator

    generator = load_generator(options.model_dir)
    print(
        complete(
            generator,
            options.prompt,
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed,
        )
    )
    return 0


def cmd_new_plugin(argv: Sequence[str]) -> int:
    """Write a plugin of any kind into a new or existing plugin package from clmkit's templates."""
    from clmkit.templates import KIND_FLAGS, new_plugin

    parser = Parser(
        prog="clmkit new-plugin",
        description="Write the plugin NAME of --kind into the package --package (default clmkit-NAME) in --dest: "
        "src/<package module>/NAME.py registered under NAME through a 'clmkit' entry point, and tests/test_NAME.py, "
        "whose tests pass as generated once the package is installed (pip install -e DIR). A package that exists "
        "gets the plugin added, so one package can hold several kinds.",
        epilog="Example: clmkit new-plugin focal-loss --kind loss --package clmkit-mykit && "
        "clmkit new-plugin head --kind chunker --package clmkit-mykit",
    )
    parser.add_argument("name", metavar="NAME", help="Plugin name, e.g. focal-loss: module and registered focal_loss.")
    parser.add_argument("--kind", default="loss", choices=list(KIND_FLAGS), help="What the plugin is.")
    parser.add_argument("--package", metavar="DIST-NAME", help="Distribution to write it into (clmkit-NAME).")
    parser.add_argument("--dest", default=".", help="Folder that holds the package folder.")
    parser.add_argument("--version", default="0.1.0", help="Version of a new package.")
    (options,) = _parse(parser, argv)
    print(new_plugin(options.name, options.dest, options.kind, options.package, options.version))
    return 0


def cmd_plugins(argv: Sequence[str]) -> int:
    """Print every loaded plugin as JSON: distribution, version, hooks, registered names."""
    parser = Parser(
        prog="clmkit plugins",
        description="List the loaded plugins (built-in and installed through the 'clmkit' entry-point group) as "
        "JSON: name, distribution, version, hooks, and the names each registered.",
    )
    _parse(parser, argv)
    from clmkit.plugins import Plugins

    print(json.dumps(Plugins().describe(), indent=2))
    return 0
