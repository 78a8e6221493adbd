"""A worker's partitions' windows shipped as one partial per cell and window (format 2 window batches):
completeness at the owner, each event counted once across a rebalance, the previous format still merged."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from monitor.detection.windows import (Partial, WindowAggregator, WindowBatch, WindowBatchV1, WindowCombiner,
                                       WindowMerger, decode_batch, merge_all)
from monitor.pipeline import CellWindows, DictStore, HotspotStage, Outputs, RiskPipeline, default_core_factory
from monitor.records.topics import CELL_WINDOWS, INPUT_TOPICS

from support.records import net

W = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % W


def _events(seed, n, minutes, cells=6):
    rng = random.Random(seed)
    evs = []
    for _ in range(n):
        cell = rng.randint(0, cells - 1)
        evs.append(net(f"s{rng.randint(0, 400)}", T0 + rng.randint(0, minutes * W - 1), cell=f"c{cell}",
                       region=("north", "south")[cell % 2], latency_ms=rng.uniform(5, 300),
                       call_drop=rng.random() < 0.1, sinr_db=rng.uniform(-5, 20)))
    evs.sort(key=lambda e: e.ts_ms)
    return evs


def _window_batches(out):
    """``(destination, WindowBatch)`` in the order the worker produced them, decoded as the owner does."""
    for (topic, dest), recs in out.take().items():
        assert topic == CELL_WINDOWS
        for _key, value in recs:
            yield dest, decode_batch(value)


def _truth(events):
    agg = WindowAggregator(width_ms=W, allowed_lateness_ms=0)
    for e in events:
        agg.add_network(e)
    return {(p.start_ms, p.cell_id): p for p in agg.flush()}


def test_the_owner_completes_only_whole_windows_while_a_partition_lags():
    """Four partitions of one worker; one lags five windows behind the others in event time. The
    worker holds what the lagging partition has not closed and announces the others' closes no
    further, so an owner that gives up on a source a window behind the newest close (``max_skew_ms``)
    still never completes a window before its last partial: none arrives late, and every merged
    window equals one aggregator over all the events. Without the cap the owner completes the held
    windows early and their partials arrive late (this test fails)."""
    events = _events(1, 3000, 12)
    by_part = {p: [e for e in events if hash(e.subscriber_id) % 4 == p] for p in range(4)}
    cw = CellWindows(partitions=2, width_ms=W, allowed_lateness_ms=0, idle_s=0, max_wait_ms=6 * W)
    mergers = {d: WindowMerger(sources=["0", "1", "2", "3"], max_skew_ms=W) for d in range(2)}
    merged: dict[tuple[int, str], Partial] = {}
    out = Outputs()

    def deliver():
        for dest, batch in _window_batches(out):
            mergers[dest].add(batch)
            for p in mergers[dest].pop_complete():
                assert (p.start_ms, p.cell_id) not in merged
                merged[p.start_ms, p.cell_id] = p

    sent = dict.fromkeys(range(4), T0)
    for minute in range(1, 13):
        for p in range(4):
            upto = T0 + (max(1, minute - 5) if p == 3 else minute) * W   # partition 3 stalls 5 windows
            cw.on_batch(p, [e for e in by_part[p] if sent[p] <= e.ts_ms < upto], [], [], out)
            sent[p] = upto
            deliver()
    assert cw.combiner.open_windows > 0                      # what partition 3 has not closed is held
    cw.on_batch(3, [e for e in by_part[3] if e.ts_ms >= sent[3]], [], [], out)
    cw.flush_all(out)
    deliver()
    for m in mergers.values():
        for p in m.flush():
            merged[p.start_ms, p.cell_id] = p
    assert sum(m.late_partials for m in mergers.values()) == 0
    truth = _truth(events)
    assert sorted(merged) == sorted(truth)
    for key, want in truth.items():
        got = merged[key]
        assert (got.sessions, got.degraded, got.drops, got.affected) == (want.sessions, want.degraded, want.drops,
                                                                         want.affected)
        assert got.kpi_sums == pytest.approx(want.kpi_sums)
    assert cw.late_events()["network"] == 0


def test_in_step_partitions_ship_one_partial_per_cell_and_window():
    """Partitions that close a window in the same round leave one partial per cell and window,
    covering all of them; one WindowBatch per destination announces every partition's close."""
    events = _events(2, 2000, 6)
    cw = CellWindows(partitions=2, width_ms=W, allowed_lateness_ms=0, idle_s=0)
    out = Outputs()
    for minute in range(1, 7):
        for p in range(4):
            cw.on_batch(p, [e for e in events if hash(e.subscriber_id) % 4 == p
                            and T0 + (minute - 1) * W <= e.ts_ms < T0 + minute * W], [], [], out)
    partials = []
    closes: dict[int, list[list[str]]] = {0: [], 1: []}
    for dest, batch in _window_batches(out):
        partials.extend(batch.partials)
        closes[dest].append(sorted(batch.closed))
    keys = [(p.start_ms, p.cell_id) for p in partials]
    assert len(keys) == len(set(keys))                              # one partial per cell and window
    assert sum(len(p.sources) for p in partials) == cw.combiner.accumulators > 1.5 * len(partials)
    assert {"0", "1", "2", "3"} <= {s for p in partials for s in p.sources}
    # each destination: the first closes one by one (a partition that never closed is not waited
    # for), then one batch per round announcing all four
    assert closes[0] == closes[1] == [["0"], ["1"], ["2"], ["3"]] + [["0", "1", "2", "3"]] * 5


