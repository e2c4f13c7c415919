"""Features of the rated speaker's turns for the local judge: MiniLM embeddings + style counts.

A dialogue becomes one fixed-length vector:

* ``turn.000``..``turn.383`` (``embedding_unit="turn"``, the default): every rated turn is
  embedded on its own by all-MiniLM-L6-v2 (its first ``turn_tokens`` word pieces; cached by
  content hash) and the turn vectors are pooled: their mean, L2-normalised (``turn.*``) and,
  optionally, their spread across turns (``turnstd.*``). ``max_turns`` caps the encoder's work
  per dialogue (evenly spaced turns, first and last included); ``FeatureMatrix.coverage``
  records the share of the rated word pieces that were encoded (not a feature: it measures the
  encoder's budget, not the speaker, and as a feature it keyed on dialogue length).
* ``emb.000``..``emb.383`` (``embedding_unit="window"``, the issue-5 default kept as an option):
  the rated turns as one word-piece stream cut into windows of ``chunk_tokens``; at most
  ``max_chunks`` evenly spaced windows are encoded and token-weighted.
* ``tok.000``..``tok.383`` (optional): the mean of MiniLM's input word-piece vectors over *all*
  the rated words: no transformer pass, so it always covers the whole text.
* ``style.*``: cheap counts over all the rated turns (see :data:`STYLE_FEATURES`).

What each block is worth was measured by leave-one-generator-out CV (issue 14; figures in
:mod:`hal_core.transfer`): the style counts and word-piece means carry most of the signal that
transfers to another generator; pooled turn embeddings add little on their own and are kept at
a low block weight. Encoding more of each turn or more turns did not transfer better (16 or 32
pieces, 2 to all turns: leave-one-generator-out HL r within 0.01), and MiniLM is the cost of
the whole judge (~2,000-3,000 word pieces per second per core), hence the defaults: the first
16 pieces of at most 4 turns.

Everything is deterministic: the same texts give the same matrix.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hal_core.dialogue import ParsedDialogue, SpeakerTags, parse_dialogue
from hal_core.embedding import EMBEDDING_DIM, EmbeddingCache, embed_texts, load_encoder

FEATURES_VERSION = "hal-local-features-v2"
"""Bump when any feature's definition changes: it is part of the local judge's fingerprint."""


class FeatureConfig(BaseModel):
    """What the featurizer computes; saved with every local-judge model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    embeddings: bool = Field(default=True, description="MiniLM embedding of the rated turns.")
    embedding_unit: Literal["turn", "window"] = Field(
        default="turn",
        description="turn: embed every rated turn on its own and pool the turn vectors; "
        "window: embed word-piece windows of the rated speaker's stream (issue-5 default).",
    )
    turn_tokens: int = Field(
        default=16, ge=4, le=254, description="Word pieces of a turn encoded (its first ones)."
    )
    max_turns: int | None = Field(
        default=4,
        ge=1,
        description="Turns encoded per dialogue at most (evenly spaced, first and last "
        "included); None encodes every turn.",
    )
    turn_pooling: tuple[Literal["mean", "std"], ...] = Field(
        default=("mean",),
        min_length=1,
        description="Pooling of the turn vectors: mean (L2-normalised, turn.*) and/or the "
        "per-dimension spread across turns (turnstd.*).",
    )
    token_means: bool = Field(
        default=True, description="Mean MiniLM input word-piece vector over all rated words."
    )
    style: bool = Field(default=True, description="Cheap style counts (see STYLE_FEATURES).")
    chunk_tokens: int = Field(
        default=32, ge=16, le=254, description="Word pieces per embedded window (window unit)."
    )
    max_chunks: int | None = Field(
        default=1,
        ge=1,
        description="Windows encoded per dialogue at most (window unit; evenly spaced); None "
        "encodes all.",
    )
    batch_size: int = Field(default=64, ge=1, description="Texts per encoder batch.")


