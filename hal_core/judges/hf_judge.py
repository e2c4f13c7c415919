"""A local transformers causal LM as judge: one prompt per (dialogue, trait), and the model's
next-token probabilities of the scale's digits give the rating (argmax) and its expected value.

Prompts are batched with left padding and explicit position ids, so a rating does not depend
on which other prompts share its batch. A dialogue's trait prompts share everything up to the
trait's statement: that prefix is encoded once and its key/value cache serves every trait
(``share_prefix``), so a 32-trait questionnaire costs one long pass and 32 short ones. A
dialogue too long for the model is shortened (its end is cut) to fit ``max_length``. Results
are reported per group of dialogues as they finish.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Sequence
from pathlib import Path

from hal_core.dialogue import SpeakerTags
from hal_core.judges.config import HFJudgeConfig
from hal_core.judges.prompting import (
    PROMPT_VERSION,
    EmptyDialogueError,
    canonical_json,
    prompt_text,
    render_dialogue,
    statement_messages,
    trait_messages,
)
from hal_core.judges.replies import ReplyError, parse_statements_reply
from hal_core.judging import (
    Game,
    JudgeConfigurationError,
    RateByStreaming,
    RatingResult,
    ResultCallback,
    StatementProposal,
    item_ids_or_positions,
)
from hal_core.questionnaire import Questionnaire

_FULL_HASH_LIMIT = 1 << 30
_ANSWER_CUE = "\nRating:"


def directory_digest(path: str | Path) -> str:
    """Content hash of a model folder (files up to 1 GiB in full, larger ones by size+ends)."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue
        size = file.stat().st_size
        digest.update(f"{relative}\0{size}\0".encode())
        with open(file, "rb") as handle:
            if size <= _FULL_HASH_LIMIT:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(size - (1 << 20))
                digest.update(handle.read())
    return digest.hexdigest()


