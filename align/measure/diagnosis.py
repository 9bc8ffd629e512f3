"""The run doctor's diagnosis (the library; the command is align/doctor.py): reads what trl
logs and names what is wrong with a run, with the fix to try.

`diagnose(history, DoctorConfig())` gives the findings of a trainer's log history;
`read_history(folder)` reads one. From the command line: `python -m align.doctor RUN_DIR`
(align/doctor.py).

During training the same checks run on every log (align.measure.callbacks.DoctorCallback, on
by default for every stage; `doctor.enabled=false` turns it off, `doctor.<threshold>=...` tunes
it): each finding is logged once as a warning, and `doctor.json` is written into the run folder
at the end.

Where the log comes from: the run folder's `log_history.jsonl` (align writes it at the end of
every run), else the folder's `trainer_state.json` (a plain trl output_dir), else the newest
`checkpoint-*/trainer_state.json` (a run still going, or killed).

What is checked (trl 1.16's metric names; the thresholds are the fields of DoctorConfig):

  nan_loss                  `loss` not finite at any logged step, or `grad_norm` not finite
                            for `window` logged steps in a row (fp16 loss scaling skips a step
                            now and then: one inf grad_norm is not a finding)
  grad_norm_spike           `grad_norm` above `grad_norm_factor` x the median of the `window`
                            logged steps before it and of all logged steps before it, at
                            `grad_norm_spikes` or more steps (a model that has nearly fitted
                            its data logs tiny norms with one hard batch's now and then: not a
                            spike unless it is one against the whole run too)
  zero_reward_spread        GRPO: `frac_reward_zero_std` (groups whose samples all got the same
                            reward: their advantage is zero, GRPO learns nothing from them)
                            at >= `zero_spread_fraction` (median of `window` logged steps);
                            with trainer.dynamic_sampling, the share among the groups trained
                            on (`dynamic_sampling/zero_spread_kept`)
  reward_constant           GRPO: a reward function's `rewards/<fn>/std` <= `constant_std` at
                            every one of `window` logged steps (it scores every completion the
                            same: it tells the policy nothing)
  truncation                GRPO: `completions/clipped_ratio` (completions cut at
                            max_completion_length) at >= `truncation_ratio` (median of `window`)
  entropy_collapse          GRPO: `entropy` at <= `entropy_floor` (median of `window` logged steps)
                            and <= `entropy_fraction` x its mean over the first `window`
  reward_nonfinite          GRPO: a reward returned NaN or +/-inf (`rewards/<fn>/nonfinite_frac`
                            above 0, logged by rewards under on_error none or zero, which score
                            those samples None or 0) at any logged step: one is a bug in the
                            reward, not noise, as a non-finite loss is
  kl_high                   GRPO with beta > 0: `kl` at >= `kl_max` (median of `window`)
  chosen_likelihood_falling DPO, KTO: `rewards/chosen` (beta x the log-ratio of the chosen answers
                            to the reference model) below 0 at every one of `window` logged
                            steps, averaging <= -`chosen_reward_drop`: the chosen answers are
                            getting less likely, not only the rejected ones

A pattern must hold over a window of logged steps (the median of the window, or every point
of it), never one noisy point; the evidence gives the mean over the steps the pattern held.
Non-finite values are the exception: one is a finding (nan_loss's loss, reward_nonfinite).
A check whose metrics are not in the log is skipped and named as not checked.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align.errors import ConfigError

DOCTOR_FILE = "doctor.json"


@dataclass(frozen=True)
class DoctorConfig:
    """The `doctor:` config section: on/off and the thresholds of each finding (module doc)."""

    enabled: bool = True
    #: how many logged steps a pattern must hold over (the trainer logs every logging_steps)
    window: int = 5
    zero_spread_fraction: float = 0.5
    constant_std: float = 1e-6
    truncation_ratio: float = 0.2
    entropy_floor: float = 0.05
    entropy_fraction: float = 0.25
    kl_max: float = 1.0
    grad_norm_factor: float = 10.0
    grad_norm_spikes: int = 2
    chosen_reward_drop: float = 0.01


def check_doctor_config(cfg: DoctorConfig) -> list[str]:
    errors = []
    if cfg.window < 1:
        errors.append(f"doctor.window={cfg.window}: at least 1 logged step")
    for name in ("zero_spread_fraction", "truncation_ratio", "entropy_fraction"):
        value = getattr(cfg, name)
        if not 0 < value <= 1:
            errors.append(f"doctor.{name}={value}: a fraction in (0, 1]")
    for name in ("constant_std", "entropy_floor", "kl_max", "chosen_reward_drop"):
        if getattr(cfg, name) < 0:
            errors.append(f"doctor.{name}={getattr(cfg, name)}: must be >= 0")
    if cfg.grad_norm_factor <= 1:
        errors.append(f"doctor.grad_norm_factor={cfg.grad_norm_factor}: must be > 1")
    if cfg.grad_norm_spikes < 1:
        errors.append(f"doctor.grad_norm_spikes={cfg.grad_norm_spikes}: at least 1")
    return errors


@dataclass
class Finding:
    """One thing wrong with a run: what, since when, the numbers, and what to try."""

    name: str
    #: the first logged step of the pattern (its latest episode)
    since_step: int
    #: None while the pattern still holds at the last logged step
    until_step: int | None
    message: str
    fix: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name}: {self.message}: {self.fix}"


@dataclass
class Diagnosis:
    findings: list[Finding]
    #: names of the checks whose metrics were in the log
    checked: list[str]
    #: names of the checks skipped, as `name (no <metric> logged)`
    skipped: list[str]
    logged_steps: int
    last_step: int | None

    def to_dict(self) -> dict:
        return {"findings": [asdict(f) for f in self.findings], "checked": self.checked,
                "skipped": self.skipped, "logged_steps": self.logged_steps,
                "last_step": self.last_step}

    def lines(self) -> list[str]:
        if self.findings:
            return [f.line() for f in self.findings]
        checked = ", ".join(self.checked) or "nothing"
        return [f"no findings in {self.logged_steps} logged steps (checked: {checked})"]


# --------------------------------------------------------------------------- series helpers


def series(history: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every training log entry that has `key` (numbers only)."""
    points = []
    for entry in history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            points.append((int(entry.get("step", len(points))), float(value)))
    return points


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def latest_episode(points: list[tuple[int, float]], window: int, holds,
                   point=None) -> tuple | None:
    """The latest run of windows (`window` consecutive points) for which `holds(values)` is
    true: (first step, last step or None if it holds at the end, the values from its first
    point to its last). With `point` (the pattern for one value), the points at either end
    of the run that do not show the pattern themselves are left out. None when no window
    holds."""
    if len(points) < window:
        return None
    hits = [holds([v for _, v in points[i - window + 1:i + 1]])
            for i in range(window - 1, len(points))]
    if not any(hits):
        return None
    end = max(i for i, h in enumerate(hits) if h)
    start = end
    while start > 0 and hits[start - 1]:
        start -= 1
    first, last = start, end + window - 1  # point indices
    ongoing = last == len(points) - 1
    while point is not None and first < last and not point(points[first][1]):
        first += 1
    while point is not None and last > first and not point(points[last][1]):
        last -= 1
    until = None if ongoing else points[last][0]
    return points[first][0], until, [v for _, v in points[first:last + 1]]


