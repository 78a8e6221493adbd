"""Per-(cell, window) partial aggregates: watermark, lateness, merge, serialisation, ids."""

from __future__ import annotations

import pickle
import random

import msgspec
import pytest

from monitor.records.events import AppEvent, TicketEvent
from monitor.detection.windows import (Partial, WindowAggregator, WindowBatch, WindowMerger, decode_batch,
                             encode_batch, merge, merge_all, rollup, subscriber_hash)

from support.records import net

W = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % W


def test_watermark_closes_after_allowed_lateness():
    agg = WindowAggregator(width_ms=W, allowed_lateness_ms=20_000)
    agg.add_network(net("a", T0 + 1_000))
    agg.add_network(net("b", T0 + W + 10_000))      # watermark T0+70s: window 0 ends at T0+60s
    assert agg.close() == []                         # still within the 20 s lateness
    agg.add_network(net("c", T0 + 30_000))           # late but allowed: goes into window 0
    agg.add_network(net("d", T0 + W + 20_000))       # watermark = end + lateness: closes window 0
    [p] = agg.close()
    assert (p.start_ms, p.sessions) == (T0, 2)
    assert agg.late_events["network"] == 0
    agg.add_network(net("e", T0 + 59_000))           # window 0 already shipped: late, counted
    assert agg.late_events["network"] == 1 and agg.events["network"] == 4
    rest = agg.flush()
    assert [(q.start_ms, q.sessions) for q in rest] == [(T0 + W, 2)]


def test_close_with_external_watermark_never_moves_back():
    agg = WindowAggregator(width_ms=W, allowed_lateness_ms=0)
    agg.add_network(net("a", T0 + 5))
    assert len(agg.close(watermark_ms=T0 + 2 * W)) == 1   # idle partition driven by the clock
    assert agg.close(watermark_ms=T0) == []
    assert agg.watermark_ms == T0 + 2 * W


def test_symptoms_and_attribution():
    agg = WindowAggregator(width_ms=W, allowed_lateness_ms=0)
    agg.add_network(net("a", T0, call_drop=True, service="voice"))
    agg.add_network(net("b", T0, video_stall_s=3.0))
    agg.add_network(net("c", T0, latency_ms=400))
    agg.add_network(net("d", T0))
    agg.add_ticket(TicketEvent(event_id="t", ticket_id="t1", subscriber_id="d", ts_ms=T0 + 1, channel="app",
                               category="network", action="opened"), "c1", "north")
    agg.add_app(AppEvent(event_id="x", session_id="s", subscriber_id="e", ts_ms=T0 + 2,
                         kind="self_service_failure"), "c1", "north")
    agg.add_risk("a", T0 + 3, 0.8, "c1", "north")
    [p] = agg.close(watermark_ms=T0 + W)
    assert (p.sessions, p.degraded, p.drops, p.stalls) == (4, 3, 1, 1)
    assert (p.tickets, p.complaints, p.app_events, p.app_failures) == (1, 1, 1, 1)
    assert p.risk_n == 1 and p.risk_max == 0.8 and p.latency_max == 400
    assert p.kpi_mean("latency_ms") == pytest.approx((30 * 3 + 400) / 4)
    assert p.n_affected == 5                         # a, b, c degraded; d complained; e failed in app
    assert sorted(p.affected) == sorted(subscriber_hash(s) for s in "abcde")
    assert agg.affected("c1") == ["a", "b", "c", "d", "e"]   # ids stay with the worker that saw them
    assert agg.affected("c1", since_ms=T0 + W) == []


def test_add_batch_attributes_tickets_via_callback():
    agg = WindowAggregator(width_ms=W, allowed_lateness_ms=0)
    tick = TicketEvent(event_id="t", ticket_id="t1", subscriber_id="z", ts_ms=T0, channel="app",
                       category="network", action="opened")
    agg.add_batch([net("a", T0), tick, tick], cell_of=lambda sid: ("c9", "south") if sid == "z" else None)
    agg.add_batch([tick])                             # no attribution available: counted
    parts = {p.cell_id: p for p in agg.flush()}
    assert parts["c9"].complaints == 2 and parts["c1"].sessions == 1 and agg.unattributed == 1


