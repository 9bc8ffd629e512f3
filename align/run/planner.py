"""Memory planner (the library; the command line is align/plan.py): will this job fit on these
GPUs, and if not, what to change.

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

from dataclasses import dataclass, field
from pathlib import Path

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
class Setup:
    gpus: int = 1
    nodes: int = 1
    zero: int = 0  # 0 = no DeepSpeed (DDP or one GPU)
    offload_optimizer: bool = False
    offload_params: bool = False


@dataclass
class Plan:
    parts: dict[str, float]  # bytes per GPU
    cpu: float  # bytes of host memory per node for offloaded states
    notes: list[str]

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def model_shape(model_cfg) -> ModelShape:
    """Exact parameter counts from the model's config, instantiated without memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from align.models import resolve_path

    config = AutoConfig.from_pretrained(resolve_path(model_cfg.name_or_path),
                                        revision=model_cfg.revision,
                                        trust_remote_code=model_cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
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


def setup_from_env() -> Setup:
    """The process setup of this launch, from what `accelerate launch` exports."""
    import os

    env = os.environ
    deepspeed = env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    return Setup(
        gpus=int(env.get("LOCAL_WORLD_SIZE") or 1),
        nodes=max(1, int(env.get("WORLD_SIZE") or 1) // int(env.get("LOCAL_WORLD_SIZE") or 1)),
        zero=int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or 0) if deepspeed else 0,
        offload_optimizer=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE") == "cpu",
        offload_params=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE") == "cpu",
    )


# model.gradient_checkpointing=auto turns checkpointing on only when the job would not fit
# without it: it costs time (34M SFT on CPU: 1.32x the step time for 0.79x the peak memory,
# benchmarks/CPU_RESULTS.md sft-memory), so it is worth paying only for the memory.
AUTO_CHECKPOINTING_SHARE = 0.8  # of the card, leaving room for what the plan leaves out


def auto_checkpointing(total_without: float, card_bytes: float) -> bool:
    """`model.gradient_checkpointing=auto`: on when the planned per-GPU memory without it
    exceeds AUTO_CHECKPOINTING_SHARE of the card."""
    return total_without > AUTO_CHECKPOINTING_SHARE * card_bytes


def read_launch(path: Path, gpus: int | None) -> Setup:
    """ZeRO stage, offload and process count from an accelerate config file."""
    import yaml

    cfg = yaml.safe_load(Path(path).read_text())
    ds = cfg.get("deepspeed_config") or {}
    setup = Setup(
        gpus=int(gpus or cfg.get("num_processes", 1)),
        nodes=int(cfg.get("num_machines", 1)),
        zero=int(ds.get("zero_stage", 0)) if cfg.get("distributed_type") == "DEEPSPEED" else 0,
        offload_optimizer=ds.get("offload_optimizer_device", "none") == "cpu",
        offload_params=ds.get("offload_param_device", "none") == "cpu",
    )
    return setup


def zero_model_states(total: int, largest: int, setup: Setup) -> tuple[float, float]:
    """(GPU, CPU) bytes of model states for full fine-tuning under DeepSpeed ZeRO with bf16:
    16-bit parameters (2 B), 16-bit gradients (2 B), fp32 gradients, master weights and Adam's two
    moments (4 B each), partitioned across GPUs according to the stage. The same accounting as
    DeepSpeed's estimate_zero2/3_model_states_mem_needs (tests compare them)."""
    n = setup.gpus * setup.nodes
    buffer = 1.5  # DeepSpeed's additional_buffer_factor for host memory
    if setup.zero in (1, 2):
        if setup.offload_optimizer:
            return 2 * total, total * max(4 * n, 16) * buffer
        return 2 * total + int(18 * total / n), total * 4 * setup.gpus * buffer
    # ZeRO-3: parameters sharded too; one layer at a time is gathered in fp32 for its update.
    layer = 4 * largest
    if setup.offload_optimizer and setup.offload_params:
        return layer, total * 18 / setup.nodes * buffer
    if setup.offload_optimizer:
        return layer + int(2 * total / n), total * 16 / setup.nodes * buffer
    return layer + int(18 * total / n), largest * 4 * setup.gpus * buffer


def plan_job(stage: str, plain: dict, shape: ModelShape, setup: Setup,
             card_gib: float | None = None, prompt_len: int = 512) -> Plan:
    """Bytes per GPU for one job (plain: the resolved config as a dict)."""
    if plain["model"].get("gradient_checkpointing", "auto") == "auto":  # ModelConfig's default
        def with_checkpointing(on: bool) -> dict:
            return {**plain, "model": {**plain["model"], "gradient_checkpointing": on}}

        on = card_gib is not None and auto_checkpointing(
            plan_job(stage, with_checkpointing(False), shape, setup, card_gib, prompt_len).total,
            card_gib * GIB)
        plan = plan_job(stage, with_checkpointing(on), shape, setup, card_gib, prompt_len)
        plan.notes.append("model.gradient_checkpointing=auto: on only where the job would not "
                          f"fit in {AUTO_CHECKPOINTING_SHARE:.0%} of the card without it")
        return plan
    model, peft, trainer = plain["model"], plain.get("peft") or {}, plain.get("trainer") or {}
    method = peft.get("method", "none")
    gpu_available = _cuda()
    dtype = model.get("dtype", "auto")
    w = DTYPE_BYTES.get(dtype, 2 if gpu_available or dtype == "auto" else 4)
    if dtype == "auto":
        w = 2  # bf16 on a GPU, which is what the plan is for
    parts: dict[str, float] = {}
    notes: list[str] = []
    cpu = 0.0
    P = shape.total

    if method == "none":
        if setup.zero:
            gpu, cpu = zero_model_states(P, shape.largest_layer, setup)
            parts["model states (ZeRO-%d)" % setup.zero] = gpu
        else:
            parts["weights"] = P * w
            parts["gradients"] = P * w
            eight_bit = peft.get("optimizer_8bit") or "8bit" in str(trainer.get("optim", ""))
            parts["optimizer states"] = P * (2 if eight_bit else 2 * w)
    else:
        r = int(peft.get("r", 8)) if method not in ("prompt_tuning", "p_tuning") else 0
        trainable = sum(r * (i + o) for i, o in shape.linear) if r else \
            int(peft.get("num_virtual_tokens", 16)) * shape.hidden
        quantized = method == "qlora"
        weight_bytes = P * (0.55 if quantized else w)  # NF4 + double-quantised scales ~4.4 bits
        if setup.zero == 3:
            weight_bytes /= setup.gpus * setup.nodes
        parts["weights (frozen)"] = weight_bytes
        parts["adapter weights+grads+optimizer"] = trainable * (4 + 4 + 8)
        notes.append(f"{trainable / 1e6:.1f}M trainable adapter parameters")

    # Activations for one micro-batch.
    b = int(trainer.get("per_device_train_batch_size", 8))
    if stage == "grpo":
        s = prompt_len + int(trainer.get("max_completion_length", 512))
    else:
        s = int(trainer.get("max_length") or 1024)
    seqs = 2 * b if stage == "dpo" else b  # DPO runs chosen and rejected together
    tokens = seqs * s
    full = activation_bytes(shape, tokens, w, checkpointing=False)
    ckpt = activation_bytes(shape, tokens, w, checkpointing=True)
    checkpointing = bool(model.get("gradient_checkpointing"))
    parts["activations" + (" (checkpointed)" if checkpointing else "")] = ckpt if checkpointing else full
    notes.append(f"activations: {full / GIB:.2f} GiB without gradient checkpointing, "
                 f"{ckpt / GIB:.2f} GiB with it (micro-batch {seqs} x {s} tokens)")
    parts["logits tile (trl fused LM head)"] = min(tokens, TRL_TOKEN_CHUNK) * TRL_VOCAB_CHUNK * w

    needs_reference = method == "none" and (
        (stage == "dpo" and not trainer.get("precompute_ref_log_probs"))
        or (stage == "grpo" and float(trainer.get("beta", 0.0)) > 0))
    if needs_reference:
        ref = P * w / (setup.gpus * setup.nodes if setup.zero == 3 else 1)
        parts["reference model"] = ref
    elif method != "none" and stage in ("dpo", "grpo"):
        notes.append("reference model: the base with the adapter disabled (no copy)")

    if stage == "grpo":
        gen = int(trainer.get("generation_batch_size") or b)
        comp = int(trainer.get("max_completion_length", 512))
        prompt = prompt_len
        if trainer.get("use_vllm"):
            mode = trainer.get("vllm_mode", "colocate")
            if mode == "colocate":
                share = float(trainer.get("vllm_gpu_memory_utilization", 0.3))
                if card_gib:
                    parts["vLLM (colocate share)"] = share * card_gib * GIB
                notes.append(f"vLLM colocate takes {share:.0%} of each card "
                             "(trainer.vllm_gpu_memory_utilization)")
            else:
                notes.append("vLLM server mode: generation runs on separate GPUs")
        else:
            parts["generation KV cache"] = 2 * shape.layers * shape.kv_dim * (prompt + comp) * gen * w
    return Plan(parts=parts, cpu=cpu, notes=notes)


def suggestions(stage: str, plain: dict, setup: Setup) -> list[str]:
    model, peft, trainer = plain["model"], plain.get("peft") or {}, plain.get("trainer") or {}
    out = []
    if model.get("gradient_checkpointing") is not True:
        out.append("model.gradient_checkpointing=true (activations shrink to layer inputs)")
    if (peft.get("method") or "none") == "none":
        out.append("peft=lora (adapter training; no reference copy for DPO) or peft=qlora")
        if setup.zero < 3:
            out.append("--launch launch/zero3.yaml on several GPUs (shards weights and states)")
        elif not setup.offload_optimizer:
            out.append("--launch launch/zero3_offload.yaml (optimizer and parameters in CPU memory)")
    if int(trainer.get("per_device_train_batch_size", 8)) > 1:
        out.append("a smaller trainer.per_device_train_batch_size with more "
                   "trainer.gradient_accumulation_steps")
    if stage == "grpo" and trainer.get("use_vllm") and trainer.get("vllm_mode", "colocate") == "colocate":
        out.append("a lower trainer.vllm_gpu_memory_utilization, or vllm_mode=server on other GPUs")
    return out


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def report(stage: str, plain: dict, shape: ModelShape, setup: Setup, cards=CARDS,
           prompt_len: int = 512) -> str:
    lines = [f"{plain['model']['name_or_path']}: {shape.total / 1e6:.1f}M parameters, "
             f"{shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}",
             f"stage {stage}, peft {(plain.get('peft') or {}).get('method', 'none')}, "
             f"{setup.gpus * setup.nodes} GPU(s), "
             + (f"ZeRO-{setup.zero}" if setup.zero else "no ZeRO")
             + (", optimizer offload" if setup.offload_optimizer else "")
             + (", parameter offload" if setup.offload_params else ""), ""]
    base = plan_job(stage, plain, shape, setup, prompt_len=prompt_len)
    width = max(max(len(k) for k in base.parts) + 4, 22)
    lines.append("per GPU (estimate)".ljust(width) + "GiB")
    for key, value in base.parts.items():
        lines.append(f"  {key}".ljust(width) + f"{value / GIB:8.2f}")
    lines.append("  total".ljust(width) + f"{base.total / GIB:8.2f}")
    if base.cpu:
        lines.append(f"host memory per node for offloaded/partitioned states: {base.cpu / GIB:.1f} GiB")
    lines += [f"note: {n}" for n in base.notes]
    lines.append("")
    verdicts = []
    for card in cards:
        plan = plan_job(stage, plain, shape, setup, card_gib=card, prompt_len=prompt_len)
        usable = card * 0.92  # CUDA context, allocator fragmentation, workspaces
        verdicts.append((card, plan.total / GIB, plan.total / GIB <= usable))
        auto_on = any(k == "activations (checkpointed)" for k in plan.parts) and \
            plain["model"].get("gradient_checkpointing", "auto") == "auto"
        lines.append(f"{card:>4g} GB card: {plan.total / GIB:7.2f} GiB -> "
                     + ("fits" if plan.total / GIB <= usable else "does NOT fit")
                     + (" (gradient checkpointing on)" if auto_on else ""))
    if not all(ok for *_, ok in verdicts):
        lines.append("")
        lines.append("to fit on a smaller card, try:")
        lines += [f"  - {s}" for s in suggestions(stage, plain, setup)]
    return "\n".join(lines)