def _typical(values) -> float:
    """What a window of logged values says: their median, which one outlier cannot move."""
    return statistics.median(values)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _since(since: int, until: int | None) -> str:
    return f"since step {since}" if until is None else f"from step {since} to {until}"


# --------------------------------------------------------------------------- the checks


def _nan_loss(history, cfg):
    loss = series(history, "loss")
    grad = series(history, "grad_norm")
    if not loss and not grad:
        return None, "no loss or grad_norm logged"
    bad_loss = [s for s, v in loss if not math.isfinite(v)]
    if bad_loss:
        return Finding("nan_loss", bad_loss[0], None,
                       f"the loss is not finite at {len(bad_loss)} of {len(loss)} logged steps, "
                       f"first at step {bad_loss[0]}",
                       "lower trainer.learning_rate, keep trainer.max_grad_norm on (1.0), use "
                       "bf16 instead of fp16, and check the data of that step",
                       {"metric": "loss", "non_finite_steps": bad_loss[:20]}), None
    episode = latest_episode(grad, cfg.window, lambda vs: not any(map(math.isfinite, vs)))
    if episode:
        since, until, values = episode
        return Finding("nan_loss", since, until,
                       f"grad_norm is not finite at {len(values)} logged steps in a row "
                       f"{_since(since, until)}",
                       "lower trainer.learning_rate, use bf16 instead of fp16 (the loss scale "
                       "cannot recover), and check the data of those steps",
                       {"metric": "grad_norm", "steps_in_a_row": len(values)}), None
    return None, None


