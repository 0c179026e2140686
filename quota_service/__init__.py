"""quota-service: ALLOW / WARN / DENY before every paid provider call."""

__version__ = "0.1.0"
