"""Did the run learn what it could? At the end of a run, read the training-loss curve (train_log), the
periodic evaluations and the gradient norms, and say so when the run stopped while still learning: the loss
still high and still falling over the last part of the curve, or the eval metric still improving at the last
evaluations. The verdict carries the numbers that led to it and what to change (more epochs, a higher rate, no
clipping when the gradient norm sat above max_grad_norm on most steps). The other way a run fails quietly is
also said: a training loss that fell and then rose again (a rate too high for the method: the run ends worse than
it was midway, often at an exact match of 0), with a lower rate, clipping and warmup as the suggestions; and a loss
that sat high and flat after five or more passes over the same rows (`stuck`: the run did not fit its data; a lower
rate when the loss spiked in its first steps, else a higher one). Pure: no I/O, no torch.

    verdict = check_learning(history, evals, metric_names=("loss",), learning_rate=2e-4, epochs=3,
                             max_grad_norm=1.0)
    verdict["under_learned"], verdict["reasons"], verdict["suggestions"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TAIL = 1 / 3  # the last part of the curve whose slope is measured
MIN_STEPS = 8  # fewer logged steps: too short to judge
FALLING = 0.10  # the fitted line drops by >= 10% of the tail's mean level across the tail: still falling
HIGH = 0.05  # a tail mean loss below this (nats per unit) counts as learned, whatever its slope
BARELY = 0.10  # the tail's mean loss within 10% of the first steps' mean: the loss barely moved (a decayed
# schedule flattens the tail of a run that never learned, so a flat tail alone is no proof of convergence)
EVAL_GAIN = 0.01  # an eval metric still improving: each of the last two evaluations gains this much (relative)
MID_FALLING = 0.25  # the fitted line drops by >= 25% of the middle third's mean level across it: falling fast
DECAYED = 0.3  # the last third's mean learning rate at most 30% of the run's peak: the schedule has decayed
RISE = 1.5  # the last third's mean loss at least 1.5x the lowest windowed mean before it: the loss rose ...
GAVE_BACK = 0.25  # ... and gave back at least a quarter of the drop from the first steps to that lowest point
STUCK_PASSES = 5  # a run over the same rows this many times or more ...
STUCK_LOSS = 1.0  # ... whose flat last third still averages this (nats per unit) or more has not fit its data
SPIKE = 1.2  # the first tenth's highest loss at least 1.2x the first: the rate threw the model off at the start
CLIPPED = 0.5  # share of steps whose gradient norm exceeded max_grad_norm before it is called "most steps"


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _fitted_drop(steps: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(slope per step, the drop the fitted line makes across `steps` relative to the values' mean level)."""
    level, slope = sum(values) / len(values), _slope(steps, values)
    return slope, -slope * (steps[-1] - steps[0]) / level if level > 0 else 0.0


