"""MQTT stage: delivery from the outbox, status with last will, stats, commands."""