def _grad_norm_spike(history, cfg):
    grad = [(s, v) for s, v in series(history, "grad_norm") if math.isfinite(v)]
    if len(grad) <= cfg.window:
        return None, "fewer than window+1 grad_norm points" if grad else "no grad_norm logged"
    spikes = []
    for i in range(cfg.window, len(grad)):
        base = statistics.median(v for _, v in grad[i - cfg.window:i])
        if not (base > 0 and grad[i][1] > cfg.grad_norm_factor * base):
            continue
        # the whole run's median only where the recent one found a spike: this runs on every
        # log of a training run, and a median of all points at every point would grow with n^2
        base = max(base, statistics.median(v for _, v in grad[:i]))
        if grad[i][1] > cfg.grad_norm_factor * base:
            spikes.append((grad[i][0], grad[i][1], base))
    if len(spikes) < cfg.grad_norm_spikes:
        return None, None
    step, value, base = max(spikes, key=lambda s: s[1] / s[2])
    return Finding("grad_norm_spike", spikes[0][0], None,
                   f"grad_norm jumped above {_fmt(cfg.grad_norm_factor)}x its median (recent "
                   f"and over the run) at {len(spikes)} logged steps since step {spikes[0][0]} "
                   f"(worst: {_fmt(value)} at step {step}, median before {_fmt(base)})",
                   "lower trainer.learning_rate or add warm-up (trainer.warmup_steps), keep "
                   "trainer.max_grad_norm=1.0, and look for outlier rows at those steps",
                   {"metric": "grad_norm", "spike_steps": [s for s, _, _ in spikes][:20],
                    "worst": value, "median_before": base}), None


def _at_least(history, cfg, metric: str, threshold: float, absent: str):
    """(the latest episode where `metric` is typically >= `threshold`, or None; why the check was
    skipped, or None): the shape of the checks of one logged share or level."""
    points = series(history, metric)
    if not points:
        return None, f"no {metric} logged ({absent})"
    return latest_episode(points, cfg.window, lambda vs: _typical(vs) >= threshold,
                          lambda v: v >= threshold), None


def _zero_reward_spread(history, cfg):
    # With trainer.dynamic_sampling the groups trained on are what matters: trl's own share
    # counts every generated group, the dropped ones too.
    dynamic = bool(series(history, KEPT_ZERO_SPREAD))
    metric = KEPT_ZERO_SPREAD if dynamic else "frac_reward_zero_std"
    episode, skipped = _at_least(history, cfg, metric, cfg.zero_spread_fraction, "not GRPO")
    if not episode:
        return None, skipped
    since, until, values = episode
    share = _mean(values)
    if dynamic:
        what = (f"{share:.0%} of the groups trained on have zero reward spread "
                f"{_since(since, until)}, with dynamic sampling on (too few fresh groups vary)")
        fix = ("raise trainer.dynamic_sampling_max_rounds, trainer.temperature or "
               "trainer.num_generations, use harder or easier prompts, or test the reward on "
               "the run's completions with python -m rewards score RUN")
    else:
        what = (f"{share:.0%} of groups have zero reward spread {_since(since, until)} "
                "(their advantage is zero: GRPO learns nothing from them)")
        fix = ("turn on trainer.dynamic_sampling=true, raise trainer.temperature or "
               "trainer.num_generations, use easier prompts, or test the reward on the run's "
               "completions with python -m rewards score RUN")
    return Finding("zero_reward_spread", since, until, what, fix,
                   {"metric": metric, "mean": share,
                    "reward_std_mean": _window_mean(history, "reward_std", since, until)}), None


def _window_mean(history, key, since, until) -> float | None:
    values = [v for s, v in series(history, key) if s >= since and (until is None or s <= until)]
    return _mean(values) if values else None


#: trainer.dynamic_sampling's share of zero-spread groups among those trained on
KEPT_ZERO_SPREAD = "dynamic_sampling/zero_spread_kept"
REWARD_STD = re.compile(r"^rewards/(?P<name>.+)/std$")


def _reward_constant(history, cfg):
    names = sorted({m["name"] for entry in history for k in entry
                    if (m := REWARD_STD.match(k))})
    if not names:
        return [], "no rewards/<fn>/std logged (not GRPO)"
    found = []
    for name in names:
        points = series(history, f"rewards/{name}/std")
        episode = latest_episode(points, cfg.window,
                                 lambda vs: max(vs) <= cfg.constant_std)
        if not episode:
            continue
        since, until, _ = episode
        mean = _window_mean(history, f"rewards/{name}/mean", since, until)
        shown = "" if mean is None else f" ({_fmt(mean)})"
        found.append(Finding(
            "reward_constant", since, until,
            f"reward {name} gives every completion the same score{shown} {_since(since, until)}",
            f"check reward {name} on real completions (python -m rewards score RUN): its "
            "dataset columns, its parsing; a reward that never varies teaches nothing",
            {"metric": f"rewards/{name}/std", "reward": name, "mean": mean}))
    return found, None


