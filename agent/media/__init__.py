"""The on-device media store: images and clips of events, kept for a while, served on request."""
