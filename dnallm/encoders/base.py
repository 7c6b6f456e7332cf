"""The one interface every DNA encoder implements: tokenize windows, return frozen per-position states."""

from __future__ import annotations

import torch
from torch import nn


class LoadingError(RuntimeError):
    """A checkpoint with missing, unexpected or mis-shaped weights: never silently random-initialised."""


class NoLMHeadError(ValueError):
    """The zero-shot score (`encoder_dll`) asked of an encoder loaded without its LM head, or of one whose
    scoring rule is not known (the generic `hf` encoder)."""


def check_loading_info(info: dict, source: str, ignore_unexpected: tuple[str, ...] = ()) -> None:
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(ignore_unexpected)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise LoadingError(f"loading {source}: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}, "
                           f"mis-shaped weights {mismatched[:5]} (counts {len(missing)}/{len(unexpected)}/"
                           f"{len(mismatched)}); refusing to run with random-initialised weights")


def checked_lm_head(model: nn.Module, info: dict, source: str, ignore_unexpected: tuple[str, ...] = ()):
    """`check_loading_info` for a whole LM; its LM head, or None when the checkpoint has none (it still loads for
    embeddings; the random head is dropped and the zero-shot score raises NoLMHeadError)."""
    missing = list(info.get("missing_keys", []))
    check_loading_info({**info, "missing_keys": [k for k in missing if not k.startswith("lm_head.")]}, source,
                       ignore_unexpected)
    return None if any(k.startswith("lm_head.") for k in missing) else model.lm_head


def char_tokenizer(vocab: dict[str, int], **kwargs):
    """A fast tokenizer with one id per character (WordLevel over single characters), right padding; `kwargs`
    name its special tokens (and unk_token, when the vocabulary has one) and model_max_length."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab, **{k: v for k, v in kwargs.items() if k == "unk_token"}))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, padding_side="right", **kwargs)


def dna_positions(tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Which tokens are DNA positions: attended and not a special token (CLS, EOS, padding, ...); `<unk>` counts.

    The one rule shared by the encoders (which states to keep) and DNALLMProcessor (how many placeholders a window
    needs). It reads token ids, not the special-tokens mask, which NT's EsmTokenizer (no EOS) gets wrong by one.
    """
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    ids = torch.as_tensor(input_ids)
    is_special = torch.isin(ids, torch.tensor(sorted(special), dtype=ids.dtype, device=ids.device))
    return torch.as_tensor(attention_mask, device=ids.device).bool() & ~is_special


def pack_positions(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's DNA positions to the front, in order, zero the rest, and trim to the longest row: `mask`
    becomes a prefix mask, which the projectors' pooling relies on (n positions pool to ceil(n / stride) tokens)."""
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    width = int(mask.sum(1).max()) if mask.numel() else 0
    order = order[:, :width]
    mask = mask.gather(1, order)
    hidden = hidden.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return torch.where(mask.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)), mask


def mean_pool(hidden: torch.Tensor, positions_mask: torch.Tensor) -> torch.Tensor:
    """[n, positions, d] -> [n, d] float32: the mean over each row's real DNA positions."""
    weights = positions_mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)


class _ReachedLayer(Exception):
    """Raised by a forward pre-hook with the chosen layer's states (args[0]), to leave the encoder early."""


