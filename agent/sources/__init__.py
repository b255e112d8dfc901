"""Sources: cameras, microphones and the synthetic source; they produce frames, audio, events."""
