"""Memory estimates for the planner (the library; the command is align/plan.py): will this job
fit on these GPUs, and if not, what to change.

It reads the
model's architecture from its config only: the model is instantiated on PyTorch's meta device
(no weights, no memory), which gives exact parameter counts for any architecture.

Per GPU it estimates: weights, gradients, optimizer states (the "model states", with the
same accounting DeepSpeed's own estimators use for ZeRO), activations with and without
gradient checkpointing, logits, the reference model (none with an adapter), GRPO's generation
KV cache, and vLLM's share of the card in colocate mode. These are estimates for planning:
allocator fragmentation, CUDA context (~0.5-1 GiB) and library workspaces come on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from align.device import AUTO_CHECKPOINTING_SHARE, Setup, auto_checkpointing

GIB = 2**30
CARDS = (24, 40, 80, 141)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelShape:
    total: int  # parameters
    largest_layer: int  # parameters of the largest single module (ZeRO-3 gathers one at a time)
    hidden: int
    layers: int
    vocab: int
    kv_dim: int  # key/value width per layer (kv heads x head dim)
    intermediate: int = 0  # MLP width
    gated: bool = True  # gated MLP (SwiGLU: gate, up, down) as in Llama/Qwen/Mistral
    linear: list[tuple[int, int]] = field(default_factory=list)  # (in, out) of adapter targets


@dataclass
class Plan:
    parts: dict[str, float]  # bytes per GPU
    cpu: float  # bytes of host memory per node for offloaded states
    notes: list[str]

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def model_shape(source: str, revision: str | None = None, trust_remote_code: bool = False,
                vision: bool = False) -> ModelShape:
    """Exact parameter counts from the model's config (`source`: a folder or a checked hub id,
    align.models.source.resolve_source), the model instantiated on the meta device."""
    import torch

    from align.models.source import meta_model

    model = meta_model(source, revision, trust_remote_code, vision)
    config = model.config
    # Tied weights count once (as DeepSpeed's model_to_params does).
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    output = model.get_output_embeddings()
    linear = [(m.in_features, m.out_features) for m in model.modules()
              if isinstance(m, torch.nn.Linear) and m is not output]
    gated = any(name.endswith(("gate_proj", "w1", "w3")) for name, _ in model.named_modules())
    intermediate = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    return ModelShape(total=total, largest_layer=largest, hidden=text.hidden_size,
                      layers=text.num_hidden_layers, vocab=text.vocab_size,
                      kv_dim=kv_heads * head_dim, intermediate=intermediate, gated=gated,
                      linear=linear)


# trl 1.16 computes log-probs for all three stages through a fused LM head that never builds
# the [tokens, vocab] logits: it projects [TOKEN_CHUNK, VOCAB_CHUNK] tiles into one buffer
# (trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE, trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE;
# a test keeps these in step with the installed trl). The buffer is not clamped to the vocab.
TRL_TOKEN_CHUNK = 4096
TRL_VOCAB_CHUNK = 32768


def activation_elements(shape: ModelShape) -> int:
    """Values one decoder layer keeps for backward per token (flash/sdpa attention, no dropout):
    attention norm in/out, q/k/v, rotated q/k and the attention output (7h + 3 kv), the MLP norm
    in/out, and the MLP's inner tensors (gate, up, act(gate), product: 4i; 2i without a gate)."""
    h, kv, i = shape.hidden, shape.kv_dim, shape.intermediate
    return 7 * h + 3 * kv + (4 if shape.gated else 2) * i


def activation_bytes(shape: ModelShape, tokens: int, w: int, checkpointing: bool) -> float:
    """Activations of one micro-batch of `tokens` tokens in `w`-byte compute precision; with
    gradient checkpointing only each layer's input is kept, plus one layer recomputed. Outside
    the layers: the embedding output, the final norm's input and output, the head's input."""
    layer = activation_elements(shape) * tokens * w
    outside = 4 * shape.hidden * tokens * w
    if checkpointing:
        return shape.layers * shape.hidden * tokens * w + layer + outside
    return shape.layers * layer + outside


def read_launch(path: Path, gpus: int | None) -> Setup:
    """ZeRO stage or FSDP version, offload and process count from an accelerate config file."""
    import yaml

    cfg = yaml.safe_load(Path(path).read_text())
    ds = cfg.get("deepspeed_config") or {}
    setup = Setup(
        gpus=int(gpus or cfg.get("num_processes", 1)),
        nodes=int(cfg.get("num_machines", 1)),
        zero=int(ds.get("zero_stage", 0)) if cfg.get("distributed_type") == "DEEPSPEED" else 0,
        offload_optimizer=ds.get("offload_optimizer_device", "none") == "cpu",
        offload_params=ds.get("offload_param_device", "none") == "cpu"
        or (cfg.get("distributed_type") == "FSDP"
            and bool((cfg.get("fsdp_config") or {}).get("fsdp_offload_params"))),
        fsdp=int((cfg.get("fsdp_config") or {}).get("fsdp_version", 1))
        if cfg.get("distributed_type") == "FSDP" else 0,
    )
    return setup