def _truncation(history, cfg):
    episode, skipped = _at_least(history, cfg, "completions/clipped_ratio", cfg.truncation_ratio,
                                 "not GRPO")
    if not episode:
        return None, skipped
    since, until, values = episode
    share = _mean(values)
    length = _window_mean(history, "completions/mean_length", since, until)
    longest = _window_mean(history, "completions/max_length", since, until)
    return Finding("truncation", since, until,
                   f"{share:.0%} of completions are cut at max_completion_length "
                   f"{_since(since, until)} (mean length {_fmt(length or 0)}, longest "
                   f"{_fmt(longest or 0)} tokens)",
                   "raise trainer.max_completion_length, or reward shorter answers (rewards: "
                   "overlong, length_band); truncated completions get no end-of-turn",
                   {"metric": "completions/clipped_ratio", "mean": share,
                    "mean_length": length, "max_length": longest}), None


NONFINITE_FRAC = re.compile(r"^rewards/(?P<name>.+)/nonfinite_frac$")


def _reward_nonfinite(history, cfg):
    names = sorted({m["name"] for entry in history for k in entry
                    if (m := NONFINITE_FRAC.match(k))})
    if not names:
        return [], ("no rewards/<fn>/nonfinite_frac logged (GRPO rewards log it under "
                    "on_error none or zero; under raise a non-finite reward stops the run)")
    found = []
    for name in names:
        metric = f"rewards/{name}/nonfinite_frac"
        points = series(history, metric)
        bad = [(s, v) for s, v in points if not (math.isfinite(v) and v <= 0)]
        if not bad:
            continue
        ongoing = bad[-1][0] == points[-1][0]
        worst = max((v for _, v in bad if math.isfinite(v)), default=1.0)
        found.append(Finding(
            "reward_nonfinite", bad[0][0], None if ongoing else bad[-1][0],
            f"reward {name} returned non-finite values (NaN or inf) at {len(bad)} of "
            f"{len(points)} logged steps {_since(bad[0][0], None if ongoing else bad[-1][0])}, "
            f"up to {worst:.0%} of a step's samples (scored as its on_error says, not trained on)",
            f"fix reward {name}: it must return a finite float per completion, or None for "
            "'not applicable'; see its scores on the run's completions with "
            "python -m rewards score RUN",
            {"metric": metric, "steps": [s for s, _ in bad][:20], "max_frac": worst}))
    return found, None


def _entropy_collapse(history, cfg):
    if not series(history, "reward"):
        return None, "no reward logged (entropy is checked for GRPO only: SFT lowers it)"
    points = series(history, "entropy")
    if len(points) < cfg.window:
        return None, "fewer than window entropy points" if points else "no entropy logged"
    start = _mean(v for _, v in points[:cfg.window])
    episode = latest_episode(points, cfg.window, lambda vs: _typical(vs) <= cfg.entropy_floor
                             and _typical(vs) <= cfg.entropy_fraction * start,
                             lambda v: v <= cfg.entropy_floor)
    if not episode:
        return None, None
    since, until, values = episode
    return Finding("entropy_collapse", since, until,
                   f"token entropy fell to {_fmt(_mean(values))} {_since(since, until)} "
                   f"(it started at {_fmt(start)}): the policy samples nearly the same "
                   "completion every time",
                   "lower trainer.learning_rate, raise trainer.temperature, or use "
                   "trainer.epsilon_high (clip-higher, DAPO) / a KL term (trainer.beta)",
                   {"metric": "entropy", "mean": _mean(values), "start": start}), None


def _kl_high(history, cfg):
    episode, skipped = _at_least(history, cfg, "kl", cfg.kl_max, "trainer.beta=0")
    if not episode:
        return None, skipped
    since, until, values = episode
    return Finding("kl_high", since, until,
                   f"KL to the reference averages {_fmt(_mean(values))} {_since(since, until)}",
                   "lower trainer.learning_rate or raise trainer.beta; check the reward is not "
                   "being gamed (look at the completions)",
                   {"metric": "kl", "mean": _mean(values)}), None


