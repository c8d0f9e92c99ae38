"""The under-learning check (report/learning.py, issue 20 item 3) on hand-built curves: a curve that
plateaued gets no warning, one still falling gets a warning with its numbers, one whose gradient norm sat
above max_grad_norm on every step also suggests dropping the clip; an eval metric still rising warns too."""

import math

import pytest

from tuneforge.report.learning import check_learning, learning_lines, warning_text


def _curve(losses, grad_norm=0.5):
    return [{"step": i + 1, "loss": v, "lr": 1e-3, "grad_norm": grad_norm} for i, v in enumerate(losses)]


def _plateau(n=60):  # falls fast, then flat at 0.5 with batch noise
    return [0.5 + 2.0 * math.exp(-i / 5) + 0.02 * (-1) ** i for i in range(n)]


def _falling(n=60):  # still going down at the end: 2.5 -> 0.6, linear
    return [2.5 - 1.9 * i / (n - 1) + 0.02 * (-1) ** i for i in range(n)]


def test_a_curve_that_plateaued_gets_no_warning():
    verdict = check_learning(_curve(_plateau()), [], learning_rate=2e-4, epochs=3, max_grad_norm=1.0)
    assert verdict["under_learned"] is False and verdict["reasons"] == [] and verdict["suggestions"] == []
    assert abs(verdict["loss"]["tail_relative_drop"]) < 0.05 and verdict["loss"]["tail_mean_loss"] == pytest.approx(
        0.5, abs=0.02)
    assert "settled" in "\n".join(learning_lines(verdict))


def test_a_curve_still_falling_warns_with_its_numbers():
    verdict = check_learning(_curve(_falling()), [], learning_rate=2e-4, epochs=3, max_grad_norm=1.0)
    assert verdict["under_learned"] is True
    loss = verdict["loss"]
    assert loss["tail_steps"] == [41, 60] and loss["tail_slope_per_step"] == pytest.approx(-1.9 / 59, rel=0.05)
    assert loss["tail_relative_drop"] > 0.5
    reason = verdict["reasons"][0]
    assert "still falling" in reason and "steps 41-60" in reason and f"{loss['tail_mean_loss']:.3f}" in reason
    assert "training.epochs=6" in verdict["suggestions"][0]
    assert "training.learning_rate=0.0004" in verdict["suggestions"][1]
    assert not any("max_grad_norm" in s for s in verdict["suggestions"])  # norm 0.5 < 1.0: nothing was clipped
    text = warning_text(verdict)
    assert text.startswith("warning: the run may have under-learned") and "training.epochs=6" in text
    section = "\n".join(learning_lines(verdict))
    assert "stopped while still learning" in section and "steps 41-60" in section


def test_clipped_every_step_suggests_no_clip():
    verdict = check_learning(_curve(_falling(), grad_norm=1.6), [], learning_rate=1e-3, max_steps=60,
                             max_grad_norm=1.0)
    assert verdict["clipping"] == {"max_grad_norm": 1.0, "clipped_share": 1.0, "median_grad_norm": 1.6}
    assert "training.max_steps=120" in verdict["suggestions"][0]
    clip = verdict["suggestions"][-1]
    assert "training.max_grad_norm=null" in clip and "100% of steps" in clip and "1.6" in clip
    # clipped but the curve settled: nothing to say
    assert check_learning(_curve(_plateau(), grad_norm=1.6), [], max_grad_norm=1.0)["suggestions"] == []


def test_low_loss_or_short_curve_is_not_judged():
    tiny_falling = [0.04 - 0.0006 * i for i in range(60)]  # falling, but already learned
    assert check_learning(_curve(tiny_falling), [])["under_learned"] is False
    assert check_learning(_curve(_falling(6)), [])["loss"] is None


def test_eval_metric_still_rising_warns():
    evals = [{"step": 10, "accuracy": 0.6}, {"step": 20, "accuracy": 0.7}, {"step": 30, "accuracy": 0.8}]
    evals = [{**e, "loss": 0.5} for e in evals]  # a flat eval loss: the task metric is read first
    verdict = check_learning(_curve(_plateau()), evals, metric_names=("loss", "accuracy"))
    assert verdict["under_learned"] is True and verdict["eval"]["metric"] == "accuracy"
    assert "eval accuracy still improving" in verdict["reasons"][0] and "0.6 -> 0.7 -> 0.8" in verdict["reasons"][0]
    flat = [{"step": 10, "accuracy": 0.8}, {"step": 20, "accuracy": 0.81}, {"step": 30, "accuracy": 0.805}]
    assert check_learning(_curve(_plateau()), flat, metric_names=("accuracy",))["under_learned"] is False
    losses = [{"step": s, "loss": v} for s, v in ((10, 1.0), (20, 0.8), (30, 0.6))]  # lower is better
    assert check_learning([], losses)["eval"]["still_improving"] is True