def test_batch_path_equals_event_by_event_path():
    """add_batch inlines the session arithmetic: it must give exactly what add_network gives, on
    random sessions (degraded by each symptom, late ones included) across windows and cells."""
    rnd = random.Random(11)
    events = []
    for i in range(3_000):
        ts = T0 + i * 97 - (rnd.randrange(200_000) if rnd.random() < 0.05 else 0)   # some late
        events.append(net(f"s{rnd.randrange(300)}", ts, cell=f"c{rnd.randrange(12)}",
                          region=f"r{rnd.randrange(3)}", service=rnd.choice(("video", "web", "voice")),
                          latency_ms=rnd.choice((30.0, 200.0)), packet_loss_pct=rnd.choice((0.1, 3.0)),
                          dl_mbps=rnd.choice((80.0, 1.0)), sinr_db=rnd.choice((12.0, -5.0)),
                          call_drop=rnd.random() < 0.05, video_stall_s=rnd.choice((0.0, 0.0, 4.0)),
                          rsrp_dbm=-80 - rnd.random() * 40, jitter_ms=rnd.random() * 9))
    one, batched = (WindowAggregator(width_ms=W, allowed_lateness_ms=10_000) for _ in range(2))
    got_one, got_batched = [], []
    for k in range(0, len(events), 250):
        chunk = events[k:k + 250]
        for e in chunk:
            one.add_network(e)
        assert batched.add_batch(chunk) == {"network"}
        got_one += one.close()
        got_batched += batched.close()
    got_one += one.flush()
    got_batched += batched.flush()
    assert got_batched == got_one and sum(p.n_affected for p in got_one) > 0
    assert batched.late_events == one.late_events and one.late_events["network"] > 0
    assert (batched.events, batched.watermark_ms, batched.stream_watermarks) == (
        one.events, one.watermark_ms, one.stream_watermarks)
    assert batched.affected("c3") == one.affected("c3")


def _random_partials(seed: int, n: int) -> list[Partial]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        agg = WindowAggregator(width_ms=W, allowed_lateness_ms=0, source=str(i))
        for _ in range(rng.randint(1, 30)):
            agg.add_network(net(f"s{rng.randint(0, 40)}", T0 + rng.randint(0, W - 1),
                                latency_ms=rng.uniform(5, 500), call_drop=rng.random() < 0.2))
            agg.add_risk(f"s{rng.randint(0, 40)}", T0 + 1, rng.random(), "c1", "north")
        out.extend(agg.flush())
    return out


def test_merge_is_associative_commutative_and_pure():
    a, b, c = _random_partials(1, 3)
    frozen = [msgspec.json.encode(x) for x in (a, b, c)]
    left = merge(merge(a, b), c)
    right = merge(a, merge(b, c))
    swapped = merge(c, merge(b, a))
    assert left == right
    assert msgspec.json.encode(left) == msgspec.json.encode(swapped)
    assert [msgspec.json.encode(x) for x in (a, b, c)] == frozen      # inputs untouched
    assert left.sessions == a.sessions + b.sessions + c.sessions
    assert left.sources == ["0", "1", "2"]
    assert len(left.affected) == len(set(a.affected) | set(b.affected) | set(c.affected))


def test_partitioned_aggregation_equals_single_aggregator():
    rng = random.Random(7)
    events = [net(f"s{rng.randint(0, 300)}", T0 + rng.randint(0, 3 * W - 1), cell=f"c{rng.randint(0, 4)}",
                  latency_ms=rng.uniform(5, 300), call_drop=rng.random() < 0.1) for _ in range(2000)]
    events.sort(key=lambda e: e.ts_ms)
    single = WindowAggregator(width_ms=W, allowed_lateness_ms=0)
    parts = [WindowAggregator(width_ms=W, allowed_lateness_ms=0, source=str(i)) for i in range(4)]
    for e in events:
        single.add_network(e)
        parts[hash(e.subscriber_id) % 4].add_network(e)
    merger = WindowMerger(sources=[str(i) for i in range(4)])
    for agg in parts:
        merger.add(decode_batch(encode_batch(agg.batch_for(agg.flush()))))
    merged = merger.pop_complete()
    want = single.flush()
    assert [(p.cell_id, p.start_ms) for p in merged] == [(p.cell_id, p.start_ms) for p in want]
    for m, w in zip(merged, want):
        assert (m.sessions, m.degraded, m.drops, m.affected) == (w.sessions, w.degraded, w.drops, w.affected)
        assert m.latency_sumsq == pytest.approx(w.latency_sumsq)