def zero_model_states(total: int, largest: int, setup: Setup) -> tuple[float, float]:
    """(GPU, CPU) bytes of model states for full fine-tuning under DeepSpeed ZeRO with bf16:
    16-bit parameters (2 B), 16-bit gradients (2 B), fp32 gradients, master weights and Adam's two
    moments (4 B each), partitioned across GPUs according to the stage. ZeRO-2 and ZeRO-3: the
    same accounting as DeepSpeed's estimate_zero2/3_model_states_mem_needs (tests compare them)."""
    n = setup.gpus * setup.nodes
    buffer = 1.5  # DeepSpeed's additional_buffer_factor for host memory
    # ZeRO-1 partitions the optimizer states only: every GPU keeps all 16-bit gradients (2 B),
    # which ZeRO-2 shards with the rest. DeepSpeed has no ZeRO-1 estimator; this is ZeRO-2's
    # accounting with the gradients whole.
    grads_whole = 2 * total - int(2 * total / n) if setup.zero == 1 else 0
    if setup.zero in (1, 2):
        if setup.offload_optimizer:
            return 2 * total + (2 * total if setup.zero == 1 else 0), total * max(4 * n, 16) * buffer
        return 2 * total + int(18 * total / n) + grads_whole, total * 4 * setup.gpus * buffer
    # ZeRO-3: parameters sharded too; one layer at a time is gathered in fp32 for its update.
    layer = 4 * largest
    if setup.offload_optimizer and setup.offload_params:
        return layer, total * 18 / setup.nodes * buffer
    if setup.offload_optimizer:
        return layer + int(2 * total / n), total * 16 / setup.nodes * buffer
    return layer + int(18 * total / n), largest * 4 * setup.gpus * buffer


@dataclass(frozen=True)
class JobShape:
    """What the planner needs to know about a job besides the model: read from a run spec by
    `align.run.spec.job_shape`, so the planner never reads a config."""

    stage: str
    dtype: str  # model.dtype as asked ("auto": bf16 on the GPUs the plan is for)
    checkpointing: bool | str  # True, False or "auto"
    peft_method: str = "none"
    lora_r: int = 8
    num_virtual_tokens: int = 16
    optimizer_8bit: bool = False
    batch_size: int = 8  # per device
    max_length: int = 1024  # SFT/DPO tokens per sequence
    max_completion_length: int = 512  # GRPO
    generation_batch: int = 8  # GRPO sequences generated at once per device
    reference_model: bool = False  # a frozen reference copy (full fine-tuning DPO, GRPO beta > 0)
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_share: float = 0.3


def plan_job(job: JobShape, shape: ModelShape, setup: Setup, card_gib: float | None = None,
             prompt_len: int = 512) -> Plan:
    """Bytes per GPU for one job on `setup`; with `card_gib`, gradient checkpointing `auto`
    is decided for that card (device.gradient_checkpointing's rule)."""
    if job.checkpointing == "auto":
        without = plan_job(replace(job, checkpointing=False), shape, setup, card_gib, prompt_len)
        on = card_gib is not None and auto_checkpointing(without.total, card_gib * GIB)
        plan = without if not on else plan_job(replace(job, checkpointing=True), shape, setup,
                                               card_gib, prompt_len)
        plan.notes.append("model.gradient_checkpointing=auto: on only where the job would not "
                          f"fit in {AUTO_CHECKPOINTING_SHARE:.0%} of the card without it")
        return plan
    w = DTYPE_BYTES.get(job.dtype, 2)  # auto: bf16 on the GPUs the plan is for
    parts: dict[str, float] = {}
    notes: list[str] = []
    cpu = 0.0
    P = shape.total
    method = job.peft_method

    if method == "none":
        if setup.zero:
            gpu, cpu = zero_model_states(P, shape.largest_layer, setup)
            parts["model states (ZeRO-%d)" % setup.zero] = gpu
        else:
            parts["weights"] = P * w
            parts["gradients"] = P * w
            parts["optimizer states"] = P * (2 if job.optimizer_8bit else 2 * w)
    else:
        prompt_methods = method in ("prompt_tuning", "p_tuning")
        trainable = job.num_virtual_tokens * shape.hidden if prompt_methods else \
            sum(job.lora_r * (i + o) for i, o in shape.linear)
        quantized = method == "qlora"
        weight_bytes = P * (0.55 if quantized else w)  # NF4 + double-quantised scales ~4.4 bits
        if setup.zero == 3:
            weight_bytes /= setup.gpus * setup.nodes
        parts["weights (frozen)"] = weight_bytes
        parts["adapter weights+grads+optimizer"] = trainable * (4 + 4 + 8)
        notes.append(f"{trainable / 1e6:.1f}M trainable adapter parameters")

    # Activations for one micro-batch.
    b = job.batch_size
    s = prompt_len + job.max_completion_length if job.stage == "grpo" else job.max_length
    # DPO and a reward model run chosen and rejected together; KTO each completion and its KL
    # neighbour's
    seqs = 2 * b if job.stage in ("dpo", "kto", "rm") else b
    tokens = seqs * s
    full = activation_bytes(shape, tokens, w, checkpointing=False)
    ckpt = activation_bytes(shape, tokens, w, checkpointing=True)
    parts["activations" + (" (checkpointed)" if job.checkpointing else "")] = \
        ckpt if job.checkpointing else full
    notes.append(f"activations: {full / GIB:.2f} GiB without gradient checkpointing, "
                 f"{ckpt / GIB:.2f} GiB with it (micro-batch {seqs} x {s} tokens)")
    parts["logits tile (trl fused LM head)"] = min(tokens, TRL_TOKEN_CHUNK) * TRL_VOCAB_CHUNK * w

    if job.reference_model:
        parts["reference model"] = P * w / (setup.gpus * setup.nodes if setup.zero == 3 else 1)
    elif method != "none" and job.stage in ("dpo", "kto", "grpo"):
        notes.append("reference model: the base with the adapter disabled (no copy)")

    if job.stage == "grpo":
        if job.use_vllm:
            if job.vllm_mode == "colocate":
                if card_gib:
                    parts["vLLM (colocate share)"] = job.vllm_share * card_gib * GIB
                notes.append(f"vLLM colocate takes {job.vllm_share:.0%} of each card "
                             "(trainer.vllm_gpu_memory_utilization)")
            else:
                notes.append("vLLM server mode: generation runs on separate GPUs")
        else:
            parts["generation KV cache"] = (2 * shape.layers * shape.kv_dim * s
                                            * job.generation_batch * w)
    return Plan(parts=parts, cpu=cpu, notes=notes)


