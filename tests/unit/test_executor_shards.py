"""How the executor replicas share the shards of the signals."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.executor.shards import assignment, owned_by

names = st.lists(st.text("abcdef0123456789-", min_size=1, max_size=12), min_size=1, max_size=6, unique=True)


@given(names, st.integers(min_value=1, max_value=16))
def test_every_shard_has_one_owner_and_the_load_is_fair(replicas, shards):
    owners = assignment(replicas, shards)
    assert sorted(owners) == list(range(shards)) and set(owners.values()) <= set(replicas)
    loads = [list(owners.values()).count(r) for r in replicas]
    assert max(loads) - min(loads) <= 1  # every replica does its share


@given(names)
def test_every_replica_computes_the_same_assignment_whatever_order_it_sees_the_others_in(replicas):
    assert assignment(replicas, 4) == assignment(list(reversed(replicas)), 4)
    assert set().union(*(owned_by(r, replicas, 4) for r in replicas)) == {0, 1, 2, 3}


def test_a_replica_leaving_hands_its_shards_to_the_others():
    before = assignment(["a", "b"], 4)
    after = assignment(["b"], 4)
    assert set(after.values()) == {"b"}
    assert {s for s, r in before.items() if r == "b"} <= set(after)
