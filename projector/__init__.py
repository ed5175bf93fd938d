"""Read models (jobs, queue, usage, artifacts, users, plans, keys), folded from the events."""
