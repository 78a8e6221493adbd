"""The memory tools behind the soak and the capacity model: ``bench_soak.trace_report`` names the
source line whose allocations grew between two heap snapshots, and ``bench_memory.measure_view``
measures the outreach view per subscriber (full history rings) with its change log apart."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_memory  # noqa: E402
import bench_soak  # noqa: E402

KEPT: list[bytes] = []


def grow(n: int) -> None:
    KEPT.extend(bytes(1000) + bytes([i % 256]) for i in range(n))  # the line that leaks


def test_trace_report_names_the_line_that_grew_after_the_warm_up(tmp_path: Path) -> None:
    tracemalloc.start(1)
    try:
        for n, count in enumerate((10, 20, 2_020)):   # warm-up, then 2,000 more kept blocks
            grow(count)
            tracemalloc.take_snapshot().dump(str(tmp_path / f"{n:04d}.snap"))
            traced = tracemalloc.get_traced_memory()[0]
            (tmp_path / f"{n:04d}.json").write_text(json.dumps({"rss_mb": 1.0, "traced_mb": traced / 2**20}))
    finally:
        tracemalloc.stop()
        KEPT.clear()
    report = bench_soak.trace_report(tmp_path, warmup=0.4)
    assert (report["from"], report["to"]) == ("0001", "0002")
    top = report["top_growth"][0]
    assert "test_memtools.py" in top["where"] and top["count_diff"] == 2_020
    assert 1_900 < top["size_diff_kb"] < 2_400
    traced = [s["traced_mb"] for s in report["samples"]]
    assert traced[2] > traced[1] + 1.9
    assert bench_soak.trace_report(tmp_path / "none", warmup=0.5)["error"].startswith("0 sample(s)")


class Holder:
    def __init__(self) -> None:
        self.backlog: dict[int, list[int]] = {}


def test_census_names_the_container_that_grew_and_what_holds_it(tmp_path: Path) -> None:
    # what the soak's --census writes (no tracing): the report says which object grew and who holds it
    import memtrace

    holder = Holder()
    for n, count in enumerate((2_500, 2_600, 9_000)):
        holder.backlog.update((i, [i]) for i in range(len(holder.backlog), count))
        (tmp_path / f"{n:04d}.census.json").write_text(json.dumps(memtrace.census()))
        (tmp_path / f"{n:04d}.json").write_text(json.dumps(
            {"rss_mb": 1.0, "pymalloc": memtrace.pymalloc_stats()}))
    report = bench_soak.trace_report(tmp_path, warmup=0.4)
    grown = report["containers_grown"][0]
    assert grown["type"] == "dict" and (grown["len_before"], grown["len"]) == (2_600, 9_000)
    assert "Holder.backlog" in grown["held_by"]
    assert report["types_grown"]["list"] >= 6_400
    assert report["type_bytes_grown_kb"]["list"] >= 6_400 * 56 / 1024   # an empty list's header, each
    first, last = report["samples"][1], report["samples"][2]
    assert last["pymalloc_arenas"] >= 1 and last["pymalloc_live_bytes_mb"] > first["pymalloc_live_bytes_mb"]


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_census_counts_live_objects_not_garbage_waiting_for_a_collection() -> None:
    import gc

    import memtrace

    gc.disable()   # as between the worker's rare collections: cycles wait as garbage
    try:
        for _ in range(3_000):
            Cycle()
        kept = [Cycle() for _ in range(100)]
        counted = memtrace.census()
    finally:
        gc.enable()
    assert counted["by_type"]["Cycle"] == len(kept)
    assert counted["collected"] >= 3_000


def test_view_measured_per_subscriber_with_the_change_log_apart() -> None:
    result = bench_memory.measure_view(300, history=4, pool_hours=0.5)
    assert result["scores_applied"] == 1_200 and result["score_pool"] > 50
    assert result["change_log_bytes_per_score"] == 16.0   # 8 B offset + one reference
    # four versions and the latest full record: well over a few hundred bytes, far under 10 KB
    assert 800 < result["view_bytes_per_subscriber"] < 10_000


def test_slope_is_per_unit_of_x() -> None:
    assert bench_soak.slope([0, 1, 2, 3], [10, 12, 14, 16]) == 2.0
    assert bench_soak.slope([1, 1], [3, 5]) == 0.0


def test_soak_counters_sum_a_workers_series_and_report_an_unreachable_worker() -> None:
    import http.server
    import threading

    body = (b'# HELP satmon_ingest_events_decoded_total x\nsatmon_ingest_events_decoded_total{stream="network"} 3.0\n'
            b'satmon_ingest_events_decoded_total{stream="app"} 4.0\n'
            b'satmon_ingest_records_dead_lettered_total{stream="app",reason="schema"} 1.0\nsatmon_worker_batches_total 2.0\n'
            b'# TYPE satmon_worker_store_memory_bytes gauge\n'
            b'satmon_worker_store_memory_bytes{table="state",kind="memtables"} 2097152.0\n'
            b'satmon_worker_store_memory_bytes{table="model",kind="memtables"} 1048576.0\n'
            b'# TYPE satmon_worker_malloc_bytes gauge\nsatmon_worker_malloc_bytes{kind="free"} 3145728.0\n'
            b'# TYPE satmon_view_change_log_entries gauge\nsatmon_view_change_log_entries 12.0\n'
            b'# TYPE satmon_worker_hotspot_baselines gauge\nsatmon_worker_hotspot_baselines 640.0\n')

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert bench_soak.counters(server.server_address[1]) == (8.0, 2.0)
        assert bench_soak.memory_parts(server.server_address[1]) == {
            "rocksdb_state_memtables_mb": 2.0, "rocksdb_model_memtables_mb": 1.0, "malloc_free_mb": 3.0,
            "view_change_log_entries": 12.0, "hotspot_baselines": 640.0}
    finally:
        server.shutdown()
    assert bench_soak.counters(1) is None and bench_soak.memory_parts(1) == {}


def test_resident_memory_splits_into_anonymous_and_file_backed() -> None:
    import os

    split = bench_soak.rss_split_mb(os.getpid())
    assert abs(split["rssanon_mb"] + split["rssfile_mb"] - bench_soak.rss_mb(os.getpid())) < 5
    assert bench_soak.rss_split_mb(2**22 + 1) == {}


def test_census_sees_holders_the_worker_froze_at_start_up() -> None:
    # the worker calls gc.freeze() once built: the census must still name what holds a container
    import gc

    import memtrace

    holder = Holder()
    gc.freeze()
    try:
        holder.backlog.update((i, [i]) for i in range(5_000))
        rows = [r for r in memtrace.census()["large"] if r["len"] == 5_000]
    finally:
        gc.unfreeze()
    assert rows and "Holder.backlog" in rows[0]["held_by"]


def test_slope_at_a_fixed_batch_size_separates_growing_batches_from_growth_per_event() -> None:
    # a worker whose memory only follows its batch size (the broker slowing) is flat per event;
    # one that also grows per event shows it, whatever the batches do
    rows = [{"events": i * 1e5, "records_per_batch": 100 + 40 * i + (i % 3) * 50} for i in range(30)]
    flat = [r | {"worker_rss_mb": 250 + 1.5 * r["records_per_batch"] / 100} for r in rows]
    leak = [r | {"worker_rss_mb": s["worker_rss_mb"] + 4.0 * r["events"] / 1e6} for r, s in zip(rows, flat)]
    assert bench_soak.slope([r["events"] / 1e6 for r in flat], [r["worker_rss_mb"] for r in flat]) > 5
    fixed = bench_soak.slope_at_fixed_batch(flat)
    assert abs(fixed["mb_per_million_events"]) < 0.01 and abs(fixed["mb_per_100_records_per_batch"] - 1.5) < 0.01
    assert abs(bench_soak.slope_at_fixed_batch(leak)["mb_per_million_events"] - 4.0) < 0.01
    assert bench_soak.slope_at_fixed_batch(flat[:3]) is None


def test_the_slope_interval_tells_flat_noise_from_a_slow_rise():
    """``slope_halfwidth``: a flat series with the soak's sample noise (sd ~4 MB) has a slope inside
    its interval of zero; the same noise on a rise of 2 MB per million events (the 10k-subscriber soaks' residue),
    sampled as densely, is told from flat. Fewer than three points give no interval."""
    import random

    rng = random.Random(7)
    xs = [5 + 7 * i / 89 for i in range(90)]                     # 90 samples over 7 M events
    flat = [210 + rng.gauss(0, 4.2) for _ in xs]
    rise = [200 + 2.0 * x + rng.gauss(0, 4.2) for x in xs]
    b_flat, h_flat = bench_soak.slope(xs, flat), bench_soak.slope_halfwidth(xs, flat)
    b_rise, h_rise = bench_soak.slope(xs, rise), bench_soak.slope_halfwidth(xs, rise)
    assert abs(b_flat) < h_flat < 1.0
    assert b_rise - h_rise > 0 and abs(b_rise - 2.0) < h_rise
    exact = [1.0 + 0.5 * x for x in xs]
    assert bench_soak.slope_halfwidth(xs, exact) < 1e-9
    assert bench_soak.slope_halfwidth([1, 2], [3, 4]) is None
    assert bench_soak.slope_halfwidth([1, 1, 1], [1, 2, 3]) is None
