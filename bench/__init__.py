"""Side-by-side benchmarks: quota-service against a no-op gRPC floor and a design floor
(the no-op server plus one reserve-shaped EVALSHA per call). Run ``make bench``."""
