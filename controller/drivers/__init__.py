"""Runtime drivers: one interface (``base.Driver``), idempotent methods."""
