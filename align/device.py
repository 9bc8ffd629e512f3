"""Device facts, and every decision that depends on them.

A run's precision, attention kernel, gradient checkpointing and whether the main process can
measure held-out data alone all depend on the hardware. Here each is a plain function of
explicit facts (`DeviceFacts`: accelerator, card memory, count, compute capability, the
process setup of the launch), so CPU tests run every branch with the facts of real cards
(`CARDS`), and a GPU-only branch cannot hide from them.

    facts = DeviceFacts.detect()            # this machine and this launch
    facts = CARDS["h200"]                   # what a job would do on an H200
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

MIB = 2**20


@dataclass(frozen=True)
class Setup:
    """How a launch spreads over processes: GPUs per node, nodes, DeepSpeed ZeRO or FSDP, and
    offload."""

    gpus: int = 1
    nodes: int = 1
    zero: int = 0  # 0 = no DeepSpeed (DDP, FSDP or one GPU)
    offload_optimizer: bool = False
    offload_params: bool = False
    fsdp: int = 0  # FSDP version (1 or 2); 0 = no FSDP

    @property
    def processes(self) -> int:
        return self.gpus * self.nodes

    @property
    def sharded_params(self) -> bool:
        """Every weight is split across the ranks (ZeRO-3, FSDP): no rank holds the whole model
        while the trainer runs."""
        return self.zero == 3 or self.fsdp > 0


def setup_from_env() -> Setup:
    """The process setup of this launch, from what `accelerate launch` exports."""
    env = os.environ
    deepspeed = env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    fsdp = env.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    return Setup(
        gpus=int(env.get("LOCAL_WORLD_SIZE") or 1),
        nodes=max(1, int(env.get("WORLD_SIZE") or 1) // int(env.get("LOCAL_WORLD_SIZE") or 1)),
        zero=int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or 0) if deepspeed else 0,
        offload_optimizer=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE") == "cpu",
        offload_params=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE") == "cpu"
        or (fsdp and env.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true"),
        fsdp=int(env.get("FSDP_VERSION") or 1) if fsdp else 0,
    )


# model.gradient_checkpointing=auto turns checkpointing on only when the job would not fit
# without it: it costs time (34M SFT on CPU: 1.32x the step time for 0.79x the peak memory,
# benchmarks/CPU_RESULTS.md sft-memory), so it is worth paying only for the memory.
AUTO_CHECKPOINTING_SHARE = 0.8  # of the card, leaving room for what the plan leaves out


def auto_checkpointing(total_without: float, card_bytes: float) -> bool:
    """`model.gradient_checkpointing=auto`: on when the planned per-GPU memory without it
    exceeds AUTO_CHECKPOINTING_SHARE of the card."""
    return total_without > AUTO_CHECKPOINTING_SHARE * card_bytes


@dataclass(frozen=True)
class DeviceFacts:
    """What a run needs to know about the machine it runs on (per process)."""

    #: "cuda" or "cpu"
    accelerator: str = "cpu"
    name: str = "cpu"
    #: memory of one card in bytes (0 on CPU)
    memory_bytes: int = 0
    #: cards visible to this process
    count: int = 0
    #: CUDA compute capability, e.g. (9, 0) for Hopper; None on CPU
    capability: tuple[int, int] | None = None
    #: attention kernels installed, as transformers' own checks find them
    #: (transformers.utils.is_flash_attn_{2,3,4}_available, is_kernels_available):
    #: flash-attn 2 (`flash-attn`, imports as flash_attn)
    flash_attn: bool = False
    #: FlashAttention-3 (`flash-attn-3`, the Hopper build, imports as flash_attn_interface)
    flash_attn_3: bool = False
    #: FlashAttention-4 (`flash-attn-4`, CuTe DSL, Hopper and Blackwell)
    flash_attn_4: bool = False
    #: the `kernels` package: attention kernels from the hub (`kernels-community/...`), and
    #: transformers' stand-in for a flash_attention_N whose package is not installed
    kernels: bool = False
    #: processes, nodes, DeepSpeed ZeRO stage and offload of this launch
    setup: Setup = field(default_factory=Setup)

    @property
    def cuda(self) -> bool:
        return self.accelerator == "cuda"

    @property
    def bf16(self) -> bool:
        """bfloat16 compute: CUDA cards from Ampere (compute capability 8.0) on."""
        return self.cuda and self.capability is not None and self.capability >= (8, 0)

    @property
    def flash_attention(self) -> bool:
        """flash-attn 2 runs here: installed, on an Ampere or newer card."""
        return self.flash_attn and self.bf16

    def flash_installed(self, version: int) -> bool:
        """The package of FlashAttention `version` (2, 3 or 4) is installed."""
        return {2: self.flash_attn, 3: self.flash_attn_3, 4: self.flash_attn_4}[version]

    @classmethod
    def detect(cls) -> DeviceFacts:
        """This process's facts (imports torch)."""
        import torch

        kernels = attention_packages()
        setup = setup_from_env()
        if not torch.cuda.is_available():
            return cls(**kernels, setup=setup)
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return cls(accelerator="cuda", name=props.name, memory_bytes=int(props.total_memory),
                   count=torch.cuda.device_count(), capability=(props.major, props.minor),
                   **kernels, setup=setup)

    def with_setup(self, setup: Setup) -> DeviceFacts:
        return dataclasses.replace(self, setup=setup)


