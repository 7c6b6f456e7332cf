"""DNALLMProcessor: text + DNA windows -> model inputs (one object, like transformers' LlavaProcessor).

A prompt holds one `<|dna_pad|>` per DNA window (reference first, then variant). The processor expands
each into `<|dna_start|>` + n x `<|dna_pad|>` + `<|dna_end|>`, where n is the number of projected
tokens that window yields, and tokenizes the windows for the encoder.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoTokenizer

from dnallm.data import check_bases
from dnallm.encoders.base import dna_positions

PROCESSOR_FILE = "processor_config.json"
ANSWER_PREFIX = "Answer:"


def format_answer(reasoning: str, label: str) -> str:
    """The assistant turn the model is trained to write: a think block, then one strict answer line."""
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{ANSWER_PREFIX} {label}"


MAX_QUESTION_CHARS = 10_000  # also the MCP tools' limit (dnallm.mcp_schemas)


class DNALLMProcessor:
    def __init__(self, tokenizer, dna_tokenizer, dna_stride: int = 1, dna_add_special_tokens: bool = False,
                 dna_start_token: str = "<|dna_start|>", dna_pad_token: str = "<|dna_pad|>",
                 dna_end_token: str = "<|dna_end|>"):
        self.tokenizer = tokenizer
        self.dna_tokenizer = dna_tokenizer
        self.dna_stride = dna_stride
        self.dna_add_special_tokens = dna_add_special_tokens
        self.dna_start_token, self.dna_pad_token, self.dna_end_token = dna_start_token, dna_pad_token, dna_end_token
        vocab = tokenizer.get_vocab()
        missing = [t for t in (dna_start_token, dna_pad_token, dna_end_token) if t not in vocab]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        # Ids this processor added to the tokenizer: their embedding rows hold nothing trained yet.
        self.added_token_ids = tokenizer.convert_tokens_to_ids(missing)
        self.dna_pad_id = tokenizer.convert_tokens_to_ids(dna_pad_token)
        self.dna_marker_ids = tokenizer.convert_tokens_to_ids([dna_start_token, dna_end_token])
        # Every token that ends a Qwen3 answer: <|im_end|> (end of turn, the tokenizer's eos) and <|endoftext|>
        # (end of document, which Qwen3 also emits); generation stops at whichever comes first.
        self.end_token_ids = list(dict.fromkeys(
            [tokenizer.eos_token_id] + [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]))
        self.include_dna = True  # False only inside without_dna()
        self.encoder_cache = None  # an EmbeddingCache only inside cached_encoder_states()
        self._dna_token_counts: dict[tuple, int] = {}  # num_dna_tokens' memo
        self.window_size: int | None = None  # the model's window (set by the model); other sizes are refused

    @contextmanager
    def without_dna(self):
        """Prompts without the sequence lines and batches without DNA inputs (give each example no windows)."""
        self.include_dna = False
        try:
            yield self
        finally:
            self.include_dna = True

    @contextmanager
    def cached_encoder_states(self, cache):
        """Batches carry the frozen encoder's states for their windows (`dna_hidden_states` + `dna_positions_mask`,
        from `cache`, an `EmbeddingCache`) instead of DNA token ids: each distinct window is encoded once for the
        whole block (an evaluation feeds the same windows to generation, label scoring and the controls)."""
        self.encoder_cache = cache
        try:
            yield self
        finally:
            self.encoder_cache = None

    # ---- text ----
    def prompt(self, question: str, thinking: bool = True) -> str:
        """Chat-formatted prompt ending where the assistant starts writing; without_dna() leaves out the two
        sequence lines. thinking=False: Qwen3 non-thinking mode (an empty think block; the model answers directly).
        """
        # A question is plain text: a control token in it would rewrite the chat turns or the DNA placeholders.
        injected = sorted(t for t in self.tokenizer.get_added_vocab() if t in question)
        if injected:
            raise ValueError(f"the question contains the control token(s) {injected}; a question is plain text")
        if len(question) > MAX_QUESTION_CHARS:  # KEGG's longest is 2,824; a remote caller's would cost a long pass
            raise ValueError(f"the question has {len(question):,} characters; at most {MAX_QUESTION_CHARS:,}")
        pad = self.dna_pad_token
        content = f"Reference sequence: {pad}\nVariant sequence: {pad}\n\n{question}" if self.include_dna else question
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=thinking)

    def target(self, reasoning: str | None, label: str) -> str:
        """The trained answer: reasoning + answer line, or the answer line alone when reasoning is None."""
        body = format_answer(reasoning, label) if reasoning is not None else f"{ANSWER_PREFIX} {label}"
        return body + self.tokenizer.eos_token

    def length_order(self, questions: list[str]) -> list[int]:
        """Indices of `questions`, longest first (by the question's own tokens: every window adds the same DNA
        tokens): batches of similar length pad little, and an out-of-memory error, if any, comes first."""
        lengths = [len(ids) for ids in self.tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
        return sorted(range(len(questions)), key=lambda i: -lengths[i])

    # ---- DNA ----
    def tokenize_dna(self, windows: list[str]) -> dict[str, torch.Tensor]:
        enc = self.dna_tokenizer(list(windows), return_tensors="pt", padding=True,
                                 add_special_tokens=self.dna_add_special_tokens)
        return {"dna_input_ids": enc["input_ids"], "dna_attention_mask": enc["attention_mask"]}

    def num_dna_tokens(self, window: str, where: str = "") -> int:
        # Memoised per window: every window is expanded 3-4 times in SFT's set-up (10 s of the tiny default's).
        counts, key = self._dna_token_counts, (window, self.dna_stride, self.dna_add_special_tokens)
        if key not in counts:
            # Checked once per distinct window: the DNA tokenizers map any other character to <unk>, and a window of
            # another size would run without a word.
            check_bases(window, f"{where}DNA window")
            if self.window_size is not None and len(window) != self.window_size:
                raise ValueError(f"{where}DNA window of {len(window)} bp; the model reads {self.window_size} bp windows "
                                 "centred on the variant (dnallm.inference.prepare_windows cuts them)")
            if len(counts) >= 65536:  # bounded for long-running servers
                counts.clear()
            enc = self.dna_tokenizer(window, add_special_tokens=self.dna_add_special_tokens)
            positions = int(dna_positions(self.dna_tokenizer, enc["input_ids"], enc["attention_mask"]).sum())
            counts[key] = -(-positions // self.dna_stride)
        return counts[key]

    def expand_dna(self, text: str, windows: list[str], where: str = "") -> str:
        parts = text.split(self.dna_pad_token)
        if len(parts) - 1 != len(windows):
            raise ValueError(f"{where}prompt has {len(parts) - 1} DNA placeholders but {len(windows)} windows were given")
        out = parts[0]
        for window, rest in zip(windows, parts[1:]):
            out += self.dna_start_token + self.dna_pad_token * self.num_dna_tokens(window, where) + self.dna_end_token + rest
        return out

    # ---- batch ----
    def __call__(self, prompts: list[str], dna: list[list[str]], targets: list[str] | None = None,
                 padding_side: str = "right", dna_ids: bool = True,
                 pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenize a batch. With `targets`, labels cover only the target tokens (the answer), -100 elsewhere.

        pad_to_multiple_of rounds the padded width up (fewer distinct shapes for compiled decoding).
        """
        rows, label_rows = [], []
        for i, (prompt, windows) in enumerate(zip(prompts, dna)):
            prompt_ids = self.tokenizer(self.expand_dna(prompt, windows, f"example {i}: "),
                                        add_special_tokens=False)["input_ids"]
            target_ids = self.tokenizer(targets[i], add_special_tokens=False)["input_ids"] if targets else []
            rows.append(prompt_ids + target_ids)
            label_rows.append([-100] * len(prompt_ids) + target_ids)
        width = max(len(r) for r in rows)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, lab) in enumerate(zip(rows, label_rows)):
            span = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            input_ids[i, span], attention_mask[i, span], labels[i, span] = (torch.tensor(r), 1, torch.tensor(lab))
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if targets:
            batch["labels"] = labels
        if dna_ids and any(dna):
            flat = [w for windows in dna for w in windows]
            if self.encoder_cache is not None:
                batch["dna_hidden_states"], batch["dna_positions_mask"] = self.encoder_cache.lookup(flat)
            else:
                batch.update(self.tokenize_dna(flat))
        return batch

    # ---- persistence ----
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.dna_tokenizer.save_pretrained(path / "dna_tokenizer")
        cfg = {k: getattr(self, k) for k in ("dna_stride", "dna_add_special_tokens", "dna_start_token",
                                             "dna_pad_token", "dna_end_token")}
        (path / PROCESSOR_FILE).write_text(json.dumps(cfg, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DNALLMProcessor":
        path = Path(path)
        cfg = json.loads((path / PROCESSOR_FILE).read_text())
        return cls(AutoTokenizer.from_pretrained(path / "tokenizer"),
                   AutoTokenizer.from_pretrained(path / "dna_tokenizer"), **cfg)
