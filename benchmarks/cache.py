"""Layer-wise activation collection: hooklab.collect against TransformerLens and a plain forward.

1. Throughput, side by side on the same batches: every layer's ``hook_resid_post`` streamed to
   disk by ``hooklab.collect(out=...)``; a loop of TransformerLens ``run_with_cache(names_filter=...)``
   saving each batch with ``np.save``; a plain forward loop (with logits, as users run it); and a
   forward that stops after the last block (the part of the model a collection needs). On a
   busy machine ``--rounds`` interleaves the methods chunk by chunk so load hits them alike.
2. Memory: ``--tokens`` (1M) tokens collected to disk in a fresh process; peak RSS above the
   loaded model.
3. Second moments of the MLP keys (what ROME and MEMIT need): MEMIT's layers 4-8 in one pass,
   all layers in one pass, one pass per layer (EasyEdit's ``layer_stats`` scheme, run with
   hooklab), and the second call (a cache hit), against EasyEdit's time on the same CPU.

Prints the tables and writes ``benchmarks/results/cache-<machine>.md``.

    python benchmarks/cache.py                                       # CPU: SmolLM2, as in results/
    python benchmarks/cache.py --device cuda --model synthetic:smollm2-135m --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _report

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[1] / "shared" / "data" / "corpus" / "wikitext_valid_test.txt"
# EasyEdit layer_stats on this project's 2-core CPU: 67,767 WikiText tokens, layers 4-8 of SmolLM2.
EASYEDIT_SECONDS, EASYEDIT_TOKENS, EASYEDIT_LAYERS = 1104.0, 67_767, [4, 5, 6, 7, 8]


def load_model(spec: str, device: str, gpus: int):
    import hooklab

    if spec.startswith("synthetic:"):
        sys.path.insert(0, str(HERE))
        import synthetic

        shape = spec.split(":", 1)[1]
        spec = str(synthetic.build(Path(tempfile.gettempdir()) / "hooklab-bench" / shape, shape))
    if device == "cuda" and gpus > 1:
        return hooklab.load(spec, n_devices=gpus)
    return hooklab.load(spec, device=device)


def token_stream(model, corpus: Path, n: int, max_length: int) -> torch.Tensor:
    """``n`` tokens of the corpus, packed as collect packs it (documents + EOS), repeated to reach ``n``."""
    from hooklab.cache.corpus import Corpus

    if corpus.is_file():
        packed = Corpus(corpus, model.tokenizer, batch_size=64, max_length=max_length, pack=True,
                        max_tokens=None, context_length=model.cfg.n_ctx)  # fmt: skip
        stream = torch.cat([row[:n] for b in packed for row, n in zip(b.tokens, b.lengths.tolist())])
    else:  # no corpus beside the checkout (a GPU machine): random ids cost the model the same
        stream = torch.randint(3, model.cfg.d_vocab, (n,), generator=torch.Generator().manual_seed(0))
    return stream.repeat(-(-n // stream.numel()))[:n]


def sync(model) -> None:
    for device in model.placement.distinct_devices:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)


def input_device(model) -> str:
    return model.placement.devices[model.placement.first]


# -- 1. throughput -------------------------------------------------------------------------------


@torch.no_grad()
def plain_forward(model, rows, args, folder):
    for batch in rows.split(args.batch_size):
        model(batch.to(input_device(model)))


@torch.no_grad()
def forward_to_last_block(model, rows, args, folder):
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    def stop(x, hook):
        raise StopAtLayerException(x)

    with model.hooks(fwd_hooks=[(f"blocks.{model.cfg.n_layers - 1}.hook_out", stop)]):
        for batch in rows.split(args.batch_size):
            model.bridge.forward(batch.to(input_device(model)), return_type=None)


@torch.no_grad()
def tl_run_with_cache(model, rows, args, folder):
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    dtype = getattr(torch, args.dtype)
    for i, batch in enumerate(rows.split(args.batch_size)):
        _, cache = model.run_with_cache(batch.to(input_device(model)), names_filter=names)
        for name in names:
            x = cache[name].to(dtype).cpu()
            np.save(folder / f"{i:06d}-{name}.npy", (x.view(torch.int16) if dtype == torch.bfloat16 else x).numpy())


def hooklab_collect(model, rows, args, folder):
    import hooklab

    hooklab.collect(model, rows.reshape(-1), batch_size=args.batch_size, max_length=args.max_length,
                    out=folder / "acts", dtype=args.dtype, progress=False)  # fmt: skip


METHODS = {
    "plain forward (with logits)": plain_forward,
    "forward to the last block": forward_to_last_block,
    "TL run_with_cache loop + np.save": tl_run_with_cache,
    "hooklab.collect(out=...)": hooklab_collect,
}


def throughput(model, stream: torch.Tensor, args) -> list[dict]:
    rows = stream.reshape(-1, args.max_length)
    chunks = rows.tensor_split(args.rounds)
    seconds = {name: 0.0 for name in METHODS}
    cpu = {name: 0.0 for name in METHODS}  # process CPU time, all threads: less swayed by other jobs
    forward_to_last_block(model, rows[: args.batch_size], args, None)  # warm up
    model.fingerprint  # computed once per model (collect keys its folder by it): not part of a round
    names = list(METHODS)
    for r, chunk in enumerate(chunks):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            folder = Path(tempfile.mkdtemp(dir=args.out))
            try:
                sync(model)
                start, start_cpu = time.perf_counter(), time.process_time()
                METHODS[name](model, chunk, args, folder)
                sync(model)
                seconds[name] += time.perf_counter() - start
                cpu[name] += time.process_time() - start_cpu
            finally:
                shutil.rmtree(folder)
            print(f"round {r + 1}/{len(chunks)} {name}: {seconds[name]:.1f} s so far", flush=True)
    n = rows.numel()
    return [{"method": name, "tokens": n, "seconds": s, "cpu_seconds": cpu[name]} for name, s in seconds.items()]


# -- 2. memory, in a fresh process -----------------------------------------------------------------


def rss(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def big_run(args) -> dict:
    import hooklab

    model = load_model(args.model, args.device, args.gpus)
    stream = token_stream(model, args.corpus, args.tokens, args.max_length)
    forward_to_last_block(model, stream[: args.batch_size * args.max_length].reshape(-1, args.max_length), args, None)
    loaded = rss()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pass
    out = Path(tempfile.mkdtemp(dir=args.out)) / "acts"
    try:
        start = time.perf_counter()
        acts = hooklab.collect(model, stream, batch_size=args.batch_size, max_length=args.max_length,
                               out=out, dtype=args.dtype, progress=True)  # fmt: skip
        seconds = time.perf_counter() - start
        written = sum(f.stat().st_size for f in out.iterdir())
        ok = acts.n_tokens == args.tokens and len(acts) == model.cfg.n_layers
    finally:
        shutil.rmtree(out.parent)
    return {"tokens": args.tokens, "seconds": seconds, "rss_loaded": loaded, "rss_peak": rss("VmHWM"),
            "bytes_written": written, "complete": ok}  # fmt: skip


# -- 3. second moments -----------------------------------------------------------------------------


def second_moments(model, args) -> list[dict]:
    import hooklab

    stream = token_stream(model, args.corpus, args.stats_tokens, args.max_length)
    shorter = stream[: args.more_stats_tokens or args.stats_tokens]
    n_layers = model.cfg.n_layers
    kwargs = dict(names="mlp.out.hook_in", batch_size=args.batch_size, max_length=args.max_length,
                  reduce="second_moment", progress=True)  # fmt: skip
    rows = []

    def timed(label: str, layers: list[int], passes: list[list[int]], stats_cache, data=stream) -> None:
        sync(model)
        start, start_cpu = time.perf_counter(), time.process_time()
        for layers_of_pass in passes:
            hooklab.collect(model, data, layers=layers_of_pass, stats_cache=stats_cache, **kwargs)
        sync(model)
        rows.append({"what": label, "layers": layers, "passes": len(passes), "tokens": data.numel(),
                     "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    memit = [layer for layer in EASYEDIT_LAYERS if layer < n_layers]
    every = list(range(n_layers))
    timed("hooklab, one pass", memit, [memit], False)
    with tempfile.TemporaryDirectory(dir=args.out) as cache:
        timed("hooklab, one pass", every, [every], cache, shorter)
        timed("hooklab, second call (cache hit)", every, [every], cache, shorter)
    if args.per_layer:
        timed("hooklab, one pass per layer (EasyEdit's scheme)", memit, [[layer] for layer in memit], False, shorter)
    return rows


# -- report ----------------------------------------------------------------------------------------


def report(results: dict) -> str:
    """The tables of every part run so far (each part says the command that produced it)."""
    lines = [f"# Activation collection: {results['model']}", "", f"Machine: {results['machine']}.", ""]
    if "throughput" in results:
        part = results["throughput"]
        rows, cfg = part["rows"], part["settings"]
        wall = {r["method"]: r["seconds"] for r in rows}
        cpu = {r["method"]: r["cpu_seconds"] for r in rows}
        plain, stopped = "plain forward (with logits)", "forward to the last block"
        lines += [
            f"## Throughput: all {cfg['n_layers']} layers' `hook_resid_post` ({cfg['dtype']}) on the same batches "
            f"({cfg['batch_size']} x {cfg['max_length']} tokens), {cfg['rounds']} interleaved rounds", "",
            f"`{part['command']}`", "",
            "Throughput relative to a plain forward and to a forward stopped after the last block, by wall "
            "time and by the process's CPU time (all its threads; less swayed by other jobs on the machine).", "",
        ]  # fmt: skip
        headers = ["method", "tokens", "wall s", "tokens/s", "CPU s", "vs plain forward (wall / CPU)",
                   "vs forward to the last block (wall / CPU)"]  # fmt: skip
        cells = [[m, f"{n:,}", f"{wall[m]:.1f}", f"{n / wall[m]:,.0f}", f"{cpu[m]:.1f}",
                  f"{wall[plain] / wall[m]:.2f}x / {cpu[plain] / cpu[m]:.2f}x",
                  f"{wall[stopped] / wall[m]:.2f}x / {cpu[stopped] / cpu[m]:.2f}x"]
                 for m, n in ((r["method"], r["tokens"]) for r in rows)]  # fmt: skip
        lines += [_report.markdown_table(headers, cells), ""]
    if "memory" in results:
        part, gib = results["memory"], 1024**3
        big = part["result"]
        lines += [
            f"## Memory: {big['tokens']:,} tokens to disk in a fresh process", "", f"`{part['command']}`", "",
            _report.markdown_table(
                ["tokens", "seconds", "tokens/s", "written (GiB)", "RSS loaded (GiB)", "peak RSS (GiB)",
                 "peak above loaded (GiB)"],
                [[f"{big['tokens']:,}", f"{big['seconds']:.0f}", f"{big['tokens'] / big['seconds']:,.0f}",
                  f"{big['bytes_written'] / gib:.1f}", f"{big['rss_loaded'] / gib:.2f}", f"{big['rss_peak'] / gib:.2f}",
                  f"{(big['rss_peak'] - big['rss_loaded']) / gib:.2f}"]],
            ), "",
        ]  # fmt: skip
    if "stats" in results:
        part = results["stats"]
        lines += [
            "## Second moments of the MLP keys (`mlp.out.hook_in`), float64 accumulators", "",
            f"`{part['command']}`", "",
            f"EasyEdit's `layer_stats`: {EASYEDIT_SECONDS:,.0f} s for {EASYEDIT_TOKENS:,} WikiText tokens at layers "
            "4-8 of SmolLM2 on this project's 2-core CPU (one pass per layer); the last column scales it to "
            "each row's tokens.", "",
        ]  # fmt: skip
        cells = [[r["what"], f"{r['layers'][0]}-{r['layers'][-1]}", r["passes"], f"{r['tokens']:,}",
                  f"{r['seconds']:.1f}", f"{r.get('cpu_seconds', float('nan')):.1f}",
                  f"{r['tokens'] / r['seconds']:,.0f}",
                  f"{EASYEDIT_SECONDS * r['tokens'] / EASYEDIT_TOKENS / r['seconds']:.1f}x"]
                 for r in part["rows"]]  # fmt: skip
        headers = ["what", "layers", "passes", "tokens", "wall s", "CPU s", "tokens/s", "EasyEdit's time / this"]
        lines.append(_report.markdown_table(headers, cells))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, a checkpoint folder, or synthetic:<shape>")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens of the memory run")
    parser.add_argument("--compare-tokens", type=int, default=None, help="tokens of the throughput comparison")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16", help="storage dtype of the activations")
    parser.add_argument("--stats-tokens", type=int, default=EASYEDIT_TOKENS)
    parser.add_argument("--more-stats-tokens", type=int, default=None,
                        help="tokens for all layers and for one pass per layer (default: --stats-tokens)")
    parser.add_argument("--per-layer", action="store_true", help="also time one pass per layer")
    parser.add_argument("--parts", nargs="+", default=["throughput", "memory", "stats"])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "hooklab-bench-cache")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--name", default=None, help="results/cache-<name>.md (default: cpu or the GPU kind)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(big_run(args)))
        return

    gpu = re.search(r"[A-Z]\d{2,3}", torch.cuda.get_device_name(0)) if args.device == "cuda" else None
    name = args.name or (gpu.group(0).lower() if gpu else args.device)
    stored = args.results / f"cache-{name}.json"  # parts not run now keep their last results
    results = json.loads(stored.read_text()) if stored.is_file() else {}
    command = _report.command()

    model = load_model(args.model, args.device, args.gpus)
    args.n_layers = model.cfg.n_layers
    results["model"] = f"{args.model} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}, {model.cfg.dtype})"
    results["machine"] = _report.machine(args.device, gpus=args.gpus)
    print(repr(model), flush=True)
    if "throughput" in args.parts:
        per_batch = args.batch_size * args.max_length
        n = max(1, (args.compare_tokens or args.tokens) // (per_batch * args.rounds)) * per_batch * args.rounds
        settings = {k: getattr(args, k) for k in ("n_layers", "dtype", "batch_size", "max_length", "rounds")}
        rows = throughput(model, token_stream(model, args.corpus, n, args.max_length), args)
        results["throughput"] = {"command": command, "settings": settings, "rows": rows}
        print(json.dumps(rows), flush=True)
    if "stats" in args.parts:
        results["stats"] = {"command": command, "rows": second_moments(model, args)}
    if "memory" in args.parts:
        del model  # the memory run loads its own, in a fresh process
        cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if done.returncode == 0:
            results["memory"] = {"command": command, "result": json.loads(done.stdout.strip().splitlines()[-1])}
        print(done.stdout.strip().splitlines()[-1:], flush=True)
    _report.write_results(f"cache-{name}", report(results), results, folder=args.results)


if __name__ == "__main__":
    main()
