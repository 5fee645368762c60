"""Backend state gathered off the request path: active health checks and load
scraped from the model servers' own metrics.
"""
