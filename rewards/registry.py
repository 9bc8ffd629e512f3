"""The reward registry: names -> functions, references -> functions, config -> trl reward funcs.

A reward is a pure, module-level function ``fn(completions, **columns) -> list[float | None]``
(``None`` = not applicable to that completion). It is referenced from config either by a
registered name (``accuracy``), by an import path (``my_pkg.my_rewards:fn``), or by a file path
(``path/to/my_rewards.py:fn``).

Prefer the ``pkg.module:fn`` form for anything that runs in several processes (accelerate ranks,
the async GRPO rollout worker): a function from a file is loaded under a synthetic module name that
only exists in processes which loaded the file. :class:`BoundReward` hides this for configs, since
it pickles the *reference* and re-resolves it in the receiving process.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import numbers
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RewardFn = Callable[..., list[float | None]]

REGISTRY: dict[str, RewardFn] = {}

# Supplied by trl's GRPOTrainer on every call; binding one of them in config would shadow the
# trainer's value, so it is refused at setup.
TRAINER_KWARGS = frozenset(
    {
        "completions",
        "prompts",
        "completion_ids",
        "trainer_state",
        "log_extra",
        "log_metric",
        "environments",
    }
)
SPEC_KEYS = ("fn", "weight", "kwargs", "on_error")
#: What a reward that fails (raises, or returns a non-number or a NaN/infinite score) does to
#: training: ``raise`` stops it (the default: a broken reward should be noticed at step 1, not
#: after a day of training on zeros); ``none`` scores the failing samples ``None`` (left out of
#: the mean, like "not applicable"); ``zero`` scores them 0.0. See :class:`GatedReward`.
ERROR_POLICIES = ("raise", "none", "zero")
#: Characters of a failing completion quoted in the log.
EXCERPT_CHARS = 200

log = logging.getLogger(__name__)


class RewardConfigError(ValueError):
    """A reward is configured wrongly (unknown key, bad kwarg, bad weight ...)."""


class UnknownRewardError(RewardConfigError):
    """A reward name is neither registered nor an import path."""


class RewardImportError(RewardConfigError):
    """An import-path or file-path reference could not be loaded."""


def _closest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, sorted(candidates), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def register(
    name: str, *, check: Callable[..., None] | None = None
) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name``.

    ``check``, if given, is called with the bound kwargs at setup (``BoundReward``) and raises
    ``ValueError`` for values the signature cannot reject (an invalid regex, a negative length).
    It is stored as ``fn.check_kwargs``; a user's function may carry the same attribute.
    """

    def decorator(fn: RewardFn) -> RewardFn:
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise RewardConfigError(
                f"reward name {name!r} is already registered to {REGISTRY[name]!r}"
            )
        if check is not None:
            fn.check_kwargs = check  # type: ignore[attr-defined]
        REGISTRY[name] = fn
        return fn

    return decorator


def _load_file(
    path_str: str, kind: str = "reward", import_error: type[Exception] = RewardImportError
) -> Any:
    path = Path(path_str).expanduser().resolve()
    if not path.is_file():
        raise import_error(f"{kind} file {path_str!r} does not exist (resolved to {path})")
    # A stable name per absolute path: loading the same file twice gives the same module (and the
    # same function objects), and pickle can find the function by reference in this process.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"_rewards_file_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise import_error(f"cannot load {kind} file {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise import_error(
            f"{kind} file {path} failed to import: {type(e).__name__}: {e}"
        ) from e
    return module


def check_spec_keys(spec: Any, where: str, keys: Sequence[str],
                    error: type[Exception] = RewardConfigError) -> None:
    """One config entry of a registry of pluggable things (``{fn, ...}``): a mapping, with only
    ``keys`` (the closest named on a typo), and ``fn``. Raises ``error`` naming ``where``."""
    if not isinstance(spec, Mapping):
        raise error(f"{where}: expected a mapping with keys {list(keys)}, got "
                    f"{type(spec).__name__}")
    unknown = [k for k in spec if k not in keys]
    if unknown:
        hints = "".join(_closest(str(k), keys) for k in unknown)
        raise error(f"{where}: unknown keys {unknown}{hints}. Allowed keys: {list(keys)}.")
    if "fn" not in spec:
        raise error(f"{where}: missing 'fn' (a registered name or 'pkg.module:function')")


