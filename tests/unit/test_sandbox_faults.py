"""Fault configuration and the per-request fault decisions of the sandbox."""

from collections import Counter

import pytest
from pydantic import ValidationError

from syncd.sandbox.activity import steps_due
from syncd.sandbox.faults import FaultConfig, FaultInjector, FaultRule, RateLimit, TokenBucket
from syncd.sandbox.freedoms import LateVisibility, ServerFreedoms


def test_default_config_injects_nothing() -> None:
    """All faults are off by default: no plan, no shuffle, no mutation."""
    injector = FaultInjector()
    assert injector.idle
    assert injector.plan("POST", "/patients", "k") is None
    assert injector.list_options().shuffle is None
    assert not injector.should_mutate()


def test_form_submission_freedoms_are_fault_settings_and_off_by_default() -> None:
    """FaultConfig carries the ServerFreedoms, all off; they do not wake the request injector."""
    config = FaultConfig()
    assert isinstance(config, ServerFreedoms)
    assert config.updated_at_precision == "ms"
    assert config.late_visibility.rate == 0
    assert (config.detail_lag_rate, config.detail_gone_rate, config.tie_rate) == (0, 0, 0)
    busy = FaultConfig(
        updated_at_precision="us",
        late_visibility=LateVisibility(rate=1.0),
        detail_lag_rate=1.0,
        detail_gone_rate=1.0,
        tie_rate=1.0,
    )
    assert FaultInjector(busy).idle
    assert FaultConfig.model_validate_json(busy.model_dump_json()) == busy


def test_rates_summing_above_one_are_refused() -> None:
    """Outcome rates are exclusive probabilities, so their sum must not exceed 1."""
    with pytest.raises(ValidationError):
        FaultConfig(error_rates={500: 0.6}, drop_rate=0.5)
    with pytest.raises(ValidationError):
        FaultConfig(error_rates={200: 0.1})
    with pytest.raises(ValidationError):
        FaultConfig(nonsense=1)  # type: ignore[call-arg]


def test_error_rates_are_drawn_in_proportion() -> None:
    """Over many requests, each status comes up about as often as configured."""
    injector = FaultInjector(FaultConfig(seed=1, error_rates={500: 0.2, 503: 0.1}))
    outcomes = Counter(
        (plan.status if plan else None)
        for plan in (injector.plan("GET", "/x", "k") for _ in range(5000))
    )
    assert 900 < outcomes[500] < 1100
    assert 400 < outcomes[503] < 600
    assert 3300 < outcomes[None] < 3700


def test_same_seed_gives_same_decisions() -> None:
    """Two injectors with one seed plan the same faults for the same request sequence."""
    config = FaultConfig(seed=7, error_rates={500: 0.3}, drop_rate=0.2, latency_jitter_ms=5)
    first, second = FaultInjector(config), FaultInjector(config)
    assert [first.plan("GET", "/p", "k") for _ in range(200)] == [
        second.plan("GET", "/p", "k") for _ in range(200)
    ]


def test_rules_target_method_and_path_prefix() -> None:
    """A rule applies only to its method and path prefix; other requests use the top level."""
    config = FaultConfig(
        rules=[
            FaultRule(
                method="POST", path_prefix="/messages/send", drop_rate=1.0, drop_phase="after"
            )
        ]
    )
    injector = FaultInjector(config)
    plan = injector.plan("POST", "/messages/send", "k")
    assert plan is not None
    assert (plan.action, plan.phase, plan.processes) == ("drop", "after", True)
    assert injector.plan("GET", "/messages/abc", "k") is None
    assert injector.plan("POST", "/patients", "k") is None


def test_phase_decides_whether_the_request_is_processed() -> None:
    """before: never processed; after: processed; malformed/truncated always processed."""
    before = FaultInjector(FaultConfig(error_rates={500: 1.0})).plan("POST", "/patients", "k")
    after = FaultInjector(FaultConfig(error_rates={500: 1.0}, error_phase="after")).plan(
        "POST", "/patients", "k"
    )
    garbled = FaultInjector(FaultConfig(malformed_json_rate=1.0)).plan("GET", "/patients", "k")
    assert before is not None
    assert not before.processes
    assert after is not None
    assert after.processes
    assert garbled is not None
    assert garbled.processes


def test_injected_429_and_503_carry_retry_after() -> None:
    """Injected 429/503 answers say when to retry; other statuses do not."""
    plan = FaultInjector(FaultConfig(error_rates={503: 1.0}, retry_after_seconds=3)).plan(
        "GET", "/x", "k"
    )
    assert plan is not None
    assert plan.retry_after == 3
    plan = FaultInjector(FaultConfig(error_rates={500: 1.0})).plan("GET", "/x", "k")
    assert plan is not None
    assert plan.retry_after is None


def test_latency_distributions_stay_in_range() -> None:
    """Uniform jitter stays within [base, base+jitter]; normal is never negative."""
    uniform = FaultInjector(FaultConfig(latency_ms=10, latency_jitter_ms=5))
    delays = [uniform.plan("GET", "/x", "k").delay for _ in range(200)]  # type: ignore[union-attr]
    assert all(0.010 <= d <= 0.015 for d in delays)
    normal = FaultInjector(
        FaultConfig(latency_ms=1, latency_jitter_ms=50, latency_distribution="normal")
    )
    assert all((p := normal.plan("GET", "/x", "k")) is None or p.delay >= 0 for _ in range(200))
    exponential = FaultInjector(
        FaultConfig(latency_jitter_ms=10, latency_distribution="exponential")
    )
    mean = sum(exponential.plan("GET", "/x", "k").delay for _ in range(2000)) / 2000  # type: ignore[union-attr]
    assert 0.008 < mean < 0.012


def test_token_bucket_allows_a_burst_then_the_refill_rate() -> None:
    """A bucket grants `burst` at once, then one token per 1/rate seconds."""
    bucket = TokenBucket(rate=2.0, burst=3, tokens=3.0, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) > 0


def test_rate_limit_is_per_key_and_answers_429() -> None:
    """Past the burst a key gets 429 with a whole-second Retry-After; another key is unaffected."""
    clock = [100.0]
    injector = FaultInjector(FaultConfig(rate_limit=RateLimit(rps=1, burst=2)), lambda: clock[0])
    assert injector.plan("GET", "/x", "a") is None
    assert injector.plan("GET", "/x", "a") is None
    limited = injector.plan("GET", "/x", "a")
    assert limited is not None
    assert (limited.status, limited.retry_after) == (429, 1)
    assert injector.plan("GET", "/x", "b") is None
    clock[0] += 1.0
    assert injector.plan("GET", "/x", "a") is None


def test_shuffle_and_mutation_settings_reach_the_injector() -> None:
    """shuffle_lists hands out the RNG; mutate_during_paging=1 always mutates."""
    injector = FaultInjector(
        FaultConfig(shuffle_lists=True, mutate_during_paging=1.0, list_order="updated_desc")
    )
    options = injector.list_options()
    assert options.shuffle is injector.rng
    assert options.order == "updated_desc"
    assert injector.should_mutate()


def test_activity_steps_follow_the_rate_with_carry() -> None:
    """A fractional rate accumulates: 0.5/s in 0.25 s slices gives one step every 2 s."""
    carry, total = 0.0, 0
    for _ in range(40):  # 10 seconds
        steps, carry = steps_due(0.5, 0.25, carry)
        total += steps
    assert total == 5
    assert steps_due(10.0, 0.25, 0.0) == (2, 0.5)