def suggestions(job: JobShape, setup: Setup) -> list[str]:
    out = []
    if job.checkpointing is not True:
        out.append("model.gradient_checkpointing=true (activations shrink to layer inputs)")
    if job.peft_method == "none":
        out.append("peft=lora (adapter training; no reference copy for DPO) or peft=qlora")
        if setup.zero < 3:
            out.append("--launch launch/zero3.yaml on several GPUs (shards weights and states)")
        elif not setup.offload_optimizer:
            out.append("--launch launch/zero3_offload.yaml (optimizer and parameters in CPU memory)")
    if job.batch_size > 1:
        out.append("a smaller trainer.per_device_train_batch_size with more "
                   "trainer.gradient_accumulation_steps")
    if job.stage == "grpo" and job.use_vllm and job.vllm_mode == "colocate":
        out.append("a lower trainer.vllm_gpu_memory_utilization, or vllm_mode=server on other GPUs")
    return out


def report(job: JobShape, model_name: str, shape: ModelShape, setup: Setup, cards=CARDS,
           prompt_len: int = 512) -> str:
    """The plan as align/plan.py prints it. `cards`: sizes in GiB, or (name, GiB) pairs."""
    lines = [f"{model_name}: {shape.total / 1e6:.1f}M parameters, "
             f"{shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}",
             f"stage {job.stage}, peft {job.peft_method}, "
             f"{setup.gpus * setup.nodes} GPU(s), "
             + (f"ZeRO-{setup.zero}" if setup.zero else "no ZeRO")
             + (", optimizer offload" if setup.offload_optimizer else "")
             + (", parameter offload" if setup.offload_params else ""), ""]
    base = plan_job(job, shape, setup, prompt_len=prompt_len)
    width = max(max(len(k) for k in base.parts) + 4, 22)
    lines.append("per GPU (estimate)".ljust(width) + "GiB")
    for key, value in base.parts.items():
        lines.append(f"  {key}".ljust(width) + f"{value / GIB:8.2f}")
    lines.append("  total".ljust(width) + f"{base.total / GIB:8.2f}")
    if base.cpu:
        lines.append(f"host memory per node for offloaded/partitioned states: {base.cpu / GIB:.1f} GiB")
    lines += [f"note: {n}" for n in base.notes]
    lines.append("")
    fits_all = True
    named = [(f"{c[0]} ({c[1]:.0f} GiB)", c[1]) if isinstance(c, tuple) else (f"{c:>4g} GB", c)
             for c in cards]
    pad = max(len(label) for label, _ in named)
    for label, card in named:
        label = label.rjust(pad)
        plan = plan_job(job, shape, setup, card_gib=card, prompt_len=prompt_len)
        usable = card * 0.92  # CUDA context, allocator fragmentation, workspaces
        fits = plan.total / GIB <= usable
        fits_all &= fits
        auto_on = job.checkpointing == "auto" and "activations (checkpointed)" in plan.parts
        lines.append(f"{label} card: {plan.total / GIB:7.2f} GiB -> "
                     + ("fits" if fits else "does NOT fit")
                     + (" (gradient checkpointing on)" if auto_on else ""))
    if not fits_all:
        lines.append("")
        lines.append("to fit on a smaller card, try:")
        lines += [f"  - {s}" for s in suggestions(job, setup)]
    return "\n".join(lines)