def attention_packages() -> dict[str, bool]:
    """The attention kernels installed here, as transformers finds them: its own checks test the
    distribution's name and version, not only that a module imports (a leftover `flash_attn`
    folder, or flash-attn-4's, is not flash-attn 2), and report FlashAttention usable only where
    torch has CUDA. The hub-kernel fallback is not probed (it would download)."""
    from transformers.utils import (
        is_flash_attn_2_available,
        is_flash_attn_3_available,
        is_flash_attn_4_available,
        is_kernels_available,
    )

    return {"flash_attn": is_flash_attn_2_available(),
            "flash_attn_3": is_flash_attn_3_available(),
            "flash_attn_4": is_flash_attn_4_available(),
            "kernels": is_kernels_available()}


def _card(name: str, mib: int, capability: tuple[int, int]) -> DeviceFacts:
    # flash-attn 2 installed; kernels too (transformers 5 depends on it)
    return DeviceFacts("cuda", name, mib * MIB, 1, capability, flash_attn=True, kernels=True)


#: Facts of real cards (memory as nvidia-smi reports it), for tests and for planning.
CARDS = {
    "t4": _card("Tesla T4", 15360, (7, 5)),  # no bfloat16, no flash-attn 2
    "rtx4090": _card("NVIDIA GeForce RTX 4090", 24564, (8, 9)),
    "a100-80gb": _card("NVIDIA A100-SXM4-80GB", 81920, (8, 0)),
    "h100": _card("NVIDIA H100 80GB HBM3", 81559, (9, 0)),
    "h200": _card("NVIDIA H200", 143771, (9, 0)),  # measured: benchmarks/RESULTS.md
}
CPU = DeviceFacts()


# --------------------------------------------------------------------------- decisions


def model_dtype(requested: str, facts: DeviceFacts) -> str:
    """`model.dtype`: auto is bfloat16 where the card computes in it, float32 otherwise."""
    if requested != "auto":
        return requested
    return "bfloat16" if facts.bf16 else "float32"


#: The least CUDA compute capability each FlashAttention version runs on: transformers' own
#: (FLASH_ATTENTION_COMPATIBILITY_MATRIX: FA3 Ampere, FA4 Hopper; a test keeps them in step),
#: and Ampere for flash-attn 2, which needs bfloat16 to train.
FLASH_MIN_CAPABILITY = {2: (8, 0), 3: (8, 0), 4: (9, 0)}
_ARCHITECTURE = {(8, 0): "an Ampere", (9, 0): "a Hopper"}


