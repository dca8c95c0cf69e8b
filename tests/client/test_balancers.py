"""Balancers on plain instance tuples: distributions (seeded), weighted ratios, P2C, zones, hashing stability."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import pytest

from discovery import Instance, ValidationError
from discovery.client.balancers import (
    ConsistentHash,
    NoInstanceAvailableError,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    WeightedRoundRobin,
    ZoneAware,
    _smooth_cycle,
)


def members(count: int, **fields: object) -> tuple[Instance, ...]:
    return tuple(Instance("svc", f"svc-{n:02d}", "127.0.0.1", 20000 + n, **fields) for n in range(count))  # type: ignore[arg-type]


def counts(balancer: object, instances: Sequence[Instance], picks: int, key: str | None = None) -> Counter[str]:
    return Counter(balancer.pick(instances, key).id for _ in range(picks))  # type: ignore[attr-defined]


ALL_BALANCERS = [RoundRobin, RandomChoice, WeightedRoundRobin, PowerOfTwoChoices, lambda: ZoneAware("z")]


@pytest.mark.parametrize("make", ALL_BALANCERS)
def test_an_empty_set_raises_the_typed_error(make: object) -> None:
    with pytest.raises(NoInstanceAvailableError):
        make().pick(())  # type: ignore[operator]
    with pytest.raises(NoInstanceAvailableError):
        ConsistentHash().pick((), "k")


def test_round_robin_walks_the_id_order() -> None:
    instances = members(3)
    assert [RoundRobin().pick(instances).id for _ in range(1)] == ["svc-00"]
    balancer = RoundRobin()
    assert [balancer.pick(instances).id for _ in range(7)] == [f"svc-0{n % 3}" for n in range(7)]


def test_random_choice_is_uniform_and_reproducible() -> None:
    instances = members(4)
    picks = 20_000
    seen = counts(RandomChoice(seed=7), instances, picks)
    # Binomial sd = sqrt(n p (1-p)) ~ 61: 5 sd either side of 5000.
    assert all(abs(seen[i.id] - picks / 4) < 5 * 61 for i in instances), seen
    assert counts(RandomChoice(seed=7), instances, 200) == counts(RandomChoice(seed=7), instances, 200)


def test_smooth_weighted_round_robin_gives_exact_shares_spread_out() -> None:
    a, b, c = (Instance("svc", name, "127.0.0.1", 8000, weight=w) for name, w in (("a", 5), ("b", 1), ("c", 1)))
    instances = (a, b, c)
    balancer = WeightedRoundRobin()
    sequence = [balancer.pick(instances).id for _ in range(70)]
    assert Counter(sequence) == {"a": 50, "b": 10, "c": 10}
    assert sequence[:7] == ["a", "a", "b", "a", "c", "a", "a"]  # nginx's smooth order, not a a a a a b c
    longest_run = max(len(list(run)) for _, run in itertools.groupby(sequence[:7]))
    assert longest_run == 2


@pytest.mark.parametrize("weights", [(3, 2), (1, 1, 1), (10, 20, 30, 40), (1000, 1, 999)])
def test_weighted_ratios_hold_over_whole_cycles(weights: tuple[int, ...]) -> None:
    instances = tuple(Instance("svc", f"i{n}", "127.0.0.1", 8000, weight=w) for n, w in enumerate(weights))
    balancer = WeightedRoundRobin()
    cycles = 3
    seen = counts(balancer, instances, cycles * sum(weights))
    assert seen == {f"i{n}": cycles * w for n, w in enumerate(weights)}


def test_the_per_pick_fallback_makes_the_same_sequence_as_the_precomputed_cycle() -> None:
    instances = tuple(Instance("svc", f"i{n}", "127.0.0.1", 8000, weight=w) for n, w in enumerate((7, 3, 5, 1)))
    cycle = _smooth_cycle([i.weight for i in instances])
    assert cycle is not None
    classic = WeightedRoundRobin()
    assert [classic._pick_classic(instances).id for _ in range(2 * len(cycle))] == [
        instances[i].id for i in cycle + cycle
    ]


def test_a_huge_weighted_set_uses_the_per_pick_algorithm_with_exact_shares() -> None:
    instances = tuple(Instance("svc", f"i{n:02d}", "127.0.0.1", 8000, weight=980 + n) for n in range(20))
    assert _smooth_cycle([i.weight for i in instances]) is None
    balancer = WeightedRoundRobin()
    total = sum(i.weight for i in instances)
    seen = counts(balancer, instances, total)
    assert seen == {i.id: i.weight for i in instances}


def test_power_of_two_choices_avoids_the_most_loaded_instance() -> None:
    instances = members(3)
    balancer = PowerOfTwoChoices(seed=1)
    for _ in range(10):
        balancer.started(instances[0])
    balancer.started(instances[1])
    seen = counts(balancer, instances, 3000)
    # Two different instances are drawn, so the busiest one can never win.
    assert seen[instances[0].id] == 0
    # svc-02 (idle) beats svc-01 (1 in flight) whenever both are drawn: it wins 2/3 of the draws, svc-01 1/3.
    assert 1800 < seen[instances[2].id] < 2200, seen
    for _ in range(10):
        balancer.finished(instances[0])
    balancer.finished(instances[1])
    assert balancer.outstanding(instances[0]) == 0
    balanced = counts(balancer, instances, 3000)
    assert all(800 < balanced[i.id] < 1200 for i in instances), balanced


def test_power_of_two_choices_never_counts_below_zero() -> None:
    instance = members(1)[0]
    balancer = PowerOfTwoChoices()
    balancer.finished(instance)
    balancer.started(instance)
    assert balancer.outstanding(instance) == 1
    assert balancer.pick((instance,)) is instance


def test_zone_aware_prefers_its_zone_and_spills_over() -> None:
    local = tuple(Instance("svc", f"local-{n}", "127.0.0.1", 8000, zone="eu-1a") for n in range(2))
    remote = tuple(Instance("svc", f"remote-{n}", "127.0.0.1", 8000, zone="eu-1b") for n in range(3))
    everything = local + remote
    balancer = ZoneAware("eu-1a")
    assert set(counts(balancer, everything, 100)) == {i.id for i in local}
    # No local instance left (e.g. both failed): spill over to the other zone.
    assert set(counts(balancer, remote, 100)) == {i.id for i in remote}
    # Too few local ones for min_local: spill over to the whole set.
    strict = ZoneAware("eu-1a", min_local=3)
    assert set(counts(strict, everything, 100)) == {i.id for i in everything}
    with pytest.raises(ValidationError):
        ZoneAware("eu-1a", min_local=0)


def test_zone_aware_forwards_request_tracking_to_its_inner_balancer() -> None:
    a, b, c = (Instance("svc", n, "127.0.0.1", 8000, zone="z") for n in "abc")
    inner = PowerOfTwoChoices(seed=3)
    balancer = ZoneAware("z", inner)
    for _ in range(5):
        balancer.started(a)
    assert inner.outstanding(a) == 5
    assert counts(balancer, (a, b, c), 300)[a.id] == 0


def key_owners(balancer: ConsistentHash, instances: Sequence[Instance], keys: Sequence[str]) -> dict[str, str]:
    return {key: balancer.pick(instances, key).id for key in keys}


KEYS = [f"user-{n}" for n in range(20_000)]


def test_consistent_hash_is_sticky_deterministic_and_balanced() -> None:
    instances = members(10)
    owners = key_owners(ConsistentHash(), instances, KEYS)
    assert owners == key_owners(ConsistentHash(), instances, KEYS)  # another client maps keys the same way
    shares = Counter(owners.values())
    mean = len(KEYS) / len(instances)
    assert all(0.6 * mean < shares[i.id] < 1.4 * mean for i in instances), shares


def test_a_joining_member_takes_about_one_in_n_keys_and_only_for_itself() -> None:
    before = members(10)
    after = members(11)
    balancer = ConsistentHash()
    old, new = key_owners(balancer, before, KEYS), key_owners(balancer, after, KEYS)
    moved = [key for key in KEYS if old[key] != new[key]]
    assert all(new[key] == "svc-10" for key in moved)
    assert 0.5 / 11 < len(moved) / len(KEYS) < 1.6 / 11, len(moved)


def test_a_leaving_member_moves_only_its_own_keys() -> None:
    before = members(10)
    after = tuple(i for i in before if i.id != "svc-04")
    balancer = ConsistentHash()
    old, new = key_owners(balancer, before, KEYS), key_owners(balancer, after, KEYS)
    moved = [key for key in KEYS if old[key] != new[key]]
    assert moved and all(old[key] == "svc-04" for key in moved)
    assert 0.5 / 10 < len(moved) / len(KEYS) < 1.6 / 10, len(moved)


def test_consistent_hash_weights_scale_the_share() -> None:
    heavy = Instance("svc", "heavy", "127.0.0.1", 8000, weight=3)
    light = Instance("svc", "light", "127.0.0.1", 8000, weight=1)
    shares = Counter(key_owners(ConsistentHash(), (heavy, light), KEYS).values())
    assert 2.0 < shares["heavy"] / shares["light"] < 4.5, shares


def test_consistent_hash_needs_a_key_and_sane_replicas() -> None:
    with pytest.raises(ValidationError) as error:
        ConsistentHash().pick(members(2))
    assert error.value.field == "key"
    with pytest.raises(ValidationError):
        ConsistentHash(replicas=0)


def test_a_list_changed_in_place_is_not_served_from_a_stale_memo() -> None:
    instances = list(members(3))
    balancer = ConsistentHash()
    before = key_owners(balancer, instances, KEYS[:500])
    instances.append(Instance("svc", "svc-99", "127.0.0.1", 20099))
    after = key_owners(balancer, instances, KEYS[:500])
    assert "svc-99" in set(after.values()) and before != after
