"""Sampling from a local policy, and candidate responses for persona prompts.

:func:`complete_chats` is the one local generation path: a batch of chats rendered through the
model's chat template, left-padded, sampled with temperature, top-p and a repetition penalty,
each row from its own seeded generator (:class:`SeededRowSampler`), so a row's reply depends on
its seed and its chat, not on which rows share its batch. The role-play and whole-dialogue
protocols (:mod:`hal_core.dialogue_generation`) and the candidate functions below all call it.
:func:`load_policy` loads a base model with an optional PEFT LoRA adapter (a DPO checkpoint);
:func:`policy_fingerprint` hashes the files that decide what it generates.

Candidate tables, one row per candidate: ``prompt_id``, ``prompt``, ``candidate_id``,
``response``, ``model`` (and ``error`` when a generation failed; failed candidates stay in the
table with an empty response so that pairing records them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hal_core.tables import read_table

CANDIDATE_TABLE_COLUMNS = ("prompt_id", "prompt", "candidate_id", "response", "model")

Completer = Callable[[str], str]
"""Answers one user prompt with one response (an OpenAI-compatible endpoint, a stub server)."""


class SamplingSettings(BaseModel):
    """How candidates are sampled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_candidates: int = Field(default=4, ge=1, description="Candidates per prompt.")
    max_new_tokens: int = Field(default=1024, ge=1, description="Length limit of a response.")
    temperature: float = Field(default=1.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    repetition_penalty: float = Field(
        default=1.0,
        ge=1.0,
        description="Divides the positive logits (multiplies the negative ones) of tokens the "
        "reply being written already holds (1 = none).",
    )
    batch_size: int = Field(default=8, ge=1, description="Sequences per generate call.")
    seed: int = Field(default=0, description="Seed of every sampled row (mixed with its ids).")


def load_candidates(candidates_path: str | Path, prompts_path: str | Path) -> pd.DataFrame:
    """The candidates table (prompt_id, prompt, candidate_id, response, model) from files.

    A ``generate`` output (it has ``system_prompt``) carries its own prompts: the persona card
    the policy saw, so DPO trains on exactly that; its ``degenerate`` flags travel along. Other
    tables (``synthlabs/candidates_*.csv``) are joined with ``prompts_path`` by ``persona_id``.
    Raises when a column is missing or a candidate's persona has no prompt, naming file and row.
    """
    candidates = read_table(candidates_path)
    generated = "system_prompt" in candidates.columns
    required = [("persona_id", candidates, candidates_path)]
    required += [
        ("dialogue_id", candidates, candidates_path),
        ("dialogue", candidates, candidates_path),
    ]
    if not generated:
        prompts = read_table(prompts_path)
        required += [("persona_id", prompts, prompts_path), ("prompt", prompts, prompts_path)]
    for column, table, path in required:
        if column not in table.columns:
            raise ValueError(f"{path}: missing column {column!r}")
    if generated:
        prompt = candidates["system_prompt"].fillna("").astype(str)
    else:
        duplicated = prompts["persona_id"].duplicated()
        if duplicated.any():
            row = prompts.loc[duplicated, "_row"].iloc[0]
            raise ValueError(f"{prompts_path} row {row}: persona_id is not unique")
        by_persona = prompts.set_index("persona_id")["prompt"]
        missing = ~candidates["persona_id"].isin(by_persona.index)
        if missing.any():
            row = candidates.loc[missing, "_row"].iloc[0]
            persona = candidates.loc[missing, "persona_id"].iloc[0]
            raise ValueError(
                f"{candidates_path} row {row}: persona_id {persona} has no prompt in {prompts_path}"
            )
        prompt = candidates["persona_id"].map(by_persona).astype(str)
    table = pd.DataFrame(
        {
            "_row": candidates["_row"],
            "prompt_id": candidates["persona_id"].astype(str),
            "prompt": prompt,
            "candidate_id": candidates["dialogue_id"].astype(str),
            "response": candidates["dialogue"].fillna("").astype(str),
            "model": candidates["model"].astype(str) if "model" in candidates else "unknown",
        }
    )
    if generated:
        table["degenerate"] = candidates["degenerate"].fillna("").astype(str)
    table.attrs["source"] = str(candidates_path)
    return table


def load_prompts(prompts_path: str | Path, limit: int | None = None) -> pd.DataFrame:
    """Persona prompts as ``prompt_id``, ``prompt`` (first ``limit`` rows)."""
    prompts = read_table(prompts_path)
    table = pd.DataFrame(
        {"prompt_id": prompts["persona_id"].astype(str), "prompt": prompts["prompt"].astype(str)}
    )
    return table if limit is None else table.head(limit).reset_index(drop=True)


def _candidate_rows(
    prompts: pd.DataFrame, responses: Sequence[Sequence[str]], model_name: str
) -> pd.DataFrame:
    rows = []
    for (prompt_id, prompt), answers in zip(
        prompts[["prompt_id", "prompt"]].itertuples(index=False), responses, strict=True
    ):
        for number, answer in enumerate(answers):
            rows.append(
                {
                    "prompt_id": str(prompt_id),
                    "prompt": prompt,
                    "candidate_id": f"{prompt_id}-{model_name}-{number}",
                    "response": answer,
                    "model": model_name,
                }
            )
    return pd.DataFrame(rows, columns=list(CANDIDATE_TABLE_COLUMNS))


def render_prompts(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Prompts as the model sees them: through its chat template when it has one."""
    return render_chats(tokenizer, [[{"role": "user", "content": prompt}] for prompt in prompts])


TEMPLATE_VARIABLES = {"date_string": "01 Jan 2025"}
"""Fixed values for chat templates that would otherwise read the clock (Llama 3 writes today's
date into every system prompt), so the same chat renders the same text on any day."""


def render_chats(tokenizer, chats: Sequence[Sequence[dict]]) -> list[str]:
    """Chats (lists of ``{"role", "content"}``) as text ending where the assistant speaks next;
    without a chat template, the contents one per line."""
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                list(chat), add_generation_prompt=True, tokenize=False, **TEMPLATE_VARIABLES
            )
            for chat in chats
        ]
    return ["\n".join(message["content"] for message in chat) + "\n" for chat in chats]


def row_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (run seed, persona, sample, turn), stable across runs."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


TOP_K = 256
"""Tokens the nucleus is first looked for among (see ``SeededRowSampler._nucleus``)."""


def _seeded_row_sampler_class():
    from transformers import LogitsProcessor

    class SeededRowSampler(LogitsProcessor):
        """Samples each row's next token with that row's own generator.

        Placed last in the processor list of a *greedy* ``generate`` call: it applies the
        repetition penalty, temperature and top-p, draws one token per row from the row's
        ``torch.Generator``, and returns scores whose argmax is that token. transformers' own
        sampling draws the whole batch from one global generator, which makes a row's text
        depend on its batch-mates.

        The repetition penalty only weighs the tokens of the reply being written (positions
        from ``start`` on, special tokens excluded). transformers' penalty weighs the whole
        context: with a persona card and a chat template in it, that penalises the end-of-turn
        token (so replies ramble to the length limit) and every common word of the card.
        """

        def __init__(
            self,
            seeds,
            temperature: float,
            top_p: float,
            repetition_penalty: float = 1.0,
            start: int = 0,
            ignore_ids: Sequence[int] = (),
        ) -> None:
            self.seeds = list(seeds)
            self.generators = None
            self.temperature = temperature
            self.top_p = top_p
            self.repetition_penalty = repetition_penalty
            self.start = start
            self.ignore_ids = list(ignore_ids)

        def _penalised(self, input_ids, scores):
            import torch

            written = input_ids[:, self.start :]
            if self.repetition_penalty == 1.0 or written.shape[1] == 0:
                return scores
            values = scores.gather(1, written)
            penalty = self.repetition_penalty
            penalised = torch.where(values > 0, values / penalty, values * penalty)
            if self.ignore_ids:
                ignored = torch.isin(written, torch.tensor(self.ignore_ids, device=written.device))
                penalised = torch.where(ignored, values, penalised)
            # A token written twice gets the same value twice: scatter stays exact.
            return scores.scatter(1, written, penalised)

        def _nucleus(self, logits):
            """Per row: candidate token ids and their probabilities, top-p applied exactly.

            The nucleus is looked for among the TOP_K most likely tokens (a partial sort);
            a row whose TOP_K tokens hold less than top_p of the mass falls back to all."""
            import torch

            normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)
            k = min(TOP_K, logits.shape[-1])
            values, ids = torch.topk(logits, k, dim=-1)
            probabilities = (values - normaliser).exp()
            rows = []
            for row in range(logits.shape[0]):
                row_ids, row_p = ids[row], probabilities[row]
                if self.top_p >= 1.0 or row_p.sum() < self.top_p:
                    row_p, row_ids = torch.sort(
                        (logits[row] - normaliser[row]).exp(), descending=True
                    )
                    if self.top_p >= 1.0:
                        rows.append((row_ids, row_p))
                        continue
                # Keep a token while the mass before it is below top_p (the first stays).
                keep = (row_p.cumsum(0) - row_p) < self.top_p
                rows.append((row_ids[keep], row_p[keep]))
            return rows

        def __call__(self, input_ids, scores):
            import torch

            scores = self._penalised(input_ids, scores)
            if self.temperature == 0:
                return scores
            if self.generators is None:  # on the device the scores live on
                self.generators = [
                    torch.Generator(device=scores.device).manual_seed(seed) for seed in self.seeds
                ]
            chosen = []
            for (ids, probabilities), generator in zip(
                self._nucleus(scores / self.temperature), self.generators, strict=True
            ):
                pick = torch.multinomial(probabilities, 1, generator=generator)
                chosen.append(ids[pick])
            picked = torch.full_like(scores, float("-inf"))
            picked.scatter_(1, torch.stack(chosen), 0.0)
            return picked

    return SeededRowSampler


@dataclass(frozen=True)
class Completion:
    """One sampled reply: its text (special tokens removed), how many tokens it took, and
    whether it ended on its own (end-of-turn token) rather than at the length limit."""

    text: str
    new_tokens: int
    finished: bool


_SENTINEL = "\u2063HAL-REPLY\u2063"


def continuation_text(tokenizer, user_text: str) -> str:
    """What follows an assistant reply when the user speaks next and the assistant answers:
    the end of the reply's turn, the user's turn, and the assistant's header, as the chat
    template writes them (read off a rendering around a sentinel reply)."""
    if not getattr(tokenizer, "chat_template", None):
        return "\n" + user_text + "\n"
    chat = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": _SENTINEL},
        {"role": "user", "content": user_text},
    ]
    rendered = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False, **TEMPLATE_VARIABLES
    )
    return rendered[rendered.index(_SENTINEL) + len(_SENTINEL) :]


def _opening_key(chat: Sequence[dict]) -> str:
    """Chats with the same key share their common opening tokens: all messages but the last
    (the card), or the whole chat when it has one message (several samples of one prompt)."""
    shared = list(chat[:-1]) or list(chat)
    return json.dumps(shared, sort_keys=True)


MIN_SHARED_TOKENS = 16
"""Shorter common openings are not worth a separate encoding pass."""


def shared_prefixes(
    rows: Sequence[Sequence[int]], keys: Sequence[str]
) -> tuple[list[list[int]], list[int]]:
    """The distinct openings to encode once and, per row, which one it starts with.

    Rows with the same key share their longest common token prefix (each keeps at least one
    token of its own, so the model has something to read at generation time). Without any
    group of two or more rows sharing MIN_SHARED_TOKENS tokens, every row is its own prefix.
    """
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    prefixes: list[list[int]] = []
    owners = [0] * len(rows)
    shared_any = False
    for members in groups.values():
        first = list(rows[members[0]])
        length = min(len(rows[i]) for i in members) - 1
        for i in members[1:]:
            row = rows[i]
            common = 0
            while common < length and row[common] == first[common]:
                common += 1
            length = common
        if len(members) > 1 and length >= MIN_SHARED_TOKENS:
            shared_any = True
            prefixes.append(first[:length])
            for i in members:
                owners[i] = len(prefixes) - 1
        else:
            for i in members:
                prefixes.append(list(rows[i][:-1]))
                owners[i] = len(prefixes) - 1
    if not shared_any:
        return [list(row) for row in rows], list(range(len(rows)))
    return prefixes, owners


class ChatBatch:
    """Chats that grow turn by turn, generated as one left-padded batch over one KV cache.

    :meth:`reply` samples one assistant turn per chat; :meth:`add_user_turn` appends the next
    user line. Earlier turns are never recomputed: the cache holds them, the attention mask
    hides the padding left of each row's new tokens and after each row's end-of-turn token,
    and positions count each row's real tokens. The history is what the model generated (up
    to its end-of-turn token), exactly as it generated it.
    """

    def __init__(self, model, tokenizer, settings: SamplingSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos])
        ids.add(tokenizer.eos_token_id)
        ids.discard(None)
        self.eos_ids = sorted(ids)
        self.ids = None
        self.mask = None
        self.cache = None
        self.finished: list[bool] = []
        self.ended_with: list[int | None] = []

    def _append(self, rows: Sequence[Sequence[int]]) -> None:
        """Append one segment per row, left-padded to the longest."""
        import torch

        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in rows])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self.ids is None:
            self.ids, self.mask = ids, mask
        else:
            self.ids = torch.cat([self.ids, ids], dim=1)
            self.mask = torch.cat([self.mask, mask], dim=1)

    def start(self, chats: Sequence[Sequence[dict]]) -> None:
        """The opening of every chat, up to where the assistant speaks first.

        Chats that open with the same messages (a persona card, or the same prompt for
        several samples) share the tokens they have in common: those are encoded once and
        their cache entries copied to each row.
        """
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        rows = [
            self.tokenizer(text, add_special_tokens=not has_template)["input_ids"]
            for text in render_chats(self.tokenizer, chats)
        ]
        self.ids = self.mask = self.cache = None
        self.finished = [True] * len(rows)
        self.ended_with = [None] * len(rows)
        prefixes, owners = shared_prefixes(rows, [_opening_key(chat) for chat in chats])
        if len(prefixes) == len(rows):
            self._append(rows)
            return
        import torch

        self._append(prefixes)
        self._encode()
        index = torch.tensor(owners, device=self.device)
        self.ids, self.mask = self.ids[index], self.mask[index]
        self.cache.batch_select_indices(index)
        self._append([row[len(prefixes[owner]) :] for row, owner in zip(rows, owners, strict=True)])

    def _encode(self) -> None:
        """Fill the cache with every token so far (positions count each row's real tokens)."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            self.model(
                input_ids=self.ids,
                attention_mask=self.mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.cache = cache

    def add_user_turn(self, texts: Sequence[str]) -> None:
        """Close each row's reply (unless it ended itself) and append the user's next line."""
        if len(texts) != len(self.finished):
            raise ValueError(f"{len(texts)} user turns for {len(self.finished)} chats")
        eos_text = self.tokenizer.eos_token or ""
        rows = []
        eos_id = self.tokenizer.convert_tokens_to_ids(eos_text) if eos_text else None
        for text, ended in zip(texts, self.ended_with, strict=True):
            segment = continuation_text(self.tokenizer, text)
            if ended is not None and ended == eos_id and segment.startswith(eos_text):
                # The reply's own end-of-turn token is already in the sequence.
                segment = segment[len(eos_text) :]
            rows.append(self.tokenizer(segment, add_special_tokens=False)["input_ids"])
        self._append(rows)

    def reply(self, seeds: Sequence[int], max_new_tokens: int | None = None) -> list[Completion]:
        """One sampled assistant turn per chat, row ``i`` from ``seeds[i]``."""
        import torch
        from transformers import DynamicCache, GenerationConfig, LogitsProcessorList

        if len(seeds) != self.ids.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {self.ids.shape[0]} chats")
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            return_dict_in_generate=True,
        )
        start = self.ids.shape[1]
        sampler = _seeded_row_sampler_class()(
            seeds,
            self.settings.temperature,
            self.settings.top_p,
            self.settings.repetition_penalty,
            start,
            sorted(set(self.tokenizer.all_special_ids) | set(self.eos_ids)),
        )
        self.model.eval()
        with torch.no_grad():
            output = self.model.generate(
                input_ids=self.ids,
                attention_mask=self.mask,
                cache=self.cache if self.cache is not None else DynamicCache(),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        new = output.sequences[:, start:]
        completions, masks, ended_with = [], [], []
        for row in new.tolist():
            end = next((i for i, token in enumerate(row) if token in self.eos_ids), None)
            ended_with.append(None if end is None else row[end])
            kept = row if end is None else row[:end]
            real = len(row) if end is None else end + 1
            masks.append([1] * real + [0] * (len(row) - real))
            completions.append(
                Completion(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    new_tokens=len(kept),
                    finished=end is not None,
                )
            )
        self.ids = output.sequences
        self.mask = torch.cat([self.mask, torch.tensor(masks, device=self.device)], dim=1)
        self.cache = output.cache
        self.finished = [completion.finished for completion in completions]
        self.ended_with = ended_with
        return completions


def complete_chats(
    model,
    tokenizer,
    chats: Sequence[Sequence[dict]],
    seeds: Sequence[int],
    settings: SamplingSettings,
    max_new_tokens: int | None = None,
) -> list[Completion]:
    """One reply per chat, generated as one left-padded batch, each row sampled from its seed.

    The same chats, seeds, settings and batch give the same replies; a row's reply does not
    depend on its batch-mates' random draws (only, at float precision, on the padded shape).
    """
    if len(chats) != len(seeds):
        raise ValueError(f"{len(chats)} chats but {len(seeds)} seeds")
    if not chats:
        return []
    batch = ChatBatch(model, tokenizer, settings)
    batch.start(chats)
    return batch.reply(seeds, max_new_tokens)


def generate_local(
    model, tokenizer, prompts: Sequence[str], settings: SamplingSettings
) -> list[list[str]]:
    """``n_candidates`` sampled responses per prompt from a transformers causal LM, batched;
    candidate ``c`` of prompt ``i`` is sampled from seed ``(settings.seed, i, c)``."""
    jobs = [
        ([{"role": "user", "content": prompt}], row_seed(settings.seed, index, candidate))
        for index, prompt in enumerate(prompts)
        for candidate in range(settings.n_candidates)
    ]
    texts: list[str] = []
    for start in range(0, len(jobs), settings.batch_size):
        batch = jobs[start : start + settings.batch_size]
        replies = complete_chats(
            model, tokenizer, [chat for chat, _ in batch], [seed for _, seed in batch], settings
        )
        texts += [reply.text for reply in replies]
    n = settings.n_candidates
    return [texts[index * n : (index + 1) * n] for index in range(len(prompts))]


def load_causal_lm(name_or_path: str):
    """Model and tokenizer from a local folder or a hub id (offline runs need a local folder)."""
    return load_policy(name_or_path)


def load_policy(
    base: str, adapter: str | None = None, dtype: str = "float32", device: str | None = None
):
    """A causal LM and its tokenizer: ``base`` (folder or hub id), with a PEFT LoRA ``adapter``
    folder merged into it when given (the adapter's own tokenizer is used when it saved one),
    in ``dtype`` on ``device`` (default: the GPU when there is one).

    ``dtype="int8-dynamic"`` (CPU only) loads float32 weights, merges the adapter, then swaps
    every ``Linear`` for torch's dynamically quantised int8 one: about half the CPU time a
    token here (SmolLM2-135M, 2 cores), with different samples than float32.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    quantise = dtype == INT8_DYNAMIC
    if quantise and device != "cpu":
        raise ValueError(f"dtype {INT8_DYNAMIC} runs on the CPU only (device {device})")
    load_dtype = torch.float32 if quantise else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=load_dtype)
    tokenizer_source = base
    if adapter is not None:
        from peft import PeftModel

        folder = Path(adapter)
        if not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{folder}: no adapter_config.json (rule: a PEFT adapter)")
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        if (folder / "tokenizer_config.json").is_file():
            tokenizer_source = str(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    model.to(device).eval()
    if quantise:
        import warnings

        with warnings.catch_warnings():  # torch.ao points to torchao, which is not installed
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
    return model, tokenizer


INT8_DYNAMIC = "int8-dynamic"


POLICY_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.bin",
    "tokenizer*.json",
    "chat_template.jinja",
    "adapter_config.json",
    "special_tokens_map.json",
)
"""The files of a model or adapter folder that decide what it generates."""


def local_model_folder(name_or_path: str) -> Path:
    """The folder of a local model, or of a hub id in the local hub cache (never downloads)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except (OSError, ValueError) as error:  # not cached / not a valid hub id
        raise FileNotFoundError(
            f"{name_or_path}: neither a folder nor a model in the local hub cache ({error})"
        ) from error


def folder_digest(folder: str | Path, file_digest: Callable[[Path], str] | None = None) -> str:
    """sha256 over the names and contents of a model folder's :data:`POLICY_FILES`.

    ``file_digest`` may serve a file's sha256 from a memo (large weights are hashed once).
    """
    from hal_core.tables import file_sha256

    folder = Path(folder)
    digest_of = file_digest or file_sha256
    paths = sorted({p for pattern in POLICY_FILES for p in folder.glob(pattern) if p.is_file()})
    if not paths:
        raise FileNotFoundError(f"{folder}: no model files ({', '.join(POLICY_FILES)})")
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + digest_of(path).encode())
    return digest.hexdigest()


def policy_fingerprint(
    base: str, adapter: str | None = None, file_digest: Callable[[Path], str] | None = None
) -> str:
    """What generated a dialogue: the base model's files, plus the adapter's when given."""
    parts = {"base": folder_digest(local_model_folder(base), file_digest)}
    if adapter is not None:
        parts["adapter"] = folder_digest(adapter, file_digest)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def generate_candidates_local(
    prompts: pd.DataFrame, model, tokenizer, settings: SamplingSettings, model_name: str
) -> pd.DataFrame:
    """The candidates table from a local model."""
    responses = generate_local(model, tokenizer, prompts["prompt"].tolist(), settings)
    return _candidate_rows(prompts, responses, model_name)


def generate_candidates_remote(
    prompts: pd.DataFrame, complete: Completer, settings: SamplingSettings, model_name: str
) -> pd.DataFrame:
    """The candidates table from a completion callable; a failed call is kept with its error."""
    responses: list[list[str]] = []
    errors: list[str | None] = []
    for prompt in prompts["prompt"]:
        answers = []
        for _ in range(settings.n_candidates):
            try:
                answers.append(complete(prompt))
                errors.append(None)
            except (OSError, RuntimeError, ValueError) as error:
                answers.append("")
                errors.append(f"{type(error).__name__}: {error}")
        responses.append(answers)
    table = _candidate_rows(prompts, responses, model_name)
    table["error"] = errors
    return table


def openai_completer(
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    settings: SamplingSettings | None = None,
    timeout_s: float = 120.0,
) -> Completer:
    """A :data:`Completer` backed by an OpenAI-compatible chat-completions endpoint."""
    from openai import OpenAI, OpenAIError

    settings = settings or SamplingSettings()
    client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s)

    def complete(prompt: str) -> str:
        try:
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
            )
        except OpenAIError as error:
            raise RuntimeError(f"{model} at {base_url}: {error}") from error
        return (reply.choices[0].message.content or "").strip()

    return complete
