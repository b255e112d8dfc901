"""Events stage: from predictions to event records (filters, zones, lifecycles, media)."""
