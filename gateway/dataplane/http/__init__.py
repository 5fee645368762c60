"""The HTTP/1.1 side of the data plane: the client-facing server, the pooled upstream
client, and the wire vocabulary they share (asyncio Protocols on httptools).
"""