def load_reference(
    ref: str,
    kind: str = "reward",
    *,
    config_error: type[Exception] = RewardConfigError,
    import_error: type[Exception] = RewardImportError,
) -> Any:
    """The object an import reference names: ``"pkg.module:attr"`` or ``"path/to/file.py:attr"``
    (a dotted ``attr`` is followed). Shared by every registry of pluggable things (rewards, tools,
    environments): ``kind`` names the thing in error messages, which are raised as ``import_error``
    (the module or attribute cannot be loaded) or ``config_error`` (the reference is malformed)."""
    target, _, attr_path = ref.rpartition(":")
    if not target or not attr_path:
        raise config_error(f"{kind} reference {ref!r} must look like 'pkg.module:function'")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_file(target, kind, import_error)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise import_error(
                f"{kind} {ref!r}: cannot import module {target!r} ({type(e).__name__}: {e}). "
                "Is the package installed (pip install -e .) or on PYTHONPATH?"
            ) from e
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise import_error(
                f"{kind} {ref!r}: {getattr(obj, '__name__', target)!r} has no attribute {part!r}"
                f"{_closest(part, names)}."
            )
        obj = getattr(obj, part)
    return obj


def resolve(ref: str) -> RewardFn:
    """Return the reward function for ``ref``.

    ``ref`` is a registered name (see ``REGISTRY``), ``"pkg.module:function"`` (the form to use
    for multi-process training), or ``"path/to/file.py:function"`` for a file outside any package.
    A dotted attribute (``"pkg.module:Class.method"``) is followed.
    """
    if not isinstance(ref, str) or not ref:
        raise RewardConfigError(
            f"a reward reference must be a non-empty string, got {ref!r}"
        )
    if ref in REGISTRY:
        return REGISTRY[ref]
    if ":" not in ref:
        raise UnknownRewardError(
            f"unknown reward {ref!r}{_closest(ref, REGISTRY.keys())}. Registered rewards: "
            f"{', '.join(sorted(REGISTRY))}. For your own function use 'pkg.module:function' "
            "or 'path/to/file.py:function'."
        )
    obj = load_reference(ref)
    if not callable(obj):
        raise RewardConfigError(
            f"reward {ref!r} resolved to a {type(obj).__name__}, which is not callable"
        )
    return obj


def _nonfinite_in(value: Any, path: str = "") -> str | None:
    """Where in a bound kwarg (a number, or lists and mappings of them) a float is NaN or
    infinite: "" for the value itself, "[2]" or ".key" inside it; None when all are finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, Mapping):
        items = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _nonfinite_in(item, where)
        if found is not None:
            return found
    return None


def check_reward_kwargs(fn: RewardFn, kwargs: Mapping[str, Any], name: str) -> None:
    """Fail at setup if ``fn`` cannot be called as a reward with the bound ``kwargs``.

    Bound kwargs must name an explicit parameter of ``fn``. A reward's ``**kwargs`` exists to swallow
    the columns trl passes, not to receive config; treating it as "accepts anything" would let a
    typo (``patern``) pass silently into every built-in.
    """
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(fn.__call__):
        raise RewardConfigError(
            f"reward {name!r} is async; the registry binds synchronous rewards only. Pass it to "
            "GRPOTrainer directly, or wrap it in a synchronous function."
        )
    reserved = sorted(set(kwargs) & TRAINER_KWARGS)
    if reserved:
        raise RewardConfigError(
            f"reward {name!r}: kwargs {reserved} are supplied by the trainer on every call and cannot be bound"
        )
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # some C callables have no signature; nothing to check
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise RewardConfigError(
            f"reward {name!r} must accept **kwargs: trl passes every dataset column plus prompts, "
            "completion_ids, trainer_state, log_extra and log_metric. Add **kwargs to its signature."
        )
    accepted = {
        p.name
        for p in params
        if p.kind
        in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    } - TRAINER_KWARGS
    for key in kwargs:
        if key not in accepted:
            raise RewardConfigError(
                f"reward {name!r} got an unknown kwarg {key!r}{_closest(key, accepted)}. "
                f"It accepts: {', '.join(sorted(accepted)) or '(no kwargs)'}."
            )
    for key, value in kwargs.items():
        where = _nonfinite_in(value)
        if where is not None:
            raise RewardConfigError(
                f"reward {name!r}: kwarg {key}{where} is not a finite number; give a number "
                "(a bound that means 'none' is null where the reward takes one)"
            )
    check = getattr(fn, "check_kwargs", None)
    if callable(check):
        try:
            check(**kwargs)
        except (TypeError, ValueError) as e:
            raise RewardConfigError(f"reward {name!r}: {e}") from e


def _plain(value: Any) -> Any:
    """Deep-convert mappings/sequences (OmegaConf DictConfig/ListConfig included) to dict/list,
    so bound kwargs pickle without dragging the config library into worker processes."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


