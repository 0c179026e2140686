"""The policy lifecycle: simulate, shadow, diff, recommend: the same pure engine over recorded events."""
