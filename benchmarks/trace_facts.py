"""Where does the default model recall facts? Causal traces of the known CounterFact facts.

Traces every record (target: the model's own answer) for each kind, averages the indirect
effects by token class (``hooklab.locate.summarize``, as ``trace_many`` does) and saves the
ROME summary figures and a table of the peaks under ``benchmarks/results/``. Records are taken
in a seeded random order and each trace is appended to a JSON-lines file as it finishes, so an
interrupted run resumes where it stopped, and any prefix of the order is a random subset.

    python benchmarks/trace_facts.py --kinds mlp hidden attn                # all 656 known dev facts
    python benchmarks/trace_facts.py --kinds mlp --limit 200 --seed 0      # a seeded random 200
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import _report

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"


def traced(work: Path, kind: str) -> dict[int, dict]:
    path = work / f"{kind}.jsonl"
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {d["case_id"]: d for d in lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, default=SHARED / "data" / "counterfact_known_dev.json")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--kinds", nargs="+", default=["mlp", "hidden", "attn"])
    parser.add_argument("--limit", type=int, default=None, help="trace only the first N of the seeded order")
    parser.add_argument("--seed", type=int, default=0, help="seeds the order of the records (noise seed is 0)")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hooklab-trace-facts"), help="per-trace JSON lines")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--summarize-only", action="store_true", help="plot what is traced so far")
    args = parser.parse_args()

    import hooklab
    from hooklab.locate import TraceResult, plot_summaries, summarize

    records = json.loads(args.records.read_text())
    order = list(range(len(records)))
    random.Random(args.seed).shuffle(order)
    order = order[: args.limit]
    model = hooklab.load(args.model, device="cpu" if not torch.cuda.is_available() else None)
    args.work.mkdir(parents=True, exist_ok=True)
    model_name = "SmolLM2-135M" if args.model == "smollm2" else Path(args.model).name

    summaries = []
    for kind in args.kinds:
        done = traced(args.work, kind)
        todo = [i for i in order if records[i]["case_id"] not in done]
        if todo and not args.summarize_only:
            from tqdm.auto import tqdm

            start = time.perf_counter()
            with open(args.work / f"{kind}.jsonl", "a") as f:
                for i in tqdm(todo, desc=f"tracing ({kind})"):
                    rewrite = records[i]["requested_rewrite"]
                    prompt = rewrite["prompt"].replace("{}", rewrite["subject"])
                    result = hooklab.trace(model, prompt, rewrite["subject"], kind=kind, window=args.window,
                                           samples=args.samples)  # fmt: skip
                    f.write(json.dumps({"case_id": records[i]["case_id"], **result.to_dict()}) + "\n")
                    f.flush()
            print(f"{kind}: {len(todo)} traces in {time.perf_counter() - start:.0f} s", flush=True)
            done = traced(args.work, kind)
        chosen = [records[i]["case_id"] for i in order if records[i]["case_id"] in done]
        results = [TraceResult.from_dict({k: v for k, v in done[c].items() if k != "case_id"}) for c in chosen]
        summary = summarize(results)
        summaries.append(summary)
        summary.plot(args.out / f"trace-facts-{args.model}-{kind}.png", model_name=model_name)
        (args.out / f"trace-facts-{args.model}-{kind}.json").write_text(json.dumps(summary.to_dict(), indent=1))
    plot_summaries(summaries, args.out / f"trace-facts-{args.model}-lines.png", model_name=model_name)
    report(summaries, args, len(records), model_name)


def report(summaries, args, n_records: int, model_name: str) -> None:
    from hooklab.locate import CLASSES

    lines = [
        f"# Causal traces of known facts: {model_name}",
        "",
        f"{summaries[0].n_prompts} of the {n_records} records of `{args.records.name}` "
        f"({'all' if summaries[0].n_prompts == n_records else f'the first of a seed-{args.seed} random order'}), "
        f"target the model's own answer, {args.samples} samples, noise {summaries[0].noise:.3f} "
        f"(3 × embedding std), window {args.window}. "
        f"Machine: {_report.machine('cuda' if torch.cuda.is_available() else 'cpu')}. `{_report.command()}`",
        "",
    ]
    cells = []
    for s in summaries:
        subject_layer, subject_peak = s.peak("Last subject token")
        last_layer, last_peak = s.peak("Last token")
        curve = " ".join(f"{v:.3f}" for v in s.effect[CLASSES.index("Last subject token")].tolist())
        cells.append([s.kind, s.n_prompts, f"{s.high:.3f}", f"{s.low:.3f}", f"{s.total_effect:.3f}",
                      f"{subject_layer}: {subject_peak:.3f}", f"{last_layer}: {last_peak:.3f}", curve])  # fmt: skip
    headers = ["kind", "prompts", "mean p clean", "mean p corrupted", "total effect",
               "peak AIE at last subject token (layer: AIE)", "peak AIE at last token (layer: AIE)",
               "AIE at last subject token, layers 0.."]  # fmt: skip
    lines += [_report.markdown_table(headers, cells), ""]
    lines += [f"![{s.kind}](trace-facts-{args.model}-{s.kind}.png)" for s in summaries]
    lines += ["", f"![lines](trace-facts-{args.model}-lines.png)"]
    _report.write_results(f"trace-facts-{args.model}", "\n".join(lines) + "\n", folder=args.out)


if __name__ == "__main__":
    main()
