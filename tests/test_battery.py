"""River's generic checks, over the stateful pieces of the pipeline: the partition core and the
window aggregator (the risk model and the detectors have their own batteries in test_risk.py and
test_detectors.py). Each: a pickle round-trip mid-stream changes nothing that follows, the input
is never mutated, equal input gives equal output, and keys never seen before are taken in stride.
Events come from the simulator's producer, decoded by the worker's ingest."""

from __future__ import annotations

import copy
import functools
import pickle

import msgspec

from monitor.sim import simulate
from monitor.scoring.core import PartitionCore
from monitor.records.ingest import Ingest
from monitor.detection.windows import WindowAggregator


def epoch() -> int:
    """A wall clock fixed at 0 (module level: the core must pickle with it)."""
    return 0


@functools.lru_cache(maxsize=1)
def events() -> tuple:
    config = simulate.SimConfig(subscribers=1500, hours=1.0, seed=19, malformed_share=0.0, duplicate_share=0.0,
                                late_share=0.0)
    ingest = Ingest()
    out = []
    for n, (topic, key, value) in enumerate(simulate.generate(config, simulate.Simulator(config))):
        event = ingest.decode(topic, 0, n, key, value)
        assert not hasattr(event, "reason"), event
        out.append(event)
    return tuple(out)


def scores(core: PartitionCore, evs) -> list[tuple[str, int, float, tuple]]:
    return [(s.subscriber_id, s.ts_ms, s.score, tuple(r.code for r in s.reasons)) for s in core.process_batch(evs)]


def partials(agg: WindowAggregator, evs) -> list:
    cells: dict = {}
    agg.add_batch(evs, (), cells.get, located=cells)
    return [msgspec.json.encode(p) for p in agg.close()]


def halves():
    evs = events()
    return evs[: len(evs) // 2], evs[len(evs) // 2:]


def test_partition_core_pickle_round_trip_mid_stream_changes_nothing():
    first, second = halves()
    core = PartitionCore(0, clock_ms=epoch)
    scores(core, first)
    clone = pickle.loads(pickle.dumps(core))
    assert scores(clone, second) == scores(core, second)


def test_partition_core_is_deterministic_and_leaves_its_input_alone():
    evs = events()
    before = copy.deepcopy(evs)
    a, b = PartitionCore(0, clock_ms=epoch), PartitionCore(0, clock_ms=epoch)
    assert scores(a, evs) == scores(b, evs)
    assert evs == before


def test_partition_core_takes_unseen_cells_regions_and_subscribers():
    first, _ = halves()
    core = PartitionCore(0, clock_ms=epoch)
    scores(core, first)
    net = next(e for e in first if e.stream == "network")
    fresh = [msgspec.structs.replace(net, event_id=f"new-{i}", subscriber_id=f"never-seen-{i}",
                                     cell_id=f"cell-new-{i}", region="nowhere", ts_ms=net.ts_ms + i)
             for i in range(50)]
    out = core.process_batch(fresh)
    assert len(core.states) >= 50 and all(0.0 <= s.score <= 1.0 for s in out)


def test_window_aggregator_pickle_round_trip_mid_stream_changes_nothing():
    first, second = halves()
    agg = WindowAggregator(width_ms=60_000, allowed_lateness_ms=30_000, source="0")
    partials(agg, first)
    clone = pickle.loads(pickle.dumps(agg))
    assert partials(clone, second) == partials(agg, second)


def test_window_aggregator_is_deterministic_and_leaves_its_input_alone():
    evs = events()
    before = copy.deepcopy(evs)
    a = WindowAggregator(width_ms=60_000, allowed_lateness_ms=30_000, source="0")
    b = WindowAggregator(width_ms=60_000, allowed_lateness_ms=30_000, source="0")
    got = partials(a, evs)
    assert got and got == partials(b, evs)
    assert evs == before


def test_window_aggregator_takes_unseen_cells_and_regions():
    first, _ = halves()
    agg = WindowAggregator(width_ms=60_000, allowed_lateness_ms=30_000, source="0")
    partials(agg, first)
    net = next(e for e in reversed(first) if e.stream == "network")
    fresh = [msgspec.structs.replace(net, event_id=f"new-{i}", cell_id="cell-new", region="nowhere",
                                     ts_ms=net.ts_ms + 120_000 + i) for i in range(20)]
    agg.add_batch(fresh, (), {}.get, located={})
    got = agg.flush()
    assert any(p.cell_id == "cell-new" and p.region == "nowhere" and p.sessions == 20 for p in got)
