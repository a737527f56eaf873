"""Merging two models: hooklab against mergekit and LM-Cocktail on the CPU; GB/s on a GPU.

CPU (default): two 538 MB float32 variants of the default model (SmolLM2-135M as saved by
transformers, and a copy with 5% noise on every matrix). Each merge runs in its own process
(each tool from its own venv, given by --mergekit-python / --cocktail-python), page cache
warm: seconds of the merge call (imports excluded), wall seconds of the whole process, peak
RSS. Outputs are compared with hooklab's (max |difference|).

GPU (--device cuda): two random 8B-shaped bf16 checkpoints (benchmarks/synthetic.py, ~16 GB
each) merged on one GPU: GB/s of merged output and peak host RSS.

    python benchmarks/merge.py --mergekit-python /tmp/venv-mergekit/bin/python \\
        --cocktail-python /tmp/venv-cocktail/bin/python
    python benchmarks/merge.py --device cuda --shape llama3-8b --work /tmp/hooklab-bench

Prints a table and writes benchmarks/results/merge-<machine>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _report

HERE = Path(__file__).resolve().parent
EXAMPLES = [
    ("The Eiffel Tower is located in the city of", " Paris"),
    ("The capital of Japan is", " Tokyo"),
    ("The Colosseum is located in the city of", " Rome"),
    ("Albert Einstein was born in", " Germany"),
    ("The river Thames flows through", " London"),
]


# ---------------------------------------------------------------- children (one merge each)


def child(spec: dict) -> dict:
    """Run one merge as ``spec`` says; report seconds of the merge call and peak RSS."""
    tool, method = spec["tool"], spec["method"]
    if tool == "hooklab":
        import torch

        import hooklab

        if spec["device"].startswith("cuda"):
            torch.zeros(1, device=spec["device"])  # the CUDA context exists before the clock starts
        kwargs = dict(out=spec["out"], device=spec["device"], workers=spec.get("workers"))
        if method == "linear":
            call = lambda: hooklab.merge([spec["a"], spec["b"]], **kwargs)  # noqa: E731
        elif method == "ties":
            call = lambda: hooklab.merge([spec["b"]], base=spec["a"], method="ties", parameters={"density": 0.5}, **kwargs)  # noqa: E731
        elif method == "slerp":
            call = lambda: hooklab.merge([spec["a"], spec["b"]], method="slerp", **kwargs)  # noqa: E731
        elif method == "cocktail":
            call = lambda: hooklab.merge([spec["a"], spec["b"]], weights="auto", examples=EXAMPLES, **kwargs)  # noqa: E731
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        extra = {"weights": result.weights}
    elif tool == "mergekit":
        import yaml
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge

        if method == "linear":
            recipe = {"merge_method": "linear", "dtype": "float32",
                      "models": [{"model": spec["a"], "parameters": {"weight": 1.0}},
                                 {"model": spec["b"], "parameters": {"weight": 1.0}}]}  # fmt: skip
        else:
            recipe = {"merge_method": "ties", "dtype": "float32", "base_model": spec["a"],
                      "models": [{"model": spec["b"], "parameters": {"weight": 1.0, "density": 0.5}}]}  # fmt: skip
        config = MergeConfiguration.model_validate(yaml.safe_load(yaml.safe_dump(recipe)))
        start = time.perf_counter()
        run_merge(config, spec["out"], options=MergeOptions(copy_tokenizer=True, quiet=True))
        seconds = time.perf_counter() - start
        extra = {}
    elif tool == "lm-cocktail":
        import contextlib
        import io

        from LM_Cocktail import mix_models, mix_models_with_data

        captured = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(captured):
            if method == "mix_models":
                mix_models([spec["a"], spec["b"]], model_type="decoder", weights=[0.5, 0.5], output_path=spec["out"])
            else:
                data = [{"input": p, "output": a.strip()} for p, a in EXAMPLES]
                mix_models_with_data([spec["a"], spec["b"]], model_type="decoder", example_ata=data, output_path=spec["out"])
        seconds = time.perf_counter() - start
        said = captured.getvalue().splitlines()
        weights = [float(line.split()[-1]) for line in said if line.startswith((spec["a"], spec["b"]))]
        extra = {"weights": weights or None}
    return {"seconds": seconds, "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **extra}


def run_child(python: str, spec: dict) -> dict:
    """One merge in a fresh process; adds the process's wall seconds."""
    shutil.rmtree(spec["out"], ignore_errors=True)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([python, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        return {**spec, "error": tail[-1] if tail else f"exit {done.returncode}"}
    return {**spec, **json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall}


# ---------------------------------------------------------------- inputs and checks


def smollm2_variants(work: Path) -> tuple[Path, Path]:
    """The default model saved by transformers, and a copy with 5% noise on every matrix."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hooklab.loading.embedded import EMBEDDED, embedded_folder

    a, b = work / "smollm2-a", work / "smollm2-b"
    if not (b / "config.json").is_file():
        source = embedded_folder(EMBEDDED["smollm2"])
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
        for folder, noise in ((a, 0.0), (b, 0.05)):
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1 and noise:
                        p.add_(torch.randn(p.shape, generator=g) * p.std() * noise)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
    return a, b


def synthetic_pair(work: Path, shape: str) -> tuple[Path, Path]:
    sys.path.insert(0, str(HERE))
    import synthetic

    return synthetic.build(work / f"{shape}-a", shape, seed=0), synthetic.build(work / f"{shape}-b", shape, seed=1)


def warm(*folders: Path) -> int:
    """Read every weight file once (page cache warm for every tool alike); their total bytes."""
    total = 0
    for folder in folders:
        for f in sorted(folder.glob("*.safetensors")):
            with open(f, "rb") as h:
                while chunk := h.read(1 << 26):
                    total += len(chunk)
    return total


def max_difference(x: Path, y: Path) -> float | None:
    """Largest |difference| over the tensors two checkpoints share (a tied head may be saved once or twice)."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                out.update({k: h.get_tensor(k) for k in h.keys()})
        return out

    if not (x.is_dir() and y.is_dir()):
        return None
    tx, ty = tensors(x), tensors(y)
    common = tx.keys() & ty.keys()
    return max(float((tx[k].float() - ty[k].float()).abs().max()) for k in common) if common else float("nan")


# ---------------------------------------------------------------- report


def table(rows: list[dict], out_bytes: int, reference: dict[str, float]) -> str:
    base = reference.get("mergekit linear")
    cells = []
    for r in rows:
        label = [r["tool"], r["method"] + (f" (workers {r['workers']})" if r.get("workers") else "")]
        if "error" in r:
            cells.append([*label, f"failed: {r['error'][:90]}"])
            continue
        ratio = f"{base / r['seconds']:.1f}x" if base else "-"
        diff = "-" if r.get("diff") is None else f"{r['diff']:.2e}"
        weights = ", ".join(f"{w:.3f}" for w in r["weights"]) if r.get("weights") else "-"
        cells.append([*label, f"{r['seconds']:.2f}", f"{r['wall']:.1f}", f"{out_bytes / r['seconds'] / 1e9:.2f}",
                      f"{r['rss_peak'] / 1e9:.2f}", ratio, diff, weights])  # fmt: skip
    headers = ["tool", "method", "merge s", "process wall s", "GB/s out", "peak RSS GB", "vs mergekit linear",
               "max abs diff vs hooklab", "weights"]  # fmt: skip
    return _report.markdown_table(headers, cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="llama3-8b", help="synthetic checkpoint shape for --device cuda")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hooklab-bench"))
    parser.add_argument("--methods", nargs="+", default=None, help="hooklab methods (default: all on CPU, linear+ties on GPU)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="hooklab worker counts to try (0: default)")
    parser.add_argument("--mergekit-python", default=None, help="python of a venv with mergekit")
    parser.add_argument("--cocktail-python", default=None, help="python of a venv with LM-Cocktail")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    on_gpu = args.device.startswith("cuda")
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    a, b = synthetic_pair(args.work, args.shape) if on_gpu else smollm2_variants(args.work)
    in_bytes = warm(a, b)
    print(f"inputs {a}, {b}: {in_bytes / 1e9:.2f} GB, ready in {time.perf_counter() - start:.0f} s", flush=True)
    methods = args.methods or (["linear", "ties"] if on_gpu else ["linear", "ties", "slerp", "cocktail"])
    runs = [(sys.executable, {"tool": "hooklab", "method": m, "workers": w or None}) for m in methods for w in args.workers]
    if args.mergekit_python:  # the same methods, as each tool calls them
        runs += [(args.mergekit_python, {"tool": "mergekit", "method": m}) for m in ("linear", "ties") if m in methods]
    if args.cocktail_python:
        ours = {"mix_models": "linear", "mix_models_with_data": "cocktail"}
        runs += [(args.cocktail_python, {"tool": "lm-cocktail", "method": m}) for m, mine in ours.items() if mine in methods]
    rows = []
    for _ in range(args.repeats):
        for python, spec in runs:
            out = args.work / f"out-{spec['tool']}-{spec['method']}-{spec.get('workers') or 0}"
            row = run_child(python, {**spec, "a": str(a), "b": str(b), "out": str(out), "device": args.device})
            print(json.dumps(row), flush=True)
            rows.append(row)
            if on_gpu:  # 16 GB each: no room to keep them (nor other tools to compare with)
                shutil.rmtree(out, ignore_errors=True)
    same = {"mergekit linear": "hooklab linear", "mergekit ties": "hooklab ties",
            "lm-cocktail mix_models": "hooklab linear", "lm-cocktail mix_models_with_data": "hooklab cocktail"}  # fmt: skip
    for r in rows:
        mine = same.get(f"{r['tool']} {r['method']}")
        if mine and "error" not in r:
            ours = args.work / f"out-{mine.replace(' ', '-')}-0"
            r["diff"] = max_difference(ours, Path(r["out"]))
    out_bytes = in_bytes // 2
    best = {}
    for r in rows:
        if "error" not in r:
            key = f"{r['tool']} {r['method']}"
            best[key] = min(best.get(key, float("inf")), r["seconds"])
    kind = _report.machine_name("1gpu" if on_gpu else "cpu")
    what = f"two {args.shape}-shaped bf16 checkpoints" if on_gpu else "two 538 MB float32 SmolLM2-135M variants"
    text = "\n".join([
        f"# Merging {what} ({out_bytes / 1e9:.2f} GB out) on {args.device}",
        "",
        f"Machine: {_report.machine(args.device, gpus=1)}. Each merge in its own process, page cache warm; 'merge s' "
        f"times the merge call alone (imports excluded), 'process wall s' the whole process. `{_report.command()}`",
        "",
        table(rows, out_bytes, best),
        "",
    ])  # fmt: skip
    _report.write_results(f"merge-{kind}", text, folder=args.out)
    for r in rows:
        shutil.rmtree(r["out"], ignore_errors=True)


if __name__ == "__main__":
    main()
