"""Request tracing: W3C trace context, sampling, OTLP/HTTP export and the JSON access log.

Nothing here imports the data plane; the exchange calls in (see `tracer.py`), and only
a sampled request makes span objects. The exporter and the access log write off the
request path, through bounded buffers whose losses are counted.
"""
