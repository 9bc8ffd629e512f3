"""Start-up cost of the data layer: align's own seconds before the first step, against what
plain trl spends on the same rows, cold (empty datasets cache) and cached (a second launch).

    python benchmarks/startup.py                         # 100,000 SFT rows
    python benchmarks/startup.py --rows 1000000          # a million (minutes on 2 cores)
    python benchmarks/startup.py --rows 1000000 --no-trl # align's data layer only
    PYTHONPATH=OLD_CHECKOUT python benchmarks/startup.py --label before --about "main at abc123"
                                                         # tag the figures in the results

Writes an SFT JSON Lines file of --rows rows (`messages`, user question + assistant answer, an
`id`) into --work, then runs two kinds of launch, each one fresh Python process:

- plain trl: `datasets.load_dataset("json", FILE)` (load s), then `trl.SFTTrainer(...)` on it
  with the tiny model align builds (tiny://base), max_steps=1 (trl s: chat template,
  tokenisation, truncation: what trl does before its first step);
- align: the same `load_dataset` (load s), then `align.data.load_stage_data(data=local,
  path=FILE, stage sft)` (align's own s: datasets has already read the file in this process,
  so what remains is align's checks, normalisation and its call of load_dataset), then the same
  SFTTrainer on its train split (trl s).

Each launch runs twice with its own HF_DATASETS_CACHE: first with an empty folder (cold), then
again with the same folder (cached: what every later launch, and every other rank, pays).
The goal (issue 14): align's own seconds no more than 10% of plain trl's load s + trl s, cold
and cached.

Results: the table is printed; --raw (benchmarks/startup_results.json) keeps every run by label
and row count, and the `## startup` section of --results (benchmarks/CPU_RESULTS.md) is
rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from machine import machine

HERE = Path(__file__).resolve().parent
SECTION = "## startup"
WORDS = ("alpha beta gamma delta sum product carry digit number answer question explain step "
         "first second then total result check value simple").split()


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    """An SFT file of `rows` conversations, about 40 words each; deterministic for a seed."""
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(rows):
            a, b = rng.randrange(1000), rng.randrange(1000)
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(10, 30)))
            f.write(json.dumps({
                "id": i,
                "messages": [
                    {"role": "user", "content": f"What is {a} + {b}? {words}"},
                    {"role": "assistant", "content": f"{words} The answer is {a + b}."},
                ],
            }) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------- one launch (child)


def child(side: str, data_file: str, out_dir: str, trl: bool) -> dict:
    import logging

    logging.disable(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    timings: dict = {}
    start = time.perf_counter()
    train = datasets.load_dataset("json", data_files=data_file, split="train")
    timings["load_s"] = time.perf_counter() - start
    if side == "align":
        from align.data import load_stage_data

        # datasets has read the file (as plain trl's launch does): what remains is align's own.
        start = time.perf_counter()
        train = load_stage_data({"path": data_file}, "sft").train
        timings["data_s"] = time.perf_counter() - start
    timings["rows"] = len(train)
    if trl:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        from align.models.tiny import resolve_model_path

        model_path = resolve_model_path("tiny://base")
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path)
        args = SFTConfig(output_dir=out_dir, max_steps=1, report_to=[], use_cpu=True,
                         save_strategy="no", max_length=128)
        start = time.perf_counter()
        SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
        timings["trl_s"] = time.perf_counter() - start
    return timings


# --------------------------------------------------------------------------- the comparison


def launch(side: str, data_file: Path, cache: Path, work: Path, trl: bool) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(dir=work) as out:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--file",
               str(data_file), "--out", out] + ([] if trl else ["--no-trl"])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(rows: int, work: Path, trl: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data_file = work / f"sft_{rows}.jsonl"
    if not data_file.exists():
        write_rows(data_file, rows)
    result = {"rows": rows, "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
              "load_avg_before": round(os.getloadavg()[0], 2), "trl": trl, "launches": {}}
    caches = {side: work / f"cache-{side}-{rows}" for side in ("plain", "align")}
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    for state in ("cold", "cached"):
        for side in ("plain", "align"):
            result["launches"][f"{side} {state}"] = launch(side, data_file, caches[side], work, trl)
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    result["load_avg_after"] = round(os.getloadavg()[0], 2)
    per = 100_000 / rows
    for state in ("cold", "cached"):
        plain, align = result["launches"][f"plain {state}"], result["launches"][f"align {state}"]
        own = align["data_s"]
        trl_total = plain["load_s"] + plain.get("trl_s", 0.0)
        result[state] = {
            "align_own_s_per_100k": round(own * per, 3),
            "plain_trl_s_per_100k": round(trl_total * per, 3) if trl else None,
            "share_of_trl": round(own / trl_total, 3) if trl and trl_total else None,
        }
    return result


def _s(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: dict) -> str:
    lines = ["| label | rows | state | plain: load s | plain: trl s | align: load s | "
             "align: own s | align: trl s | align's own s / 100k rows | plain trl s / 100k rows | "
             "align's own / plain trl |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results.values(), key=lambda r: (r["rows"], r["label"] != "before", r["label"])):
        for state in ("cold", "cached"):
            plain, align = r["launches"][f"plain {state}"], r["launches"][f"align {state}"]
            fig = r[state]
            share = "-" if fig["share_of_trl"] is None else f"{fig['share_of_trl']:.1%}"
            lines.append(
                f"| {r['label']} | {r['rows']:,} | {state} | {_s(plain['load_s'])} | "
                f"{_s(plain.get('trl_s'))} | {_s(align['load_s'])} | {_s(align['data_s'])} | "
                f"{_s(align.get('trl_s'))} | "
                f"{_s(fig['align_own_s_per_100k'])} | {_s(fig['plain_trl_s_per_100k'])} | {share} |")
    return "\n".join(lines)


def write_section(results_md: Path, raw: dict) -> None:
    m = raw["machine"]
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items())
    runs = "; ".join(f"{r['label']}{' (' + r['about'] + ')' if r.get('about') else ''} "
                     f"{r['rows']:,} rows: {r['date']}, load average "
                     f"{r['load_avg_before']} before / {r['load_avg_after']} after"
                     for r in sorted(raw["runs"].values(), key=lambda r: (r["rows"], r["label"])))
    section = f"""{SECTION}: the data layer before the first step, align vs plain trl (SFT JSON Lines)