def _chosen_likelihood_falling(history, cfg):
    points = series(history, "rewards/chosen")
    if not points:
        return None, "no rewards/chosen logged (not DPO or KTO)"
    episode = latest_episode(points, cfg.window, lambda vs: max(vs) < 0
                             and _mean(vs) <= -cfg.chosen_reward_drop)
    if not episode:
        return None, None
    since, until, values = episode
    logps = [v for s, v in series(history, "logps/chosen")]
    rejected = _window_mean(history, "rewards/rejected", since, until)
    return Finding("chosen_likelihood_falling", since, until,
                   f"the chosen answers are less likely than under the reference model "
                   f"{_since(since, until)} (rewards/chosen {_fmt(_mean(values))}, "
                   f"rewards/rejected {_fmt(rejected or 0)}; logps/chosen "
                   f"{_fmt(logps[0]) if logps else '?'} at the start, "
                   f"{_fmt(logps[-1]) if logps else '?'} at the end)",
                   "DPO: add an SFT term (trainer.loss_type=[sigmoid,sft]); KTO: raise "
                   "trainer.desirable_weight; either: lower trainer.learning_rate / raise "
                   "trainer.beta",
                   {"metric": "rewards/chosen", "mean": _mean(values),
                    "rewards_rejected_mean": rejected,
                    "logps_chosen_first": logps[0] if logps else None,
                    "logps_chosen_last": logps[-1] if logps else None}), None


CHECKS = {
    "nan_loss": _nan_loss,
    "grad_norm_spike": _grad_norm_spike,
    "zero_reward_spread": _zero_reward_spread,
    "reward_constant": _reward_constant,
    "truncation": _truncation,
    "entropy_collapse": _entropy_collapse,
    "reward_nonfinite": _reward_nonfinite,
    "kl_high": _kl_high,
    "chosen_likelihood_falling": _chosen_likelihood_falling,
}


def diagnose(history: list[dict], cfg: DoctorConfig | None = None) -> Diagnosis:
    """The findings of a trainer's log history (a list of trl's log dicts)."""
    cfg = cfg or DoctorConfig()
    training = [h for h in history if "train_runtime" not in h]
    findings, checked, skipped = [], [], []
    for name, check in CHECKS.items():
        found, why_not = check(training, cfg)
        if why_not:
            skipped.append(f"{name} ({why_not})")
            continue
        checked.append(name)
        findings += found if isinstance(found, list) else [found] if found else []
    steps = [int(h["step"]) for h in training if "step" in h]
    return Diagnosis(findings, checked, skipped, len(training), max(steps) if steps else None)


# --------------------------------------------------------------------------- reading a run


def read_history(folder: Path) -> tuple[list[dict], Path] | None:
    """(log history, the file it came from) of a run folder or a trl output_dir, or None."""
    folder = Path(folder)
    log_file = folder / "log_history.jsonl"
    if log_file.is_file():
        from align.files import restore_nonfinite

        rows = [restore_nonfinite(json.loads(line)) for line in
                log_file.read_text().splitlines() if line.strip()]
        return rows, log_file
    states = [folder / "trainer_state.json"] if (folder / "trainer_state.json").is_file() else []
    states += sorted(folder.glob("checkpoint-*/trainer_state.json"),
                     key=lambda p: int(p.parent.name.split("-")[-1]) if
                     p.parent.name.split("-")[-1].isdigit() else -1, reverse=True)
    for state in states:
        try:
            return json.loads(state.read_text()).get("log_history", []), state
        except (OSError, json.JSONDecodeError):
            continue  # a checkpoint being written: try the one before
    return None


def write_report(folder: Path, diagnosis: Diagnosis, source: str) -> Path:
    from align.files import write_json

    path = Path(folder) / DOCTOR_FILE
    # The evidence is read from what trl logged (a NaN reward_std, a diverged loss): kept as null
    # with a note, as the log itself is, rather than failing the report of a finished run.
    write_json(path, {"source": source, **diagnosis.to_dict()}, nonfinite="note")
    return path


def load_config(overrides: list[str]) -> DoctorConfig:
    """DoctorConfig from `key=value` pairs (the CLI's thresholds), checked like the section."""
    from align.schema import check_dataclass, raise_if

    node = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected key=value, e.g. window=10")
        node[key.removeprefix("doctor.")] = value
    cfg, errors = check_dataclass(node, DoctorConfig, "doctor")
    raise_if(errors or check_doctor_config(cfg))
    return cfg
