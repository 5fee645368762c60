"""KServe v2 over gRPC: `inference.GRPCInferenceService` as Triton serves it.

ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig,
RepositoryIndex, ModelInfer (typed `contents` or `raw_input_contents` in, always
`raw_output_contents` out, as Triton answers) and ModelStreamInfer (a decoupled model
streams N responses per request; a request error is an `error_message` on the stream,
which stays open, as in Triton). Other methods answer UNIMPLEMENTED.

Built on grpcio's asyncio server and the message classes shipped in
`tritonclient.grpc.service_pb2`; handlers are registered by hand (not through the
generated servicer) so a response can also be raw bytes, which is how the garbage
fault sends something that is not a protobuf. Faults come from `x-sim-*` metadata
keys or the fault rules, like the HTTP headers; simulated HTTP statuses map to the
gRPC codes a gateway would map them to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import grpc
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb

from gateway.kserve_types import CONTENTS_FIELDS
from gateway.simulate.faults import GARBAGE, FaultInjector, FaultPlan, FaultSpecError
from gateway.simulate.kserve_http import server_metadata
from gateway.simulate.kserve_models import (
    KServeStats,
    ModelNotFound,
    ModelRepository,
    SimModel,
    request_tag,
)
from gateway.simulate.kserve_tensor import (
    Tensor,
    TensorError,
    check_shape,
    element_count,
    pack,
    unpack,
)

SERVICE: Final = "inference.GRPCInferenceService"
_MAX_MESSAGE: Final = 64 * 1024 * 1024
_DECOUPLED_INFER: Final = "ModelInfer RPC doesn't support models with decoupled transaction policy"
# grpcio's server cannot reset the TCP connection under a call; the reset fault ends the
# call as a reset would reach a client through a proxy: UNAVAILABLE.
_RESET: Final = "simulated connection reset"


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status for an HTTP error status (the usual gateway mapping)."""
    codes = {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        403: grpc.StatusCode.PERMISSION_DENIED,
        404: grpc.StatusCode.NOT_FOUND,
        409: grpc.StatusCode.ABORTED,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        499: grpc.StatusCode.CANCELLED,
        501: grpc.StatusCode.UNIMPLEMENTED,
        502: grpc.StatusCode.UNAVAILABLE,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    code = codes.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INTERNAL if http_status >= 500 else grpc.StatusCode.FAILED_PRECONDITION


def _serialize(message: Any) -> bytes:
    if isinstance(message, bytes):
        return message  # the garbage fault: not a protobuf at all
    data: bytes = message.SerializeToString()
    return data


class KServeGrpc:
    """The servicer: one coroutine per RPC, sharing models, counters and faults with HTTP."""

    def __init__(
        self,
        repository: ModelRepository,
        stats: KServeStats,
        faults: FaultInjector,
        latency_s: float,
        stream_responses: int,
        name: str,
    ) -> None:
        self._repository = repository
        self._stats = stats
        self._faults = faults
        self._latency_s = latency_s
        self._stream_responses = stream_responses
        self._name_metadata = (("x-sim-name", name),)
        meta = server_metadata()
        self._server_metadata = pb.ServerMetadataResponse(
            name=str(meta["name"]), version=str(meta["version"]), extensions=meta["extensions"]
        )

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler serving `inference.GRPCInferenceService`."""

        def unary(method: Callable[..., Any], request: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=request.FromString, response_serializer=_serialize
            )

        handlers = {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": unary(self.model_config, pb.ModelConfigRequest),
            "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest),
            "ModelInfer": unary(self.model_infer, pb.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=_serialize,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # -- health and metadata -----------------------------------------------------------

    async def server_live(self, request: Any, context: Any) -> Any:
        """Always live while the process runs."""
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        """Ready unless a test set a failing health status through `/sim/faults`."""
        return pb.ServerReadyResponse(ready=self._faults.health_status == 200)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        """Name, version and extensions, as `GET /v2` answers."""
        return self._server_metadata

    async def model_ready(self, request: Any, context: Any) -> Any:
        """Ready when the model version is served and the server is healthy."""
        try:
            self._repository.resolve(request.name, request.version)
        except TensorError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._faults.health_status == 200)

    async def model_metadata(self, request: Any, context: Any) -> Any:
        """Model metadata, or INVALID_ARGUMENT / NOT_FOUND like Triton."""
        model, _ = await self._resolve(request.name, request.version, context)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=list(model.versions),
            platform="python",
            inputs=[_tensor_metadata(spec) for spec in model.inputs],
            outputs=[_tensor_metadata(spec) for spec in model.outputs],
        )

    async def model_config(self, request: Any, context: Any) -> Any:
        """The model configuration (decoupled policy included)."""
        model, _ = await self._resolve(request.name, request.version, context)
        config = config_pb.ModelConfig(
            name=model.name,
            backend="python",
            max_batch_size=0,
            input=[_config_input(spec) for spec in model.inputs],
            output=[_config_output(spec) for spec in model.outputs],
            model_transaction_policy=config_pb.ModelTransactionPolicy(decoupled=model.decoupled),
        )
        return pb.ModelConfigResponse(config=config)

    async def repository_index(self, request: Any, context: Any) -> Any:
        """Every model version, READY."""
        index = pb.RepositoryIndexResponse()
        for item in self._repository.index():
            index.models.add(name=item["name"], version=item["version"], state=item["state"])
        return index

    # -- inference ---------------------------------------------------------------------

    async def model_infer(self, request: Any, context: Any) -> Any:
        """One request, one response; faults from metadata or rules."""
        stats = self._stats
        key = stats.begin(f"grpc:/{SERVICE}/ModelInfer")
        outcome: Any = "cancelled"  # unless we get to the end: the client left
        try:
            plan = await self._plan(context, key)
            model, version = await self._resolve(
                request.model_name, request.model_version, context, infer=True
            )
            if model.decoupled:
                outcome = "completed"
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, _DECOUPLED_INFER)
            stats.count_model(model.name, version)
            stats.count_faults(plan)
            await context.send_initial_metadata(self._name_metadata)
            await self._delay(plan)
            if plan.hang:
                await asyncio.get_running_loop().create_future()
            if plan.reset:
                outcome = "aborted"
                await context.abort(grpc.StatusCode.UNAVAILABLE, _RESET)
            if plan.garbage:
                outcome = "aborted"
                return GARBAGE
            if plan.status is not None:
                outcome = "completed"
                await context.abort(grpc_code(plan.status), f"simulated failure: {plan.status}")
            if plan.cut_after is not None:
                outcome = "aborted"
                await context.abort(grpc.StatusCode.UNAVAILABLE, "simulated connection cut")
            try:
                response = self._infer(request, model, version, self._single(model))[0]
            except TensorError as exc:
                outcome = "completed"
                await context.abort(grpc_code(exc.status), str(exc))
            outcome = "completed"
            return response
        finally:
            stats.end(key, outcome)

    async def model_stream_infer(self, requests: AsyncIterator[Any], context: Any) -> Any:
        """Bidirectional stream: each request answered by 1 response, or N for a
        decoupled model; a bad request gets an `error_message` and the stream goes on."""
        stats = self._stats
        key = stats.begin(f"grpc:/{SERVICE}/ModelStreamInfer")
        outcome: Any = "cancelled"
        try:
            plan = await self._plan(context, key)
            stats.count_faults(plan)
            await context.send_initial_metadata(self._name_metadata)
            if plan.hang:
                await asyncio.get_running_loop().create_future()
            if plan.reset:
                await self._delay(plan)
                outcome = "aborted"
                await context.abort(grpc.StatusCode.UNAVAILABLE, _RESET)
            if plan.garbage:
                await self._delay(plan)
                outcome = "aborted"
                yield GARBAGE
                return
            if plan.status is not None:
                await self._delay(plan)
                outcome = "completed"
                await context.abort(grpc_code(plan.status), f"simulated failure: {plan.status}")
            count = self._stream_responses if plan.tokens is None else plan.tokens
            gap = plan.chunk_delay_s or 0.0
            sent = 0
            async for request in requests:
                try:
                    model, version = self._repository.resolve(
                        request.model_name, request.model_version
                    )
                    stats.count_model(model.name, version)
                    responses = self._stream_responses_for(request, model, version, count)
                except TensorError as exc:
                    yield pb.ModelStreamInferResponse(error_message=str(exc))
                    continue
                await self._delay(plan)
                for index, response in enumerate(responses):
                    if plan.cut_after is not None and sent >= plan.cut_after:
                        outcome = "aborted"
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "simulated stream cut")
                    if index and gap > 0:
                        await asyncio.sleep(gap)
                    yield pb.ModelStreamInferResponse(infer_response=response)
                    sent += 1
                    stats.stream_responses += 1
            if plan.cut_after is not None:
                # A cut stream never ends cleanly, however few responses it had.
                outcome = "aborted"
                await context.abort(grpc.StatusCode.UNAVAILABLE, "simulated stream cut")
            outcome = "completed"
        finally:
            stats.end(key, outcome)

    def _stream_responses_for(
        self, request: Any, model: SimModel, version: str, count: int
    ) -> list[Any]:
        if not model.decoupled:
            return self._infer(request, model, version, self._single(model))
        final = request.parameters.get("triton_enable_empty_final_response")
        responses = self._infer(
            request, model, version, lambda v, i, tag: model.stream(v, i, count, tag)
        )
        if final is not None and final.bool_param:
            for response in responses:
                response.parameters["triton_final_response"].bool_param = False
            last = pb.ModelInferResponse(
                model_name=model.name, model_version=version, id=request.id
            )
            last.parameters["triton_final_response"].bool_param = True
            responses.append(last)
        return responses

    @staticmethod
    def _single(model: SimModel) -> Callable[[str, dict[str, Tensor], str], list[list[Tensor]]]:
        return lambda version, inputs, tag: [model.infer(version, inputs, tag)]

    def _infer(
        self,
        request: Any,
        model: SimModel,
        version: str,
        run: Callable[[str, dict[str, Tensor], str], list[list[Tensor]]],
    ) -> list[Any]:
        """Decode, run, encode: one ModelInferResponse per set of outputs `run` gives."""
        tag = request_tag(request.id)
        inputs = _decode_inputs(request, model, tag)
        wanted = [model.output_spec(item.name, tag).name for item in request.outputs]
        responses = []
        for outputs in run(version, inputs, tag):
            response = pb.ModelInferResponse(
                model_name=model.name, model_version=version, id=request.id
            )
            for tensor in outputs:
                if wanted and tensor.name not in wanted:
                    continue
                response.outputs.add(
                    name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
                )
                response.raw_output_contents.append(pack(tensor.datatype, tensor.values))
            responses.append(response)
        return responses

    # -- helpers -----------------------------------------------------------------------

    async def _plan(self, context: Any, path: str = "grpc") -> FaultPlan:
        metadata: Mapping[str, str] = {
            key: value for key, value in context.invocation_metadata() if isinstance(value, str)
        }
        self._stats.saw_headers(path, metadata)
        try:
            return self._faults.plan(metadata)
        except FaultSpecError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # not reached: abort raises

    async def _resolve(
        self, name: str, version: str, context: Any, *, infer: bool = False
    ) -> tuple[SimModel, str]:
        try:
            return self._repository.resolve(name, version)
        except TensorError as exc:
            # Real Triton answers an unknown model's ModelInfer with NOT_FOUND (seen in
            # tests/backends/triton) but its metadata and ready calls as invalid.
            status = 404 if infer and isinstance(exc, ModelNotFound) else exc.status
            await context.abort(grpc_code(status), str(exc))
            raise  # not reached: abort raises

    async def _delay(self, plan: FaultPlan) -> None:
        latency = self._latency_s if plan.latency_s is None else plan.latency_s
        if latency > 0:
            await asyncio.sleep(latency)


def _decode_inputs(request: Any, model: SimModel, tag: str) -> dict[str, Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"{tag}expected {len(request.inputs)} raw_input_contents, got {len(raw)}: use raw "
            "contents for every input or for none"
        )
    inputs: dict[str, Tensor] = {}
    for index, item in enumerate(request.inputs):
        shape = check_shape(list(item.shape), f"input '{item.name}'")
        spec = model.input_spec(item.name, item.datatype, shape, tag)
        if item.name in inputs:
            raise TensorError(f"{tag}input '{item.name}' already exists in request")
        count = element_count(shape)
        if raw:
            values: Any = unpack(spec.datatype, raw[index], count, item.name)
        else:
            values = list(getattr(item.contents, CONTENTS_FIELDS[spec.datatype]))
            if len(values) != count:
                raise TensorError(
                    f"{tag}unexpected number of elements {len(values)} in the contents of "
                    f"input '{item.name}', expecting {count}"
                )
        inputs[item.name] = Tensor(item.name, spec.datatype, shape, values)
    return inputs


def _tensor_metadata(spec: Any) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )


def _config_input(spec: Any) -> Any:
    data_type = config_pb.DataType.Value(f"TYPE_{spec.datatype}")
    return config_pb.ModelInput(name=spec.name, data_type=data_type, dims=list(spec.shape))


def _config_output(spec: Any) -> Any:
    data_type = config_pb.DataType.Value(f"TYPE_{spec.datatype}")
    return config_pb.ModelOutput(name=spec.name, data_type=data_type, dims=list(spec.shape))


class GrpcServer:
    """A running gRPC side of the KServe simulator."""

    def __init__(self, server: Any, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """`host:port` (IPv6 hosts in brackets), as gRPC clients take it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def close(self) -> None:
        """Stop at once, cancelling calls in flight."""
        await self._server.stop(None)


async def start_grpc(
    repository: ModelRepository,
    stats: KServeStats,
    faults: FaultInjector,
    *,
    host: str,
    port: int,
    latency_s: float,
    stream_responses: int,
    name: str,
) -> GrpcServer:
    """Listen on `host:port` (0: free port) and serve the KServe gRPC service."""
    servicer = KServeGrpc(repository, stats, faults, latency_s, stream_responses, name)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.so_reuseport", 0),  # a busy port must fail, not be shared
        ]
    )
    server.add_generic_rpc_handlers((servicer.handler(),))
    bound = server.add_insecure_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return GrpcServer(server, host, bound)