class RewardError(RuntimeError):
    """A reward function broke its contract: the wrong number of scores (always), or a score that
    is not a number or not finite under ``on_error: raise``."""


class RewardUnavailableError(RuntimeError):
    """What a reward depends on is unavailable (a judge endpoint that is down): the failure is the
    batch's, not one sample's, so ``on_error: none``/``zero`` fill the whole batch at once instead
    of scoring it again sample by sample (which would only wait for the same outage n times)."""


def _excerpt(completion: Any) -> str:
    from rewards.text import completion_text

    try:
        text = completion_text(completion)
    except TypeError:
        text = repr(completion)
    text = text.replace("\n", "\\n")
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _is_finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: no finite reward either
        return False


def _is_score(value: Any) -> bool:
    # numbers.Real: numpy/torch scalars count too; a bool is almost always a bug (a missing float()).
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


class GatedReward:
    """A reward function behind align's gate: every value it returns is checked, and its
    ``on_error`` policy (:data:`ERROR_POLICIES`) says what a failure does.

    One gate for every reward source: the configured rewards (:class:`BoundReward`, below) and
    the ``get_reward()`` of an environment (wrapped by align's GRPO trainer). A failure is any of

    - the call raised (a :class:`RewardUnavailableError` fails the whole batch at once; any other
      exception under ``none``/``zero`` has the batch scored again sample by sample to find the
      failing samples);
    - a score that is not a number (a bool counts as one: almost always a missing ``float()``);
    - a score that is not finite (NaN, +inf, -inf). trl reads NaN as "not applicable" and would
      train on an infinity, so neither may pass as a score: ``None`` is how a reward says "not
      applicable".

    Under ``raise`` (the default) the first failure stops the call: an exception of the function
    keeps its traceback (with a note naming the reward); a non-number or non-finite score raises
    :class:`RewardError` naming the reward, the sample and its completion. Under ``none``/``zero``
    each failing sample is logged at WARNING (sample index, reward name, cause, completion
    excerpt) and scored ``None``/0.0, and on every call trl's ``log_metric`` receives

    - ``rewards/<name>/error_frac``: the share of samples that failed, for any of the causes;
    - ``rewards/<name>/nonfinite_frac``: the share that returned a non-finite score (the run
      doctor names a reward for which it is ever above 0);
    - ``rewards/<name>/batch_error_frac``: 1.0 when the call on the whole batch raised (so it was
      scored sample by sample), else 0.0. A reward that fails on a batch and not on its samples
      one by one is still broken (a batching bug, a flaky dependency) and must leave a trace
      even when every sample then scores.

    ``errors`` counts failing samples and ``batch_errors`` failed batch calls over the object's
    lifetime. A wrong number of scores is a bug in the reward and always raises.
    """

    def __init__(self, fn: RewardFn, name: str, on_error: str = "raise", ref: str | None = None
                 ) -> None:
        if on_error not in ERROR_POLICIES:
            raise RewardConfigError(
                f"reward {name!r}: on_error must be one of {list(ERROR_POLICIES)}, got "
                f"{on_error!r}{_closest(str(on_error), ERROR_POLICIES)}"
            )
        self._fn: RewardFn | None = fn
        self.__name__ = name
        self.on_error = on_error
        self.ref = ref or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', name)}"
        self.kwargs: dict[str, Any] = {}
        self.errors = 0
        self.batch_errors = 0
        self.log_columns: tuple[str, ...] = ()

    @property
    def fn(self) -> RewardFn:
        return self._fn

    def __call__(
        self, completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        clash = sorted(set(self.kwargs) & set(columns))
        if clash:
            raise RewardConfigError(
                f"reward {self.__name__!r}: bound kwargs {clash} collide with dataset columns of the same "
                "name; rename the column or drop the kwarg"
            )
        n = len(completions)
        if self.log_columns:
            _log_columns(columns, n, skip=self.log_columns)
        failed: dict[int, BaseException | str] = {}
        batch_error: BaseException | None = None
        try:
            scores = self.fn(completions=completions, **columns, **self.kwargs)
        except Exception as e:
            if self.on_error == "raise":
                if hasattr(e, "add_note"):  # Python 3.11+
                    e.add_note(
                        f"raised by reward {self.__name__!r} ({self.ref}) on a batch of {n} "
                        "completions; set on_error: none or zero in its config to score failing "
                        "samples instead"
                    )
                raise
            if isinstance(e, RewardUnavailableError):
                return self._unavailable(e, n, columns)
            batch_error = e
        if batch_error is not None:  # outside the handler: a sample's error is not chained to it
            scores, failed = self._score_one_by_one(completions, columns)
        else:
            self._check_length(scores, n)
            scores = list(scores)
        nonfinite = 0
        for i, value in enumerate(scores):
            if i in failed:
                continue
            if not _is_score(value):
                failed[i] = f"returned a non-number at sample {i}: {_short(value)}"
            elif value is not None and not _is_finite(value):
                failed[i] = f"returned a non-finite score at sample {i}: {_short(value)}"
                nonfinite += 1
        if failed and self.on_error == "raise":
            i = min(failed)
            raise RewardError(
                f"reward {self.__name__!r} ({self.ref}) {failed[i]} (of {n}; completion: "
                f"{_excerpt(completions[i])!r}); a reward returns a finite float per completion, "
                "or None for 'not applicable'. Fix the reward, or set on_error: none or zero in "
                "its config to score such samples instead"
            )
        fill = None if self.on_error == "none" else 0.0
        if batch_error is not None:
            self.batch_errors += 1
            log.warning(
                "reward %r raised on the batch of %d (%s: %s); scored again sample by sample, "
                "%d of them failing (on_error=%s)",
                self.__name__, n, type(batch_error).__name__, batch_error, len(failed),
                self.on_error, exc_info=batch_error,
            )
        for i, error in sorted(failed.items()):
            scores[i] = fill
            detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            log.warning(
                "reward %r failed on sample %d of %d (scored %s, on_error=%s): %s; completion: %r",
                self.__name__, i, n, fill, self.on_error, detail, _excerpt(completions[i]),
                exc_info=error if isinstance(error, BaseException) else None,
            )
        self.errors += len(failed)
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric(f"rewards/{self.__name__}/error_frac", len(failed) / max(n, 1))
            log_metric(f"rewards/{self.__name__}/nonfinite_frac", nonfinite / max(n, 1))
            log_metric(f"rewards/{self.__name__}/batch_error_frac",
                       float(batch_error is not None))
        return [None if v is None else float(v) for v in scores]

    def _check_length(self, scores: Any, n: int) -> None:
        if not isinstance(scores, Sequence) or isinstance(scores, (str, bytes)) or len(scores) != n:
            got = len(scores) if isinstance(scores, Sequence) else type(scores).__name__
            raise RewardError(
                f"reward {self.__name__!r} returned {got} scores for {n} completions; a reward returns "
                "one float (or None) per completion"
            )

    def _unavailable(self, e: BaseException, n: int, columns: Mapping[str, Any]
                     ) -> list[float | None]:
        fill = None if self.on_error == "none" else 0.0
        log.warning(
            "reward %r is unavailable for the whole batch of %d (scored %s, on_error=%s): %s",
            self.__name__, n, fill, self.on_error, e,
        )
        self.errors += n
        self.batch_errors += 1
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric(f"rewards/{self.__name__}/error_frac", 1.0 if n else 0.0)
        return [fill] * n

    def _score_one_by_one(
        self, completions: Sequence[Any], columns: dict[str, Any]
    ) -> tuple[list[Any], dict[int, BaseException]]:
        """(scores, the samples that raised): each sample scored alone. log_extra is muted
        meanwhile: a sample that fails would log nothing and shift every later row of trl's
        completions table."""
        n = len(completions)
        scores: list[Any] = []
        failed: dict[int, BaseException] = {}
        single_columns = {**columns, "log_extra": _discard} if "log_extra" in columns else columns
        for i in range(n):
            try:
                one = self.fn(
                    completions=[completions[i]],
                    **_slice_columns(single_columns, i, n),
                    **self.kwargs,
                )
                self._check_length(one, 1)
                scores.append(one[0])
            except RewardError:
                raise
            except Exception as e:
                failed[i] = e
                scores.append(None)
        return scores, failed

    def __repr__(self) -> str:
        return f"GatedReward(ref={self.ref!r}, name={self.__name__!r}, on_error={self.on_error!r})"


class BoundReward(GatedReward):
    """A reward reference plus its config kwargs and error policy, callable the way trl calls rewards.

    - ``__name__`` is the display name: trl logs each reward under it (``rewards/<name>/mean``).
    - The function is resolved and its kwargs validated at construction (fail at setup).
    - Pickling keeps only ``(ref, kwargs, name, on_error)``; the function is resolved again, lazily,
      in the process that unpickles it.
    - Bound kwargs are config; a dataset column with the same name is an error rather than a silent
      override either way (rename the column or the kwarg).
    - Every score passes the gate of :class:`GatedReward`: ``on_error`` (:data:`ERROR_POLICIES`)
      decides what a reward that raises, or returns a non-number or a non-finite score, does.
    """

    def __init__(
        self,
        ref: str,
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        on_error: str = "raise",
    ) -> None:
        fn = resolve(ref)
        super().__init__(fn, name or getattr(fn, "__name__", ref), on_error, ref)
        self.kwargs = _plain(dict(kwargs or {}))
        check_reward_kwargs(fn, self.kwargs, self.__name__)
        # Set by build_rewards on its first reward: the names of all rewards of the run (their
        # columns in trl's table must not be overwritten by a dataset column of the same name).
        self.log_columns = ()

    @property
    def fn(self) -> RewardFn:
        if self._fn is None:
            self._fn = resolve(self.ref)
        return self._fn

    def __getstate__(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "kwargs": self.kwargs,
            "__name__": self.__name__,
            "on_error": self.on_error,
            "log_columns": self.log_columns,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.ref = state["ref"]
        self.kwargs = state["kwargs"]
        self.__name__ = state["__name__"]
        self.on_error = state.get("on_error", "raise")
        self._fn = None
        self.errors = 0
        self.batch_errors = 0
        self.log_columns = tuple(state.get("log_columns", ()))

    def __repr__(self) -> str:
        return (
            f"BoundReward(ref={self.ref!r}, kwargs={self.kwargs!r}, name={self.__name__!r}, "
            f"on_error={self.on_error!r})"
        )


# Columns never copied into trl's completions table: images do not serialise to parquet.
_UNLOGGED_COLUMNS = frozenset({"image", "images"})


def _log_columns(columns: Mapping[str, Any], n: int, skip: Iterable[str] = ()) -> None:
    """Copy the dataset columns of this batch into trl's completions table (``log_extra``), so a
    finished run's logged completions can be scored again offline (``python -m rewards score``)."""
    log_extra = columns.get("log_extra")
    if not callable(log_extra):
        return
    for key, values in columns.items():
        if key in TRAINER_KWARGS or key in _UNLOGGED_COLUMNS or key in skip:
            continue
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)) or len(values) != n:
            continue
        try:
            json.dumps(values[0] if n else None)
        except (TypeError, ValueError):
            continue  # not serialisable: not worth breaking trl's table for
        log_extra(key, list(values))