SLANG = frozenset((
    "lol", "lmao", "lmfao", "rofl", "omg", "omfg", "idk", "idc", "imo", "imho", "tbh", "btw",
    "brb", "ttyl", "ikr", "smh", "fr", "ngl", "nvm", "pls", "plz", "thx", "ty", "np", "u", "ur",
    "ya", "yah", "yea", "yeah", "yep", "yup", "nah", "nope", "gonna", "wanna", "gotta", "kinda",
    "sorta", "dunno", "lemme", "gimme", "aint", "ain't", "y'all", "yall", "cuz", "coz", "cos",
    "'cause", "bc", "tho", "thru", "ok", "okay", "k", "kk", "dude", "bro", "bruh", "sis", "fam",
    "cool", "awesome", "stuff", "folks", "doc", "meds", "chill", "legit", "super", "totally",
    "literally", "basically", "like", "haha", "hahaha", "hehe", "jk", "wtf", "wth", "dang",
    "darn", "heck", "yikes", "ugh", "meh", "whoa", "wow", "oops", "welp",
))  # fmt: skip
FILLERS = frozenset((
    "um", "umm", "uh", "uhh", "er", "erm", "hmm", "hm", "mm", "mhm", "eh", "ah", "oh", "well",
    "so", "anyway",
))  # fmt: skip
LAUGHS = re.compile(r"\b(?:a?ha(?:ha)+h?|he(?:he)+|lol+|lmf?ao+|rofl)\b", re.IGNORECASE)
EMOTICON = re.compile(
    r"(?:(?<!\w)[:;=8][\-o^']?[)(\]\[dDpP/\\|*3oO$]|<3|\^_?\^|(?<!\w)[xX][dD](?!\w)|:-?\|)"
)
ELONGATION = re.compile(r"([a-zA-Z])\1{2,}")
CONTRACTION = re.compile(
    r"\b\w+(?:n['’]t|['’](?:re|ve|ll|m|d|s))\b|\b(?:gonna|wanna|gotta|kinda|sorta|dunno|lemme)\b",
    re.IGNORECASE,
)
G_DROP = re.compile(r"\b\w+in['’](?=\s|$|[.,!?])", re.IGNORECASE)
WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
SENTENCE_END = re.compile(r"[.!?…]+")
ACTION = re.compile(r"\*[^*\n]{1,40}\*")
LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
MISSING_SPACE = re.compile(r"[a-z][,.!?][a-zA-Z]")
LOWER_AFTER_STOP = re.compile(r"[.!?]\s+[a-z]")
EMOJI = re.compile("[\U0001f300-\U0001faff\U0001f000-\U0001f2ff\u2600-\u27bf]")
LETTER = re.compile(r"[^\W\d_]")
UPPER = re.compile(r"[A-ZÀ-ÖØ-Þ]")
DIGIT = re.compile(r"\d")
FIRST_PERSON = frozenset(
    ["i", "me", "my", "mine", "myself", "i'm", "i've", "i'll", "i'd", "im", "ive"]
)
SECOND_PERSON = frozenset(["you", "your", "yours", "you're", "you've", "you'll", "youre"])

STYLE_FEATURES: tuple[str, ...] = (
    "style.log_turns",
    "style.log_words_per_turn",
    "style.words_per_turn_cv",
    "style.log_median_words",
    "style.log_max_words",
    "style.log_total_words",
    "style.rated_word_share",
    "style.short_turn_share",
    "style.lowercase_start_rate",
    "style.lowercase_i_rate",
    "style.lower_after_stop_rate",
    "style.upper_letter_share",
    "style.all_caps_word_rate",
    "style.emoji_per_turn",
    "style.emoticon_per_turn",
    "style.exclamation_per_turn",
    "style.question_per_turn",
    "style.question_turn_share",
    "style.no_final_punct_share",
    "style.ellipsis_per_turn",
    "style.comma_per_word",
    "style.dash_per_word",
    "style.digit_share",
    "style.contraction_rate",
    "style.g_drop_rate",
    "style.elongation_rate",
    "style.oov_rate",
    "style.slang_rate",
    "style.filler_rate",
    "style.laugh_per_turn",
    "style.action_per_turn",
    "style.list_line_per_turn",
    "style.newline_per_turn",
    "style.missing_space_rate",
    "style.words_per_sentence",
    "style.chars_per_word",
    "style.type_token_ratio",
    "style.first_person_rate",
    "style.second_person_rate",
    "style.inferred_speaker",
)


@lru_cache(maxsize=2)
def _vocabulary(model_path: str | None) -> frozenset[str]:
    tokenizer = load_encoder(model_path).tokenizer
    return frozenset(word for word in tokenizer.get_vocab() if word.isalpha())


