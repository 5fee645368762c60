"""The KServe v2 gRPC front (`inference.GRPCInferenceService`) on grpc.aio: calls,
streams, the protobuf wire format on raw bytes, and shadow copies of ModelInfer.
"""