def _discard(*args: Any, **kwargs: Any) -> None:
    """Stands in for trl's ``log_extra`` while failing samples are isolated."""


def _slice_columns(columns: Mapping[str, Any], i: int, n: int) -> dict[str, Any]:
    """Sample ``i`` of every per-sample column (a list of length ``n``); other values as they are."""
    return {
        k: [v[i]] if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and len(v) == n else v
        for k, v in columns.items()
    }


def build_rewards(
    specs: Mapping[str, Mapping[str, Any]],
    columns: Iterable[str] | None = None,
) -> tuple[list[BoundReward], list[float]]:
    """Build trl's ``reward_funcs`` and ``reward_weights`` from the ``rewards:`` config.

    ``specs`` maps a display name to ``{"fn": ref, "weight": 1.0, "kwargs": {}, "on_error": "raise"}``;
    ``weight``, ``kwargs`` and ``on_error`` are optional, any other key is an error. Pass the dataset's ``columns`` to have a
    bound kwarg that shadows a column rejected here, at setup, rather than at the first step.
    """
    if not specs:
        raise RewardConfigError(
            "no rewards configured: GRPO needs at least one, e.g. rewards: {accuracy: {fn: accuracy}}"
        )
    funcs: list[BoundReward] = []
    weights: list[float] = []
    for name, spec in specs.items():
        check_spec_keys(spec, f"reward {name!r}", SPEC_KEYS, RewardConfigError)
        weight = spec.get("weight", 1.0)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
        ):
            raise RewardConfigError(
                f"reward {name!r}: weight must be a finite number, got {weight!r}"
            )
        kwargs = spec.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise RewardConfigError(
                f"reward {name!r}: kwargs must be a mapping, got {type(kwargs).__name__}"
            )
        bound = BoundReward(
            spec["fn"], kwargs, name=str(name), on_error=spec.get("on_error", "raise")
        )
        clash = sorted(set(bound.kwargs) & set(columns or ()))
        if clash:
            raise RewardConfigError(
                f"reward {name!r}: bound kwargs {clash} collide with dataset columns of the same "
                "name; rename the column or drop the kwarg"
            )
        funcs.append(bound)
        weights.append(float(weight))
    # One reward (the first) copies the dataset columns into trl's completions table, once per batch.
    funcs[0].log_columns = tuple(f.__name__ for f in funcs)
    return funcs, weights
