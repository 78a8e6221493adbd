"""The records satmon reads and writes: event types and their decoding (``events``), ingest with its
dead letters (``ingest``), the topic registry and partitioner (``topics``), the error tree
(``errors``) and the degraded-session policy (``degraded``). Pure: imports nothing else of satmon.
"""
