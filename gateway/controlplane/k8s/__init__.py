"""Kubernetes: the API client, list-and-watch, ConfigMap policies, EndpointSlice
discovery for `k8s://` pools, and Leases for single-writer jobs.
"""
