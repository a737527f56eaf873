"""Lifelong editing on zsRE: WISE against ROME and MEMIT applied one edit after another.

The WISE paper's protocol (Wang et al. 2024, section 4.1): T edits are made one after another
on the same model, then the final model is evaluated on all T records (rel, gen, loc with
``hooklab.evaluate(..., protocol="zsre")``; loc compares with the unedited model). One run per
method makes max(T) edits in order and evaluates at each T on the way: the model after the
first T edits of a longer sequence is exactly the model a run of T edits ends with.

Runs are resumable (state under ``--work``; start the same command again) and each method may
run in its own process; every process rewrites the table from all results found under
``--work``. ROME and MEMIT use key statistics collected once on the unedited model. WISE's
unrelated texts are NQ questions of the records not edited; a run over every record of the file
(T = 1000) takes NQ-style questions the model writes instead (``--unrelated written``).

    python benchmarks/lifelong.py --methods wise --T 1 10 100 --threads 1           # this CPU
    python benchmarks/lifelong.py --methods wise --T 1 10 100 1000 --unrelated written --device cuda
    python benchmarks/lifelong.py --methods rome memit --T 1 10 --threads 1
    python benchmarks/lifelong.py --methods wise --T 1 10 100 --model synthetic:llama3-8b --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import _report

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
METHODS = ("wise", "rome", "memit")
SAVE_EVERY = 25  # edits between saved states (a restart loses at most this many)
UNRELATED_RECORDS = 100  # --unrelated nq: the file's last records give WISE's unrelated texts


class Sequential:
    """ROME or MEMIT edits applied one after another; ``undone()`` gives the unedited model for loc."""

    def __init__(self, model, layers):
        from hooklab import sites

        self.model = model
        self.originals = {layer: sites.mlp_out(model, layer).weight.detach().clone() for layer in layers}

    @contextmanager
    def undone(self):
        import torch

        from hooklab import sites

        edited = {}
        with torch.no_grad():
            for layer, weight in self.originals.items():
                site = sites.mlp_out(self.model, layer)
                edited[layer] = site.weight.detach().clone()
                site.weight.copy_(weight)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for layer, weight in edited.items():
                    sites.mlp_out(self.model, layer).weight.copy_(weight)


def load_model(args):
    import hooklab

    source = args.model
    if source.startswith("synthetic:"):
        sys.path.insert(0, str(HERE))
        from synthetic import build

        import torch

        out = Path(args.work) / f"ckpt-{source.split(':', 1)[1]}"
        if not (out / "config.json").exists():
            build(out, shape=source.split(":", 1)[1], dtype=getattr(torch, args.dtype or "bfloat16"))
        source = out
    if args.gpus:
        return hooklab.load(source, n_devices=args.gpus, dtype=args.dtype)
    return hooklab.load(source, device=args.device, dtype=args.dtype)


def run(method: str, args, records: list[dict]) -> None:
    """Edit records[0 .. max(T)) in order on a fresh model, evaluating at each T; resumes from ``--work``."""
    import hooklab
    from hooklab import sites
    from hooklab.edit.stats import second_moments

    work = Path(args.work) / method
    work.mkdir(parents=True, exist_ok=True)
    progress_file = work / "progress.json"
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else {"done": 0, "seconds": [], "results": {}}
    model = load_model(args)
    requests = hooklab.requests_from_zsre(records)
    n = max(args.T)
    if method == "wise":
        hparams = hooklab.WiseHparams.for_model(model).to_dict() | json.loads(args.hparams or "{}")
        state = work / "memory.safetensors"
        if progress["done"] and state.exists():
            memory = hooklab.WiseMemory.load(model, state)
            progress["done"] = len(memory)
        else:
            memory = hooklab.WiseMemory(model, hparams, unrelated=unrelated_texts(args, model, records, work))
            progress = {"done": 0, "seconds": [], "results": {}}
        reference = memory

        def edit_one(request):
            memory.add(request)

        def save():
            memory.save(state)
    else:
        hp_cls = hooklab.RomeHparams if method == "rome" else hooklab.MemitHparams
        hp = hp_cls.for_model(model)
        reference = Sequential(model, hp.edit_layers)
        moments, _ = second_moments(model, hp.edit_layers, args.corpus, hp.mom2_tokens)  # the unedited model's
        stats = {sites.mlp_out(model, layer).hook_in: c for layer, c in moments.items()}
        edits_dir = work / "edits"
        edits_dir.mkdir(exist_ok=True)
        saved = sorted(edits_dir.glob("*.safetensors"))[: progress["done"]]
        for path in saved:  # resume: the same edits again, in order
            hooklab.apply_edit(model, path)
        progress["done"] = len(saved)

        def edit_one(request):
            e = hooklab.edit(model, request, method=method, hparams=hp, stats=stats)
            e.save(edits_dir / f"{progress['done']:05d}.safetensors")

        def save():
            pass

    from tqdm.auto import tqdm

    progress["command"] = _report.command()
    on_gpu = bool(args.gpus) or (args.device or "").startswith("cuda")
    progress["machine"] = _report.machine("cuda" if on_gpu else "cpu", gpus=args.gpus or 1)
    for i in tqdm(range(progress["done"], n), desc=method, initial=progress["done"], total=n):
        start = time.perf_counter()
        edit_one(requests[i])
        progress["seconds"].append(time.perf_counter() - start)
        progress["done"] = i + 1
        t = i + 1
        if t in args.T and str(t) not in progress["results"]:
            start = time.perf_counter()
            scores = hooklab.evaluate(model, records[:t], "zsre", edit=reference)
            scores.update(eval_seconds=time.perf_counter() - start, seconds_per_edit=sum(progress["seconds"][:t]) / t,
                          last_seconds_per_edit=sum(progress["seconds"][max(0, t - 100) : t]) / min(t, 100))  # fmt: skip
            if method == "wise":
                scores["overhead"] = routing_overhead(model, memory, records)
            progress["results"][str(t)] = scores
            logging.info("%s T=%d: %s", method, t, scores)
        if t % SAVE_EVERY == 0 or t in args.T or t == n:
            save()
            progress_file.write_text(json.dumps(progress))
    progress_file.write_text(json.dumps(progress))


def unrelated_texts(args, model, edited: list[dict], work: Path) -> list[str] | None:
    """WISE's unrelated texts (the routing loss's negatives); none of them is a question loc is scored on.

    ``nq``: the NQ questions with their answers (``loc`` + ``loc_ans``) of the file's last
    ``UNRELATED_RECORDS`` records, as in the reference's zsRE runs (the edited records must not
    reach them); ``nq-rest``: those of every record not edited; ``written``: NQ-style questions the
    model writes after a few hand-written ones (for sequences that edit the whole file);
    ``model``: the memory's default, texts the model writes itself.
    """
    if args.unrelated == "model":
        return None
    if args.unrelated == "written":
        return written_questions(model, work / "written.json")
    records = json.loads(Path(args.records).read_text())
    if args.unrelated == "nq-rest":
        scored = {r["loc"] for r in edited}
        texts = [r["loc"] + " " + r["loc_ans"] for r in records if r["loc"] not in scored]
        if len(texts) < UNRELATED_RECORDS:
            raise SystemExit(f"only {len(texts)} records are not edited; use --unrelated written.")
        return texts
    first = len(records) - UNRELATED_RECORDS
    if args.offset + len(edited) > first:
        raise SystemExit(f"the edited records reach record {first}, whose NQ questions are the unrelated texts; "
                         "use --unrelated written or fewer edits.")  # fmt: skip
    return [r["loc"] + " " + r["loc_ans"] for r in records[first:]]


WRITTEN_SHOTS = (  # hand-written, in the NQ lines' form: question, then answer
    "nq question: who sang the original version of hotel california Eagles",
    "nq question: when did the first man walk on the moon 1969",
    "nq question: what is the largest organ of the human body the skin",
    "nq question: where is the great barrier reef located Queensland, Australia",
)


def written_questions(model, path: Path, count: int = 1000, batch: int = 100) -> list[str]:
    """``count`` NQ-style lines the model writes after ``WRITTEN_SHOTS`` (seeded; kept in ``path``)."""
    import torch

    if path.exists():
        return json.loads(path.read_text())
    tok = model.tokenizer
    prompt = "\n".join(WRITTEN_SHOTS) + "\nnq question:"
    ids = tok([prompt] * batch, return_tensors="pt")["input_ids"].to(model.cfg.device)
    texts: list[str] = []
    with torch.random.fork_rng(devices=[ids.device] if ids.is_cuda else []):  # leaves the run's random state alone
        torch.manual_seed(0)
        while len(texts) < count:
            out = model.bridge.generate(ids, max_new_tokens=24, do_sample=True, top_k=40, stop_at_eos=False, verbose=False)
            for row in out[:, ids.shape[1] :]:
                line = tok.decode(row, skip_special_tokens=True).split("\n")[0].strip()
                if len(line.split()) >= 3:
                    texts.append("nq question: " + line)
    texts = texts[:count]
    path.write_text(json.dumps(texts))
    return texts


def routing_overhead(model, memory, records: list[dict], repeats: int = 20) -> float:
    """Forward time with the memory attached over detached, minus 1: alternating runs, median ratio."""
    import statistics

    import torch

    from hooklab.edit.tokens import pad_id, pad_right

    tok = model.tokenizer
    rows = [tok(r["src"] + " " + r["alt"])["input_ids"] for r in records[:16]]
    ids, mask = pad_right(rows, pad_id(tok), model.cfg.device)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # GPU work is asynchronous
    ratios = []
    with torch.no_grad():
        for _ in range(repeats):
            times = {}
            for attached in (True, False):
                with memory.attached() if attached else memory.undone():
                    sync()
                    start = time.perf_counter()
                    model(ids, attention_mask=mask)
                    sync()
                    times[attached] = time.perf_counter() - start
            ratios.append(times[True] / times[False])
    return statistics.median(ratios) - 1


def report(args) -> str:
    commands, rows = [], []
    for method in METHODS:
        path = Path(args.work) / method / "progress.json"
        if not path.exists():
            continue
        progress = json.loads(path.read_text())
        if "command" in progress:
            commands.append(f"- {method}: `{progress['command']}` ({progress['machine']})")
        for t, r in sorted(progress["results"].items(), key=lambda kv: int(kv[0])):
            overhead = f"{100 * r['overhead']:+.1f} %" if "overhead" in r else ""
            rows.append([method, t, *(f"{r[k]:.3f}" for k in ("rel", "gen", "loc")), f"{r['seconds_per_edit']:.2f}",
                         f"{r['last_seconds_per_edit']:.2f}", f"{r['eval_seconds']:.0f}", overhead])  # fmt: skip
        if progress["done"] < max(int(t) for t in args.T) and progress["done"]:
            rows.append([method, f"({progress['done']} edits made when last saved)", "", "", "",
                         f"{sum(progress['seconds']) / len(progress['seconds']):.2f}"])  # fmt: skip
    header = (f"# Lifelong editing on zsRE ({args.model})\n\nRecords {Path(args.records).name} from record {args.offset}, "
              "the first T with a non-empty target (`alt`), edited one after another; the final model evaluated on all T "
              "(rel, gen, loc: `hooklab.evaluate(..., protocol=\"zsre\")`). Routing overhead: forward time of 16 "
              "prompts with the memory attached over detached, minus 1 (median of 20 alternating runs).\n\n"
              + "\n".join(commands) + "\n\n")  # fmt: skip
    headers = ["method", "T", "rel", "gen", "loc", "s/edit (mean of T)", "s/edit (last 100)", "eval s",
               "routing overhead"]  # fmt: skip
    return header + _report.markdown_table(headers, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--T", nargs="+", type=int, default=[1, 10, 100, 1000])
    parser.add_argument("--records", default=str(SHARED / "zsre" / "zsre_mend_train_1k.json"))
    parser.add_argument("--offset", type=int, default=0, help="first record of the sequence")
    parser.add_argument("--corpus", default=str(SHARED / "corpus" / "wikitext_valid_test.txt"))
    parser.add_argument("--model", default="smollm2", help="smollm2, a folder, or synthetic:<shape> (random weights)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--gpus", type=int, default=None, help="place the model over this many GPUs")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--hparams", default=None, help="JSON of WiseHparams fields to override")
    parser.add_argument("--unrelated", default="nq-rest", choices=["nq-rest", "nq", "written", "model"],
                        help="WISE's unrelated texts (see unrelated_texts)")
    parser.add_argument("--work", default="/tmp/hooklab-lifelong")
    parser.add_argument("--out", default=str(HERE / "results" / "lifelong.md"))
    parser.add_argument("--report", action="store_true", help="only rewrite the table from --work")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in ("hooklab.edit", "hooklab.loading"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report:
        records = json.loads(Path(args.records).read_text())[args.offset :]
        usable = [r for r in records if r["alt"].strip()]  # zsRE has records without a new target: nothing to edit
        logging.info("%d records from %d on, %d without a target skipped", len(records), args.offset, len(records) - len(usable))
        records = usable[: max(args.T)]
        if len(records) < max(args.T):  # the largest T takes every usable record
            args.T = sorted({min(t, len(records)) for t in args.T})
        for method in args.methods:
            run(method, args, records)
    _report.write_results(Path(args.out).stem, report(args), folder=Path(args.out).parent)


if __name__ == "__main__":
    main()
