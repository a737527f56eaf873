"""Causal tracing: hooklab's batched tracer against the per-(token, layer) loop, same numbers.

The loop is ROME's algorithm with hooklab's hooks: for every (token, layer) one forward of the
corrupted samples, noise on the subject's embeddings and the clean state(s) restored, logits
at the last position only. The batched tracer computes the same scores (asserted equal) for a
10-token prompt, 10 samples, window 10, all three kinds. Both share one clean/corrupted setup
per model, timed apart. Prints a table and writes ``benchmarks/results/trace-<model>-<machine>.md``.

    python benchmarks/trace.py                                   # SmolLM2 on this CPU
    python benchmarks/trace.py --shape smollm2-135m --gpus 1 2   # synthetic SmolLM2-sized, 1 and 2 GPUs
    python benchmarks/trace.py --shape llama3-8b --gpus 1 2      # synthetic Llama-3-8B-shaped
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import _report

HERE = Path(__file__).resolve().parent
SUBJECT = "Eiffel Tower"
# Ten tokens each: the default model's tokenizer, and the small one of synthetic checkpoints.
PROMPTS = {
    "smollm2": "The Eiffel Tower is located in the city of",
    "synthetic": "The Eiffel Tower is located in the city of Paris",
}
KINDS = ("hidden", "mlp", "attn")


@torch.no_grad()
def loop_trace(model, tracer, kind: str, window: int) -> torch.Tensor:
    """One forward per (token, layer): the samples as the batch, hooks restore the clean states."""
    from hooklab import sites
    from hooklab.locate.tracer import SITES, window_layers

    tokens = tracer.prompt.tokens.expand(tracer.samples, -1).to(model.cfg.device)
    b, e = tracer.prompt.subject
    noise = tracer.corruption()
    n_tokens, n_layers = tokens.shape[1], model.cfg.n_layers

    def add_noise(x, hook):
        x = x.clone()
        x[:, b:e] += noise.to(x.device, x.dtype)
        return x

    def restorer(clean: torch.Tensor, t: int):
        def restore(x, hook):
            x[:, t] = clean[t]
            return x

        return restore

    scores = torch.empty(n_tokens, n_layers)
    for t in range(n_tokens):
        for layer in range(n_layers):
            restored = (layer,) if kind == "hidden" else window_layers(layer, window, n_layers)
            hooks = [(sites.token_embedding(), add_noise)]
            hooks += [(SITES[kind](lay), restorer(tracer.clean[kind][lay], t)) for lay in restored]
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks, logits_to_keep=1)
            scores[t, layer] = logits[:, -1].float().softmax(-1)[:, tracer.target_id].mean().cpu()
    return scores


def sync() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def timed(fn):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def bench(model, label: str, prompt: str, args) -> list[dict]:
    from hooklab.locate import CausalTracer

    make = lambda: CausalTracer(model, prompt, SUBJECT, samples=args.samples)  # noqa: E731
    make()  # warm-up; also caches the noise scale
    tracer, setup = timed(make)
    tol = (1e-3, 1e-4) if model.cfg.dtype == torch.float32 else (5e-2, 5e-2)
    rows = []
    for kind in args.kinds:
        result, batched = timed(lambda: tracer.trace(kind, args.window))
        loop, looped = timed(lambda: loop_trace(model, tracer, kind, args.window))
        diff = float((result.scores - loop).abs().max())
        scale = float(loop.abs().max())
        same = torch.allclose(result.scores, loop, rtol=tol[0], atol=tol[1] * scale)
        row = dict(label=label, kind=kind, tokens=len(tracer.prompt.ids), layers=model.cfg.n_layers, setup=setup,
                   batched=batched, loop=looped, diff=diff, scale=scale, same=same, peak=result.peak())  # fmt: skip
        print(row, flush=True)
        rows.append(row)
        if not same:
            raise AssertionError(f"{label} {kind}: batched and loop differ by {diff} (scores up to {scale})")
    return rows


def table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        t, layer, p = r["peak"]
        cells.append([r["label"], r["kind"], f"{r['tokens']} × {r['layers']}", f"{r['loop']:.2f}",
                      f"{r['batched']:.2f}", f"{r['loop'] / r['batched']:.1f}x", f"{r['diff']:.1e}",
                      f"({t}, {layer}, {p:.3g})"])  # fmt: skip
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        loop = sum(r["loop"] for r in mine)
        batched = sum(r["batched"] for r in mine) + mine[0]["setup"]
        cells.append([label, f"**all {len(mine)} kinds** (batched incl. {mine[0]['setup']:.2f} s setup)", "",
                      f"{loop:.1f}", f"{batched:.1f}", f"**{loop / batched:.1f}x**"])  # fmt: skip
    headers = ["model / placement", "kind", "tokens × layers", "loop (s)", "batched (s)", "speed-up", "max abs diff",
               "peak (token, layer, p)"]  # fmt: skip
    return _report.markdown_table(headers, cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default=None, help="synthetic checkpoint shape (default: the real SmolLM2)")
    parser.add_argument("--ckpt", type=Path, default=None, help="where to build the synthetic checkpoint")
    parser.add_argument("--gpus", type=int, nargs="+", default=None, help="GPU counts to run on (default: CPU)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import hooklab

    if args.shape:
        sys.path.insert(0, str(HERE))
        import synthetic

        source = synthetic.build(args.ckpt or Path(f"/tmp/hooklab-bench/{args.shape}"), args.shape)
        prompt, name = PROMPTS["synthetic"], args.shape
    else:
        source, prompt, name = "smollm2", PROMPTS["smollm2"], "smollm2"
    rows = []
    for n in args.gpus or [0]:
        where = {"device": "cpu"} if n == 0 else {"device": "cuda:0"} if n == 1 else {"n_devices": n}
        model = hooklab.load(source, dtype=args.dtype, **where)
        label = f"{name} {args.dtype}, " + ("CPU" if n == 0 else f"{n} GPU" + "s" * (n > 1))
        rows += bench(model, label, prompt, args)
        del model
        torch.cuda.empty_cache()
    kind = "cpu" if not args.gpus else f"{max(args.gpus)}gpu"
    # the load average: other work on a shared machine slows the many small ops of the loop most
    where = _report.machine("cuda" if args.gpus else "cpu", gpus=max(args.gpus) if args.gpus else None, load=True)
    report = [
        f"# Causal tracing: batched against the per-(token, layer) loop ({name})",
        "",
        f"Machine: {where}. {args.samples} samples, window {args.window}, prompt {prompt!r}, subject "
        f"{SUBJECT!r}; scores asserted equal (max abs diff shown). "
        f"`{_report.command()}`",
        "",
        table(rows),
    ]
    suffix = "" if args.dtype == "float32" else f"-{args.dtype}"
    _report.write_results(f"trace-{name}-{kind}{suffix}", "\n".join(report) + "\n", folder=args.out)


if __name__ == "__main__":
    main()
