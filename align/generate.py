"""Generate training data: sample n completions per prompt from a model or a teacher endpoint,
score every sample with the `rewards:` section, keep the good ones (rejection sampling) and pair
the best with the worst (preference pairs).

    python align/generate.py                                  # tiny SFT model, a+b prompts
    python align/generate.py model.name_or_path=outputs/sft/<run id> generator.n=8
    python align/generate.py data=local data.path=prompts.jsonl rewards=math
    python align/generate.py prompts.template=tmpl.txt prompts.topics=[graphs,sorting]
    python align/generate.py generator.backend=endpoint generator.base_url=http://localhost:8000/v1 \
        generator.model=Qwen/Qwen2.5-7B-Instruct generator.api_key_env=OPENAI_API_KEY
    accelerate launch --config_file launch/ddp.yaml align/generate.py ...     # prompts split

Prompts: the prompt rows GRPO reads (`data=`, `prompt` + any columns the rewards read, e.g.
`solution`), the first `prompts.max_prompts` of them; or, from nothing, `prompts.template` (a file
holding `{topic}`) filled in with each of `prompts.topics` (a list or a file; align.data.prompts).

Generators (`generator.backend`): `hf` samples the `model:` section (a hub id, a folder, a PEFT
adapter folder on its base model, or a training run folder: its final/) with Hugging Face
`generate`; `vllm` the same model with vLLM (the `vllm` extra); `endpoint` asks an
OpenAI-compatible server (align.models.endpoint): chat prompts go to chat completions, plain
strings to completions (`generator.api=chat` sends both to chat). Its API key comes from the
environment variable `generator.api_key_env` names, never from the config, and is never written.

Outputs (the run folder, `outputs/generate/<run id>/`, each file written atomically):
  samples.jsonl  every sample: prompt_index, sample_index, prompt, completion, reward (the
                 weighted total) and rewards (each reward), with the prompt's columns
  sft.jsonl      rejection-sampled rows (align.data.select.rejection_sample): prompt,
                 completion (+ the prompt's columns): `python align/sft.py data=local data.path=...`
  pairs.jsonl    chosen/rejected pairs (align.data.select.preference_pairs): prompt, chosen,
                 rejected (+ columns): `python align/dpo.py data=local data.path=...` (or kto.py)
  stats.json     counts (prompts, samples, kept, pairs, drops by reason), reward histograms
                 (the total and each reward), samples/s
  config.yaml    the resolved config, secrets removed

Resuming: samples are appended to `partial/rank-<r>.jsonl` per finished batch of
`generator.batch_size` prompts; running again into the same run folder (`hydra.run.dir=...`, or
`resume=true` with ALIGN_RUN_ID) skips the finished prompts. Batch k is always the same prompts
sampled with seed `seed + k` (the endpoint: `seed + prompt index`), so with a fixed seed a
resumed run writes what an uninterrupted one does. Under `accelerate launch` each rank takes
every world_size-th batch and writes its own shard; the main process merges them in prompt
order. Every key and value is checked, and an endpoint asked once (`GET /models`), before data
loads, a model is built or a sample is drawn; problems are one line and exit status 2.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from align.data.select import PAIR_TIES
from align.errors import AlignError, ConfigError, MissingExtraError
from align.schema import check_dataclass, raise_if, unknown_keys

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm", "endpoint")
#: align_sections brings the training sections in empty (align.run.conf.SECTIONS)
TOP_LEVEL = ("name", "seed", "output_dir", "resume", "model", "peft", "data", "rewards",
             "prompts", "generator", "select", "trainer", "tools", "logger", "heldout", "doctor")
#: generator keys that say how to reach the sampler, not what it samples: a resumed run may
#: change them (the same model served at another address, with another key, other timeouts)
TRANSPORT_KEYS = ("base_url", "concurrency", "timeout_s", "total_timeout_s", "max_retries",
                  "preflight_timeout_s", "api_key_env", "vllm_kwargs")
PARTIAL = "partial"


@dataclass
class PromptsConfig:
    """The `prompts:` section: a template x topics instead of `data`, and how many prompts."""

    #: a text file holding `{topic}`; null: the prompts are the `data` section's
    template: str | None = None
    #: a list of topics, or a file with one topic a line
    topics: Any | None = None
    #: template prompts as one user message (true) or plain text (false)
    chat: bool = True
    #: the first N prompts (null: all)
    max_prompts: int | None = None


@dataclass
class GeneratorConfig:
    """The `generator:` section."""

    backend: str = "hf"
    #: samples per prompt
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 32
    #: prompts per batch: the unit of progress, resume and multi-rank splitting
    batch_size: int = 16
    #: backend=vllm: more vllm.LLM arguments
    vllm_kwargs: dict[str, Any] | None = None
    #: backend=endpoint: the server's OpenAI base URL (http://host:port/v1) and model name
    base_url: str | None = None
    model: str | None = None
    #: the environment variable holding the API key (null: send none)
    api_key_env: str | None = "OPENAI_API_KEY"
    api: str = "auto"
    concurrency: int = 8
    timeout_s: float = 60.0
    total_timeout_s: float | None = None
    max_retries: int = 3
    preflight_timeout_s: float = 5.0


@dataclass
class SelectConfig:
    """The `select:` section (align.data.select)."""

    #: rejection sampling keeps samples whose total reward is >= threshold
    threshold: float = 1.0
    max_per_prompt: int = 1
    #: drop samples this similar to a kept one (difflib ratio); null: exact duplicates only
    near_duplicate: float | None = 0.9
    #: pairs need chosen - rejected >= min_margin (and > 0)
    min_margin: float = 0.0
    #: pairs per prompt: the best against the worst, then the next-worst distinct samples
    pairs_per_prompt: int = 1
    #: among samples of equal reward: "first" drawn, or "most_drawn" (the likeliest answer)
    ties: str = "first"
    #: bins of the reward histograms in stats.json
    bins: int = 10


def check_generator(g: GeneratorConfig) -> list[str]:
    errors = []
    if g.backend not in BACKENDS:
        errors.append(f"generator.backend={g.backend!r}: choose one of {', '.join(BACKENDS)}")
    for key in ("n", "max_tokens", "batch_size", "concurrency"):
        if getattr(g, key) < 1:
            errors.append(f"generator.{key}={getattr(g, key)}: must be >= 1")
    if g.temperature <= 0:
        errors.append(f"generator.temperature={g.temperature}: must be > 0 (sampling n "
                      "different completions per prompt)")
    if not 0 < g.top_p <= 1:
        errors.append(f"generator.top_p={g.top_p}: must be in (0, 1]")
    for key in ("timeout_s", "preflight_timeout_s"):
        if getattr(g, key) <= 0:
            errors.append(f"generator.{key}={getattr(g, key)}: must be > 0 seconds")
    if g.total_timeout_s is not None and g.total_timeout_s <= 0:
        errors.append(f"generator.total_timeout_s={g.total_timeout_s}: must be > 0 seconds "
                      "(or null: no deadline)")
    if g.max_retries < 0:
        errors.append(f"generator.max_retries={g.max_retries}: must be >= 0")
    from align.models.endpoint import APIS

    if g.api not in APIS:
        errors.append(f"generator.api={g.api!r}: choose one of {', '.join(APIS)}")
    if g.backend == "endpoint":
        if not g.base_url or not str(g.base_url).startswith(("http://", "https://")):
            errors.append(f"generator.base_url={g.base_url!r}: the endpoint's URL, e.g. "
                          "http://localhost:8000/v1")
        if not g.model:
            errors.append("generator.model is not set: the model name the endpoint serves")
        if g.api_key_env is not None and not os.environ.get(str(g.api_key_env)):
            errors.append(f"generator.api_key_env={g.api_key_env}: that environment variable "
                          "is not set; export it with the key, or set generator.api_key_env=null "
                          "for a server that needs none")
    return errors


def check_select(s: SelectConfig) -> list[str]:
    errors = []
    if s.max_per_prompt < 1:
        errors.append(f"select.max_per_prompt={s.max_per_prompt}: must be >= 1")
    if s.near_duplicate is not None and not 0 < s.near_duplicate <= 1:
        errors.append(f"select.near_duplicate={s.near_duplicate}: must be in (0, 1] (or null: "
                      "exact duplicates only)")
    if s.min_margin < 0:
        errors.append(f"select.min_margin={s.min_margin}: must be >= 0")
    if isinstance(s.pairs_per_prompt, bool) or s.pairs_per_prompt < 1:
        errors.append(f"select.pairs_per_prompt={s.pairs_per_prompt}: must be an integer >= 1")
    if s.ties not in PAIR_TIES:
        errors.append(f"select.ties={s.ties!r}: choose one of {', '.join(PAIR_TIES)}")
    if s.bins < 1:
        errors.append(f"select.bins={s.bins}: must be >= 1")
    return errors


@dataclass
class GenerateJob:
    """A checked generation job."""

    model: Any  # align.models.ModelConfig (unused by the endpoint)
    data: Any  # align.data.DataConfig (unused with a template)
    rewards: dict
    prompts: PromptsConfig
    template_texts: list[str]
    generator: GeneratorConfig
    select: SelectConfig
    seed: int
    out_dir: Path
    resume: bool
    config: dict  # the resolved config, secrets removed
    endpoint: Any = None  # align.models.endpoint.Endpoint
    source: dict = field(default_factory=dict)


def prepare(cfg: DictConfig | dict) -> GenerateJob:
    """Check every key and value (and ask the endpoint once) before anything loads."""
    from align.data import DataConfig
    from align.data.prompts import check_template_source
    from align.models import ModelConfig, check_model_config
    from align.run.spec import check_reward_specs, plain_config
    from align.secrets import redact

    plain = plain_config(cfg)
    errors = [e.replace("'<root>.", "'") for e in
              unknown_keys(plain, TOP_LEVEL, "<root>", "align's generate config")]
    for section in ("trainer", "tools", "logger", "heldout", "doctor"):
        if plain.get(section):
            errors.append(f"'{section}' does not apply to generation; remove it")
    prompts, e = check_dataclass(plain.get("prompts"), PromptsConfig, "prompts")
    errors += e
    generator, e = check_dataclass(plain.get("generator"), GeneratorConfig, "generator")
    errors += e or check_generator(generator)
    select, e = check_dataclass(plain.get("select"), SelectConfig, "select")
    errors += e or check_select(select)
    texts: list[str] = []
    if prompts is not None:
        if prompts.max_prompts is not None and prompts.max_prompts < 1:
            errors.append(f"prompts.max_prompts={prompts.max_prompts}: must be >= 1 (or null)")
        if prompts.template is not None:
            texts, e = check_template_source(prompts.template, prompts.topics)
            errors += e
        elif prompts.topics is not None:
            errors.append("prompts.topics is set but prompts.template is not: give the "
                          "template file the topics fill in")
    data, e = check_dataclass(plain.get("data"), DataConfig, "data")
    if prompts is None or prompts.template is None:
        errors += e
    model = None
    if generator is None or generator.backend != "endpoint":
        model, e = check_dataclass(plain.get("model"), ModelConfig, "model")
        errors += e or check_model_config(model)
        if model is not None and model.is_vision:
            errors.append(f"model.kind={model.kind!r}: generation samples text models only")
        peft = plain.get("peft") or {}
        if peft and peft.get("method", "none") != "none":
            errors.append("peft: generation samples a model as it is; to sample a trained "
                          "adapter, point model.name_or_path at its folder (or its run folder)")
    errors += check_reward_specs(plain.get("rewards"), "rewards", required=True)
    seed = plain.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        errors.append(f"seed={seed!r}: must be an integer in [0, 2**32)")
    if not plain.get("output_dir"):
        errors.append("config key 'output_dir' is empty: give the run folder")
    raise_if(errors)

    source: dict = {}
    endpoint = None
    if generator.backend == "endpoint":
        from align.models.endpoint import Endpoint, api_key_from_env, preflight

        endpoint = Endpoint(
            base_url=generator.base_url, model=generator.model,
            api_key=api_key_from_env(generator.api_key_env), api=generator.api, n=generator.n,
            temperature=generator.temperature, top_p=generator.top_p,
            max_tokens=generator.max_tokens, concurrency=generator.concurrency,
            timeout_s=generator.timeout_s, total_timeout_s=generator.total_timeout_s,
            max_retries=generator.max_retries,
            preflight_timeout_s=generator.preflight_timeout_s)
        preflight(endpoint)  # an unreachable server fails here, in seconds
        source = {"endpoint": generator.base_url, "model": generator.model}
    else:
        from align.models.factory import decide_for_device
        from align.models.source import resolve_source

        if generator.backend == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise MissingExtraError("generator.backend=vllm", "vllm", "vllm")
        name = run_folder_model(model.name_or_path)
        source = {"model": model.name_or_path}
        model = decide_for_device(replace(model, name_or_path=resolve_source(
            name, revision=model.revision)))
        if generator.backend == "vllm" and Path(model.name_or_path).is_dir():
            from align.models.inference import vllm_lora_adapter

            vllm_lora_adapter(Path(model.name_or_path), "generator.backend=vllm")
    return GenerateJob(model=model, data=data, rewards=plain["rewards"], prompts=prompts,
                       template_texts=texts, generator=generator, select=select, seed=int(seed),
                       out_dir=Path(plain["output_dir"]), resume=bool(plain.get("resume")),
                       config=redact(plain), endpoint=endpoint, source=source)


def run_folder_model(name_or_path: str) -> str:
    """A training run folder (config.yaml + final/) stands for its final/ model or adapter."""
    path = Path(name_or_path)
    if (path / "config.yaml").is_file() and (path / "final").is_dir():
        return str(path / "final")
    return name_or_path


# --------------------------------------------------------------------------- prompts


def load_prompts(job: GenerateJob) -> list[dict]:
    """The prompt rows: the template's, or the data layer's GRPO-shaped train split."""
    if job.prompts.template is not None:
        from align.data.prompts import template_rows, topics_of

        rows = template_rows(job.template_texts, topics_of(job.prompts.topics), job.prompts.chat)
    else:
        from align.data import load_stage_data

        train = load_stage_data(job.data, "grpo").train
        if job.prompts.max_prompts is not None and len(train) > job.prompts.max_prompts:
            train = train.select(range(job.prompts.max_prompts))
        rows = [dict(row) for row in train]
    if job.prompts.max_prompts is not None:
        rows = rows[:job.prompts.max_prompts]
    if not rows:
        raise ConfigError("there are no prompts to sample: the data is empty")
    return rows


# --------------------------------------------------------------------------- generators


def make_generator(job: GenerateJob):
    """sample(rows, first_index, batch_number, on_done) -> n completions per row; and close()."""
    g = job.generator
    if g.backend == "endpoint":
        from align.models.endpoint import EndpointSampler

        sampler = EndpointSampler(job.endpoint, seed=job.seed)

        def sample(rows, first, batch, on_done):
            return sampler.sample([r["prompt"] for r in rows],
                                  range(first, first + len(rows)), on_done)

        return sample, sampler.close
    settings = SimpleNamespace(n=g.n, temperature=g.temperature, top_p=g.top_p,
                               max_new_tokens=g.max_tokens, vllm_kwargs=g.vllm_kwargs)
    if g.backend == "vllm":
        from align.models import load_processing_class
        from align.models.inference import generate_vllm, vllm_engine

        tokenizer = load_processing_class(job.model)
        engine = vllm_engine(job.model, settings, job.seed)

        def sample(rows, first, batch, on_done):
            out = generate_vllm(job.model, tokenizer, [r["prompt"] for r in rows], settings,
                                job.seed + first * g.n, engine)
            on_done(len(rows) * g.n)
            return out

        return sample, lambda: None
    from align.device import check_placement
    from align.measure.generation import generate_completions
    from align.models.factory import process_placement
    from align.models.inference import load_for_inference

    # Each rank samples its own batches (run: k % world) on its own device: the placement's.
    model, tokenizer = load_for_inference(job.model)
    check_placement(model, process_placement(), "generator.backend=hf")

    def sample(rows, first, batch, on_done):
        repeated = [r["prompt"] for r in rows for _ in range(g.n)]
        flat = generate_completions(model, tokenizer, repeated, max_new_tokens=g.max_tokens,
                                    batch_size=len(repeated), do_sample=True,
                                    temperature=g.temperature, top_p=g.top_p,
                                    seed=job.seed + batch)
        on_done(len(flat))
        return [flat[i * g.n:(i + 1) * g.n] for i in range(len(rows))]

    return sample, lambda: None


class RewardFailed(AlignError):
    """A reward raised under `on_error: raise` while scoring generated samples."""


def score_batch(rows, completions, reward_funcs, weights, indices: list[int]) -> list[dict]:
    """One sample row per completion, scored (align.data.select.score_groups); `indices`: the
    prompts' numbers."""
    from align.data.select import score_groups

    try:
        groups = score_groups(rows, completions, reward_funcs, weights)
    except AlignError:
        raise
    except Exception as exc:
        raise RewardFailed(f"scoring the samples of prompts {indices[0]}-{indices[-1]} failed: "
                           f"{type(exc).__name__}: {' '.join(str(exc).split())} (fix the "
                           "reward, or set on_error: none or zero in its rewards entry to score "
                           "failing samples as None or 0)") from exc
    out = []
    for group in groups:
        for sample in group:
            index = indices[sample.pop("prompt_index")]
            out.append({"prompt_index": index, "sample_index": sample.pop("sample_index"),
                        **sample})
    return out