def loss_trend(history: list[dict]) -> dict | None:
    """The tail of the training-loss curve: its mean level, fitted slope per step and the relative drop the fit
    makes across the tail (None when the curve is too short)."""
    points = [(h["step"], h["loss"]) for h in history
              if isinstance(h.get("loss"), (int, float)) and math.isfinite(h["loss"])]
    if len(points) < MIN_STEPS:
        return None
    tail = points[-max(4, round(len(points) * TAIL)):]
    steps, losses = [s for s, _ in tail], [v for _, v in tail]
    level = sum(losses) / len(losses)
    head = [v for _, v in points[: max(3, len(points) // 10)]]
    start = sum(head) / len(head)
    slope, drop = _fitted_drop(steps, losses)
    return {"first_loss": points[0][1], "start_mean_loss": start,
            "run_relative_drop": (start - level) / start if start > 0 else 0.0,
            "tail_steps": [steps[0], steps[-1]], "tail_mean_loss": level,
            "tail_slope_per_step": slope, "tail_relative_drop": drop}


def schedule_flattened(history: list[dict]) -> dict | None:
    """A flat tail that the schedule made: the loss falling fast over the middle third (>= MID_FALLING) while
    the rate over the last third averaged at most DECAYED of its peak. A decayed cosine or linear schedule stops
    a run that was still learning, and its tail then looks converged (None when not so, or no rates logged)."""
    points = [(h["step"], h["loss"], h["lr"]) for h in history
              if all(isinstance(h.get(k), (int, float)) and math.isfinite(h[k]) for k in ("loss", "lr"))]
    if len(points) < MIN_STEPS:
        return None
    third = len(points) // 3
    middle, tail = points[third: 2 * third], points[2 * third:]
    peak = max(lr for _, _, lr in points)
    if len(middle) < 3 or peak <= 0:
        return None
    _, drop = _fitted_drop([s for s, _, _ in middle], [v for _, v, _ in middle])
    ratio = sum(lr for _, _, lr in tail) / len(tail) / peak
    if drop < MID_FALLING or ratio > DECAYED:
        return None
    return {"middle_steps": [middle[0][0], middle[-1][0]], "middle_relative_drop": drop,
            "tail_steps": [tail[0][0], tail[-1][0]], "tail_rate_share_of_peak": ratio}


def loss_rise(history: list[dict]) -> dict | None:
    """A loss that rose: the last third's mean against the lowest point before it (the first logged loss, or the
    lowest mean over a window of max(3, n/10) logged steps), >= RISE times it at a level >= HIGH, having given back
    >= GAVE_BACK of the drop from the first window to that lowest point (a run that blew up at once never dropped:
    it counts). None when the curve did not rise so, or is too short."""
    points = [(h["step"], h["loss"]) for h in history
              if isinstance(h.get("loss"), (int, float)) and math.isfinite(h["loss"])]
    if len(points) < MIN_STEPS:
        return None
    width = max(3, len(points) // 10)
    tail = points[-max(4, round(len(points) * TAIL)):]
    before = points[: len(points) - len(tail)]
    if len(before) < width:
        return None
    means = [sum(v for _, v in before[i: i + width]) / width for i in range(len(before) - width + 1)]
    low = min(range(len(means)), key=means.__getitem__)
    lowest, lowest_steps = means[low], [before[low][0], before[low + width - 1][0]]
    if points[0][1] < lowest:  # nothing after the first step got as low as the untrained model's loss
        lowest, lowest_steps = points[0][1], [points[0][0], points[0][0]]
    start, end = means[0], sum(v for _, v in tail) / len(tail)
    drop = start - lowest
    if end < HIGH or end < RISE * lowest or (end - lowest) < GAVE_BACK * drop:
        return None
    return {"start_mean_loss": start, "lowest_mean_loss": lowest, "lowest_steps": lowest_steps,
            "tail_steps": [tail[0][0], tail[-1][0]], "tail_mean_loss": end,
            "gave_back": (end - lowest) / drop if drop > 0 else None}


def stuck_high(history: list[dict], loss: dict | None, passes: float | None) -> dict | None:
    """A flat, high end after many passes over the same rows (>= STUCK_PASSES epochs, the last third at
    >= STUCK_LOSS and not falling): the run did not fit data it saw that often. `spike` when the loss first rose
    to >= SPIKE x its first value within the first tenth of the steps (a rate too high, then a plateau)."""
    if not loss or passes is None or passes < STUCK_PASSES or loss["tail_mean_loss"] < STUCK_LOSS \
            or loss["tail_relative_drop"] >= FALLING:
        return None
    early = [h for h in history[: max(3, len(history) // 10)]
             if isinstance(h.get("loss"), (int, float)) and math.isfinite(h["loss"])]
    top = max(early, key=lambda h: h["loss"]) if early else None
    spike = top if top and top["loss"] >= SPIKE * loss["first_loss"] else None
    return {"passes": passes, "tail_mean_loss": loss["tail_mean_loss"], "tail_steps": loss["tail_steps"],
            "first_loss": loss["first_loss"],
            "spike": {"step": spike["step"], "loss": spike["loss"]} if spike else None}


def eval_trend(evals: list[dict], metric_names: Sequence[str]) -> dict | None:
    """The first of `metric_names` the evaluations carry at three evaluations or more (a task metric before the
    loss), its last three values, and whether it improved at each of the last two by at least EVAL_GAIN (loss:
    lower is better; the others: higher)."""
    ordered = [m for m in metric_names if m not in ("loss", "perplexity")] + [m for m in metric_names if m == "loss"]
    for name in ordered:
        values = [e[name] for e in evals if isinstance(e.get(name), (int, float)) and math.isfinite(e[name])]
        if len(values) < 3:
            continue
        last = values[-3:]
        sign = -1.0 if name == "loss" else 1.0
        gains = [sign * (b - a) / max(abs(a), 1e-8) for a, b in zip(last, last[1:], strict=False)]
        return {"metric": name, "last_values": last, "still_improving": all(g >= EVAL_GAIN for g in gains)}
    return None


def clipping(history: list[dict], max_grad_norm: float | None) -> dict | None:
    """Share of steps whose (pre-clip) gradient norm exceeded max_grad_norm, and the median norm."""
    norms = sorted(h["grad_norm"] for h in history
                   if isinstance(h.get("grad_norm"), (int, float)) and math.isfinite(h["grad_norm"]))
    if not norms or max_grad_norm is None:
        return None
    share = sum(n > max_grad_norm for n in norms) / len(norms)
    return {"max_grad_norm": max_grad_norm, "clipped_share": share, "median_grad_norm": norms[len(norms) // 2]}


def check_learning(history: list[dict], evals: list[dict], *, metric_names: Sequence[str] = ("loss",),
                   learning_rate: float | None = None, epochs: float | None = None,
                   max_steps: int | None = None, max_grad_norm: float | None = None,
                   warmup: float | None = None) -> dict:
    """The verdict metrics.json keeps as `learning`: under_learned, diverged (the loss rose again) or stuck (flat
    and high after many passes; for either of those the reasons and suggestions are its own, not
    under-learning's), the measured trends, the reasons (with their numbers) and suggestions. `evals` are the
    periodic evaluations plus the final one, in step order."""
    loss = loss_trend(history) if "loss" in metric_names else None
    trend = eval_trend(evals, metric_names)
    clip = clipping(history, max_grad_norm)
    reasons = []
    if loss and loss["tail_mean_loss"] >= HIGH and loss["tail_relative_drop"] >= FALLING:
        a, b = loss["tail_steps"]
        reasons.append(f"training loss still falling: {loss['tail_relative_drop']:.0%} drop across steps {a}-{b} "
                       f"(slope {loss['tail_slope_per_step']:.3g}/step), still at {loss['tail_mean_loss']:.3f} "
                       f"(started at {loss['first_loss']:.3f})")
    elif loss and loss["tail_mean_loss"] >= HIGH and loss["run_relative_drop"] < BARELY:
        reasons.append(f"training loss barely moved: {loss['start_mean_loss']:.3f} over the first steps, "
                       f"{loss['tail_mean_loss']:.3f} over the last third ({loss['run_relative_drop']:.0%} lower)")
    elif loss and loss["tail_mean_loss"] >= HIGH and (decay := schedule_flattened(history)):
        a, b = decay["middle_steps"]
        c, d = decay["tail_steps"]
        share, mid = decay["tail_rate_share_of_peak"], decay["middle_relative_drop"]
        reasons.append(f"the learning rate decayed while the loss was still falling: {mid:.0%} drop across steps "
                       f"{a}-{b}, then over steps {c}-{d} the rate averaged {share:.0%} of its peak and the loss "
                       f"flattened at {loss['tail_mean_loss']:.3f}: the flat end is the schedule's, not convergence")
    if trend and trend["still_improving"]:
        values = " -> ".join(f"{v:.4g}" for v in trend["last_values"])
        reasons.append(f"eval {trend['metric']} still improving at the last evaluations: {values}")
    rise = loss_rise(history) if "loss" in metric_names else None
    stuck = None if rise or reasons else stuck_high(history, loss, None if max_steps else epochs)
    suggestions = []
    if rise:  # a rising loss is no under-learning: a longer run or a higher rate would make it worse
        (a, b), (c, d) = rise["lowest_steps"], rise["tail_steps"]
        low, end = rise["lowest_mean_loss"], rise["tail_mean_loss"]
        reasons = [f"training loss rose again: {low:.3f} at its lowest (steps {a}-{b}), {end:.3f} over steps "
                   f"{c}-{d}, giving back {rise['gave_back']:.0%} of its drop from {rise['start_mean_loss']:.3f}"
                   if a != b else f"training loss rose from the start: {low:.3f} at step {a}, {end:.3f} over "
                   f"steps {c}-{d} ({end / low:.1f}x)"]
        rate = f"training.learning_rate={_fmt(learning_rate / 3)}" if learning_rate else "a lower learning rate"
        suggestions.append(f"a lower rate: {rate}")
        if max_grad_norm is None:
            suggestions.append("clipping: training.max_grad_norm=1.0")
        if warmup == 0:  # (warmup: the run's warmup_steps, else its warmup_ratio; None: not known)
            suggestions.append("a warmup: training.warmup_ratio=0.03")
    elif stuck:  # neither falling nor rising: flat at a loss a model reaches well below after this many passes
        (a, b), spike = stuck["tail_steps"], stuck["spike"]
        reasons = [f"training loss stayed at {stuck['tail_mean_loss']:.3f} over steps {a}-{b} after "
                   f"{_fmt(stuck['passes'])} passes over the same rows (started at {stuck['first_loss']:.3f}): "
                   "the run did not fit its data"
                   + (f"; it first rose to {spike['loss']:.3f} at step {spike['step']}, the sign of a rate too high"
                      if spike else "")]
        rate = (learning_rate / 3 if spike else learning_rate * 3) if learning_rate else None
        word = "a lower rate" if spike else "a higher rate"
        suggestions.append(f"{word}: training.learning_rate={_fmt(rate)}" if rate else word)
        if not spike:
            suggestions.append("a method that trains more weights (lora, or full fine-tuning)")
    elif reasons:
        more = (f"training.max_steps={max_steps * 2}" if max_steps else
                f"training.epochs={_fmt(epochs * 2)}" if epochs else "more epochs (or training.max_steps)")
        suggestions.append(f"train longer: {more}")
        rate = f"training.learning_rate={_fmt(learning_rate * 2)}" if learning_rate else "a higher learning rate"
        suggestions.append(f"a higher rate: {rate}")
        if any("rate decayed" in r for r in reasons):
            suggestions.append("a rate that does not decay: training.lr_scheduler=constant")
        if clip and clip["clipped_share"] >= CLIPPED:
            suggestions.append(f"no clipping: training.max_grad_norm=null (the gradient norm, median "
                               f"{clip['median_grad_norm']:.3g}, was above {_fmt(max_grad_norm)} on "
                               f"{clip['clipped_share']:.0%} of steps, so every such step was cut)")
    return {"under_learned": bool(reasons) and not (rise or stuck), "diverged": bool(rise), "stuck": bool(stuck),
            "reasons": reasons, "suggestions": suggestions, "loss": loss, "eval": trend, "clipping": clip,
            "rise": rise, "plateau": stuck}


def verdict_for_run(training, metric_names: Sequence[str], history: list[dict], evals: list[dict],
                    after: dict | None) -> dict:
    """check_learning for a finished run: `training` is its TrainingConfig, `after` the final evaluation
    (counted as the last evaluation point)."""
    points = [*evals, *([after] if after else [])]
    return check_learning(history, points, metric_names=metric_names, learning_rate=training.learning_rate,
                          epochs=training.epochs, max_steps=training.max_steps, max_grad_norm=training.max_grad_norm,
                          warmup=training.warmup_steps or training.warmup_ratio)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# (report.md's heading, the log line's opening) of each verdict that warns, in the order they are looked for
WARNINGS = {"stuck": ("the training loss stayed high (the run did not fit its data)",
                      "the run's training loss stayed high"),
            "diverged": ("the training loss rose again (the rate may be too high)",
                         "the run's training loss rose again"),
            "under_learned": ("this run stopped while still learning", "the run may have under-learned")}


def _warned(verdict: dict) -> str | None:
    return next((k for k in WARNINGS if verdict.get(k)), None)


def learning_lines(verdict: dict | None) -> list[str]:
    """report.md's section: the warning with its reasons and suggestions, or one line that the curve settled."""
    if not verdict:
        return []
    kind = _warned(verdict)
    if kind is None:
        return ["", "## Learning", "", "The training curve settled before the end of the run (no sign of "
                "under-learning in the last third of the loss curve or the last evaluations)."]
    return ["", f"## Learning: {WARNINGS[kind][0]}", "",
            *(f"- {r}" for r in verdict["reasons"]), "", "Try:", *(f"- {s}" for s in verdict["suggestions"])]


def warning_text(verdict: dict) -> str:
    """The log line of an under-learned run, of one whose loss rose again, or of one stuck high."""
    opening = WARNINGS[_warned(verdict) or "under_learned"][1]
    return f"warning: {opening}: " + "; ".join(verdict["reasons"]) + ". Try " + "; ".join(verdict["suggestions"])
