"""Evaluation entry point: `python eval/evaluate.py --model CKPT --split test` (same as `dnallm eval`)."""

from dnallm.cli import app

if __name__ == "__main__":
    app(["eval", *__import__("sys").argv[1:]])
