"""The ``hooklab`` command: one subcommand per job."""

# Only the standard library at module level: each job imports what it needs, so --help answers at once.
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


def demo_cmd(args: argparse.Namespace) -> None:
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


def _records(path: str) -> list[dict]:
    import json

    records = json.loads(Path(path).read_text())
    return records if isinstance(records, list) else [records]


def _requests_from(records: list[dict]):
    """Edit requests from CounterFact or zsRE records, or from {prompt, subject, target} dicts."""
    import hooklab

    if records and "requested_rewrite" in records[0]:
        return hooklab.requests_from_counterfact(records)
    if records and "alt" in records[0]:
        return hooklab.requests_from_zsre(records)
    return [hooklab.EditRequest.from_dict(r) for r in records]


def edit_cmd(args: argparse.Namespace) -> None:
    """Compute an edit (ROME or MEMIT) and save it as a small safetensors file."""
    import hooklab

    model = hooklab.load(args.model, device=args.device)
    requests = _requests_from(_records(args.requests))[: args.limit]
    start = time.perf_counter()
    edit = hooklab.compute_edit(model, requests, args.method, hparams=args.hparams, stats=args.stats)
    path = edit.save(args.out)
    print(f"{edit!r} computed in {time.perf_counter() - start:.1f} s")
    print(f"Saved to {path} ({path.stat().st_size / 1024:.1f} KiB), for base model {edit.base_fingerprint}")


def wise_cmd(args: argparse.Namespace) -> None:
    """Train edits one after another into a WISE side memory and save it."""
    import hooklab

    model = hooklab.load(args.model, device=args.device)
    requests = _requests_from(_records(args.requests))[: args.limit]
    unrelated = [str(t) for t in _records(args.unrelated)] if args.unrelated else None
    memory = hooklab.WiseMemory(model, args.hparams, unrelated=unrelated).add(requests)
    path = memory.save(args.out)
    print(f"{len(memory)} edit(s) in {memory.seconds:.1f} s ({memory.seconds / len(memory):.2f} s/edit), threshold {memory.threshold:.3g}")
    print(f"Saved to {path} ({path.stat().st_size / 1e6:.1f} MB), for base model {memory.base_fingerprint}")


def eval_cmd(args: argparse.Namespace) -> None:
    """Evaluate a model (and, with --edit, the model with the edit applied) on CounterFact or zsRE records."""
    import json

    import hooklab

    records = _records(args.data)[: args.limit]
    protocol = args.protocol
    if protocol == "auto":
        protocol = "zsre" if records and "alt" in records[0] else "counterfact"
    model = hooklab.load(args.model, device=args.device)
    columns = {"unedited": hooklab.evaluate(model, records, protocol, fluency=not args.no_fluency)}
    if args.edit:
        edit = hooklab.apply_edit(model, args.edit)
        columns["edited"] = hooklab.evaluate(model, records, protocol, edit=edit, fluency=not args.no_fluency)
    keys = list(next(iter(columns.values())))
    print(f"{protocol} over {len(records)} record(s) of {args.data}")
    print("metric  " + "  ".join(f"{name:>9}" for name in columns))
    for key in keys:
        print(f"{key:<7} " + "  ".join(f"{col[key]:9.3f}" for col in columns.values()))
    if args.json:
        Path(args.json).write_text(json.dumps({"protocol": protocol, "n": len(records), **columns}, indent=1))


def export_cmd(args: argparse.Namespace) -> None:
    """Apply edit files to a model, in order, and save the result as a standard HF checkpoint folder."""
    import hooklab

    model = hooklab.load(args.model, device=args.device)
    for path in args.edit:
        hooklab.apply_edit(model, path)
    out = model.save_pretrained(args.out, args.max_shard_size, dtype=args.dtype, overwrite=args.overwrite)
    print(f"Saved {model.name} with {len(args.edit)} edit(s) applied to {out} (fingerprint {model.fingerprint})")


def merge_cmd(args: argparse.Namespace) -> None:
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


