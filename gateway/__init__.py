"""The public HTTP API (FastAPI): authenticates, validates, and talks to the scheduler over NATS."""
