"""KEDA + HPA scaling on a virtual clock: tolerance, stabilisation windows, rate limits, cooldown to zero."""

from __future__ import annotations

from eksinfer.autoscale.hpa import Behavior, Keda, MetricSample, metric_desired


def _queue(total: float, threshold: float = 2.0) -> list[MetricSample]:
    return [MetricSample(total, threshold, activation=1.0)]


def test_metric_desired_follows_the_hpa_formula() -> None:
    assert metric_desired(MetricSample(10, 2), 3) == 5  # AverageValue: ceil(total / threshold)
    assert metric_desired(MetricSample(6.3, 2), 3) == 3  # ratio 1.05: within the 10% tolerance
    assert metric_desired(MetricSample(3.0, 2.0, average=False), 4) == 6  # Value: ceil(4 x 3 / 2)
    assert metric_desired(MetricSample(0.5, 2.0, average=False), 4) == 1


def test_scale_up_is_rate_limited_per_period() -> None:
    keda = Keda(Behavior(min_replicas=1, max_replicas=20, up_pods=2, up_period_s=60, down_window_s=0))
    counts = []
    current = 1
    for t in range(0, 181, 15):  # queue stays at 40: 20 replicas wanted
        current = keda.evaluate(float(t), current, _queue(40))
        counts.append(current)
    # 2 pods per 60 s: +2 at 0 s, +2 at 60 s, +2 at 120 s, +2 at 180 s
    assert counts == [3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7, 9]


def test_scale_down_waits_for_the_stabilisation_window_then_steps_one_pod() -> None:
    b = Behavior(min_replicas=1, max_replicas=10, down_window_s=300, down_pods=1, down_period_s=60)
    keda = Keda(b)
    current = keda.evaluate(0.0, 6, _queue(12))  # 6 wanted: stays
    assert current == 6
    history = []
    for t in range(15, 601, 15):  # the queue empties at 15 s: 1 replica wanted from then on
        current = keda.evaluate(float(t), current, _queue(0.0))
        history.append((t, current))
    # the 6 recommended at 0 s holds the count until it leaves the 300 s window, then one pod a minute
    assert all(c == 6 for t, c in history if t <= 300)
    changes = [
        (t, c) for (t, c), (_, before) in zip(history, [(0, 6), *history[:-1]], strict=True) if c != before
    ]
    assert changes[:3] == [(315, 5), (375, 4), (435, 3)]
    assert history[-1] == (600, 1)


def test_a_short_dip_inside_the_window_does_not_scale_down() -> None:
    keda = Keda(Behavior(min_replicas=1, max_replicas=10, down_window_s=120, down_period_s=15))
    current = 4
    for t, queue in [(0, 8.0), (15, 0.0), (30, 0.0), (45, 8.0), (60, 0.0), (75, 0.0)]:
        current = keda.evaluate(float(t), current, _queue(queue))
        assert current == 4


def test_cooldown_scales_to_zero_only_with_min_zero_and_reactivates() -> None:
    keda = Keda(Behavior(min_replicas=0, max_replicas=4, cooldown_s=300, down_window_s=0, down_period_s=15))
    current = keda.evaluate(0.0, 1, _queue(1.5))  # active (above activation 1)
    assert current == 1
    for t in range(15, 300, 15):  # inactive, but not yet for cooldownPeriod
        current = keda.evaluate(float(t), current, _queue(0.0))
        assert current == 1
    assert keda.evaluate(300.0, 1, _queue(0.0)) == 0
    assert keda.evaluate(315.0, 0, _queue(0.0)) == 0
    assert keda.evaluate(330.0, 0, _queue(3.0)) == 1  # activation: KEDA takes 0 -> 1 itself
    floor = Keda(Behavior(min_replicas=1, max_replicas=4, cooldown_s=30, down_window_s=0, down_period_s=15))
    for t in range(0, 600, 15):
        assert floor.evaluate(float(t), 1, _queue(0.0)) == 1  # cooldownPeriod does nothing above zero