def auto_flash_order(capability: tuple[int, int]) -> tuple[int, ...]:
    """The FlashAttention versions `auto` tries on a card, best first: FA3 is written for Hopper
    (its kernels use Hopper's TMA and warpgroup instructions) and is the fastest there; FA4 for
    Blackwell (and Hopper); flash-attn 2 runs on every card from Ampere on."""
    if capability[0] == 9:
        return (3, 4, 2)
    if capability[0] >= 10:
        return (4, 2)
    return (2,)


def attention(requested: str, facts: DeviceFacts) -> str:
    """`model.attn_implementation`: auto is the best installed FlashAttention for the card
    (auto_flash_order: FA3 on Hopper, FA4 on Blackwell, else flash-attn 2) on a card that
    computes in bfloat16, sdpa otherwise. A hub kernel is never picked by auto (it downloads
    from the hub at load): name it, e.g. model.attn_implementation=kernels-community/flash-attn3."""
    if requested != "auto":
        return requested
    if facts.bf16:
        for version in auto_flash_order(facts.capability):
            if facts.flash_installed(version) and facts.capability >= FLASH_MIN_CAPABILITY[version]:
                return f"flash_attention_{version}"
    return "sdpa"


def flash_version(requested: str) -> int | None:
    """2, 3 or 4 for flash_attention_N (as transformers names them), None for anything else."""
    prefix = "flash_attention_"
    if requested.startswith(prefix) and requested[len(prefix):] in ("2", "3", "4"):
        return int(requested[len(prefix):])
    return None


def hub_kernel_repo(requested: str) -> str | None:
    """The hub repository of a kernel named as transformers takes it (`org/repo`, optionally
    `@revision` and `:kernel`), None for a built-in attention name."""
    if "/" not in requested:
        return None
    return requested.split(":")[0].split("@")[0].strip()


def attention_problem(requested: str, facts: DeviceFacts) -> str | None:
    """Why an explicitly requested attention kernel cannot run here (None: it can). FlashAttention
    needs a CUDA card of at least FLASH_MIN_CAPABILITY; a hub kernel that transformers knows
    (FLASH_ATTN_KERNEL_DEVICES) must have a build for this accelerator."""
    version = flash_version(requested)
    if version is not None:
        need = FLASH_MIN_CAPABILITY[version]
        if not facts.cuda or facts.capability < need:
            where = f"{facts.name} (compute capability {facts.capability})" if facts.cuda else "CPU"
            return (f"model.attn_implementation={requested} needs {_ARCHITECTURE[need]} or newer "
                    f"CUDA GPU (compute capability >= {need[0]}.{need[1]}); this process runs on "
                    f"{where}: use sdpa or auto")
        return None
    repo = hub_kernel_repo(requested)
    if repo is not None:
        from transformers import modeling_flash_attention_utils

        # transformers 5.17 (vLLM 0.31's) has no such table: no check there
        table = getattr(modeling_flash_attention_utils, "FLASH_ATTN_KERNEL_DEVICES", {})
        devices = table.get(repo)
        if devices is not None and facts.accelerator not in devices:
            return (f"model.attn_implementation={requested}: the hub kernel {repo} is built for "
                    f"{', '.join(devices)} only; this process runs on {facts.accelerator}: use "
                    "sdpa or auto")
    return None


def attention_needs_package(requested: str, facts: DeviceFacts) -> bool:
    """The requested kernel has nothing to run it here: a hub kernel without the `kernels`
    package, or flash_attention_N with neither its package nor `kernels` (through which
    transformers loads kernels-community/flash-attnN from the hub instead)."""
    version = flash_version(requested)
    if version is not None:
        return not facts.flash_installed(version) and not facts.kernels
    return hub_kernel_repo(requested) is not None and not facts.kernels