def test_a_loss_that_barely_moved_warns_even_when_flat():
    # a 3-class head that never learned: ln 3 -> 1.07, the tail flat because a cosine schedule decayed the rate
    stuck = [1.105 - 0.035 * min(i, 60) / 60 + 0.005 * (-1) ** i for i in range(150)]
    verdict = check_learning(_curve(stuck), [], learning_rate=2e-4, epochs=19, max_grad_norm=1.0)
    assert verdict["under_learned"] is True and verdict["loss"]["run_relative_drop"] < 0.1
    assert "barely moved" in verdict["reasons"][0] and "1.070" in verdict["reasons"][0]
    assert "training.learning_rate=0.0004" in verdict["suggestions"][1]


def _cosine(n):
    return [1e-3 * 0.5 * (1 + math.cos(math.pi * i / (n - 1))) for i in range(n)]


def test_a_tail_flattened_by_a_decayed_schedule_warns():
    # the facts run of bench/defaults_study.py at the defaults: the loss still falling fast over the middle third,
    # then flat at ~1 nat over the last third because the cosine rate is near 0 there, not because it converged
    n = 150
    lrs = _cosine(n)
    losses = [11 - 8 * i / 49 if i < 50 else 3 - 1.8 * (i - 50) / 49 if i < 100 else 1.0 + 0.02 * (-1) ** i
              for i in range(n)]
    history = [{"step": i + 1, "loss": v, "lr": lr, "grad_norm": 2.0}
               for i, (v, lr) in enumerate(zip(losses, lrs, strict=True))]
    verdict = check_learning(history, [], learning_rate=1e-3, epochs=19, max_grad_norm=1.0)
    assert abs(verdict["loss"]["tail_relative_drop"]) < 0.10 and verdict["loss"]["run_relative_drop"] > 0.5
    assert verdict["under_learned"] is True
    reason = verdict["reasons"][0]
    assert "rate decayed while the loss was still falling" in reason and "steps 51-100" in reason
    assert "flattened at 1.000" in reason
    assert "training.lr_scheduler=constant" in "\n".join(verdict["suggestions"])
    assert "training.max_grad_norm=null" in verdict["suggestions"][-1]
    # the same curve under a constant rate: its flat tail is a plateau the rate could not move, nothing to say
    flat = [{**h, "lr": 1e-3} for h in history]
    assert check_learning(flat, [], learning_rate=1e-3, epochs=19)["under_learned"] is False
    # and a decayed schedule whose loss had settled before the rate decayed is not flagged either
    settled = [{"step": i + 1, "loss": v, "lr": lr} for i, (v, lr) in enumerate(zip(_plateau(n), lrs, strict=True))]
    assert check_learning(settled, [], learning_rate=1e-3, epochs=19)["under_learned"] is False


def _rose(n=60):  # falls to 0.4 by step 20, then climbs back to ~2.0 (a rate too high: the run ends worse)
    return [2.5 - 2.1 * i / 19 if i < 20 else 0.4 + 1.6 * min(1.0, (i - 20) / 15) + 0.02 * (-1) ** i
            for i in range(n)]


