"""The Faust worker shell, the only package that imports faust and aiokafka: the app (``app``), the
batched consumer path (``fastpath``), Kafka helpers (``kafka``), the embedded broker (``broker``),
its watch (``brokerwatch``) and the Faust-table store (``tablestore``).
"""
