"""Downstream sinks for outbox events: the port (`base.py`) and its adapters.

`webhook.py` (Standard Webhooks over HTTP), `ndjson.py` (local files) and `amqp.py`
(RabbitMQ, aio-pika imported lazily). The delivery job hands each sink batches of
`EventEnvelope` and acts on the `DeliveryOutcome` answered per event.
"""
