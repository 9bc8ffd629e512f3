"""Where a model comes from, checked before anything loads: a local folder, the tiny models, or
a Hugging Face Hub id that the hub (or its local cache) has.

A missing folder, a hub id while offline and not cached, a gated or unknown model and a hub
that does not answer each fail here in one line, in seconds (one metadata request with a
`HUB_TIMEOUT_S` deadline, no retries), instead of minutes into a run with a traceback. The
architecture of a model, on PyTorch's meta device (no weights, no memory), comes from here too:
the planner sizes it and the adapter checks read its module names.

align ships the published config.json (no weights, no tokenizer) of the hub models its configs
name, in align/models/architectures/<org>--<name>/ (sources: the README.md there). Only the
planner uses them (`shipped_instead`, `resolve_architecture`), and only when the hub and its cache cannot give the
model's own config; loading a model (`resolve_source`) never does: a run must not train on
something other than what it named.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

from align.errors import ConfigError

#: seconds the hub gets to answer one metadata request
HUB_TIMEOUT_S = 10.0
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_TRUTHY = ("1", "true", "yes", "on")
#: published architectures (config.json only) of hub models, one folder per hub id: org--name
ARCHITECTURES = Path(__file__).resolve().parent / "architectures"


class HubUnavailable(ConfigError):
    """The hub and its cache cannot give the file now (offline and not cached, no answer, an
    HTTP error, a gated model without access), as opposed to a name or revision that is wrong.
    `reason` says why in a few words; `repo` and `where` name the hub id and the config key."""

    def __init__(self, message: str, reason: str, repo: str, where: str):
        super().__init__(message)
        self.reason, self.repo, self.where = reason, repo, where


def hub_offline() -> bool:
    """Offline as the environment says now, or as huggingface_hub read it when it was imported
    (it reads HF_HUB_OFFLINE once, and refuses every request by that value thereafter)."""
    if any(os.environ.get(k, "").lower() in _TRUTHY
           for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(constants is not None and constants.is_offline_mode())


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name in (".", "..")


def resolve_source(name_or_path: str, *, revision: str | None = None,
                   where: str = "model.name_or_path", file: str = "config.json",
                   build: bool = True) -> str:
    """The local folder `name_or_path` names (the tiny models are built on first use; with
    `build=False` a tiny model's name is only checked and returned as it is: the checks of a
    run's config build nothing), or the hub id itself once the hub or its cache has `file` in
    it. Raises ConfigError naming `where` and the fix otherwise."""
    from align.models.tiny import (
        TINY_SCHEME,
        TINY_VARIANTS,
        TOOLS_VARIANTS,
        VLM_VARIANTS,
        resolve_model_path,
    )

    name = str(name_or_path)
    if name.startswith(TINY_SCHEME):
        variants = (*TINY_VARIANTS, *VLM_VARIANTS, *TOOLS_VARIANTS)
        if not build and name[len(TINY_SCHEME):] in variants:
            return name
        try:
            return resolve_model_path(name)
        except ValueError as exc:
            raise ConfigError(f"{where}={name}: {exc}") from None
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in (file, "adapter_config.json")):
            raise ConfigError(f"{where}={name}: the folder holds no {file}, so it is not a "
                              "model folder (a Hugging Face model saved with save_pretrained)")
        return str(path)
    if path.exists():
        raise ConfigError(f"{where}={name}: a file, not a model folder")
    if looks_like_path(name) or not _HUB_ID.fullmatch(name):
        raise ConfigError(f"{where}={name}: no such folder (and not a Hugging Face Hub id such "
                          "as Qwen/Qwen2.5-0.5B-Instruct)")
    _check_hub(name, revision, where, file)
    return name


def _check_hub(repo: str, revision: str | None, where: str, file: str) -> None:
    from huggingface_hub import errors as hub
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, file, revision=revision), str):
        return  # in the local cache: loads without the network
    fix = f"or point {where} at a local folder" + (
        " (its config.json alone is enough to plan)" if file == "config.json" else "")
    if hub_offline():
        raise HubUnavailable(f"{where}={repo}: not in the local Hugging Face cache and the hub is "
                             f"off (HF_HUB_OFFLINE=1): download it where the hub is reachable "
                             f"(`hf download {repo}`), {fix}",
                             "not in the local Hugging Face cache and the hub is off", repo, where)
    try:
        url = hf_hub_url(repo, file, revision=revision,
                         endpoint=os.environ.get("HF_ENDPOINT") or None)
        get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S)
    except hub.GatedRepoError:
        raise HubUnavailable(f"{where}={repo} is a gated model: accept its licence on "
                             f"https://huggingface.co/{repo} and set HF_TOKEN (or run `hf auth "
                             "login`) with an account that has access",
                             "a gated model this account has no access to", repo, where) from None
    except hub.RepositoryNotFoundError:
        raise ConfigError(f"{where}={repo}: no such model on the Hugging Face Hub (a private "
                          f"one needs HF_TOKEN); check the name, {fix}") from None
    except hub.RevisionNotFoundError:
        raise ConfigError(f"model.revision={revision}: {repo} has no such branch, tag or "
                          "commit") from None
    except hub.RemoteEntryNotFoundError:
        raise ConfigError(f"{where}={repo}: the repository has no {file}, so it is not a "
                          "transformers model") from None
    except hub.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "an error")
        raise HubUnavailable(f"{where}={repo}: the Hugging Face Hub answered HTTP {status}; "
                             f"try again later, {fix}",
                             f"the Hugging Face Hub answered HTTP {status}", repo, where) from None
    except Exception as exc:  # network: DNS, refused, timeouts (httpx/requests errors)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubUnavailable(f"{where}={repo}: the Hugging Face Hub did not answer within "
                             f"{HUB_TIMEOUT_S:g} s ({reason}); check the network (or "
                             "HF_ENDPOINT), run offline (HF_HUB_OFFLINE=1) with the model in the "
                             f"cache, {fix}",
                             f"the Hugging Face Hub did not answer within {HUB_TIMEOUT_S:g} s",
                             repo, where) from None


def shipped_architecture(repo: str) -> Path | None:
    """The folder holding the published config.json align ships for hub id `repo`, or None."""
    if "/" not in repo or not _HUB_ID.fullmatch(repo):
        return None
    folder = ARCHITECTURES / repo.replace("/", "--")
    return folder if (folder / "config.json").is_file() else None


def shipped_instead(exc: HubUnavailable, revision: str | None = None) -> tuple[str, str]:
    """For sizing a model, never for loading one: after `exc` (the hub and its cache could not
    give the config of hub id `exc.repo`), the folder of the published architecture align ships
    for it and a one-line note saying so. Re-raises `exc` when align ships none, or when another
    revision than main is asked for."""
    folder = shipped_architecture(exc.repo)
    if folder is None or revision not in (None, "main"):
        raise exc
    return str(folder), (f"{exc.repo}: {exc.reason}; planning on its published architecture "
                         f"that align ships (align/models/architectures/{folder.name}/"
                         "config.json); training needs the model itself")


def resolve_architecture(name_or_path: str, *, revision: str | None = None,
                         where: str = "model.name_or_path") -> tuple[str, str | None]:
    """What to size for `name_or_path`: `(resolve_source(...), None)`, or `shipped_instead`'s
    folder and note when the hub cannot give it. A wrong name or revision fails as in
    resolve_source."""
    try:
        return resolve_source(name_or_path, revision=revision, where=where), None
    except HubUnavailable as exc:
        return shipped_instead(exc, revision)


@functools.lru_cache(maxsize=4)
def meta_model(source: str, revision: str | None = None, trust_remote_code: bool = False,
               vision: bool = False):
    """The model's architecture on PyTorch's meta device: exact parameter counts and module
    names, no weights, no memory. `source` as resolve_source returns it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from align.models.tiny import (
        TINY_SCHEME,
        TINY_VARIANTS,
        TOOLS_VARIANTS,
        TOOLS_VOCAB_SIZE,
        architecture_config,
        resolve_model_path,
    )

    if source in [TINY_SCHEME + v for v in TINY_VARIANTS]:
        config = architecture_config()  # a check must not build (and SFT-train) the tiny model
    elif source in [TINY_SCHEME + v for v in TOOLS_VARIANTS]:
        config = architecture_config(TOOLS_VOCAB_SIZE + 2)  # + the two tool-call tags
    else:
        config = AutoConfig.from_pretrained(resolve_model_path(source), revision=revision,
                                            trust_remote_code=trust_remote_code)
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=trust_remote_code)
