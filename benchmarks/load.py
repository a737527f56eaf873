"""Multi-GPU loading: hooklab's two strategies against transformers, TransformerLens and safe_open.

Builds a synthetic Llama-3-8B-shaped bf16 checkpoint (random weights, ~5 GB shards), warms the
page cache, then loads it once per method, each in its own process so host memory and CUDA
state start clean: wall seconds, peak host RSS, per-GPU allocated GiB. Then checks that the
model on one GPU and on N GPUs gives the same logits. Prints a table and writes
``benchmarks/results/load-<machine>.md``.

    python benchmarks/load.py --gpus 2 4          # on a machine with 4 GPUs
    python benchmarks/load.py --shape tiny --gpus 1   # a quick check of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import subprocess
import sys
import time
from pathlib import Path

import _report

HERE = Path(__file__).resolve().parent
METHODS = ["hooklab-stream", "hooklab-cpu_then_shard", "transformers-auto", "transformerlens", "safe_open"]


def memory_status(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in bytes.

    Not ``ru_maxrss``: across fork + exec Linux carries the parent's peak into the child's.
    """
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def child(method: str, ckpt: Path, n: int) -> dict:
    """Load once with ``method`` on GPUs 0..n-1 and report time and memory."""
    import torch

    for i in range(n):  # CUDA contexts exist before the clock starts, for every method alike
        torch.zeros(1, device=f"cuda:{i}")
    import transformers  # noqa: F401  (imports are not part of the load)

    import hooklab
    from transformer_lens.model_bridge import TransformerBridge

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    before = memory_status("VmRSS")
    start = time.perf_counter()
    if method.startswith("hooklab-"):
        strategy, _, tuning = method.split("-", 1)[1].partition("@")
        for setting in filter(None, tuning.split(",")):  # e.g. hooklab-stream@chunk_mb=8,readers=32
            key, value = setting.split("=")
            if key == "chunk_mb":
                hooklab.loading.stream.CHUNK_BYTES = int(value) * 1024**2
            elif key == "readers":
                hooklab.loading.stream.GPU_READERS = int(value)
        model = hooklab.load(ckpt, n_devices=n, dtype=torch.bfloat16, strategy=strategy)
    elif method == "transformers-auto":
        model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16, device_map="auto")
    elif method == "transformerlens":
        kwargs = {"n_devices": n} if n > 1 else {"device": "cuda:0"}
        model = TransformerBridge.boot_transformers(str(ckpt), dtype=torch.bfloat16, **kwargs)
    elif method == "safe_open":
        from safetensors import safe_open

        model = {}
        for k, f in enumerate(sorted(ckpt.glob("*.safetensors"))):
            with safe_open(f, framework="pt", device=f"cuda:{k % n}") as h:
                model.update({name: h.get_tensor(name) for name in h.keys()})
    for i in range(n):
        torch.cuda.synchronize(i)
    seconds = time.perf_counter() - start
    peak = memory_status("VmHWM")
    return {
        "method": method,
        "n": n,
        "seconds": seconds,
        "rss_before": before,
        "rss_peak": peak,
        "gpu_bytes": [torch.cuda.memory_allocated(i) for i in range(n)],
    }


def check(ckpt: Path, n: int) -> dict:
    """Logits of a batch on one GPU and on n GPUs."""
    import torch

    import hooklab

    tokens = torch.randint(3, 500, (4, 64), generator=torch.Generator().manual_seed(0))
    one = hooklab.load(ckpt, device="cuda:0", dtype=torch.bfloat16)
    with torch.no_grad():
        ref = one(tokens.cuda()).float().cpu()
    del one
    torch.cuda.empty_cache()
    many = hooklab.load(ckpt, n_devices=n, dtype=torch.bfloat16)
    with torch.no_grad():
        out = many(tokens.cuda()).float().cpu()
    return {
        "n": n,
        "max_abs_diff": float((out - ref).abs().max()),
        "argmax_agree": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
        "placement": str(many.placement),
    }


def run_child(args: list[str], n: int) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, range(n))), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    stages = [line for line in done.stderr.splitlines() if line.startswith("loaded ")]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), **({"stages": stages[-1]} if stages else {})}


