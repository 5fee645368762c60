"""Routing policies: the document's schema, loading and validation, compiling into
the runtime snapshot, diff/explain/reference, and reloading from files or a ConfigMap.
"""