class HFJudge(RateByStreaming):
    """Implements Judge, StreamingJudge and StatementProposer with a local causal LM."""

    def __init__(self, model, tokenizer, config: HFJudgeConfig, model_digest: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self._model_digest = model_digest
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        if config.use_chat_template is None:
            self._chat = getattr(tokenizer, "chat_template", None) is not None
        else:
            self._chat = config.use_chat_template
        limit = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_length = min(config.max_length or limit, limit)
        self._digit_ids: dict[tuple[int, int], list[int]] = {}
        forward = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in forward  # skip the LM head on all but the last
        # transformers 5.x renamed the key/value cache argument and output past_key_values -> cache
        self._cache_name = "cache" if "cache" in forward else "past_key_values"

    @classmethod
    def from_config(cls, config: HFJudgeConfig) -> HFJudge:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(config.model_path)
        if not path.is_dir():
            raise JudgeConfigurationError(
                f"hf judge: {path} is not a local model folder (no downloads at run time)"
            )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=getattr(torch, config.dtype)
        )
        model.to(config.device).eval()
        return cls(model, tokenizer, config, directory_digest(path))

    def fingerprint(self) -> str:
        payload = {
            "backend": "hf",
            "model": self._model_digest,
            "prompt": PROMPT_VERSION,
            "max_length": self.max_length,
            "chat": self._chat,
            "dtype": self.config.dtype,
            "include_other_speakers": self.config.include_other_speakers,
        }
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]

    # -- prompts -----------------------------------------------------------------------------

    def _text(self, messages: list[dict[str, str]], cue: str = _ANSWER_CUE) -> str:
        if self._chat:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return prompt_text(messages) + cue

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self._chat)["input_ids"]

    def _fitted_prompt(
        self, rendered: str, trait, questionnaire: Questionnaire, tags: SpeakerTags
    ) -> list[int]:
        """Token ids of the prompt, the dialogue shortened until it fits ``max_length``."""
        body = rendered
        for _ in range(8):
            ids = self._encode(self._text(trait_messages(body, trait, questionnaire, tags)))
            if len(ids) <= self.max_length:
                return ids
            keep = int(len(body) * self.max_length / len(ids) * 0.9)
            if keep < 1:
                break
            body = body[:keep]
        raise ValueError(
            f"prompt for {trait.id} does not fit in {self.max_length} tokens even without "
            "the dialogue"
        )

    def _digits(self, sample: list[int], questionnaire: Questionnaire) -> list[int]:
        """Token id of each scale value as the next token after a prompt."""
        scale = (questionnaire.scale.min, questionnaire.scale.max)
        if scale in self._digit_ids:
            return self._digit_ids[scale]
        tail = self.tokenizer.decode(sample[-24:], skip_special_tokens=False)
        base = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        found = []
        for value in range(scale[0], scale[1] + 1):
            full = self.tokenizer(tail + str(value), add_special_tokens=False)["input_ids"]
            if len(full) == len(base) + 1 and full[: len(base)] == base:
                found.append(full[-1])
                continue
            alone = self.tokenizer(str(value), add_special_tokens=False)["input_ids"]
            if len(alone) != 1:
                raise JudgeConfigurationError(
                    f"hf judge: the tokenizer has no single token for rating {value}"
                )
            found.append(alone[0])
        if len(set(found)) != len(found):
            raise JudgeConfigurationError("hf judge: rating digits share a token")
        self._digit_ids[scale] = found
        return found

    # -- rating ------------------------------------------------------------------------------

    def _forward_last(self, batch: list[list[int]], prefix=None, prefix_length: int = 0):
        """Next-token logits after each prompt of ``batch`` (left-padded); with ``prefix`` (a
        key/value cache of ``prefix_length`` tokens, batch 1), each prompt continues it."""
        import copy

        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        positions = prefix_length + (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._keeps_logits else {}
        if prefix is None:
            extra["use_cache"] = False
        else:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(batch))
            mask = torch.cat([torch.ones((len(batch), prefix_length), dtype=torch.long), mask], 1)
            extra.update({self._cache_name: cache, "use_cache": True})
        device = self.config.device
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                **extra,
            )
        return out.logits[:, -1, :].float().cpu()

    def _encode_prefix(self, ids: list[int]):
        """The key/value cache of a shared prompt prefix (batch 1)."""
        import torch

        device = self.config.device
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
                use_cache=True,
                **({"logits_to_keep": 1} if self._keeps_logits else {}),
            )
        return getattr(out, self._cache_name)

    def _dialogue_logits(self, prompts: list[list[int]]):
        """Next-token logits after every trait prompt of one dialogue, in order."""
        import torch

        shared = 0
        if self.config.share_prefix and len(prompts) > 1:
            limit = min(len(ids) for ids in prompts) - 1  # every prompt keeps a token of its own
            first = prompts[0]
            while shared < limit and all(ids[shared] == first[shared] for ids in prompts):
                shared += 1
        prefix = self._encode_prefix(prompts[0][:shared]) if shared >= 16 else None
        start = shared if prefix is not None else 0
        size = self.config.batch_size
        rows = []
        for begin in range(0, len(prompts), size):
            batch = [ids[start:] for ids in prompts[begin : begin + size]]
            rows.append(self._forward_last(batch, prefix, start))
        return torch.cat(rows)

    def _rate_group(
        self,
        items: list[tuple[int, str, str]],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
    ) -> dict[int, RatingResult]:
        import torch

        results: dict[int, RatingResult] = {}
        prompts: list[tuple[int, str, list[int]]] = []
        for position, item_id, text in items:
            try:
                rendered = render_dialogue(text, tags, self.config.include_other_speakers)
                for trait in questionnaire.traits:
                    prompts.append(
                        (
                            position,
                            trait.id,
                            self._fitted_prompt(rendered, trait, questionnaire, tags),
                        )
                    )
            except (EmptyDialogueError, ValueError) as error:
                results[position] = RatingResult(
                    item_id=item_id, error=str(error), error_kind="input"
                )
        prompts = [p for p in prompts if p[0] not in results]
        if not prompts:
            return results
        digits = self._digits(prompts[0][2], questionnaire)
        values = torch.arange(questionnaire.scale.min, questionnaire.scale.max + 1).float()
        probabilities: dict[tuple[int, str], torch.Tensor] = {}
        if self.config.share_prefix:  # per dialogue: its prefix once, then its traits
            groups = [[p for p in prompts if p[0] == position] for position, _, _ in items]
            groups = [group for group in groups if group]
            logits_of = self._dialogue_logits
        else:  # across dialogues, by length: little padding per batch
            ordered = sorted(prompts, key=lambda prompt: len(prompt[2]))
            size = self.config.batch_size
            groups = [ordered[start : start + size] for start in range(0, len(ordered), size)]
            logits_of = self._forward_last
        for group in groups:
            logits = logits_of([ids for _, _, ids in group])
            probs = torch.softmax(logits, dim=-1)[:, digits]
            probs = probs / probs.sum(dim=-1, keepdim=True)
            for (position, trait_id, _), row in zip(group, probs, strict=True):
                probabilities[(position, trait_id)] = row
        for position, item_id, _ in items:
            if position in results:
                continue
            ratings, expected = {}, {}
            for trait_id in questionnaire.trait_ids:
                row = probabilities[(position, trait_id)]
                ratings[trait_id] = float(values[int(torch.argmax(row))])
                expected[trait_id] = float((row * values).sum())
            results[position] = RatingResult(
                item_id=item_id, ratings=ratings, expected=expected, requests=0
            )
        return results

    def rate_streaming(
        self,
        dialogues: Sequence[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        item_ids: Sequence[str] | None,
        on_result: ResultCallback,
    ) -> None:
        import time

        import torch

        ids = item_ids_or_positions(dialogues, item_ids)
        torch.manual_seed(self.config.seed)
        per_group = max(1, (self.config.batch_size * 4) // max(1, len(questionnaire.traits)))
        for start in range(0, len(dialogues), per_group):
            items = [
                (position, ids[position], dialogues[position])
                for position in range(start, min(start + per_group, len(dialogues)))
            ]
            began = time.perf_counter()
            group = self._rate_group(items, questionnaire, tags)
            latency = (time.perf_counter() - began) / len(items)
            for position, _, _ in items:
                result = group[position]
                on_result(position, result.model_copy(update={"latency_s": latency}))

    # -- statements --------------------------------------------------------------------------

    def propose_statements(
        self, games: Sequence[Game], tags: SpeakerTags
    ) -> list[StatementProposal]:
        """Greedy generation of the JSON reply; an unusable reply is a recorded error."""
        import time

        import torch

        torch.manual_seed(self.config.seed)
        proposals = []
        for game in games:
            started = time.perf_counter()
            messages = statement_messages(game.transcript_a, game.transcript_b, tags)
            ids = self._encode(self._text(messages, cue="\nAnswer (JSON):"))
            budget = self.max_length - self.config.max_new_tokens
            if len(ids) > budget:  # cutting would drop the instructions or half a conversation
                proposals.append(
                    StatementProposal(
                        game_id=game.game_id,
                        error=f"the game's prompt has {len(ids)} tokens; the model takes "
                        f"{budget} beside {self.config.max_new_tokens} new tokens (max_length "
                        f"{self.max_length})",
                        error_kind="input",
                    )
                )
                continue
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=torch.tensor([ids], device=self.config.device),
                    attention_mask=torch.ones(
                        (1, len(ids)), dtype=torch.long, device=self.config.device
                    ),
                    max_new_tokens=self.config.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            reply = self.tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)
            common = {
                "game_id": game.game_id,
                "latency_s": time.perf_counter() - started,
                "prompt_tokens": len(ids),
                "completion_tokens": int(output.shape[1] - len(ids)),
            }
            try:
                verdict, statements = parse_statements_reply(reply)
            except ReplyError as error:
                proposals.append(
                    StatementProposal(
                        error=f"invalid reply: {error}", error_kind="invalid", **common
                    )
                )
                continue
            proposals.append(StatementProposal(verdict=verdict, statements=statements, **common))
        return proposals