def test_merger_waits_for_every_source_then_counts_late_partials():
    p0 = Partial(cell_id="c", region="r", start_ms=T0, width_ms=W, sessions=3)
    m = WindowMerger(sources=["0", "1"], max_skew_ms=3 * W)
    m.add(WindowBatch.of("0", T0 + W, [p0]))
    assert m.pop_complete() == []
    m.add(WindowBatch.of("1", T0 + W, []))   # nothing for c, says so
    [done] = m.pop_complete()
    assert done.sessions == 3
    m.add(WindowBatch.of("1", T0 + W, [p0]))  # too late now
    assert m.late_partials == 1 and m.pop_complete() == []


def test_merger_does_not_wait_forever_for_a_silent_source():
    m = WindowMerger(sources=["0", "1"], max_skew_ms=2 * W)
    for k in range(4):
        m.add(WindowBatch.of("0", T0 + (k + 1) * W,
                             [Partial(cell_id="c", region="r", start_ms=T0 + k * W, width_ms=W, sessions=1)]))
    assert [p.start_ms for p in m.pop_complete()] == [T0, T0 + W]      # 2 windows behind the newest


def test_merger_waits_for_a_lagging_source_but_not_for_a_silent_one():
    """Event-time skew (a source catching up a backlog) is waited out; wall-clock silence is not."""
    now = [0.0]
    m = WindowMerger(sources=["0", "1"], max_silence_s=30.0, clock=lambda: now[0])
    m.add(WindowBatch.of("1", T0 + W, []))
    for k in range(30):   # source 0 runs 30 windows ahead in event time
        m.add(WindowBatch.of("0", T0 + (k + 1) * W,
                             [Partial(cell_id="c", region="r", start_ms=T0 + k * W, width_ms=W, sessions=1)]))
    assert [p.start_ms for p in m.pop_complete()] == [T0]      # only what source 1 has closed too
    now[0] = 31.0                                               # source 1 silent for 31 s of wall clock
    m.add(WindowBatch.of("0", T0 + 31 * W, []))
    assert len(m.pop_complete()) == 29 and m.late_partials == 0


def test_partial_serialises_compactly_and_round_trips():
    [p] = [q for q in _random_partials(3, 1)]
    raw = encode_batch(WindowBatch.of("0", T0 + W, [p]))
    assert decode_batch(raw).partials == [p]
    assert len(raw) < 200 + 9 * len(p.affected)   # ~170 bytes of counters + 9 per hash


def test_partials_built_by_position_are_the_keyword_built_ones():
    """The hot paths build partials by position (to_partial, merge_all, rollup): the positions are
    the fields' order, so each equals, and encodes as, the partial built field by field by name."""
    parts = _random_partials(5, 4)
    assert any(p.affected for p in parts) and all(p.sources for p in parts)
    for p in parts:
        by_name = Partial(**{f: getattr(p, f) for f in Partial.__struct_fields__})
        assert Partial(*(getattr(p, f) for f in Partial.__struct_fields__)) == by_name == p
        assert encode_batch(WindowBatch.of("0", 0, [p])) == \
            encode_batch(WindowBatch.of("0", 0, [by_name]))
    same = [msgspec.structs.replace(p, start_ms=T0, width_ms=W, cell_id="c") for p in parts]
    folded = same[0]
    for p in same[1:]:
        folded = merge(folded, p)
    assert msgspec.msgpack.encode(merge_all(same)) == msgspec.msgpack.encode(folded)


def test_rollup_counts_a_subscriber_once_across_cells():
    a = Partial(cell_id="c1", region="r", start_ms=T0, width_ms=W, sessions=2, affected=[1, 2])
    b = Partial(cell_id="c2", region="r", start_ms=T0, width_ms=W, sessions=5, affected=[2, 3])
    r = rollup([a, b], "r")
    assert (r.cell_id, r.sessions, r.affected) == ("r", 7, [1, 2, 3])
    assert merge_all([a]) is a


