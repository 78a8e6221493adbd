"""Every Kafka topic satmon reads or writes, and the one partitioner that places keys on them.

Pure: no Kafka client is imported. The worker, the simulator's producer, replay, the view's feeder
and the tests all take topic names and partitions from here, so a name or a placement rule is
defined once.

Inputs are keyed by subscriber id and co-partitioned (partition *p* of every input topic belongs to
one worker); ``satmon-cell-windows`` is keyed by region, so a region's cells meet at one owner;
``satmon-labels`` has one partition that every worker reads in full.

>>> NETWORK_EVENTS in INPUT_TOPICS, TOPIC_STREAMS[CARE_TICKETS]
(True, 'tickets')
>>> partition_for(b"sub-00000001", 4) == partition_for(b"sub-00000001", 4)
True
>>> murmur2(b"21")   # the Java client's murmur2 of the key "21" (Kafka's own test vector)
-973932308
"""

from __future__ import annotations

NETWORK_EVENTS = "network-events"
CARE_TICKETS = "care-tickets"
APP_INTERACTIONS = "app-interactions"
RISK_SCORES = "risk-scores"
CELL_WINDOWS = "satmon-cell-windows"
ALERTS = "alerts"
DEAD_LETTER = "satmon-dead-letter"
OUTREACH = "satmon-outreach"
INCIDENTS = "incidents"
#: matured risk-model labels (``monitor.scoring.risk.LabelRecord``, no subscriber id); one partition,
#: so every worker learns them in one order and ends with the same model (docs/MODEL.md)
LABELS = "satmon-labels"

#: the three input topics, in the order the simulator writes its files
INPUT_TOPICS: tuple[str, ...] = (NETWORK_EVENTS, CARE_TICKETS, APP_INTERACTIONS)
#: input topic -> the ``stream`` of its events (also the ``stream`` label of the metrics)
TOPIC_STREAMS: dict[str, str] = {NETWORK_EVENTS: "network", CARE_TICKETS: "tickets", APP_INTERACTIONS: "app"}
#: stream -> its input topic
STREAM_TOPICS: dict[str, str] = {s: t for t, s in TOPIC_STREAMS.items()}
#: topic -> partitions; ``None`` means ``settings.partitions`` (co-partitioned with the inputs)
TOPICS: dict[str, int | None] = {
    **{t: None for t in INPUT_TOPICS},
    RISK_SCORES: None,
    CELL_WINDOWS: None,
    ALERTS: 1,
    DEAD_LETTER: 1,
    OUTREACH: 1,
    INCIDENTS: 1,
    LABELS: 1,
}

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (seed 0x9747b28c), as a signed 32-bit int like the Java client's."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (Java client, aiokafka, kafka-python)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Partitioner:
    """:func:`partition_for` over a fixed partition count, with a bounded cache (keys repeat: a
    subscriber sends many events, a region many windows).

    >>> p = Partitioner(4)
    >>> p(b"north") == partition_for(b"north", 4)
    True
    """

    __slots__ = ("partitions", "max_cached", "_cache")

    def __init__(self, partitions: int, *, max_cached: int = 1_000_000) -> None:
        self.partitions = partitions
        self.max_cached = max_cached
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            p = self._cache[key] = partition_for(key, self.partitions)
        return p
