"""The MLflow model registry: the REST client, binding registry targets to
endpoints, live alias resolution, webhooks, and the `switchyard registry` CLI.
"""
