"""Shadow traffic: sampled copies of requests to shadow versions, their answers
compared with the primary's off the request path, and the comparison log.
"""
