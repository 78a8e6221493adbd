"""Metrics fed the way a worker feeds them: :func:`feed_worker_like` runs raw records through the
worker's pipeline (:class:`monitor.pipeline.RiskPipeline`, its metrics wired by
:func:`monitor.observability.metrics.watch_pipeline`, as the worker's are) in consumer-shaped batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from monitor.records.events import decode
from monitor.observability.metrics import Metrics, watch_pipeline
from monitor.pipeline import Outputs, Record, RiskPipeline, TopicPartition
from monitor.records.topics import RISK_SCORES, Partitioner

PARTITIONS = 4


def worker_pipeline(m: Metrics) -> RiskPipeline:
    """A pipeline over in-memory stores reporting to ``m`` as the worker's does (a checkpoint every
    batch, so the checkpoint series exist from the first one)."""
    pipeline = RiskPipeline.in_memory(checkpoint_interval_s=0.0)
    watch_pipeline(m, pipeline)
    return pipeline


def feed_worker_like(m: Metrics, records: Iterable[tuple[str, bytes, bytes]], *, batch: int = 2000,
                     partitions: int = PARTITIONS, pipeline: RiskPipeline | None = None) -> dict[str, Any]:
    """Feed raw ``(topic, key, value)`` records to ``pipeline`` (a new :func:`worker_pipeline` by
    default) in batches of ``batch`` records, partitioned as producers key them. Returns the
    pipeline, its ingest and cores, the scores it emitted and the next offset per topic-partition."""
    pipeline = pipeline or worker_pipeline(m)
    partition_of = Partitioner(partitions)
    offsets: dict[tuple[str, int], int] = {}
    scores = []
    pending: dict[TopicPartition, list[Record]] = {}
    out = Outputs()

    def flush() -> None:
        pipeline.handle(pending, out)
        for (topic, _p), recs in out.take().items():
            if topic == RISK_SCORES:
                scores.extend(decode("risk_score.v1", v) for _k, v in recs if v is not None)
        pending.clear()

    count = 0
    for topic, key, value in records:
        p = partition_of(key)
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        pending.setdefault(TopicPartition(topic, p), []).append(Record(off, key, value))
        count += 1
        if count % batch == 0:
            flush()
    if pending:
        flush()
    m.set_partitions(range(partitions))
    return {"pipeline": pipeline, "ingest": pipeline.ingest, "cores": pipeline.cores, "scores": scores,
            "offsets": offsets}