def collect_cmd(args: argparse.Namespace) -> None:
    """Collect activations over a corpus to a folder, or reduce them to means / second moments."""
    import hooklab

    if args.out is None and args.reduce is None:
        raise SystemExit("hooklab collect: give --out FOLDER to keep the activations, or --reduce mean|second_moment.")
    model = hooklab.load(args.model, device=args.device)
    layers = None if args.layers is None else [i for spec in args.layers for i in _layer_range(spec)]
    result = hooklab.collect(
        model, args.data, names=args.names, layers=layers, positions=args.positions, batch_size=args.batch_size,
        max_length=args.max_length, out=args.out, reduce=args.reduce, max_tokens=args.max_tokens, dtype=args.dtype,
        verify=args.verify,
    )  # fmt: skip
    if args.reduce is None:
        print(f"{result!r}\nOpen it with hooklab.Activations.load({str(result.path or args.out)!r}).")
        return
    for name, stats in result.items():
        print(f"{name}: {stats.count} tokens, mean {tuple(stats.mean.shape)}"
              + (f", E[x xᵀ] {tuple(stats.moment.shape)}" if args.reduce == "second_moment" else ""))  # fmt: skip
    print("Saved in the statistics cache; the same call from Python reads them back without running the model.")


def _layer_range(spec: str) -> range:
    """``"4"`` → layer 4, ``"4-8"`` → layers 4..8."""
    first, _, last = spec.partition("-")
    return range(int(first), int(last or first) + 1)


def trace_cmd(args: argparse.Namespace) -> None:
    """Causal-trace one fact; write each kind's ROME-style heatmap (PNG) and scores (JSON)."""
    import json

    import hooklab
    from hooklab.locate import CausalTracer

    placement = {"devices": args.devices} if args.devices else {"device": args.device}
    model = hooklab.load(args.model, **placement)
    tracer = CausalTracer(
        model, args.prompt, args.subject, target=args.target, samples=args.samples, noise=args.noise, seed=args.seed
    )
    b, e = tracer.prompt.subject
    answer = model.tokenizer.decode([tracer.target_id])
    print(f"{model!r}\nsubject tokens {list(tracer.prompt.str_tokens[b:e])}, target {answer!r}: "
          f"p clean {tracer.high:.3f}, p corrupted {tracer.low:.3f} (noise {tracer.noise:.3f})")  # fmt: skip
    kinds = ["hidden", "mlp", "attn"] if args.kind == "all" else [args.kind]
    for kind in kinds:
        start = time.perf_counter()
        result = tracer.trace(kind, args.window)
        token, layer, score = result.peak()
        out = Path(f"{args.out}-{kind}")
        result.plot(out.with_suffix(".png"), model_name=Path(str(args.model)).name)
        out.with_suffix(".json").write_text(json.dumps(result.to_dict(), indent=1))
        print(f"{kind:>6}: peak p {score:.3f} restoring token {token} {result.tokens[token]!r} at layer {layer} "
              f"({time.perf_counter() - start:.1f} s) -> {out}.png, {out}.json")  # fmt: skip


