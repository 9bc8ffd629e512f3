"""align: SFT, DPO, KTO, reward-model and GRPO training on trl, configured with Hydra."""

import logging
import warnings

# On CPUs with AVX512-BF16, importing bitsandbytes (trl and peft do whenever the `quant` extra is
# installed) tries to fetch a 4-bit CPU kernel from the hub through the `kernels` package, warns
# when it cannot, and uses its own kernel. Left alone, every align command prints that warning on
# such a machine, and a bad value's one-line error becomes two.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# trl 1.16 reads `model.is_gradient_checkpointing` around every generation, which transformers 5
# deprecates (a FutureWarning); it printed many times over a newcomer's first GRPO run, above
# align's own lines. The attribute still works; the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                        category=FutureWarning)