def test_a_loss_that_rose_again_says_so_and_suggests_a_lower_rate():
    verdict = check_learning(_curve(_rose()), [], learning_rate=3e-3, epochs=3, max_grad_norm=None, warmup=0.0)
    assert verdict["diverged"] is True and verdict["under_learned"] is False
    rise = verdict["rise"]
    assert rise["lowest_mean_loss"] < 0.6 and rise["tail_mean_loss"] == pytest.approx(2.0, abs=0.03)
    assert rise["tail_steps"] == [41, 60] and rise["gave_back"] > 0.7
    reason = verdict["reasons"][0]
    assert "rose again" in reason and "steps 41-60" in reason and f"{rise['tail_mean_loss']:.3f}" in reason
    assert verdict["suggestions"] == ["a lower rate: training.learning_rate=0.001",
                                      "clipping: training.max_grad_norm=1.0", "a warmup: training.warmup_ratio=0.03"]
    assert "more epochs" not in warning_text(verdict) and warning_text(verdict).startswith(
        "warning: the run's training loss rose again")
    assert "the rate may be too high" in "\n".join(learning_lines(verdict))
    # clipped and warmed up already: only the lower rate is suggested
    assert check_learning(_curve(_rose()), [], learning_rate=3e-3, max_grad_norm=1.0, warmup=0.03)[
        "suggestions"] == ["a lower rate: training.learning_rate=0.001"]


@pytest.mark.parametrize("losses", [
    [2.5 - 2.1 * i / 19 if i < 20 else 0.4 + 0.1 * (-1) ** i for i in range(60)],  # noisy plateau: no rise
    [2.5 * math.exp(-i / 4) + 0.01 + (0.03 if i > 40 else 0.0) for i in range(60)],  # up from 0.01 to 0.04: < HIGH
    [2.5 - 0.5 * i / 19 if i < 20 else 2.0 + 0.6 * min(1.0, (i - 20) / 15) for i in range(60)],  # 2.0 -> 2.6: gave
])  # back more than a quarter of a 0.5 drop, but 2.6 < 1.5 x 2.0: no rise
def test_noise_and_small_rises_are_not_divergence(losses):
    verdict = check_learning(_curve(losses), [], learning_rate=1e-3, max_grad_norm=1.0, warmup=0.0)
    assert verdict["diverged"] is False and verdict["rise"] is None


def test_the_study_adapter_run_that_sat_high_is_flagged_stuck_with_its_spike():
    """The real curve of the defaults study's adapter at x10 on facts (bench/results/adapter_x10_facts_log.json,
    exact match 0.000): 11.1 at step 1, 54.4 at step 4, then flat near 3.0 for 19 epochs. Neither rising nor
    falling at the end; flagged as stuck, with the spike named and a lower rate suggested."""
    import json
    from pathlib import Path

    saved = json.loads((Path(__file__).resolve().parents[2] / "bench" / "results" /
                        "adapter_x10_facts_log.json").read_text())
    verdict = check_learning(saved["history"], [], learning_rate=saved["learning_rate"], epochs=saved["epochs"],
                             max_grad_norm=saved["max_grad_norm"], warmup=0.0)
    assert verdict["stuck"] is True and verdict["diverged"] is False and verdict["under_learned"] is False
    plateau = verdict["plateau"]
    assert plateau["spike"] == {"step": 4, "loss": 54.4125} and 2.5 < plateau["tail_mean_loss"] < 3.5
    reason = verdict["reasons"][0]
    assert "stayed at" in reason and "after 19 passes" in reason and "rose to 54.413 at step 4" in reason
    assert verdict["suggestions"] == ["a lower rate: training.learning_rate=0.00333"]
    assert warning_text(verdict).startswith("warning: the run's training loss stayed high")
    assert "did not fit its data" in "\n".join(learning_lines(verdict))


def test_a_high_flat_end_without_a_spike_suggests_a_higher_rate_and_a_bigger_method():
    flat = [3.0 + 0.02 * (-1) ** i for i in range(60)]
    flat[:6] = [6.0, 5.0, 4.5, 4.0, 3.5, 3.2]  # a first drop, then flat (a loss that barely moved is under-learned)
    verdict = check_learning(_curve(flat), [], learning_rate=1e-3, epochs=10, max_grad_norm=1.0)
    assert verdict["stuck"] is True and verdict["plateau"]["spike"] is None
    assert verdict["suggestions"] == ["a higher rate: training.learning_rate=0.003",
                                      "a method that trains more weights (lora, or full fine-tuning)"]
    # the same curve over fewer passes (a corpus seen twice), or a low plateau, or a run given max_steps: not judged
    assert check_learning(_curve(flat), [], learning_rate=1e-3, epochs=2)["stuck"] is False
    assert check_learning(_curve([v / 4 for v in flat]), [], learning_rate=1e-3, epochs=10)["stuck"] is False
    assert check_learning(_curve(flat), [], learning_rate=1e-3, epochs=10, max_steps=60)["stuck"] is False