def style_features(parsed: ParsedDialogue, vocabulary: frozenset[str]) -> np.ndarray:
    """The :data:`STYLE_FEATURES` of one parsed dialogue, in that order."""
    turns = parsed.rated_texts
    n_turns = max(len(turns), 1)
    words_by_turn = [WORD.findall(turn) for turn in turns]
    counts = np.array([len(words) for words in words_by_turn] or [0], dtype=float)
    words = [word for turn_words in words_by_turn for word in turn_words]
    lower = [word.lower() for word in words]
    n_words = max(len(words), 1)
    text = "\n".join(turns)
    n_letters = max(len(LETTER.findall(text)), 1)
    other_words = sum(len(WORD.findall(turn)) for turn in parsed.other_texts)
    starts = [next((c for c in turn if c.isalpha()), "") for turn in turns]
    stripped = [turn.rstrip() for turn in turns]
    sentences = max(len(SENTENCE_END.findall(text)), n_turns)
    plain = [word.replace("’", "'") for word in lower]
    alpha = [word for word in plain if word.isalpha()]
    mean_words = float(counts.mean())
    values = [
        math.log1p(len(turns)),
        math.log1p(mean_words),
        float(counts.std() / mean_words) if mean_words > 0 else 0.0,
        math.log1p(float(np.median(counts))),
        math.log1p(float(counts.max())),
        math.log1p(len(words)),
        len(words) / max(len(words) + other_words, 1),
        float((counts <= 5).mean()) if turns else 0.0,
        sum(1 for c in starts if c and c.islower()) / n_turns,
        sum(1 for word in words if word == "i") / n_words,
        len(LOWER_AFTER_STOP.findall(text)) / sentences,
        len(UPPER.findall(text)) / n_letters,
        sum(1 for word in words if len(word) > 1 and word.isupper()) / n_words,
        len(EMOJI.findall(text)) / n_turns,
        len(EMOTICON.findall(text)) / n_turns,
        text.count("!") / n_turns,
        text.count("?") / n_turns,
        sum(1 for turn in stripped if turn.endswith("?")) / n_turns,
        sum(1 for turn in stripped if turn and turn[-1].isalnum()) / n_turns,
        (text.count("...") + text.count("…")) / n_turns,
        text.count(",") / n_words,
        (text.count("—") + text.count("–") + text.count(" - ")) / n_words,
        len(DIGIT.findall(text)) / max(len(text), 1),
        len(CONTRACTION.findall(text)) / n_words,
        len(G_DROP.findall(text)) / n_words,
        len(ELONGATION.findall(text)) / n_words,
        sum(1 for word in alpha if word not in vocabulary) / max(len(alpha), 1),
        sum(1 for word in plain if word in SLANG) / n_words,
        sum(1 for word in plain if word in FILLERS) / n_words,
        len(LAUGHS.findall(text)) / n_turns,
        len(ACTION.findall(text)) / n_turns,
        len(LIST_LINE.findall(text)) / n_turns,
        sum(turn.count("\n") for turn in turns) / n_turns,
        len(MISSING_SPACE.findall(text)) / n_words,
        len(words) / sentences,
        sum(len(word) for word in words) / n_words,
        len(set(lower)) / n_words,
        sum(1 for word in plain if word in FIRST_PERSON) / n_words,
        sum(1 for word in plain if word in SECOND_PERSON) / n_words,
        float(parsed.inferred),
    ]
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class Chunk:
    dialogue: int
    text: str
    n_tokens: int


def chunk_turns(
    turns: Sequence[str], offsets: Sequence[Sequence[tuple[int, int]]], chunk_tokens: int
) -> list[tuple[str, int]]:
    """The rated turns as one word-piece stream cut into windows of ``chunk_tokens``.

    ``offsets`` are each turn's word-piece character spans. A window may span turns (their
    pieces are joined by newlines) and a long turn spans windows; every window but the last is
    full, and nothing is dropped.
    """
    stream = [(turn, start, end) for turn, spans in enumerate(offsets) for start, end in spans]
    chunks: list[tuple[str, int]] = []
    for first in range(0, len(stream), chunk_tokens):
        window = stream[first : first + chunk_tokens]
        parts = []
        for turn, pieces in itertools.groupby(window, key=lambda piece: piece[0]):
            spans = list(pieces)
            parts.append(turns[turn][spans[0][1] : spans[-1][2]])
        chunks.append(("\n".join(parts), len(window)))
    return chunks


def spaced_indices(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of ``range(n)``, first and last included."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def turn_heads(
    turns: Sequence[str], offsets: Sequence[Sequence[tuple[int, int]]], turn_tokens: int
) -> list[tuple[int, str, int, int]]:
    """Each turn's first ``turn_tokens`` word pieces as text: ``(turn, head, pieces encoded,
    pieces in the turn)``; a turn without word pieces is left out."""
    heads = []
    for index, (turn, spans) in enumerate(zip(turns, offsets, strict=True)):
        if not spans:
            continue
        kept = min(turn_tokens, len(spans))
        heads.append((index, turn[spans[0][0] : spans[kept - 1][1]], kept, len(spans)))
    return heads