@pytest.mark.parametrize("first_alone", [False, True])
def test_combined_partials_are_the_sources_partials_merged_in_the_order_they_closed(first_alone):
    """The worker's sums are the floats the owner would have made of per-source partials
    (merge_all, in arrival order): the detectors see the same numbers, bit for bit. Also when the
    first source's part left before the others closed (it was not waited for): what comes later
    for that window leaves one partial per source, not their sum (float addition is not associative)."""
    rng = random.Random(3)
    aggs = [WindowAggregator(width_ms=W, allowed_lateness_ms=0, source=str(i)) for i in range(3)]
    for e in _events(3, 3000, 3):
        aggs[rng.randrange(3)].add_network(e)
    for i, agg in enumerate(aggs):
        for _ in range(20):
            agg.add_risk(f"s{rng.randint(0, 50)}", T0 + rng.randint(0, 3 * W - 1), rng.random(), f"c{i}", "north")
    per_source: dict[tuple[int, str], list[Partial]] = {}
    comb = WindowCombiner(width_ms=W)
    shipped: list[Partial] = []
    for i in (2, 0, 1):
        closed = aggs[i].pop_closed(T0 + 3 * W)
        for p in aggs[i]._partials(closed):
            per_source.setdefault((p.start_ms, p.cell_id), []).append(p)
        comb.add(str(i), aggs[i].closed_before_ms, closed)
        if first_alone and i == 2:
            shipped += comb.release([])[0]   # nobody waited for
    got, closes = comb.release(["0", "1", "2"])
    shipped += got
    assert closes == {s: T0 + 3 * W for s in (("0", "1") if first_alone else ("2", "0", "1"))}
    at_owner: dict[tuple[int, str], list[Partial]] = {}
    for p in shipped:
        at_owner.setdefault((p.start_ms, p.cell_id), []).append(p)
    assert sorted(at_owner) == sorted(per_source)
    assert len(shipped) == (sum(len(v) for v in per_source.values()) if first_alone else len(per_source))
    for key, parts in per_source.items():
        assert merge_all(at_owner[key]) == merge_all(parts)   # == on floats: the same bits


def _capturing_stage(partitions):
    """A HotspotStage whose engines' ``step`` also records the merged windows they are given."""
    stage = HotspotStage(partitions=partitions, data_drift=False)
    done: list[Partial] = []
    real = stage._engine

    def engine():
        e = real()
        step = e.step
        e.step = lambda start, windows: (done.extend(windows), step(start, windows))[1]
        return e

    stage._engine = engine
    return stage, done


def test_a_rebalance_counts_every_event_once():
    """Worker A owns partitions 0 and 1 and loses 1 to worker B mid-stream: A's revocation releases
    the windows it held for partition 1 and flushes 1's open windows; B is re-delivered partition
    1's records from offset 0 (the commits were lost) and skips what A applied (the resume floor).
    The owner adds up both workers' batches: every session of the run is in exactly one merged window."""
    from monitor.sim import simulate
    from tests.test_pipeline import Clock, batches

    config = simulate.SimConfig(subscribers=600, hours=0.5, seed=4, duplicate_share=0.0, late_share=0.0,
                                malformed_share=0.0)
    records = list(simulate.generate(config, simulate.Simulator(config)))
    all_batches = list(batches(records, partitions=2, size=400))
    state, model, clock = DictStore("s"), DictStore("m"), Clock()

    def worker():
        cw = CellWindows(partitions=2, idle_s=0, clock=clock)
        pipe = RiskPipeline(state_table=state, model_table=model, make_core=default_core_factory(None),
                            clock=clock, observers=[cw])
        return pipe, cw

    a, cw_a = worker()
    b, cw_b = worker()
    stage, windows = _capturing_stage(2)
    out = Outputs()
    acked: dict = {}
    a.durable_offsets = lambda: acked
    shipped = late = 0   # sessions in partials sent, and in partials that reached a complete window

    def deliver():
        nonlocal shipped, late
        for (topic, dest), recs in out.take().items():
            if topic == CELL_WINDOWS:
                for _k, v in recs:
                    done = stage.stages[dest][0].completed_before_ms if dest in stage.stages else None
                    for p in decode_batch(v).partials:
                        shipped += p.sessions
                        late += p.sessions if done is not None and p.start_ms < done else 0
                    stage.on_window_batch(dest, v)

    half = len(all_batches) // 2
    for batch in all_batches[:half]:
        a.handle(batch, out)
        for tp, recs in batch.items():
            acked[tp] = recs[-1].offset + 1
        deliver()
    a.handle(all_batches[half], out)   # writes the floors of what was acknowledged
    for tp, recs in all_batches[half].items():
        acked[tp] = recs[-1].offset + 1
    deliver()
    asyncio.run(a.on_revoked({_tp(t, 1) for t in INPUT_TOPICS}, out))
    deliver()
    assert cw_a.combiner.open_windows == 0
    for batch in all_batches:                                   # B: partition 1 from offset 0
        only_1 = {tp: recs for tp, recs in batch.items() if tp.partition == 1}
        if only_1:
            b.handle(only_1, out)
            deliver()
        if batch in all_batches[half + 1:]:
            only_0 = {tp: recs for tp, recs in batch.items() if tp.partition == 0}
            if only_0:
                a.handle(only_0, out)
                deliver()
    a.flush_all(out, checkpoint=False)
    b.flush_all(out, checkpoint=False)
    deliver()
    for merger, _engine in stage.stages.values():
        windows.extend(merger.flush())
    assert b.skipped_below_floor > 0                            # A's records were re-delivered to B
    sessions = sum(1 for topic, _k, _v in records if topic == "network-events")
    late_events = sum(cw.late_events()["network"] for cw in (cw_a, cw_b))
    assert shipped + late_events == sessions                    # none lost, none twice, at the workers
    assert sum(p.sessions for p in windows) + late == shipped   # the owner: merged, or counted late
    assert sum(p.sessions for p in windows) >= 0.9 * sessions