def warm_page_cache(ckpt: Path) -> int:
    total = 0
    for f in sorted(ckpt.glob("*.safetensors")):
        with open(f, "rb") as h:
            while chunk := h.read(1 << 26):
                total += len(chunk)
    return total


def table(rows: list[dict], ckpt_bytes: int) -> str:
    gib = 1024**3
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["n"], r["method"], f"failed: {r['error'][:80]}"])
            continue
        per_gpu = [b / gib for b in r["gpu_bytes"]]
        mean = sum(per_gpu) / len(per_gpu)
        imbalance = max(abs(g - mean) for g in per_gpu) / mean * 100 if mean else 0
        same_n = {x["method"]: x["seconds"] for x in rows if x["n"] == r["n"] and "error" not in x}

        def ratio(method: str) -> str:
            return f"{same_n[method] / r['seconds']:.1f}x" if method in same_n else "-"

        added = (r["rss_peak"] - r["rss_before"]) / ckpt_bytes * 100
        cells.append([r["n"], r["method"], f"{r['seconds']:.2f}", f"{ckpt_bytes / r['seconds'] / 1e9:.1f}",
                      f"{r['rss_peak'] / 1e9:.2f}", f"{added:.0f}%", " / ".join(f"{g:.2f}" for g in per_gpu),
                      f"{imbalance:.1f}", ratio("transformerlens"), ratio("transformers-auto")])  # fmt: skip
    headers = ["GPUs", "method", "seconds", "GB/s", "peak host RSS (GB)", "RSS added by load (% of ckpt)",
               "per-GPU GiB", "imbalance (% of mean)", "vs TL", "vs transformers"]  # fmt: skip
    return _report.markdown_table(headers, cells)


def _check_line(c: dict) -> str:
    if "error" in c:
        return f"- failed: {c['error']}"
    return (
        f"- N={c['n']}: max |logit diff| {c['max_abs_diff']}, argmax agreement {c['argmax_agree']}; "
        f"placement:\n\n```\n{c['placement']}\n```"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=Path("/tmp/hooklab-bench/llama3-8b"))
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--gpus", type=int, nargs="+", default=[2])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "CKPT", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--check", nargs=2, metavar=("CKPT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), int(args.child[2]))))
        return
    if args.check:
        print(json.dumps(check(Path(args.check[0]), int(args.check[1]))))
        return

    sys.path.insert(0, str(HERE))
    import synthetic

    start = time.perf_counter()
    ckpt = synthetic.build(args.ckpt, args.shape)
    print(f"checkpoint {ckpt} ready in {time.perf_counter() - start:.0f} s", flush=True)
    ckpt_bytes = warm_page_cache(ckpt)
    rows, checks = [], []
    for n in args.gpus:
        for _ in range(args.repeats):
            for method in args.methods:
                row = {"method": method, "n": n, **run_child(["--child", method, str(ckpt), str(n)], n)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        if n > 1:
            checks.append(run_child(["--check", str(ckpt), str(n)], n))
            print(json.dumps(checks[-1]), flush=True)
        write_report(args, rows, checks, ckpt_bytes)  # after each N, so a cut-off run keeps its rows


def write_report(args: argparse.Namespace, rows: list[dict], checks: list[dict], ckpt_bytes: int) -> None:
    kind = _report.machine_name(f"{max(args.gpus)}gpu")
    report = [
        f"# Loading a {ckpt_bytes / 1e9:.2f} GB {args.shape}-shaped bf16 checkpoint",
        "",
        f"Machine: {kind}: {_report.machine('cuda')}. Each load in its own process, page cache warm, CUDA contexts "
        f"created before the clock starts. `{_report.command()}`",
        "",
        table(rows, ckpt_bytes),
        "",
        "Where hooklab's time goes (its own log line):",
        "",
        *[f"- N={r['n']} {r['method']}: {r['stages']}" for r in rows if "stages" in r],
        "",
        "One GPU against N GPUs (hooklab stream, same batch of 4x64 tokens):",
        "",
        *[_check_line(c) for c in checks],
    ]
    _report.write_results(f"load-{kind}", "\n".join(report) + "\n", folder=args.out)


if __name__ == "__main__":
    main()
