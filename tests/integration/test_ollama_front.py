"""Real `ollama` and `openai` clients through the gateway, across protocols.

ollama client -> Ollama front -> Ollama backend (pass-through) or OpenAI backend
(translated); openai client -> OpenAI front -> Ollama backend (translated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import ollama
import openai
import pytest

from tests.procs import GatewayProc, Simulator, start_simulator


@pytest.fixture(scope="module")
def ollama_sim() -> Iterator[Simulator]:
    sim = start_simulator("olla", "--tokens", "5", kind="ollama")
    yield sim
    sim.proc.stop()


def route(name: str, protocol: str, variants: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {name}
protocol: {protocol}
variants:
{variants}
"""


@pytest.fixture
def gw(
    gateway: Callable[..., GatewayProc],
    sims: tuple[Simulator, Simulator],
    ollama_sim: Simulator,
) -> GatewayProc:
    return gateway(
        route("native", "ollama", f'  - {{name: main, endpoints: ["{ollama_sim.url}"]}}'),
        route(
            "bridged",
            "ollama",
            f'  - {{name: main, endpoints: ["{sims[0].url}"], backend_protocol: openai}}',
        ),
        route(
            "mixed",
            "openai",
            f'  - {{name: champion, weight: 50, endpoints: ["{sims[0].url}"]}}\n'
            f'  - {{name: challenger, weight: 50, endpoints: ["{ollama_sim.url}"],'
            " backend_protocol: ollama}",
        ),
    )


@pytest.mark.parametrize("model", ["native", "bridged"])
def test_ollama_client_chat_generate_embed(gw: GatewayProc, model: str) -> None:
    client = ollama.Client(host=gw.url)
    reply = client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.eval_count and reply.eval_count > 0
    parts = list(
        client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)
    generated = client.generate(model=model, prompt="say", stream=False)
    assert generated.response and generated.done
    streamed = list(client.generate(model=model, prompt="say", stream=True))
    assert streamed[-1].done
    emb = client.embed(model=model, input=["a", "b"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 0
    client._client.close()


async def test_async_ollama_client_and_tags(gw: GatewayProc) -> None:
    client = ollama.AsyncClient(host=gw.url)
    stream = await client.chat(
        model="bridged", messages=[{"role": "user", "content": "x"}], stream=True
    )
    parts = [p async for p in stream]
    assert parts[-1].done
    tags = await client.list()
    assert sorted(m.model or "" for m in tags.models) == ["bridged", "native"]
    await client._client.aclose()


def test_openai_client_on_a_route_split_across_protocols(gw: GatewayProc) -> None:
    seen = set()
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        for i in range(30):
            raw = client.chat.completions.with_raw_response.create(
                model="mixed", messages=[{"role": "user", "content": f"q{i}"}]
            )
            seen.add(raw.headers["x-switchyard-variant"])
            assert raw.parse().choices[0].message.content
            stream = client.chat.completions.create(
                model="mixed",
                messages=[{"role": "user", "content": "s"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            assert chunks[-1].usage is not None
            assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert seen == {"champion", "challenger"}


def test_ollama_errors_and_unknown_model(gw: GatewayProc) -> None:
    client = ollama.Client(host=gw.url)
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    assert "nope" in str(info.value.error)
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="mixed", messages=[])  # an OpenAI route
    assert info.value.status_code == 400
    client._client.close()
    r = httpx.post(
        f"{gw.url}/api/chat",
        json={"model": "bridged", "messages": []},
        headers={"x-sim-status": "503"},
    )
    assert r.status_code == 503 and isinstance(r.json()["error"], str)


def test_cut_stream_through_translation_raises(gw: GatewayProc) -> None:
    # Headers reach the OpenAI simulator untouched: it cuts the stream after 2 chunks.
    client = ollama.Client(host=gw.url, headers={"x-sim-cut-after": "2"})
    got: list[object] = []

    def consume() -> None:
        for part in client.chat(
            model="bridged",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            options={"num_predict": 20},
        ):
            got.append(part)

    with pytest.raises((ollama.ResponseError, httpx.HTTPError)):
        consume()
    client._client.close()
    assert got  # some tokens arrived before the cut...
    assert not any(getattr(p, "done", False) for p in got)  # ...and never a clean finish
