"""The single-writer scheduler: consumes commands, decides, appends events, dispatches."""