@dataclass(frozen=True)
class FeatureMatrix:
    """Feature rows for dialogues; rows of unparseable dialogues are NaN with a reason.
    ``coverage``: share of each dialogue's rated word pieces the encoder saw (NaN: unparseable).
    """

    values: np.ndarray
    names: list[str]
    errors: list[str | None]
    coverage: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return np.array([error is None for error in self.errors], dtype=bool)


class DialogueFeaturizer:
    """Turns dialogues into :class:`FeatureMatrix` rows (see the module doc).

    ``threads``: torch intra-op threads while encoding (restored afterwards). One thread is the
    default: on a two-core machine that also runs anything else, two OpenMP threads wait on each
    other and a single dialogue took 0.5 s instead of 26 ms (measured); None leaves torch as is.
    """

    def __init__(
        self,
        config: FeatureConfig | None = None,
        model_path: str | None = None,
        cache: EmbeddingCache | None = None,
        threads: int | None = 1,
    ) -> None:
        self.config = config or FeatureConfig()
        self.model_path = model_path
        self.cache = cache
        self.threads = threads

    @property
    def names(self) -> list[str]:
        names: list[str] = []
        if self.config.embeddings and self.config.embedding_unit == "window":
            names += [f"emb.{i:03d}" for i in range(EMBEDDING_DIM)]
        elif self.config.embeddings:
            for pooling in self.config.turn_pooling:
                block = "turn" if pooling == "mean" else f"turn{pooling}"
                names += [f"{block}.{i:03d}" for i in range(EMBEDDING_DIM)]
        if self.config.token_means:
            names += [f"tok.{i:03d}" for i in range(EMBEDDING_DIM)]
        if self.config.style:
            names += list(STYLE_FEATURES)
        return names

    def parse(self, dialogues: Sequence[str], tags: SpeakerTags) -> list[ParsedDialogue]:
        return [parse_dialogue(str(text), tags) for text in dialogues]

    def transform(self, dialogues: Sequence[str], tags: SpeakerTags) -> FeatureMatrix:
        """One row per dialogue, in input order."""
        return self.transform_parsed(self.parse(dialogues, tags))

    def transform_parsed(self, parsed: Sequence[ParsedDialogue]) -> FeatureMatrix:
        config = self.config
        errors = [item.error for item in parsed]
        good = [i for i, error in enumerate(errors) if error is None]
        values = np.full((len(parsed), len(self.names)), np.nan, dtype=np.float64)
        covered = np.full(len(parsed), np.nan)
        if not good:
            return FeatureMatrix(values, self.names, errors, covered)
        items = [parsed[i] for i in good]
        blocks: list[np.ndarray] = []
        coverage = np.ones(len(items))
        if config.embeddings or config.token_means:
            tokens = _tokenize_turns(items, self.model_path)
            if config.embeddings and config.embedding_unit == "window":
                embedded, coverage = self._embed(items, tokens)
                blocks.append(embedded)
            elif config.embeddings:
                embedded, coverage = self._embed_turns(items, tokens)
                blocks.append(embedded)
            if config.token_means:
                blocks.append(_token_means(tokens, self.model_path))
        if config.style:
            vocabulary = _vocabulary(self.model_path)
            blocks.append(np.vstack([style_features(item, vocabulary) for item in items]))
        values[good] = np.hstack(blocks)
        covered[good] = coverage
        return FeatureMatrix(values, self.names, errors, covered)

    def _embed(
        self, parsed: Sequence[ParsedDialogue], tokens: list[list[Any]]
    ) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        chunks: list[Chunk] = []
        coverage = np.ones(len(parsed))
        for row, (item, encodings) in enumerate(zip(parsed, tokens, strict=True)):
            packed = chunk_turns(
                item.rated_texts, [e.offsets for e in encodings], config.chunk_tokens
            )
            total = sum(n for _, n in packed)
            if config.max_chunks is not None and len(packed) > config.max_chunks:
                packed = [packed[i] for i in spaced_indices(len(packed), config.max_chunks)]
            coverage[row] = sum(n for _, n in packed) / max(total, 1)
            chunks.extend(Chunk(row, text, n) for text, n in packed)
        encoder = load_encoder(self.model_path)
        # room for [CLS]/[SEP] and re-tokenisation at chunk edges, so nothing is cut
        encoder.max_seq_length = max(encoder.max_seq_length, config.chunk_tokens + 8)
        with _torch_threads(self.threads):
            vectors = embed_texts(
                [chunk.text for chunk in chunks],
                cache=self.cache,
                model_path=self.model_path,
                batch_size=config.batch_size,
            ).astype(np.float64)
        sums = np.zeros((len(parsed), EMBEDDING_DIM))
        weights = np.zeros(len(parsed))
        for chunk, vector in zip(chunks, vectors, strict=True):
            sums[chunk.dialogue] += chunk.n_tokens * vector
            weights[chunk.dialogue] += chunk.n_tokens
        means = sums / np.maximum(weights, 1.0)[:, None]
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return means / np.where(norms > 0, norms, 1.0), coverage

    def _embed_turns(
        self, parsed: Sequence[ParsedDialogue], tokens: list[list[Any]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pooled turn vectors (one block per pooling) and the share of pieces encoded."""
        config = self.config
        owners: list[int] = []
        texts: list[str] = []
        coverage = np.ones(len(parsed))
        for row, (item, encodings) in enumerate(zip(parsed, tokens, strict=True)):
            heads = turn_heads(item.rated_texts, [e.offsets for e in encodings], config.turn_tokens)
            total = sum(n_turn for *_, n_turn in heads)
            if config.max_turns is not None and len(heads) > config.max_turns:
                heads = [heads[i] for i in spaced_indices(len(heads), config.max_turns)]
            coverage[row] = sum(kept for _, _, kept, _ in heads) / max(total, 1)
            owners.extend(row for _ in heads)
            texts.extend(head for _, head, _, _ in heads)
        encoder = load_encoder(self.model_path)
        # room for [CLS]/[SEP] and re-tokenisation of the cut text, so nothing more is cut
        encoder.max_seq_length = max(encoder.max_seq_length, config.turn_tokens + 8)
        with _torch_threads(self.threads):
            vectors = embed_texts(
                texts, cache=self.cache, model_path=self.model_path, batch_size=config.batch_size
            ).astype(np.float64)
        owner = np.asarray(owners, dtype=int)
        counts = np.bincount(owner, minlength=len(parsed)).astype(float)[:, None]
        sums = np.zeros((len(parsed), EMBEDDING_DIM))
        np.add.at(sums, owner, vectors)
        means = sums / np.maximum(counts, 1.0)
        blocks = []
        for pooling in config.turn_pooling:
            if pooling == "mean":
                norms = np.linalg.norm(means, axis=1, keepdims=True)
                blocks.append(means / np.where(norms > 0, norms, 1.0))
            else:
                squares = np.zeros((len(parsed), EMBEDDING_DIM))
                np.add.at(squares, owner, (vectors - means[owner]) ** 2)
                blocks.append(np.sqrt(squares / np.maximum(counts, 1.0)))
        return np.hstack(blocks), coverage


def _tokenize_turns(parsed: Sequence[ParsedDialogue], model_path: str | None) -> list[list[Any]]:
    """Word pieces (ids and character offsets) of every rated turn, one batch for all."""
    backend = _plain_tokenizer(model_path)
    turns = [turn for item in parsed for turn in item.rated_texts]
    encoded = backend.encode_batch(turns, add_special_tokens=False) if turns else []
    out: list[list[Any]] = []
    position = 0
    for item in parsed:
        count = len(item.rated_texts)
        out.append(encoded[position : position + count])
        position += count
    return out


@lru_cache(maxsize=2)
def _plain_tokenizer(model_path: str | None):
    """A private copy of MiniLM's word-piece tokenizer without truncation or padding.

    The shared one carries whatever truncation/padding the encoder's last call set (e.g.
    padded to 128 pieces), which would silently cut long turns and add [PAD] pieces.
    """
    from tokenizers import Tokenizer

    shared = load_encoder(model_path).tokenizer.backend_tokenizer
    plain = Tokenizer.from_str(shared.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def _token_means(tokens: list[list[Any]], model_path: str | None) -> np.ndarray:
    table = _word_piece_table(model_path)
    rows = np.zeros((len(tokens), table.shape[1]))
    for row, encodings in enumerate(tokens):
        ids = [i for encoding in encodings for i in encoding.ids]
        if ids:
            rows[row] = table[ids].mean(axis=0)
    return rows


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the encoder on ``threads`` intra-op threads (then restore); None leaves torch alone."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@lru_cache(maxsize=2)
def _word_piece_table(model_path: str | None) -> np.ndarray:
    encoder = load_encoder(model_path)
    weights = encoder[0].auto_model.embeddings.word_embeddings.weight
    return weights.detach().cpu().numpy().astype(np.float32)
