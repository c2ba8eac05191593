"""A run's tokenizer: the one a prepared corpus carries, one named by folder or hub name, or a GPT-2 style
byte-level BPE tokenizer trained here on the train split with the ``tokenizers`` library."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from clmkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from clmkit.data.corpus import Corpus

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
STREAM_TOKENIZER_DOCUMENTS = 10_000  # documents of a streamed train split that a new tokenizer is trained on
MIN_VOCAB_SIZE = 257  # the 256 bytes of the byte-level alphabet, and EOS


def check_vocab_size(vocab_size: int) -> None:
    """A byte-level BPE vocabulary holds at least the 256 bytes and EOS; ``tokenizers`` would silently
    return 257 tokens for anything smaller."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"--vocab_size {vocab_size!r} is below {MIN_VOCAB_SIZE}, the 256 bytes of the byte-level alphabet plus "
            f"<|endoftext|>. Pass at least {MIN_VOCAB_SIZE} (e.g. 8192), or reuse a tokenizer with --tokenizer."
        )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenization and byte alphabet) trained on ``texts``.

    ``<|endoftext|>`` is its only special token and serves as BOS, EOS and pad, as in GPT-2.
    """
    check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_batches(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def _batches(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def get_tokenizer(corpus: Corpus, name: str | None = None, vocab_size: int = 8192, text_column: str = "content") -> Any:
    """The prepared corpus's tokenizer, the one ``name`` names, or a new one trained on the train split."""
    if corpus.tokenizer is not None:
        if name:
            raise ConfigError(
                "a prepared dataset carries the tokenizer it was made with; drop --tokenizer, "
                "or prepare the dataset again with that tokenizer."
            )
        return corpus.tokenizer
    if name:
        return load_tokenizer(name)
    logger.info("training a byte-level BPE tokenizer (vocab_size=%d) on the train split", vocab_size)
    return train_tokenizer(training_texts(corpus.splits["train"], text_column), vocab_size=vocab_size)


def training_texts(train: Any, text_column: str) -> Iterator[str]:
    """The texts a new tokenizer learns: the train split's, the first ``STREAM_TOKENIZER_DOCUMENTS`` of a
    stream (a stream may be endless), or each mixture source's in turn."""
    from datasets import IterableDataset

    from clmkit.data.mixtures import Mixture

    if isinstance(train, Mixture):
        return itertools.chain.from_iterable(
            training_texts(s.dataset, s.text_column or text_column) for s in train.sources
        )
    texts = (text for batch in train.iter(batch_size=1000) for text in batch[text_column] if isinstance(text, str))
    return itertools.islice(texts, STREAM_TOKENIZER_DOCUMENTS) if isinstance(train, IterableDataset) else texts


def load_tokenizer(name_or_path: str) -> Any:
    """``AutoTokenizer.from_pretrained`` with one-line errors."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"could not load tokenizer {name_or_path!r} ({' '.join(str(exc).split())[:200]}). "
            "Pass a folder with tokenizer files, or a hub name while online."
        ) from exc
