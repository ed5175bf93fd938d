"""The event store: immutable, versioned job (and user, plan, frontend) events in PostgreSQL."""