# --------------------------------------------------------------------------- the run


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _barrier(world: int) -> None:
    """Wait for every rank (a gloo group: generation needs no collective on the accelerator)."""
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")  # torchrun/accelerate set MASTER_ADDR, RANK ...
        dist.barrier()


def _sampling_keys(config: dict) -> dict:
    """The parts of a config that decide what is sampled (resuming must keep them)."""
    generator = {k: v for k, v in (config.get("generator") or {}).items()
                 if k not in TRANSPORT_KEYS}
    # an endpoint samples the model generator.model names: the `model` section is unused
    model = None if generator.get("backend") == "endpoint" else config.get("model")
    return {"seed": config.get("seed"), "model": model, "data": config.get("data"),
            "prompts": config.get("prompts"), "rewards": config.get("rewards"),
            "generator": generator}


def check_run_folder(job: GenerateJob) -> bool:
    """Whether the run folder holds samples of an earlier launch to continue; ConfigError when
    they were drawn with other settings (mixing them would make no data set)."""
    from align.run.resume import changed_keys

    config_file = job.out_dir / "config.yaml"
    started = (job.out_dir / PARTIAL).is_dir() or (job.out_dir / "samples.jsonl").is_file()
    if not started or not config_file.is_file():
        if job.resume:
            log.info("resume=true: %s holds no samples yet; starting from the first prompt",
                     job.out_dir)
        return False
    old = OmegaConf.to_container(OmegaConf.load(config_file))
    changed = changed_keys(_sampling_keys(old), _sampling_keys(job.config))
    if changed:
        raise ConfigError(
            f"{job.out_dir} holds samples drawn with other settings ({', '.join(changed[:8])}): "
            "generate into another run folder, or rerun with the settings in its config.yaml")
    return True


