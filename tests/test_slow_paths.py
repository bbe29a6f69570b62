"""benchmarks/slow_paths.py: the goal table reads the measurements the right way round."""

from benchmarks.slow_paths import COLD, FLOWER_GOALS, PROBE_GOALS, render, table


def _data(cold: float, ratio: float, speed: float) -> dict:
    return {
        "cold": {
            "cold_cpu_s": {p: [cold, cold + 1.0, cold - 0.1] for p in COLD},
            "warm_wall_s": {p: 0.3 for p in COLD},
        },
        "probe": {n: {"ratio": ratio, "best_ratio": ratio} for n in PROBE_GOALS},
        "large": {"ratio": ratio, "best_ratio": ratio},
        "flower": {n: {"ratio": speed, "best_ratio": speed} for n in FLOWER_GOALS},
    }


def test_times_must_be_at_most_and_ratios_at_least_their_bounds():
    fast = table(_data(cold=0.2, ratio=0.6, speed=1.2))
    assert all(goal.met(value) for goal, value, _ in fast)
    slow = table(_data(cold=3.0, ratio=0.1, speed=0.5))
    assert not any(goal.met(value) for goal, value, _ in slow if goal.key != "warm")


def test_cold_start_is_met_only_when_every_run_is_and_every_goal_has_a_row():
    rows = table(_data(cold=0.45, ratio=0.6, speed=1.2))
    mean = next((goal, value, how) for goal, value, how in rows if goal.key == "mean")
    assert mean[1] == 1.45  # runs 0.45, 1.45, 0.35: the slowest, not the median or the best
    assert "3 of 3 within" in mean[2]
    worse = next(r for r in table(_data(cold=1.45, ratio=0.6, speed=1.2)) if r[0].key == "mean")
    assert not worse[0].met(worse[1]) and "2 of 3 within" in worse[2]  # 2.45 > 1.5
    assert len(rows) == len(COLD) + 1 + len(PROBE_GOALS) + 1 + len(FLOWER_GOALS)
    text = render(rows)
    assert "NO" not in text and text.count("yes") == len(rows)


def test_a_sitting_header_shows_the_hosts_steal_when_it_was_recorded():
    from benchmarks.slow_paths import _loads, steal_percent

    data = {"load": {"cold": [0.5, 0.9]}, "steal_percent": {"cold": 0.2, "probe": 3.5}}
    assert _loads(data) == "0.5-0.9, host steal <= 3.5%"
    assert _loads({"load": {"cold": [0.5, 0.9]}}) == "0.5-0.9"  # sittings from before it
    assert steal_percent((5, 100), (5, 100)) is None  # no time passed: no share
