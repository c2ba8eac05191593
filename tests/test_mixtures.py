"""Mixtures: sources with their own chunker, filters and weight, sampled together; from Python and from a config."""

from __future__ import annotations

import pytest
from datasets import Dataset, IterableDataset
from transformers import DataCollatorForLanguageModeling

from clmkit import ClmTrainer
from clmkit.data.mixtures import Mixture, Source, sources_from_config
from clmkit.errors import ConfigError


@pytest.fixture
def short_and_long(clmkit_corpus):
    """Short scripts (pieces of the email package) and long library files (the json package)."""
    email, json = clmkit_corpus[:-5], clmkit_corpus[-5:]  # the kit's corpus: email's 20 files, then json's 5
    short = Dataset.from_dict({"content": [t[i : i + 120] for t in email for i in range(0, 1200, 400)]})
    long = Dataset.from_dict({"text": json})
    return short, long


def as_tuples(dataset) -> list[tuple[int, ...]]:
    return [tuple(ids) for ids in dataset["input_ids"]]


def test_each_source_is_cut_its_own_way_and_sampled_by_weight(
    clmkit_tokenizer, clmkit_model, clmkit_args, short_and_long
):
    short, long = short_and_long
    mixture = Mixture(
        [
            Source(short, chunker="packed", filters=["exact_dedup"], weight=1, name="scripts"),
            Source(long, chunker="concat", filters=[], text_column="text", weight=3, name="library"),
        ],
        stopping_strategy="first_exhausted",
    )
    args = clmkit_args(filters=[{"keywords": {"words": ["no such word"]}}])  # the run's filters: replaced per source
    trainer = ClmTrainer(clmkit_model(), args, processing_class=clmkit_tokenizer, train_dataset=mixture)
    mixed = trainer.train_dataset
    # each source alone, as a plain run would prepare it
    alone = {
        name: ClmTrainer(
            clmkit_model(), clmkit_args(**options), processing_class=clmkit_tokenizer, train_dataset=data
        ).train_dataset
        for name, data, options in [
            ("scripts", short, {"chunker": "packed", "filters": ["exact_dedup"]}),
            ("library", long, {"chunker": "concat", "text_column": "text"}),
        ]
    }
    assert set(trainer.data_stats) == {"train/scripts", "train/library"}
    assert (
        trainer.filter_reports["train/scripts"][0].name == "exact_dedup"
        and "train/library" not in trainer.filter_reports
    )
    scripts, library = set(as_tuples(alone["scripts"])), set(as_tuples(alone["library"]))
    drawn = as_tuples(mixed)
    assert set(drawn) <= scripts | library and not scripts & library
    from_scripts = sum(ids in scripts for ids in drawn)
    assert from_scripts == len(alone["scripts"])  # first_exhausted: the scripts ran out first ...
    assert 2 * from_scripts < len(drawn) - from_scripts < 5 * from_scripts  # ... after about 3 library rows each
    # concat examples get plain positions so both kinds share columns; packed ones keep their restarts
    rows = {tuple(r["input_ids"]): r["position_ids"] for r in mixed}
    assert all(rows[ids] == list(range(len(ids))) for ids in library if ids in rows)
    assert any(pos.count(0) > 1 for ids, pos in rows.items() if ids in scripts)
    trainer.args.max_steps = 2
    trainer.train()
    assert trainer.state.global_step == 2


def test_a_mixture_with_a_stream_is_a_stream(clmkit_tokenizer, clmkit_model, clmkit_args, short_and_long):
    short, long = short_and_long
    mixture = [Source(short.to_iterable_dataset(), chunker="packed"), Source(long, text_column="text", weight=2)]
    with pytest.raises(ConfigError, match="max_steps"):
        ClmTrainer(clmkit_model(), clmkit_args(), processing_class=clmkit_tokenizer, train_dataset=mixture)
    trainer = ClmTrainer(
        clmkit_model(), clmkit_args(max_steps=2), processing_class=clmkit_tokenizer, train_dataset=mixture
    )
    assert isinstance(trainer.train_dataset, IterableDataset)
    trainer.train()
    assert trainer.state.global_step == 2