def run(cfg: DictConfig) -> dict:
    """Generate, score, select; write samples.jsonl, sft.jsonl, pairs.jsonl and stats.json."""
    from tqdm.auto import tqdm

    from align.files import write_atomic
    from align.run.shards import append_batch, read_shards
    from rewards import build_rewards

    job = prepare(cfg)  # every key and value checked, the endpoint asked, nothing loaded
    g = job.generator
    rows = load_prompts(job)  # bad rows fail here, before a model is built
    reward_funcs, weights = build_rewards(job.rewards)
    rank, world = _rank_and_world()
    continuing = check_run_folder(job)
    partial = job.out_dir / PARTIAL
    if rank == 0:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(job.out_dir / "config.yaml",
                     OmegaConf.to_yaml(OmegaConf.create(job.config)))
        if continuing and not partial.is_dir():  # a finished run: its samples are the shard
            partial.mkdir()
            os.replace(job.out_dir / "samples.jsonl", partial / "rank-0.jsonl")
        read_shards(partial, "prompt_index", g.n, repair=True)  # drop half-written batches
    _barrier(world)
    done = read_shards(partial, "prompt_index", g.n, repair=False)
    done = {i: r for i, r in done.items() if i < len(rows)}
    batches = [range(i, min(i + g.batch_size, len(rows)))
               for i in range(0, len(rows), g.batch_size)]
    mine = [(k, b) for k, b in enumerate(batches)
            if k % world == rank and not all(i in done for i in b)]
    if done and rank == 0:
        log.info("continuing: %d of %d prompts already sampled in %s", len(done), len(rows),
                 job.out_dir)
    todo = sum(len(b) for _, b in mine) * g.n
    started = time.perf_counter()
    drawn = 0
    if mine:
        sample, close = make_generator(job)
        bar = tqdm(total=todo, unit="sample", desc=f"generating (rank {rank})" if world > 1
                   else "generating", disable=None)
        try:
            for k, batch in mine:
                # a batch half done by a launch with another batch size: redo only what is missing
                indices = [i for i in batch if i not in done]
                batch_rows = [rows[i] for i in indices]
                completions = sample(batch_rows, indices[0], k, bar.update)
                scored = score_batch(batch_rows, completions, reward_funcs, weights, indices)
                append_batch(partial, rank, scored)
                drawn += len(scored)
        finally:
            bar.close()
            close()
    seconds = time.perf_counter() - started
    _barrier(world)
    if rank != 0:
        return {}
    # every rank's samples of this launch (rank 0 counts its own as `drawn`)
    drawn = (len(rows) - len(done)) * g.n
    return finish(job, rows, read_shards(partial, "prompt_index", g.n, repair=False),
                  drawn, seconds, len(done))


