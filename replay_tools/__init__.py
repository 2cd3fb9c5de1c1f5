"""History as a product: time travel, audit and read-only SQL over the event log."""