def test_sources_from_a_config_list(clmkit_tokenizer, clmkit_model, clmkit_args, short_and_long):
    short, long = short_and_long
    datasets = {"scripts/": short, "lib/": long}
    config = [
        {"dataset": "scripts/", "chunker": "packed", "weight": 1, "filters": "exact_dedup"},
        {"dataset": "lib/", "chunker": "concat", "weight": 3, "text_column": "text"},
    ]
    sources = sources_from_config(config, datasets.__getitem__)
    assert [(s.name, s.chunker, s.weight, s.filters) for s in sources] == [
        ("scripts/", "packed", 1, ["exact_dedup"]),
        ("lib/", "concat", 3, None),
    ]
    trainer = ClmTrainer(
        clmkit_model(), clmkit_args(), processing_class=clmkit_tokenizer, train_dataset=Mixture(sources)
    )
    assert set(trainer.data_stats) == {"train/scripts/", "train/lib/"}
    with pytest.raises(ConfigError, match=r"unknown keys \['chunk'\]"):
        sources_from_config([{"dataset": "lib/", "chunk": "packed"}], datasets.__getitem__)
    with pytest.raises(ConfigError, match="needs a 'dataset' key"):
        sources_from_config([{"chunker": "packed"}], datasets.__getitem__)
    with pytest.raises(ConfigError, match="non-empty list"):
        sources_from_config({"dataset": "lib/"}, datasets.__getitem__)


def test_bad_weights(short_and_long):
    short, long = short_and_long
    sources = [Source(short), Source(long, name="lib")]
    with pytest.raises(ConfigError, match=r"2 sources but 3 weights \(\[1, 2, 3\]\)"):
        Mixture(sources, weights=[1, 2, 3])
    for weight in (0, -1.5):
        with pytest.raises(ConfigError, match=f"source 'lib' has weight {weight}"):
            Mixture(sources, weights=[1, weight])
        with pytest.raises(ConfigError, match="must be positive"):
            Source(short, weight=weight)
    assert Mixture(sources, weights=[1, 3]).probabilities == [0.25, 0.75]


def test_a_packed_source_with_a_collator_that_cannot_keep_documents_apart(
    clmkit_tokenizer, clmkit_model, clmkit_args, short_and_long
):
    short, long = short_and_long
    mixture = Mixture([Source(short, chunker="packed"), Source(long, text_column="text")])
    with pytest.raises(ConfigError, match="chunker 'packed' packs several documents"):
        ClmTrainer(
            clmkit_model(),
            clmkit_args(),
            data_collator=DataCollatorForLanguageModeling(clmkit_tokenizer, mlm=False),
            processing_class=clmkit_tokenizer,
            train_dataset=mixture,
        )


def test_the_data_guide_snippets_run(tmp_path, monkeypatch):
    """docs/data.md: every Python block runs (at tiny sizes) and its YAML mixture is valid input."""
    import re
    import sysconfig
    from pathlib import Path
    from types import SimpleNamespace

    import yaml

    from clmkit.plugins import Plugins

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("__init__.py", "decoder.py", "encoder.py", "scanner.py", "tool.py"):
        (corpus / name).write_bytes((Path(sysconfig.get_paths()["stdlib"]) / "json" / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    page = (Path(__file__).resolve().parent.parent / "docs" / "data.md").read_text()
    blocks = re.findall(r"(<!-- not run: .+? -->\n)?```(\w+)\n(.*?)```", page, flags=re.S)
    shrink = {
        "load_corpus()": f"load_corpus({str(corpus)!r}, valid_percentage=20)",
        "vocab_size=8192": "vocab_size=512",
    }
    namespace: dict = {}
    for not_run, lang, code in blocks:
        if lang == "python" and not not_run:
            for old, new in shrink.items():
                code = code.replace(old, new)
            exec(compile(code, "docs/data.md", "exec"), namespace)
        elif lang == "yaml":
            entries = yaml.safe_load(code)["mixture"]
            sources = sources_from_config(entries, lambda _: Dataset.from_dict({"content": ["x"], "text": ["y"]}))
            assert [s.chunker for s in sources] == ["packed", "concat"]
    assert namespace["row"]["chunker"] == "packed" and namespace["row"]["tokens_dropped"] == 0  # the last row printed
    plugin = SimpleNamespace(clmkit_register_filters=namespace["clmkit_register_filters"])
    max_size = Plugins(extra=[plugin], autoload=False).build("filters", "max_size", max_chars=3)
    assert max_size.reason("abcd") == "longer than 3 characters" and max_size.reason("abc") is None
    assert namespace["mixture"].probabilities == [0.25, 0.75] and namespace["stream"].n_shards == 2