def finish(job: GenerateJob, rows: list[dict], done: dict[int, list[dict]], drawn: int,
           seconds: float, resumed: int) -> dict:
    """Merge the shards in prompt order, select, and write the four files."""
    import shutil

    from align.data.select import preference_pairs, rejection_sample, reward_histogram
    from align.files import write_json, write_jsonl

    missing = [i for i in range(len(rows)) if i not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} prompts have no samples after every rank finished "
                           f"(first: {missing[:5]})")
    groups = [sorted(done[i], key=lambda s: s["sample_index"]) for i in range(len(rows))]
    samples = [s for group in groups for s in group]
    s = job.select
    sft_rows, kept = rejection_sample(groups, s.threshold, s.max_per_prompt, s.near_duplicate)
    pair_rows, paired = preference_pairs(groups, s.min_margin, s.pairs_per_prompt, s.ties)
    names = list(job.rewards)
    stats = {
        **job.source, "backend": job.generator.backend, "seed": job.seed,
        "prompts": len(rows), "samples_per_prompt": job.generator.n, "samples": len(samples),
        "kept": kept["kept"], "pairs": paired["pairs"],
        "dropped": {"rejection_sampling": {k: v for k, v in kept.items()
                                           if k not in ("prompts", "prompts_kept", "kept")},
                    "pairs": {k: v for k, v in paired.items() if k not in ("prompts", "pairs")}},
        "prompts_kept": kept["prompts_kept"],
        "select": {"threshold": s.threshold, "max_per_prompt": s.max_per_prompt,
                   "near_duplicate": s.near_duplicate, "min_margin": s.min_margin,
                   "pairs_per_prompt": s.pairs_per_prompt, "ties": s.ties},
        "histograms": {"reward": reward_histogram([x["reward"] for x in samples], s.bins),
                       **{name: reward_histogram([x["rewards"].get(name) for x in samples],
                                                 s.bins) for name in names}},
        "resumed_prompts": resumed,
        "samples_drawn": drawn,
        "seconds": round(seconds, 2),
        "samples_per_s": round(drawn / seconds, 2) if drawn and seconds > 0 else None,
    }
    write_jsonl(job.out_dir / "samples.jsonl", samples)
    write_jsonl(job.out_dir / "sft.jsonl", (_training_row(r, ("reward",)) for r in sft_rows))
    write_jsonl(job.out_dir / "pairs.jsonl",
                (_training_row(r, ("chosen_reward", "rejected_reward")) for r in pair_rows))
    write_json(job.out_dir / "stats.json", stats)
    shutil.rmtree(job.out_dir / PARTIAL, ignore_errors=True)
    for line in summary_lines(stats):
        print(line)
    print(f"run folder: {job.out_dir}")
    return stats


