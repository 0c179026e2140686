"""The pure core: policy model, loading, compilation and the decision engine.

Nothing under this package except ``loader`` imports yaml; nothing imports grpc or redis.
"""
