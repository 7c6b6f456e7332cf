"""Issue 7, fused/chunked loss: peak memory of the answer loss at Qwen3's vocabulary, full logits vs chunks.

    python benchmarks/loss_memory.py --tokens 4400 --hidden 2560 --vocab 151936

Each variant runs in its own process (fresh allocator) and reports the rise of the process's peak resident
memory over forward + backward of the loss on random hidden states (bf16 LM head, fp32 loss), and the time.
4,400 target tokens = a batch of 8 KEGG answers (~550 tokens each); 2560 = Qwen3-4B's hidden size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run(variant: str, tokens: int, hidden: int, vocab: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    from dnallm.losses import chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False).to(torch.bfloat16).requires_grad_(False)
    h = torch.randn(tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if variant == "full":
        loss = F.cross_entropy(head(h).float(), targets)
    else:
        loss = chunked_cross_entropy(h, head, targets, chunk)
    loss.backward()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "chunk": chunk if variant == "chunked" else None, "tokens": tokens, "vocab": vocab,
            "loss": round(loss.item(), 4), "peak_rise_gib": round((peak - base) / 2**20, 2), "seconds": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=4400)
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--variant", choices=["full", "chunked"])
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run(args.variant, args.tokens, args.hidden, args.vocab, args.chunk)))
        return
    for variant in ("full", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens),
                              "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--chunk", str(args.chunk)],
                             capture_output=True, text=True, check=True)
        print("RESULT " + out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