def bnb_quant_storage(dtype: str, setup: Setup) -> str | None:
    """`bnb_4bit_quant_storage` for QLoRA: where FSDP or ZeRO-3 shard the weights, the 4-bit
    weights must be stored in the model's dtype, so that they flatten and shard with the other
    parameters (peft's and accelerate's guides to QLoRA with FSDP and DeepSpeed ZeRO-3); elsewhere
    None: bitsandbytes' default (uint8)."""
    return dtype if setup.sharded_params else None


def mixed_precision(trainer: dict, facts: DeviceFacts) -> dict:
    """Precision flags for trl's config. Its configs default to bf16 mixed precision, which
    needs a card that computes in bfloat16: on CPU align trains in float32 (and sets use_cpu),
    on a card without bfloat16 (T4, V100) too, unless `trainer.fp16=true` asks for fp16."""
    flags: dict = {}
    if not facts.cuda:
        flags["use_cpu"] = trainer.get("use_cpu", True)
    if not facts.bf16:
        flags["bf16"] = trainer.get("bf16", False)
    return flags


def precision_problem(trainer: dict, facts: DeviceFacts) -> str | None:
    """Why the precision the config asks for cannot run here (None: it can). bf16 on CPU is
    allowed (autocast on CPU, slow); on a CUDA card without bfloat16 it is not."""
    if trainer.get("bf16") and facts.cuda and not facts.bf16:
        return (f"trainer.bf16=true needs a CUDA GPU that computes in bfloat16 (compute "
                f"capability >= 8.0); {facts.name} has {facts.capability[0]}.{facts.capability[1]}: "
                "set trainer.bf16=false (float32), or trainer.fp16=true")
    if trainer.get("fp16") and not facts.cuda:
        return "trainer.fp16=true needs a CUDA GPU; this process runs on CPU: remove it"
    return None


def gradient_checkpointing(requested, planned_without: float | None, facts: DeviceFacts) -> bool:
    """`model.gradient_checkpointing`: true/false as given; auto turns it on only when the
    planned per-GPU memory without it exceeds AUTO_CHECKPOINTING_SHARE of the card (it costs
    ~1.3x the step time). Off on CPU. `planned_without`: the planner's bytes per GPU without
    checkpointing, None when the model could not be sized (then on, to be safe)."""
    if requested != "auto":
        return bool(requested)
    if not facts.cuda:
        return False
    if planned_without is None:
        return True
    return auto_checkpointing(planned_without, facts.memory_bytes)



# --------------------------------------------------------------------------- placement

#: how the model reaches its device before training (Placement.load)
LOAD_DEVICE_MAP = "device_map"  # align loads it onto the rank's device (from_pretrained)
LOAD_BITSANDBYTES = "bitsandbytes"  # QLoRA: quantised onto the rank's device as it loads
LOAD_DEEPSPEED = "deepspeed"  # ZeRO-3: zero.Init partitions it at load; the engine places
LOAD_FSDP = "fsdp"  # FSDP: loaded on CPU (rank 0 only, with fsdp_cpu_ram_efficient_loading,
#                     the others on meta); the trainer shards it onto the rank's device
LOAD_CPU = "cpu"  # no accelerator: from_pretrained's own default


@dataclass(frozen=True)
class Placement:
    """Where one rank's model lives and where and by which ranks align's own generations and
    forward passes run (held-out before/after/during training, DPO's on-policy rounds,
    generate.py and eval.py with the hf backend). The decision of `placement`."""

    #: this rank's device: the model is there before training (unless sharded: see `load`),
    #: and every generation of this rank runs there
    device: str
    #: how the model gets there: LOAD_DEVICE_MAP, LOAD_BITSANDBYTES, LOAD_DEEPSPEED, LOAD_FSDP
    #: or LOAD_CPU
    load: str
    #: who generates: "main" (the main process alone: one process) or "all" (every rank its
    #: share of the prompts, the completions gathered to every rank; the main process scores)
    ranks: str
    #: the weights are sharded across the ranks (ZeRO-3, FSDP): every rank runs the same number
    #: of generate calls and forward passes in lockstep (transformers' synced_gpus), and
    #: forward-only figures (losses, log-probabilities) run on every rank over the same rows
    synced: bool
    #: "before" measurements run when training begins (the trainer has sharded the model;
    #: before that no rank holds it whole, and under FSDP's cpu-ram-efficient loading the
    #: other ranks hold it on meta); otherwise as soon as the model is built
    before_at_train_begin: bool
    #: where the parameters sit while the trainer holds them: `device`, or "cpu" under FSDP
    #: with `fsdp_offload_params` (each layer's shard is copied to the card for its compute)
    params_on: str = ""

    @property
    def device_map(self) -> dict | None:
        """What load_model passes to from_pretrained as device_map (None: the library's own
        placement: CPU, zero.Init, FSDP's loading)."""
        return {"": self.device} if self.load in (LOAD_DEVICE_MAP, LOAD_BITSANDBYTES) else None

    @property
    def scores_on_every_rank(self) -> bool:
        """Forward-only figures run on every rank (in lockstep), not on the main process alone."""
        return self.synced


