"""The gRPC shell around :class:`quota_service.quotas.Quotas`: thin servicers, auth, app factory."""
