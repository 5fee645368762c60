"""Quotas across workers and replicas: the lease task sharing limits through Redis."""
