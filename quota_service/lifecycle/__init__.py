"""The policy lifecycle: simulate, shadow, diff and recommend, with the same pure engine that serves requests."""
