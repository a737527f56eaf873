"""Edit speed: seconds per ROME edit and per MEMIT batch, and on GPUs the memory each card takes.

CPU (the default model, CounterFact known facts as requests):

    python benchmarks/edit.py --threads 2                       # ROME ×5, MEMIT 50 and 1000
    python benchmarks/edit.py --rome-n 3 --memit 50 --reference  # with the reference-style loop

GPUs (a synthetic Llama-3-8B-shaped checkpoint, layers split over the GPUs, synthetic requests):

    python benchmarks/edit.py --device cuda --gpus 2 --shape llama3-8b --rome-n 3 --memit 50 --stats-tokens 20000

The synthetic path also runs on the CPU (``--synthetic --shape tiny --gpus 2``: two CPU slots).

Key statistics are collected first and timed apart (on the CPU from the WikiText corpus; on a
GPU machine, which may lack it, from random token ids: the numbers then mean nothing, the speed
and memory do). ``--reference`` also times v* computed the way the reference code (and
EasyEdit) does: every step re-runs the whole batch of prompts and unembeds every position; the
ratio to hooklab is measured in the same process. Prints a table and writes
``benchmarks/results/edit-speed-<machine>.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

import _report

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
GiB = 1024**3


def synthetic_requests(n: int) -> list:
    """CounterFact-shaped requests for a model without real knowledge (speed only)."""
    import hooklab

    relations = ["{} is located in the city of", "The mother tongue of {} is", "{} was created by",
                 "{} plays the position of", "The headquarters of {} is in"]  # fmt: skip
    targets = [" Paris", " English", " Google", " Rome", " Tokyo"]
    return [hooklab.EditRequest(relations[i % 5], f"Entity number {i}", targets[(i * 3) % 5]) for i in range(n)]


def requests_for(model_name: str, n: int) -> list:
    import hooklab

    path = SHARED / "counterfact_known_dev.json"
    if model_name == "smollm2" and path.is_file():
        records = json.loads(path.read_text())
        while len(records) < n:  # the 1000-batch reuses dev records once the 656 run out
            records = records + records
        return hooklab.requests_from_counterfact(records[:n])
    return synthetic_requests(n)


def gpu_memory(reset: bool = False) -> list[float]:
    out = []
    for i in range(torch.cuda.device_count()):
        out.append(torch.cuda.max_memory_allocated(i) / GiB)
        if reset:
            torch.cuda.reset_peak_memory_stats(i)
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_edit(model, requests, method: str, stats, hparams=None) -> tuple[float, list[float]]:
    import hooklab

    base = [torch.cuda.memory_allocated(i) / GiB for i in range(torch.cuda.device_count())]
    gpu_memory(reset=True)
    sync()
    start = time.perf_counter()
    edit = hooklab.edit(model, requests, method, hparams=hparams, stats=stats)
    sync()
    seconds = time.perf_counter() - start
    extra = [peak - b for peak, b in zip(gpu_memory(), base)]
    edit.undo()
    return seconds, extra


def reference_v(model, request, templates, hp, layer: int) -> None:
    """v* the way the reference code computes it (full prompts, all positions unembedded)."""
    from hooklab import sites
    from hooklab.edit.tokens import pad_id, pad_right, subject_prompt, target_ids

    tok = model.tokenizer
    target = target_ids(tok, request.target)
    rows, lookup, targets = [], [], []
    for template in templates:
        p = subject_prompt(tok, template.format(request.prompt), request.subject)
        rows.append(list(p.ids) + list(target[:-1]))
        lookup.append(p.subject_last)
        targets.append([(len(p.ids) - 1 + j, t) for j, t in enumerate(target)])
    kl = subject_prompt(tok, "{} is a", request.subject)
    rows.append(list(kl.ids))
    lookup.append(kl.subject_last)
    ids, mask = pad_right(rows, pad_id(tok), model.cfg.device)
    site = sites.mlp_out(model, layer)
    delta = torch.zeros(model.cfg.d_model, device=site.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    kl_init = None
    for p in model.hf_model.parameters():
        p.requires_grad_(False)

    def add(act, hook):
        act = act.clone()
        act[torch.arange(len(rows)), torch.tensor(lookup)] += delta
        return act

    for step in range(hp.v_steps):
        with model.hooks(fwd_hooks=[(site.hook_out, add)]):
            logits = model.bridge(ids, attention_mask=mask)  # (B, T, V): every position unembedded
        lp = logits.float().log_softmax(-1)
        nll = torch.stack([-torch.stack([lp[i, pos, t] for pos, t in tg]).mean() for i, tg in enumerate(targets)]).mean()
        kl_lp = lp[-1, len(kl.ids) - 1]
        if kl_init is None:
            kl_init = kl_lp.detach()
        loss = nll + hp.kl_factor * (kl_lp.exp() * (kl_lp - kl_init)).sum()
        if step == hp.v_steps - 1:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()


def time_reference(model, requests, stats, hp) -> float:
    """Seconds per ROME edit with v* computed as the reference code does (u and the rest as hooklab)."""
    from hooklab import sites
    from hooklab.edit.contexts import context_templates
    from hooklab.edit.rome.compute_u import compute_u, subject_keys

    templates = context_templates(model, hp.context_lengths, seed=hp.seed)
    entry = stats[sites.mlp_out(model, hp.layer).hook_in]
    moment = getattr(entry, "moment", entry)  # what hooklab.collect returns, or a plain matrix
    sync()
    start = time.perf_counter()
    for request in requests:
        compute_u(subject_keys(model, request, hp.layer, templates), moment)
        reference_v(model, request, templates, hp, hp.layer)
    sync()
    return (time.perf_counter() - start) / len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (with --gpus)")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--shape", default="llama3-8b", help="synthetic checkpoint shape on GPUs (benchmarks/synthetic.py)")
    parser.add_argument("--synthetic", action="store_true", help="the synthetic checkpoint on the CPU too")
    parser.add_argument("--embedded", action="store_true", help="the embedded SmolLM2 on the GPU too")
    parser.add_argument("--ckpt", type=Path, default=Path("/tmp/hooklab-bench"))
    parser.add_argument("--rome-n", type=int, default=5, help="ROME edits timed (each from the original model)")
    parser.add_argument("--memit", type=int, nargs="*", default=[50, 1000], help="MEMIT batch sizes")
    parser.add_argument("--memit-layers", type=int, nargs="+", default=None,
                        help="MEMIT's layer window (default: the model's defaults), e.g. across two GPUs")
    parser.add_argument("--reference", action="store_true", help="also time the reference-style v* loop")
    parser.add_argument("--stats-tokens", type=int, default=100_000)
    parser.add_argument("--stats-file", type=Path, default=None,
                        help="E[k kᵀ] by hook name in a safetensors file (metadata 'tokens'), instead of collecting")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import hooklab
    from hooklab import sites

    sys.path.insert(0, str(HERE))
    start = time.perf_counter()
    synthetic_model = args.synthetic or (args.device != "cpu" and not args.embedded)
    if not synthetic_model:
        model_name, model = "smollm2", hooklab.load("smollm2", device=args.device)
    else:
        import synthetic

        ckpt = synthetic.build(args.ckpt / args.shape, args.shape)
        model_name = f"synthetic {args.shape} (bf16)"
        if args.device == "cpu":  # CPU slots stand in for GPUs
            model = hooklab.load(ckpt, devices=["cpu"] * args.gpus, dtype=torch.bfloat16)
        else:
            model = hooklab.load(ckpt, n_devices=args.gpus, dtype=torch.bfloat16)
    load_seconds = time.perf_counter() - start
    weights = [torch.cuda.memory_allocated(i) / GiB for i in range(torch.cuda.device_count())]
    rome_hp, memit_hp = hooklab.RomeHparams.for_model(model), hooklab.MemitHparams.for_model(model)
    if args.memit_layers:
        memit_hp = dataclasses.replace(memit_hp, layers=tuple(args.memit_layers))
    layers = sorted({rome_hp.layer, *memit_hp.layers})
    names = [sites.mlp_out(model, layer).hook_in for layer in layers]
    corpus = SHARED / "corpus" / "wikitext_valid_test.txt"
    data = corpus if not synthetic_model and corpus.is_file() else torch.randint(3, model.cfg.d_vocab, (args.stats_tokens,))
    start = time.perf_counter()
    if args.stats_file:
        from safetensors import safe_open
        from safetensors.torch import load_file

        stats = load_file(args.stats_file)
        with safe_open(args.stats_file, "pt") as f:
            args.stats_tokens = int((f.metadata() or {}).get("tokens", 0)) or args.stats_tokens
    else:
        stats = hooklab.collect(model, data, names=names, reduce="second_moment", max_tokens=args.stats_tokens)
    sync()
    stats_seconds = time.perf_counter() - start
    # hooklab.collect leaves each layer's C (float64) on the GPU that computed it, for as long as it is held.
    held = [torch.cuda.memory_allocated(i) / GiB - w for i, w in enumerate(weights)]
    rows = []

    def report(name: str, seconds: float, extra: list[float], note: str = "") -> None:
        rows.append((name, seconds, extra, note))
        print(json.dumps({"run": name, "seconds": seconds, "extra_gib": extra, "note": note}), flush=True)

    requests = requests_for(model_name, max([args.rome_n, *args.memit, 1]))
    hooklab.edit(model, requests[0], "rome", hparams=rome_hp, stats=stats).undo()  # warm-up: templates, kernels
    per_edit, peaks = [], []
    for request in requests[: args.rome_n]:
        seconds, extra = time_edit(model, request, "rome", stats, rome_hp)
        per_edit.append(seconds)
        peaks.append(extra)
    if per_edit:
        rome_seconds = sum(per_edit) / len(per_edit)
        report(f"ROME, per edit (mean of {args.rome_n}, layer {rome_hp.layer})", rome_seconds,
               [max(p[i] for p in peaks) for i in range(len(weights))])  # fmt: skip
    if args.reference and per_edit:
        ref = time_reference(model, requests[: args.rome_n], stats, rome_hp)
        report("ROME, reference-style v* loop, per edit", ref, [], f"hooklab {ref / rome_seconds:.1f}x faster")
    for n in args.memit:
        seconds, extra = time_edit(model, requests[:n], "memit", stats, memit_hp)
        report(f"MEMIT, batch of {n} (layers {memit_hp.layers[0]}-{memit_hp.layers[-1]})", seconds, extra,
               f"{seconds / n:.2f} s per request")  # fmt: skip
        write(args, model, model_name, load_seconds, stats_seconds, weights, held, rows)


def write(args, model, model_name, load_seconds, stats_seconds, weights, held, rows) -> None:
    gpu = args.device != "cpu"
    kind = _report.machine_name(f"{args.gpus}gpu" if gpu else "cpu")
    lines = [
        f"# Edit speed: {model_name}",
        "",
        f"Machine: {kind}: {_report.machine(args.device, gpus=args.gpus)}. `{_report.command()}`",
        "",
        f"Load {load_seconds:.1f} s; key statistics of {args.stats_tokens} tokens {stats_seconds:.1f} s (not in the "
        "times below). Each time is compute + apply of the edit (undone after).",
        "",
    ]
    if gpu:
        lines += [
            f"Placement:\n\n```\n{model.placement}\n```",
            "",
            f"Weights per GPU: {' / '.join(f'{w:.2f}' for w in weights)} GiB; the key statistics, held by the caller "
            "on the GPU of their layer as `hooklab.collect` returns them (float64): "
            f"{' / '.join(f'{h:.2f}' for h in held)} GiB. Extra peak memory per GPU during the edit (above what was allocated before it):",
            "",
            _report.markdown_table(["run", "seconds", "extra peak GiB per GPU", "note"],
                                   [[r, f"{s:.2f}", " / ".join(f"{e:.2f}" for e in x), n] for r, s, x, n in rows]),
        ]  # fmt: skip
    else:
        lines.append(_report.markdown_table(["run", "seconds", "note"], [[r, f"{s:.2f}", n] for r, s, _, n in rows]))
    _report.write_results(f"edit-speed-{kind}", "\n".join(lines) + "\n", folder=args.out)


if __name__ == "__main__":
    main()