def _training_row(row: dict, scores: tuple[str, ...]) -> dict:
    """A row as written to sft.jsonl / pairs.jsonl: the rewards stay in samples.jsonl."""
    return {k: v for k, v in row.items() if k not in scores}


def summary_lines(stats: dict) -> list[str]:
    drops = ", ".join(f"{k} {v}" for k, v in stats["dropped"]["rejection_sampling"].items() if v)
    pair_drops = ", ".join(f"{k} {v}" for k, v in stats["dropped"]["pairs"].items() if v)
    reward = stats["histograms"]["reward"]
    mean = reward["mean"] if reward["mean"] is not None else float("nan")
    return [
        (f"prompts: {stats['prompts']} x {stats['samples_per_prompt']} samples = "
         f"{stats['samples']} ({stats['samples_drawn']} drawn now, "
         f"{stats['samples_per_s'] or 0:.1f} samples/s)"),
        f"reward: mean {mean:.3f} over {reward['n']} scored, {reward['unscored']} unscored",
        f"sft.jsonl: {stats['kept']} rows kept" + (f" (dropped: {drops})" if drops else ""),
        f"pairs.jsonl: {stats['pairs']} pairs" + (f" (no pair: {pair_drops})" if pair_drops else ""),
    ]


if __name__ == "__main__":
    from align.run.cli import main

    main("generate", run)
