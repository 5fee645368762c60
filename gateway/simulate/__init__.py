"""Backend simulators: protocol-faithful, fast fake model servers.

Used by the quick start, as the gateway's upstreams in integration tests, and as the
backends of load tests. Each simulator is a `Handler` (`exchange.py`) on one small
HTTP/1.1 core (`connection.py`, `server.py`), programmed per request by `x-sim-*`
headers or by fault rules (`faults.py`), and observable at `/sim/stats`.

    server = await serve_openai(OpenAIOptions(tokens=8), port=0)
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x")
    ...
    await server.close()

    server = await serve_ollama(OllamaOptions(served_models=("llama3.2",)), port=0)
    client = ollama.AsyncClient(host=server.url)
"""

from gateway.simulate.exchange import Deferred, Handler, Request, Responder, Response
from gateway.simulate.faults import FaultInjector, FaultPlan, FaultRule, parse_fault
from gateway.simulate.ollama import OllamaOptions, OllamaSimulator, serve_ollama
from gateway.simulate.openai import OpenAIOptions, OpenAISimulator, serve_openai
from gateway.simulate.server import SimServer, start_server
from gateway.simulate.stats import SimStats

__all__ = [
    "Deferred",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "Handler",
    "OllamaOptions",
    "OllamaSimulator",
    "OpenAIOptions",
    "OpenAISimulator",
    "Request",
    "Responder",
    "Response",
    "SimServer",
    "SimStats",
    "parse_fault",
    "serve_ollama",
    "serve_openai",
    "start_server",
]