class DNAEncoder(nn.Module):
    """A frozen DNA language model. `forward(input_ids, attention_mask)` returns (hidden [batch, positions,
    hidden_size], positions_mask): the real DNA positions (`dna_positions`), packed to the front (`pack_positions`).
    """

    name: str = "base"
    add_special_tokens: bool = False  # whether the model expects its tokenizer's special tokens (CLS, ...)
    # How the zero-shot score reads the LM head: "causal" (sum of next-base log-probs over the window) or "masked"
    # (masked-slot log-odds at the changed tokens); None: not known for this encoder type.
    zero_shot: str | None = None

    def __init__(self, model: nn.Module, tokenizer, layer: int, name_or_path: str, lm_head: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.name_or_path = name_or_path
        # The pretrained LM head, kept where the checkpoint has one (a few MB): only the zero-shot score reads it.
        self.lm_head = lm_head
        self.model.requires_grad_(False).eval()
        if lm_head is not None:
            lm_head.requires_grad_(False).eval()
        self.check_layer()

    def train(self, mode: bool = True):  # always frozen: dropout off even inside a training model
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_hidden_states(self) -> int:
        """How many states a layer index picks from: the embeddings and each block's output."""
        blocks = self._blocks()
        return (len(blocks) if blocks is not None else self.model.config.num_hidden_layers) + 1

    def check_layer(self) -> None:
        """An integer layer must index the hidden states (modulo their count, layer 13 of 12-block Genos read the
        token embeddings). A module name (Evo2's `blocks.20.mlp.l3`) is checked by its encoder: StripedHyena has
        no `layers` stack and its config no `num_hidden_layers`, so counting states there would fail."""
        if not isinstance(self.layer, int):
            return
        n = self.num_hidden_states
        if not -n <= self.layer < n:
            raise ValueError(f"{self.name_or_path}: layer {self.layer} is out of range: the encoder has {n} hidden "
                             f"states, so layers {-n}..{n - 1} (0 = the token embeddings, {n - 1} = the last)")

    @property
    def fingerprint(self) -> dict:
        """What a checkpoint records to refuse being loaded onto another encoder."""
        cfg = self.model.config
        return {"type": self.name, "model_type": cfg.model_type, "hidden_size": cfg.hidden_size,
                "num_hidden_layers": cfg.num_hidden_layers, "vocab_size": getattr(cfg, "vocab_size", None),
                "layer": self.layer}

    def weight_sample(self) -> list[float]:
        """16 evenly spaced values of the model's first weight tensor (the token embeddings), to 4 significant digits:
        what a checkpoint records of the encoder's weights, compared with a tolerance any load dtype meets."""
        first = next(self.model.parameters()).detach().flatten()
        picks = torch.linspace(0, first.numel() - 1, 16).round().long().to(first.device)
        return [float(f"{v:.4g}") for v in first[picks].float().cpu().tolist()]

    @staticmethod
    def same_weights(recorded: list[float], sample: list[float]) -> bool:
        """bfloat16 keeps ~3 significant digits; other weights (another seed, another training run) differ by the
        values' own size."""
        return len(recorded) == len(sample) and torch.allclose(torch.tensor(sample), torch.tensor(recorded),
                                                               rtol=2e-2, atol=1e-4)

    def tokenize(self, windows: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(windows), return_tensors="pt", padding=True,
                             add_special_tokens=self.add_special_tokens)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _blocks(self) -> nn.ModuleList | None:
        """The model's stack of transformer blocks (Llama/Mixtral `layers`, Esm `encoder.layer`), if it has one."""
        for path in ("layers", "encoder.layer"):
            try:
                blocks = self.model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(blocks, nn.ModuleList):
                return blocks
        return None

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = dna_positions(self.tokenizer, input_ids, attention_mask)
        blocks = self._blocks()
        layer = self.layer % (len(blocks) + 1) if blocks is not None else None  # in range: check_layer
        if layer is not None and layer < len(blocks):
            # hidden_states[L] is the input of block L: stop the stack there (the blocks above compute nothing used).
            def stop(module, args, kwargs):
                raise _ReachedLayer(args[0] if args else kwargs["hidden_states"])

            handle = blocks[layer].register_forward_pre_hook(stop, with_kwargs=True)
            try:
                self.model(input_ids=input_ids, attention_mask=attention_mask)
            except _ReachedLayer as reached:
                return pack_positions(reached.args[0], positions)
            finally:
                handle.remove()
            raise RuntimeError(f"{self.name_or_path}: block {layer} never ran")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return pack_positions(out.hidden_states[self.layer], positions)

    def _batch(self, windows: list[str]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in self.tokenize(windows).items()}

    @torch.no_grad()
    def encode(self, windows: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self(**self._batch(windows))

    # ---- the zero-shot score: the encoder's own likelihood of the windows ----
    def require_lm_head(self) -> nn.Module:
        """The LM head, or NoLMHeadError naming the checkpoint."""
        if self.zero_shot is None:
            raise NoLMHeadError(f"encoder {self.name_or_path!r} (type {self.name!r}): no zero-shot score for this "
                                "encoder type (it is not known to be causal or masked); encoder_dll supports genos, "
                                "hyenadna, evo2 (causal) and nt (masked) encoders")
        if self.lm_head is None:
            raise NoLMHeadError(f"encoder {self.name_or_path!r} (type {self.name!r}) was loaded without an LM head "
                                "(its checkpoint has no lm_head weights): encoder_dll needs the head that predicts "
                                "bases; use a checkpoint saved with it (e.g. the full *ForCausalLM / *ForMaskedLM)")
        return self.lm_head

    def final_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The states the LM head reads (the model's last layer, after its final norm): [n, tokens, hidden]."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def log_likelihoods(self, windows: list[str]) -> torch.Tensor:
        """A causal encoder's log-likelihood of each window, float64 [n]: the sum over its bases of
        log p(base | the bases before it), each base after the first (no base precedes the first unless the
        tokenizer adds a BOS)."""
        head = self.require_lm_head()
        if self.zero_shot != "causal":
            raise NoLMHeadError(f"encoder {self.name_or_path!r} is a {self.zero_shot} LM: no window log-likelihood")
        batch = self._batch(windows)
        ids, attention = batch["input_ids"], batch["attention_mask"]
        return self.causal_sum(head(self.final_states(ids, attention)), ids, attention)

    def causal_sum(self, logits: torch.Tensor, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Sum of log p(token t | tokens < t) over each row's DNA positions, float64 [n] (a difference of two ~1e3
        sums is taken later). Scored: a DNA position with an attended token before it (right padding and special
        tokens contribute nothing)."""
        token_logp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        scored = dna_positions(self.tokenizer, ids, attention)[:, 1:] & attention[:, :-1].bool()
        return (token_logp.double() * scored).sum(1).cpu()