def placement(facts: DeviceFacts, quantized: bool = False, local_rank: int = 0) -> Placement:
    """Where the model lives and who generates, for these facts (the launch is `facts.setup`),
    with QLoRA (`quantized`) or not, on the rank of `local_rank` on its node.

    - On a CUDA card every rank uses its own card, `cuda:<local rank>` (as accelerate and
      torchrun number them): the model is loaded straight onto it (QLoRA: bitsandbytes quantises
      it there, trl's get_kbit_device_map), so held-out "before" and on-policy sampling run on
      the GPU. The trainer would have moved it there anyway, but only after "before" ran on the
      CPU: hours for a 1.5B model and 500 prompts. ZeRO-1/2 keep whole weights per GPU too.
    - ZeRO-3 and FSDP shard the weights: align passes no device_map (transformers refuses one
      under ZeRO-3; FSDP loads on CPU and shards onto the card), "before" waits until training
      begins, and every rank generates in lockstep: a rank generating alone would wait forever
      for the others' shards.
    - With several processes every rank generates its share of the prompts and the figures are
      gathered, so no rank waits in a collective while another generates for minutes.
    - On CPU the same rules hold with "cpu" as every rank's device (DDP and FSDP over gloo)."""
    setup = facts.setup
    device = f"cuda:{local_rank}" if facts.cuda else "cpu"
    if setup.zero == 3:
        load = LOAD_DEEPSPEED
    elif setup.fsdp:
        load = LOAD_FSDP
    elif not facts.cuda:
        load = LOAD_CPU
    else:
        load = LOAD_BITSANDBYTES if quantized else LOAD_DEVICE_MAP
    sharded = setup.sharded_params
    return Placement(device=device, load=load, ranks="all" if setup.processes > 1 else "main",
                     synced=sharded and setup.processes > 1, before_at_train_begin=sharded,
                     params_on="cpu" if setup.fsdp and setup.offload_params else device)


def local_rank() -> int:
    """This process's rank on its node, as accelerate, torchrun and DeepSpeed export it."""
    return int(os.environ.get("LOCAL_RANK") or 0)


class PlacementError(RuntimeError):
    """A model is not on the device its placement names."""


def check_placement(model, place: Placement, where: str) -> None:
    """Raise PlacementError naming both devices when a parameter of `model` is not on
    `place.device` (e.g. on meta: FSDP's loading left this rank without the weights, or on the
    CPU while the decision names a card). Every generation path calls it before generating.
    A ZeRO-3 parameter is a placeholder whose data DeepSpeed fetches (ds_id): not checked."""
    import torch

    want = torch.device(place.params_on or place.device)
    for name, param in model.named_parameters():
        if hasattr(param, "ds_id"):
            continue
        have = param.device
        if have.type != want.type or (want.index is not None and have.index != want.index):
            raise PlacementError(
                f"{where}: the model's parameter {name} is on {have}, but the placement decided "
                f"for this rank is {want} (load: {place.load}); "
                "align.device.placement decides where the model lives")
