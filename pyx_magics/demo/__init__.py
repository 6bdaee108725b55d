"""The demo incident: order 1042 is PAID in the database, but the cache still serves PENDING.

Why (what the demo notebook proves): the ``cache-updater`` consumer group lags on partition 1 of
``order-events``, so the ``order.paid`` event for 1042 was never applied; the cache entry is still in
serialization version 1 (the current writer uses ``schema_version: 2``); and the payment service
produced the ``order.paid`` event twice (a duplicate ``event_id``).
"""
