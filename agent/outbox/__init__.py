"""Outbox stage: a durable, bounded disk queue between event producers and MQTT delivery."""