def test_rollup_is_the_fold_of_merge_field_for_field():
    """The one-pass roll-up gives exactly what merging the cells one by one gave (same sums in the
    same order), on partials the aggregator folded from real-looking sessions."""
    parts = [msgspec.structs.replace(p, start_ms=T0, width_ms=W) for p in _random_partials(40, 7)]
    folded = None
    for p in parts:
        q = msgspec.structs.replace(p, cell_id="r")
        folded = q if folded is None else merge(folded, q)
    assert rollup(parts, "r") == folded
    assert rollup(parts[:1], "r") == msgspec.structs.replace(parts[0], cell_id="r")


def test_aggregator_pickles_mid_window():
    agg = WindowAggregator(width_ms=W, allowed_lateness_ms=0)
    agg.add_network(net("a", T0, call_drop=True))
    clone = pickle.loads(pickle.dumps(agg))
    clone.add_network(net("b", T0 + 5, call_drop=True))
    agg.add_network(net("b", T0 + 5, call_drop=True))
    assert clone.flush() == agg.flush()


def _app(sid, ts, kind="self_service_success"):
    return AppEvent(event_id=f"a-{sid}-{ts}", session_id=f"x-{ts}", subscriber_id=sid, ts_ms=ts, kind=kind)


@pytest.mark.parametrize("idle_s, probe, late_expected", [
    (0.0, False, 40),     # idle_s 0 = no activity hold: by the largest event time of any stream: the failure the holds prevent
    (0.0, True, 0),       # held by the network backlog Kafka reports
    (5.0, False, 0),      # held because the network stream is active (seen within idle_s)
])
def test_the_slower_active_stream_holds_windows_so_its_records_are_not_late(idle_s, probe, late_expected):
    """Catching up a backlog, a sparse stream (app) can be fetched an hour ahead of the dense one
    (network): closing by its watermark turned the rest of the network backlog into late events
    (seen through the worker: an outage's sessions vanished from its cell's windows)."""
    from monitor.pipeline import CellWindows
    from monitor.pipeline import Outputs

    pending = {"network-events": 40, "care-tickets": 0, "app-interactions": 0}
    cw = CellWindows(partitions=1, idle_s=idle_s, clock=lambda: 100.0,
                     backlog=(lambda t, p: pending[t]) if probe else None)
    out = Outputs()
    cw.on_batch(0, [net("s1", T0 + i * 1000) for i in range(20)] + [_app("s1", T0 + 60 * W)], [], [], out)
    pending["network-events"] = 0                         # the rest of the network backlog arrives
    cw.on_batch(0, [net("s2", T0 + 30 * W + i * 1000) for i in range(40)], [], [], out)
    assert cw.late_events()["network"] == late_expected
    assert (cw.holds > 0) == (late_expected == 0)
    cw.flush_all(out)
    sessions = sum(p.sessions for _t, _p, b in _batches(out) for p in b.partials)
    assert sessions == 60 - late_expected                 # every other session reached a closed window


def test_a_quiet_stream_does_not_hold_windows():
    from monitor.pipeline import CellWindows
    from monitor.pipeline import Outputs

    now = [0.0]
    cw = CellWindows(partitions=1, idle_s=5.0, clock=lambda: now[0])
    out = Outputs()
    cw.on_batch(0, [net("s1", T0), _app("s1", T0 + 1000)], [], [], out)
    now[0] = 2.0                                          # app active, network still active
    cw.on_batch(0, [_app("s1", T0 + 10 * W)], [], [], out)
    assert not any(b.partials for _t, _p, b in _batches(out))
    now[0] = 60.0                                         # network quiet for a minute: no hold
    cw.on_batch(0, [_app("s1", T0 + 11 * W)], [], [], out)
    assert [p.start_ms for _t, _p, b in _batches(out) for p in b.partials] == [T0]


def test_tick_releases_windows_once_the_holding_stream_goes_quiet():
    """The end of a burst: no more batches come, so the wall clock (tick) must close what the
    slower stream held (without it the last windows waited for the next record)."""
    from monitor.pipeline import CellWindows
    from monitor.pipeline import Outputs

    now = [0.0]
    cw = CellWindows(partitions=1, idle_s=5.0, clock=lambda: now[0])
    out = Outputs()
    cw.on_batch(0, [_app("s1", T0), net("s1", T0 + 10 * W)], [], [], out)   # app is the slower stream
    cw.tick(out)
    assert not any(b.partials for _t, _p, b in _batches(out))
    now[0] = 6.0
    cw.tick(out)
    assert [p.start_ms for _t, _p, b in _batches(out) for p in b.partials] == [T0]


