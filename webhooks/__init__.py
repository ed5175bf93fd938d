"""The webhook service: tells users' URLs about their jobs, signed as Standard Webhooks says, with
retries that survive restarts, and never to an address inside the network (docs/webhooks.md)."""
