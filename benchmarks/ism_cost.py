"""Cost per variant of the ISM map (issue 17, part 2) and of the encoder's zero-shot score (part 3).

CPU, a trained checkpoint (the tiny default):

    python benchmarks/ism_cost.py --model runs/quickstart/model --variants 5

GPU, the seed sizes with random init (no weights are reachable offline): Genos-1.2B layout with its LM head,
Qwen3-4B layout, MLP projector, stride 16 as the seed presets, bf16:

    python benchmarks/ism_cost.py --random-init --device cuda --encoder genos-1.2b --text qwen3-4b --stride 16 \\
        --batch-size 64 --variants 5

Hard-test rows (kegg_hard: the short question), ±`--flank` bp (default 32: 65 positions x 3 bases = 195 mutated
windows). The first variant is a warm-up and not counted. Per variant: the ISM map (`dnallm.ism.ism_map`), its
encoder share (the 195 mutated windows through the frozen encoder alone), the same 195 windows scored by plain
`label_logprobs` (no shared prompt prefix, the encoder run on both windows of each pair: what the shared prefix
saves), one ordinary scoring and the encoder's zero-shot score. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dnallm.data import load_kegg
from dnallm.encoders.cache import EmbeddingCache
from dnallm.evidence import encoder_dll
from dnallm.ism import ism_map, mutations
from dnallm.scoring import label_logprobs


def random_init_model(args, device, dtype):
    """Random-init seed layouts wired as a checkpoint would be: Genos layout as the full causal LM (its LM head
    kept for encoder_dll), Qwen3 layout, fresh projector, no LoRA (merged LoRA costs nothing at inference)."""
    from transformers import MixtralForCausalLM, Qwen3ForCausalLM

    from dnallm.configuration import DNALLMConfig
    from dnallm.encoders.genos import GenosEncoder, build_base_tokenizer, genos_config
    from dnallm.modeling import DNALLMForConditionalGeneration
    from qwen3_layouts import qwen3_config  # benchmarks/ is on sys.path when a script here runs
    from dnallm.tokenization import BUNDLED_QWEN3_TOKENIZER, load_text_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        encoder_lm = MixtralForCausalLM(genos_config(args.encoder.removeprefix("genos-"))).to(dtype)
        text_model = Qwen3ForCausalLM(qwen3_config(args.text.removeprefix("qwen3-"))).to(dtype)
    encoder = GenosEncoder(encoder_lm.model, build_base_tokenizer(), -1, f"random-init {args.encoder}",
                           lm_head=encoder_lm.lm_head)
    config = DNALLMConfig(projector_type="mlp", projector_stride=args.stride)
    model = DNALLMForConditionalGeneration.from_parts(config, encoder, text_model,
                                                      load_text_tokenizer(str(BUNDLED_QWEN3_TOKENIZER)), dtype=dtype)
    return model.to(device).eval()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="a checkpoint folder (else --random-init)")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--encoder", default="genos-1.2b")
    p.add_argument("--text", default="qwen3-4b")
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", type=int, default=5, help="timed variants (after one warm-up)")
    p.add_argument("--flank", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32, help="mutated windows per scoring batch")
    p.add_argument("--no-plain", action="store_true", help="skip the plain label_logprobs comparison")
    args = p.parse_args()
    if (args.model is None) == (not args.random_init):
        p.error("give --model or --random-init")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.model:
        from dnallm.inference import load_model

        model = load_model(args.model, device=args.device)
    else:
        model = random_init_model(args, device, dtype)
    rows = load_kegg("test", view="kegg_hard", window=model.config.dna_config.window_size)
    rows = rows.select(range(args.variants + 1))
    runs = {key: [] for key in ("ism", "ism_encoder_share", "plain_scoring_of_the_mutated_windows", "one_scoring",
                                "encoder_dll")}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for n, row in enumerate(rows):
        q, windows = row["question"], (row["ref_window"], row["variant_window"])
        m, t_ism = timed(lambda: ism_map(model, q, windows, flank=args.flank, batch_size=args.batch_size), device)
        mutated = [w for _, _, w in mutations(windows[1], args.flank)]
        encoder_dtype = next(model.dna_encoder.parameters()).dtype
        _, t_enc = timed(lambda: EmbeddingCache(model.dna_encoder, encoder_dtype, device).add(
            mutated, batch_size=args.batch_size), device)
        _, t_one = timed(lambda: label_logprobs(model, [q], [windows]), device)
        _, t_dll = timed(lambda: encoder_dll(model.dna_encoder, [windows]), device)
        t_plain = None
        if not args.no_plain:
            _, t_plain = timed(lambda: label_logprobs(model, [q] * len(mutated), [(windows[0], w) for w in mutated],
                                                      batch_size=args.batch_size), device)
        if n == 0:
            continue  # warm-up
        for key, value in (("ism", t_ism), ("ism_encoder_share", t_enc),
                           ("plain_scoring_of_the_mutated_windows", t_plain), ("one_scoring", t_one),
                           ("encoder_dll", t_dll)):
            if value is not None:
                runs[key].append(value)
    summary = {
        "model": args.model or f"random-init {args.encoder} + {args.text}, stride {args.stride}",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(dtype).removeprefix("torch."), "view": "kegg_hard", "flank": args.flank,
        "mutated_windows_per_variant": m["n_windows"], "batch_size": args.batch_size, "variants_timed": args.variants,
        **{f"{key}_s_per_variant": round(statistics.median(v), 3) for key, v in runs.items() if v},
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