def test_an_unseen_stream_with_a_backlog_holds_everything_and_no_backlog_holds_nothing():
    agg = WindowAggregator(width_ms=W, allowed_lateness_ms=0)
    agg.add_network(net("s1", T0))
    agg.add_network(net("s1", T0 + 5 * W))
    assert agg.holds([]) is None
    assert agg.close(hold_ms=agg.holds(["tickets"])) == []        # tickets behind, position unknown
    assert [p.start_ms for p in agg.close(hold_ms=agg.holds(["network"]))] == [T0]


def _batches(out):
    for (topic, partition), records in out.records().items():
        for _key, value in records:
            yield topic, partition, decode_batch(value)


def test_a_hold_never_keeps_windows_open_beyond_max_hold():
    """A lagging worker has a backlog on every stream; the slowest one must not keep every window
    since its watermark open (memory grew without bound): windows close at ``max_hold_ms`` behind
    the newest event, the held-back stream's older records become counted late events."""
    from monitor.pipeline import CellWindows
    from monitor.pipeline import Outputs

    backlog = {"network-events": 10, "care-tickets": 10, "app-interactions": 10}
    cw = CellWindows(partitions=1, idle_s=5.0, clock=lambda: 100.0, max_hold_ms=10 * W,
                     backlog=lambda t, p: backlog[t])
    out = Outputs()
    cw.on_batch(0, [_app("s1", T0)], [], [], out)                      # app stays at T0
    for minute in range(0, 60):                                        # network runs an hour ahead
        cw.on_batch(0, [net(f"s{minute}", T0 + minute * W + 1)], [], [], out)
    agg = cw.aggregators[0]
    assert agg.open_windows <= 12                                        # ~10 windows, not 60
    assert cw.hold_capped > 0
    cw.on_batch(0, [_app("s1", T0 + 5 * W)], [], [], out)             # far behind: late, counted
    assert cw.late_events()["app"] == 1
    unbounded = CellWindows(partitions=1, idle_s=5.0, clock=lambda: 100.0, max_hold_ms=10**12,
                            backlog=lambda t, p: backlog[t])
    unbounded.on_batch(0, [_app("s1", T0)], [], [], Outputs())
    for minute in range(0, 60):
        unbounded.on_batch(0, [net(f"s{minute}", T0 + minute * W + 1)], [], [], Outputs())
    assert unbounded.aggregators[0].open_windows >= 60                   # what the cap prevents


def test_affected_ids_are_kept_for_the_retention_and_pruned_after_it():
    """The outreach API's ids: each subscriber's last affected window on a cell, dropped once the
    watermark is more than ``retention_ms`` past it (pruned from a heap; checked against the rule)."""
    import random

    rnd = random.Random(5)
    width, retention = 60_000, 600_000
    agg = WindowAggregator(width_ms=width, allowed_lateness_ms=0, retention_ms=retention)
    seen: list[tuple[str, str, int]] = []   # (cell, subscriber, end of the window it was affected in)
    for minute in range(120):
        for _ in range(30):
            sid, cell = f"s{rnd.randrange(40)}", f"c{rnd.randrange(4)}"
            ts = minute * width + rnd.randrange(width)
            bad = rnd.random() < 0.3
            agg.add_network_kpis(sid, ts, cell, "r", latency_ms=400.0 if bad else 20.0)
            if bad:
                seen.append((cell, sid, minute * width + width - 1))
        agg.close()
        # pruned at most once a window of watermark progress, by the watermark of that prune
        cutoff, closed = agg._pruned_at - retention, agg.closed_before_ms
        last: dict[tuple[str, str], int] = {}   # each id's last closed window
        for cell, sid, t in seen:
            if t < closed:
                last[(cell, sid)] = max(t, last.get((cell, sid), t))
        for cell in ("c0", "c1", "c2", "c3"):
            assert agg.affected(cell) == sorted(s for (c, s), t in last.items() if c == cell and t >= cutoff)
    assert sum(len(v) for v in agg._recent.values()) < 40 * 4
