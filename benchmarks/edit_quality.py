"""Edit quality on the default model: ROME (single edits) and MEMIT (one batch) on CounterFact.

The facts SmolLM2-135M-Instruct knows (``counterfact_known_dev.json`` to tune, ``..._test.json``
to confirm), the unedited model alongside:
- ROME: each of the first ``--rome-n`` records edited alone, from the original model, scored,
  then undone (the ROME paper's protocol);
- MEMIT: the first ``--memit-n`` records written in one batch, then all of them scored.

Metrics as ``hooklab.evaluate`` defines them (README), also without the "easy" facts whose true
answer is written in the subject's name. Key statistics: ``hooklab.collect`` over the corpus
(``--stats-tokens`` tokens, cached, timed apart). Writes ``benchmarks/results/edit-quality.md``
(``--out``) and a JSON file of every record's scores beside it.

    python benchmarks/edit_quality.py --data dev --threads 1
    python benchmarks/edit_quality.py --data test --methods rome memit
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

import _report

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
KEYS = ("es", "ps", "ns", "em", "pm", "nm", "fluency")


def easy(record: dict) -> bool:
    """The true answer is written in the subject ("Toyota Camry" → "Toyota")."""
    rewrite = record["requested_rewrite"]
    return rewrite["target_true"]["str"].strip().lower() in rewrite["subject"].lower()


def means(scores: list, records: list, keep=lambda r: True) -> dict:
    from hooklab.evaluate.counterfact import summarize

    picked = [s for s, r in zip(scores, records) if keep(r)]
    out = summarize(picked)
    out["n"] = len(picked)
    out["n_ps"] = sum(s.ps is not None for s in picked)
    return out


def run_rome(model, records, stats, fluency: bool, log) -> tuple[list, list[float], dict]:
    import hooklab
    from hooklab.evaluate import score_counterfact

    hp = hooklab.RomeHparams.for_model(model)
    scores, seconds = [], []
    for i, request in enumerate(hooklab.requests_from_counterfact(records)):
        start = time.perf_counter()
        edit = hooklab.edit(model, request, "rome", hparams=hp, stats=stats)
        seconds.append(time.perf_counter() - start)
        scores.append(score_counterfact(model, [records[i]], fluency=fluency)[0])
        edit.undo()
        log(f"rome {i + 1}/{len(records)} case {records[i]['case_id']}: {dataclasses.asdict(scores[-1])} {seconds[-1]:.1f} s")
    return scores, seconds, hp.to_dict()


def run_memit(model, records, stats, fluency: bool, log) -> tuple[list, float, dict]:
    import hooklab
    from hooklab.evaluate import score_counterfact

    hp = hooklab.MemitHparams.for_model(model)
    start = time.perf_counter()
    edit = hooklab.edit(model, hooklab.requests_from_counterfact(records), "memit", hparams=hp, stats=stats)
    seconds = time.perf_counter() - start
    log(f"memit batch of {len(records)} in {seconds:.0f} s")
    scores = score_counterfact(model, records, fluency=fluency)
    edit.undo()
    return scores, seconds, hp.to_dict()


def fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def table(rows: list[tuple[str, dict]]) -> str:
    cells = [[name, m["n"], fmt(m["es"]), f"{fmt(m['ps'])} ({m['n_ps']})", fmt(m["ns"]), fmt(m["em"]), fmt(m["pm"]),
              fmt(m["nm"]), fmt(m["fluency"])] for name, m in rows]  # fmt: skip
    return _report.markdown_table(["run", "n", "ES", "PS (n)", "NS", "EM", "PM", "NM", "fluency"], cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default="dev", help="dev, test, or a path to CounterFact records")
    parser.add_argument("--methods", nargs="+", default=["rome", "memit"])
    parser.add_argument("--rome-n", type=int, default=100)
    parser.add_argument("--memit-n", type=int, nargs="+", default=[500, 50], help="batch sizes (each its own run)")
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "wikitext_valid_test.txt")
    parser.add_argument("--stats-tokens", type=int, default=None, help="default: the hyperparameters' mom2_tokens")
    parser.add_argument("--stats-file", type=Path, default=None,
                        help="E[k kᵀ] by hook name in a safetensors file (metadata 'tokens'), instead of collecting")
    parser.add_argument("--no-fluency", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "edit-quality.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import hooklab
    from hooklab import sites
    from hooklab.evaluate import score_counterfact

    path = Path(args.data) if args.data not in ("dev", "test") else SHARED / f"counterfact_known_{args.data}.json"
    all_records = json.loads(path.read_text())
    model = hooklab.load(args.model, device=args.device)
    log_path = args.out.with_suffix(".log")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    rome_hp, memit_hp = hooklab.RomeHparams.for_model(model), hooklab.MemitHparams.for_model(model)
    layers = sorted({rome_hp.layer, *memit_hp.layers})
    tokens = args.stats_tokens or max(rome_hp.mom2_tokens, memit_hp.mom2_tokens)
    start = time.perf_counter()
    if args.stats_file:
        from safetensors import safe_open
        from safetensors.torch import load_file

        stats = load_file(args.stats_file)
        with safe_open(args.stats_file, "pt") as f:
            tokens = int((f.metadata() or {}).get("tokens", 0)) or tokens
    else:
        stats = hooklab.collect(model, args.corpus, names=[sites.mlp_out(model, l).hook_in for l in layers],
                                reduce="second_moment", max_tokens=tokens)  # fmt: skip
    stats_seconds = time.perf_counter() - start
    log(f"statistics of layers {layers} over {tokens} tokens: {stats_seconds:.0f} s (cached after the first run)")

    runs = [("rome", args.rome_n)] if "rome" in args.methods else []
    runs += [("memit", k) for k in args.memit_n] if "memit" in args.methods else []
    records = all_records[: max(k for _, k in runs)]
    start = time.perf_counter()
    base = score_counterfact(model, records, fluency=not args.no_fluency)
    log(f"unedited model scored on {len(records)} records in {time.perf_counter() - start:.0f} s")
    results, rows, timing = {"unedited": [dataclasses.asdict(s) for s in base]}, [], []
    for method, k in runs:
        rows.append((f"unedited, first {k}", means(base[:k], records[:k])))
        if method == "rome":
            scores, seconds, hp = run_rome(model, records[:k], stats, not args.no_fluency, log)
            timing.append(f"ROME: {sum(seconds) / len(seconds):.1f} s per edit (mean of {k}; statistics excluded)")
            name = f"ROME, {k} single edits (layer {hp['layer']})"
            rows.append((name, means(scores, records[:k])))
            rows.append((name + ", first 50", means(scores[:50], records[:50])))
        else:
            scores, seconds, hp = run_memit(model, records[:k], stats, not args.no_fluency, log)
            timing.append(f"MEMIT: {seconds:.0f} s for the batch of {k} (statistics excluded)")
            lam = hooklab.MemitHparams.from_dict(hp).update_weight(k)
            name = f"MEMIT, one batch of {k} (layers {hp['layers'][0]}–{hp['layers'][-1]}, λ {lam:g})"
            rows.append((name, means(scores, records[:k])))
        rows.append((name + ", without easy facts", means(scores, records[:k], lambda r: not easy(r))))
        results[f"{method}-{k}"] = {"hparams": hp, "seconds": seconds, "scores": [dataclasses.asdict(s) for s in scores]}
        write(args, path, rows, timing, stats_seconds, tokens, results)


def write(args, path: Path, rows, timing, stats_seconds: float, tokens: int, results: dict) -> None:
    report = [
        f"# Edit quality on {args.model}: CounterFact known facts ({path.name})",
        "",
        f"Machine: {_report.machine(args.device)}; shared with other jobs, so times are indicative. "
        f"`{_report.command()}`",
        "",
        (f"Key statistics: {tokens} tokens from {args.stats_file.name}. " if args.stats_file else
         f"Key statistics: {tokens} WikiText tokens via `hooklab.collect` ({stats_seconds:.0f} s, cached). ")
        + "ES / PS / NS "
        "and magnitudes as defined in the README (length-normalised teacher-forced probabilities); PS over the "
        "records with a paraphrase prompt (how many in brackets); one neighbourhood prompt per record; fluency: "
        "n-gram entropy of a ~100-token sampled generation. \"Easy\" facts have the true answer in the subject's name.",
        "",
        table(rows),
        "",
        "EasyEdit on the same model and machine, first 50 known dev facts (from the issue): ROME (layer 5) ES 1.00, "
        "PS 1.00 (10 records), NS 0.78, 32 s per edit; MEMIT (layers 4–8, batch of 50) λ 15000: ES 0.46, PS 0.70, "
        "NS 0.80, 717 s; λ 500: ES 1.00, PS 0.90, NS 0.76. ROME paper, GPT-2 XL: ES 100, PS 96.4, NS 75.4.",
        "",
        *[f"- {t}" for t in timing],
        "",
    ]
    _report.write_results(args.out.stem, "\n".join(report), results, folder=args.out.parent)


if __name__ == "__main__":
    main()