def _tp(topic, partition):
    from monitor.pipeline import TopicPartition

    return TopicPartition(topic, partition)


def test_window_batches_of_the_previous_format_still_merge():
    """A worker of the previous version (format 1: one source, the array begins with its name) and
    one of this version (format 2: several sources) feed the same owner during an upgrade; the
    window completes with both, through the stage's own decoding."""
    stage, done = _capturing_stage(1)
    old = msgspec.msgpack.encode(WindowBatchV1(source="0", closed_before_ms=T0 + W, partials=[
        Partial(cell_id="c", region="r", start_ms=T0, width_ms=W, sessions=4, degraded=1, affected=[7])]))
    new = msgspec.msgpack.encode(WindowBatch(closed={"1": T0 + W, "2": T0 + W}, partials=[
        Partial(cell_id="c", region="r", start_ms=T0, width_ms=W, sessions=3, affected=[7, 9], sources=["1", "2"])]))
    stage.sources = ["0", "1", "2"]
    stage.on_window_batch(0, old)
    assert done == []                                    # sources 1 and 2 have not closed it yet
    stage.on_window_batch(0, new)
    [p] = done
    assert (p.sessions, p.degraded, p.affected, p.sources) == (7, 1, [7, 9], ["0", "1", "2"])


def test_a_record_of_neither_format_is_refused_with_the_reason():
    """What the caller logs (and skips): both formats' complaints, never a silently empty batch."""
    with pytest.raises(msgspec.ValidationError, match="format 2 .* or 1 "):
        decode_batch(msgspec.msgpack.encode([3, {"0": 1}, []]))
    with pytest.raises(msgspec.DecodeError):
        decode_batch(b"\xc1not msgpack")


def test_the_combiner_gauge_counts_the_windows_a_worker_holds_for_its_other_partitions(tmp_path):
    """``satmon_worker_window_cells_open{side="combiner"}`` of a built worker, scraped through its
    registry: non-zero while partition 0's closed window waits for partition 1 (which has closed
    an earlier one, so it is waited for), back to zero once partition 1 closes it too and the
    window's partials leave."""
    from monitor.config import load
    from monitor.worker.app import build_worker

    worker = build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path), pseudonymise="false"))
    cw = worker.cell_windows
    cw.idle_s = 0                      # no stream holds a partition's closing back here

    def held() -> float | None:
        return worker.registry.get_sample_value("satmon_worker_window_cells_open", {"side": "combiner"})

    out = Outputs()
    cw.on_batch(1, [net("s1", T0 - 5 * W), net("s1", T0 - 2 * W)], [], [], out)   # closes windows before T0 - 3W
    assert held() == 0
    cw.on_batch(0, [net("s2", T0 + 1_000, cell="cA"), net("s3", T0 + 2_000, cell="cB"),
                    net("s2", T0 + 4 * W, cell="cA")], [], [], out)                # closes T0's window
    assert held() == 2 == cw.combiner.open_windows      # cA and cB of window T0, waiting for partition 1
    out.clear()
    cw.on_batch(1, [net("s1", T0 + 5 * W, cell="cA")], [], [], out)               # partition 1 closes it too
    assert held() == 0
    shipped = [p for _dest, batch in _window_batches(out) for p in batch.partials if p.start_ms == T0]
    assert sorted((p.cell_id, p.sessions, p.sources) for p in shipped) == [("cA", 1, ["0"]), ("cB", 1, ["0"])]
