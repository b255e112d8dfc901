"""edge-agent: cameras and microphones to events, composite events and MQTT, durably."""

__version__ = "0.1.0"