def _edit_inputs(p: argparse.ArgumentParser) -> None:
    """The arguments ``edit`` and ``wise`` share: the model, the requests and how to read them."""
    p.add_argument("--model", required=True, help="an HF folder, a .gguf file or 'smollm2'")
    p.add_argument("--requests", required=True, help="JSON list: {prompt, subject, target}, CounterFact or zsRE records")
    p.add_argument("--hparams", default=None, help="JSON or YAML with every hyperparameter (default: for the model)")
    p.add_argument("--limit", type=int, default=None, help="use the first N requests")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: GPU 0 if any, else CPU)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hooklab", description=__doc__)
    jobs = parser.add_subparsers(dest="job", required=True)

    p = jobs.add_parser("demo", help="load the embedded default model; completions, top-5, logit lens")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: GPU 0 if any, else CPU)")
    p.add_argument("--target", default=" Paris", help="token the logit lens follows")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--out", default="hooklab-demo-logit-lens.png", help="where to save the plot")
    p.set_defaults(run=demo_cmd)

    from hooklab.edit import registry

    p = jobs.add_parser("edit", help="compute a weight-update edit (ROME, MEMIT, ...) and save it as a .safetensors file")
    _edit_inputs(p)
    p.add_argument("--method", choices=registry.names(updates_only=True), default="rome",
                   help="; ".join(f"{n}: {registry.get(n).summary}" for n in registry.names(updates_only=True)))
    p.add_argument("--out", required=True, help="the edit file to write")
    p.add_argument("--stats", required=True, help="text corpus for the MLP key statistics (collected once, cached)")
    p.set_defaults(run=edit_cmd)

    p = jobs.add_parser("wise", help="train edits one after another into a WISE side memory and save it")
    _edit_inputs(p)
    p.add_argument("--out", required=True, help="the memory file to write (.safetensors)")
    p.add_argument("--unrelated", default=None, help="JSON list of texts the memory must stay silent on")
    p.set_defaults(run=wise_cmd)

    p = jobs.add_parser("eval", help="CounterFact or zsRE metrics of a model, and of it with an edit applied")
    p.add_argument("--model", required=True, help="an HF folder, a .gguf file or 'smollm2'")
    p.add_argument("--data", required=True, help="JSON list of CounterFact or zsRE records")
    p.add_argument("--edit", default=None, help="an edit file made for this model")
    p.add_argument("--protocol", choices=["auto", "counterfact", "zsre"], default="auto")
    p.add_argument("--limit", type=int, default=None, help="use the first N records")
    p.add_argument("--no-fluency", action="store_true", help="skip the generations for fluency (CounterFact)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: GPU 0 if any, else CPU)")
    p.set_defaults(run=eval_cmd)

    p = jobs.add_parser("export", help="save a model, with edit files applied, as a standard HF checkpoint folder")
    p.add_argument("--model", required=True, help="an HF folder, a .gguf file or 'smollm2'")
    p.add_argument("--edit", nargs="+", default=[], help="edit files, applied in the order given")
    p.add_argument("--out", required=True, help="the checkpoint folder to write")
    p.add_argument("--max-shard-size", default="5GB", help="bytes per safetensors shard, e.g. 2GB")
    p.add_argument("--dtype", default=None, help="dtype of the saved weights, e.g. bfloat16 (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace out once the new checkpoint is complete")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: GPU 0 if any, else CPU)")
    p.set_defaults(run=export_cmd)

    p = jobs.add_parser("merge", help="merge models as a YAML recipe says (linear, task_arithmetic, ties, slerp)")
    p.add_argument("config", help="YAML recipe: models, method, base_model, parameters, dtype, out")
    p.add_argument("--device", default=None, help="where tensors are merged (default: GPU 0 if any, else CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace out once the new merge is complete")
    p.set_defaults(run=merge_cmd)

    p = jobs.add_parser("collect", help="activations over a corpus to a folder, or their mean / second moment")
    p.add_argument("data", help="a text file (one document per non-blank line)")
    p.add_argument("--model", default="smollm2", help="smollm2, a checkpoint folder or a .gguf file")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: GPU 0 if any, else CPU)")
    p.add_argument("--names", nargs="+", default=None, help="hook names, full or block-relative (hook_resid_post)")
    p.add_argument("--layers", nargs="+", default=None, help="layers for block-relative names: 4 5 or 4-8")
    p.add_argument("--positions", default="all", choices=["all", "last"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None, help="row length (default 512 for packed text)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for the activations (rerun to resume)")
    p.add_argument("--dtype", default=None, help="storage dtype, e.g. bfloat16 (default: the model's)")
    p.add_argument("--reduce", default=None, choices=["mean", "second_moment"])
    p.add_argument("--verify", action="store_true", help="on a rerun, check every finished shard's checksum")
    p.set_defaults(run=collect_cmd)

    p = jobs.add_parser("trace", help="causal tracing of a fact (ROME); heatmaps as PNG, scores as JSON")
    p.add_argument("--model", default="smollm2", help="HF folder, .gguf file or 'smollm2'")
    p.add_argument("--prompt", required=True, help="e.g. 'The Eiffel Tower is located in the city of'")
    p.add_argument("--subject", required=True, help="as written in the prompt, e.g. 'Eiffel Tower'")
    p.add_argument("--kind", default="all", choices=["hidden", "mlp", "attn", "all"])
    p.add_argument("--target", default=None, help="token to score (default: the model's own answer)")
    p.add_argument("--window", type=int, default=10, help="MLP/attention layers restored together")
    p.add_argument("--samples", type=int, default=10, help="corrupted runs averaged")
    p.add_argument("--noise", default="3sigma", help="'<k>sigma' of the token embeddings, or a number")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: GPU 0 if any, else CPU)")
    p.add_argument("--devices", nargs="+", default=None, help="shard layers over these, e.g. cuda:0 cuda:1")
    p.add_argument("--out", default="hooklab-trace", help="file prefix: <out>-<kind>.png and .json")
    p.set_defaults(run=trace_cmd)

    args = parser.parse_args(argv)
    from hooklab.errors import HooklabError

    try:
        args.run(args)
    except HooklabError as e:
        print(f"hooklab {args.job}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
