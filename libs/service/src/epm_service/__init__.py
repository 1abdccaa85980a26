"""epm_service: what every EPM service shares, written once.

- ``settings``: flags + ``EPM_*`` environment.
- ``jsonlog``: structured JSON logs with tenant/request/event ids.
- ``bus``: NATS/JetStream connection with reconnect.
- ``streams``: ``epm streams apply`` and the start-up check.
- ``publisher``: publish_async and optimistic-concurrency ``append``.
- ``projection``: SQLite projections with checkpoint + idempotency in one transaction.
- ``deadletter``: the EPM_DLQ path with the reason in headers.
- ``rpc``: commands over NATS request/reply, one handler table per service.
- ``health``: /healthz, /readyz, /metrics for every process.
- ``runtime``: wires the above into a runnable service.
"""