`python benchmarks/startup.py [--rows N] [--label L]` (docstring: what each figure is). Each
launch is a fresh process; cold = an empty HF_DATASETS_CACHE, cached = a second launch with the
same cache. plain trl: `datasets.load_dataset` + `SFTTrainer(...)` (max_steps=1, tiny model);
align: the same `load_dataset`, then `load_stage_data` (align's own s: the file is already read
in that process) + the same SFTTrainer. Goal: align's own <= 10% of plain trl's load + trl s,
cold and cached.

A `-` was not measured: `--no-trl` runs (the 1,000,000-row runs here: trl's preparation takes
about 90 s per 100,000 rows cold on this machine, some 15 minutes a launch at a million) time
the data layers only.

Machine: {m['cpu']}, {m['cores']} cores (shared with other work, so load varies), no GPU,
Python {m['python']}, {v}. Runs: {runs}.

{table(raw['runs'])}
"""
    text = results_md.read_text() if results_md.exists() else ""
    start = text.find(SECTION + ":")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--label", default="align", help="names this run in the results")
    parser.add_argument("--about", default="", help="what the label stands for (e.g. a commit)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "align-startup")
    parser.add_argument("--results", type=Path, default=HERE / "CPU_RESULTS.md")
    parser.add_argument("--raw", type=Path, default=HERE / "startup_results.json")
    parser.add_argument("--no-trl", dest="trl", action="store_false",
                        help="measure the data layers only (no SFTTrainer)")
    parser.add_argument("--child", choices=("plain", "align"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        print(json.dumps(child(opts.child, opts.file, opts.out, opts.trl)))
        return 0

    result = measure(opts.rows, opts.work.resolve(), opts.trl)
    result["label"], result["about"] = opts.label, opts.about
    raw = json.loads(opts.raw.read_text()) if opts.raw.exists() else {"runs": {}}
    raw["machine"] = machine(("trl", "transformers", "datasets", "pyarrow"))
    raw["runs"][f"{opts.label} {opts.rows}"] = result
    opts.raw.write_text(json.dumps(raw, indent=1) + "\n")
    print(table({"this": result}))
    write_section(opts.results, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
