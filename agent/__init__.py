"""edge-agent: cameras and microphones to events, composite events and MQTT, durably."""

__version__ = "0.2.0"
