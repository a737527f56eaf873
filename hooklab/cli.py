"""The ``hooklab`` command: one subcommand per job."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEMO_PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "The capital of Japan is",
    "The Colosseum is located in the city of",
    "Albert Einstein was born in",
]


def demo(args: argparse.Namespace) -> None:
    """Load the embedded default model and show what it knows about the Eiffel Tower."""
    import torch

    import hooklab

    start = time.perf_counter()
    model = hooklab.load("smollm2", device=args.device)
    print(f"Loaded {model!r} in {time.perf_counter() - start:.1f} s\n")

    print("Greedy completions")
    for prompt in DEMO_PROMPTS:
        print(f"  {prompt} →{model.generate(prompt, max_new_tokens=args.max_new_tokens)!r}")

    prompt = DEMO_PROMPTS[0]
    with torch.no_grad():
        probs = model(model.to_tokens(prompt))[0, -1].float().softmax(-1)
    top = probs.topk(5)
    print(f"\nTop-5 next tokens after {prompt!r}")
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {model.tokenizer.decode([i])!r:<12} {p:.3f}")

    lens = hooklab.logit_lens(model, prompt, target=args.target)
    print(f"\nLogit lens at the last token (target {lens.target!r})")
    print(lens.table())
    first = lens.first_top_layer()
    if first is None:
        print(f"{lens.target!r} never becomes the top token.")
    else:
        print(f"{lens.target!r} becomes the top token at layer {first} of {model.cfg.n_layers} (0-based).")
    out = Path(args.out).resolve()
    lens.plot(out)
    print(f"Saved the logit-lens plot to {out}")


def merge(args: argparse.Namespace) -> None:
    """Run a YAML merge recipe (mergekit's shape) and say where the result is."""
    import logging

    from hooklab.merge.config import load_config, run_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config(args.config)
    result = run_config(config, device=args.device, overwrite=args.overwrite)
    if result.weights is not None:
        for entry, weight in zip(config.models, result.weights):
            print(f"  {weight:.4f}  {entry.model}")
    print(f"Merged {result.nbytes / 1e9:.2f} GB with {result.method} into {result.path} in {result.seconds:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hooklab", description=__doc__)
    jobs = parser.add_subparsers(dest="job", required=True)

    p = jobs.add_parser("demo", help="load the embedded default model; completions, top-5, logit lens")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: GPU 0 if any, else CPU)")
    p.add_argument("--target", default=" Paris", help="token the logit lens follows")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--out", default="hooklab-demo-logit-lens.png", help="where to save the plot")
    p.set_defaults(run=demo)

    p = jobs.add_parser("merge", help="merge models as a YAML recipe says (linear, task_arithmetic, ties, slerp)")
    p.add_argument("config", help="YAML recipe: models, method, base_model, parameters, dtype, out")
    p.add_argument("--device", default=None, help="where tensors are merged (default: GPU 0 if any, else CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace out once the new merge is complete")
    p.set_defaults(run=merge)

    args = parser.parse_args(argv)
    from hooklab.errors import HooklabError

    try:
        args.run(args)
    except HooklabError as e:
        print(f"hooklab {args.job}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
