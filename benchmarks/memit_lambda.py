"""MEMIT's λ (``mom2_update_weight``) for one large batch: ES / PS / NS at several λ, z computed once.

The target values z do not depend on λ (only the per-layer solves do), so the batch's z are
optimised once and each λ is a few solves and one scoring pass. On the CounterFact known facts of
the default model, from the first record of each file:

    python benchmarks/memit_lambda.py --data dev:500 test:218 --lambdas 500 1000 2000 4000 --device cuda

Writes ``benchmarks/results/memit-lambda-<machine>.md`` (``HOOKLAB_MACHINE`` names the machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import _report

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", nargs="+", default=["dev:500"], help="FILE:N, FILE dev, test or a path")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--stats-tokens", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    import hooklab
    from hooklab import sites
    from hooklab.edit.memit import main as memit_main
    from hooklab.evaluate.counterfact import score_counterfact, summarize

    model = hooklab.load(args.model, device=args.device)
    hp = hooklab.MemitHparams.for_model(model)
    corpus = args.shared / "corpus" / "wikitext_valid_test.txt"
    names = [sites.mlp_out(model, layer).hook_in for layer in hp.layers]
    stats = hooklab.collect(model, corpus, names=names, reduce="second_moment", max_tokens=args.stats_tokens)

    # One z per batch: later calls of compute_z for the same requests return the first result.
    compute_z, saved = memit_main.compute_z, {}

    def compute_z_once(model, requests, layer, templates, hp):
        key = tuple(requests)
        if key not in saved:
            start = time.perf_counter()
            saved[key] = compute_z(model, requests, layer, templates, hp)
            print(f"z of {len(requests)} requests: {time.perf_counter() - start:.1f} s", flush=True)
        return saved[key]

    memit_main.compute_z = compute_z_once
    rows = []
    for spec in args.data:
        name, _, n = spec.partition(":")
        path = args.shared / f"counterfact_known_{name}.json" if name in ("dev", "test") else Path(name)
        records = json.loads(path.read_text())[: int(n) if n else None]
        requests = hooklab.requests_from_counterfact(records)
        base = summarize(score_counterfact(model, records, fluency=False))
        rows.append((path.name, len(records), "unedited", base, 0.0))
        for lam in args.lambdas:
            start = time.perf_counter()
            edit = hooklab.edit(model, requests, "memit", hparams=dataclasses.replace(hp, mom2_update_weight=lam), stats=stats)
            seconds = time.perf_counter() - start
            scores = summarize(score_counterfact(model, records, fluency=False))
            edit.undo()
            rows.append((path.name, len(records), f"λ {lam:g}", scores, seconds))
            print(json.dumps({"data": path.name, "n": len(records), "lambda": lam, **scores, "seconds": seconds}), flush=True)
    write(args, model, hp, rows)


def write(args, model, hp, rows) -> None:
    kind = _report.machine_name(args.device)
    lines = [
        f"# MEMIT λ for one batch: {args.model}, layers {hp.layers[0]}–{hp.layers[-1]}",
        "",
        f"Machine: {kind}: {_report.machine(args.device, gpus=1)}. `{_report.command()}`",
        "",
        f"Key statistics: {args.stats_tokens} WikiText tokens. Each batch's z are optimised once (the first λ's time "
        "includes them); every λ is then its own solve, applied, scored (ES / PS / NS as in the README, no fluency) "
        "and undone. PS over the records with a paraphrase.",
        "",
        _report.markdown_table(
            ["data", "n", "run", "ES", "PS", "NS", "EM", "NM", "seconds"],
            [[d, n, run, *(f"{s[k]:.3f}" for k in ("es", "ps", "ns", "em", "nm")), f"{sec:.1f}"]
             for d, n, run, s, sec in rows],
        ),
        "",
    ]
    _report.write_results(f"memit-lambda-{kind}", "\n".join(lines), folder=args.out)


if __name__ == "__main__":
    main()
