"""The quick start as an Ollama user sees it: `ollama.Client(host=...)` against the demo's
own policies (no registry) in a real gateway process, the chat simulators on loopback.

The policies are read from policies/no-registry/demo.yaml with only the simulators'
addresses replaced (the demo's fixed ports would clash with other tests running).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from tests.procs import GatewayProc, Simulator, start_gateway, start_simulator

ROOT = Path(__file__).resolve().parents[2]
ASK = [{"role": "user", "content": "say something"}]


@pytest.fixture(scope="module")
def chat_sims() -> Iterator[tuple[Simulator, Simulator]]:
    champion = start_simulator("champion", "--tokens", "6")
    challenger = start_simulator("challenger", "--tokens", "6")
    yield champion, challenger
    champion.proc.stop()
    challenger.proc.stop()


@pytest.fixture(scope="module")
def demo(
    chat_sims: tuple[Simulator, Simulator], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    champion, challenger = chat_sims
    text = (ROOT / "policies" / "no-registry" / "demo.yaml").read_text()
    text = text.replace("http://127.0.0.1:9101", champion.url)
    text = text.replace("http://127.0.0.1:9102", challenger.url)
    folder = tmp_path_factory.mktemp("demo-policies")
    (folder / "demo.yaml").write_text(text)
    gw = start_gateway(folder)
    yield gw
    gw.proc.stop()
    assert "Traceback" not in gw.proc.output(), gw.proc.output()[-3000:]


def started(sim: Simulator) -> int:
    return int(sim.stats()["started"])  # type: ignore[call-overload]


def test_ollama_client_lists_the_chat_models(demo: GatewayProc) -> None:
    with ollama.Client(host=demo.url) as client:
        names = [m.model for m in client.list().models]
    # Only the Ollama routes: OpenAI, KServe and JSON routes are not Ollama models.
    assert names == ["chat-ollama"]


def test_ollama_client_chats_plain_and_streamed(
    demo: GatewayProc, chat_sims: tuple[Simulator, Simulator]
) -> None:
    champion, challenger = chat_sims
    before = started(champion), started(challenger)
    with ollama.Client(host=demo.url, headers={"x-user-id": "alice"}) as client:
        reply = client.chat(model="chat-ollama", messages=ASK)
        assert reply.done and reply.message.role == "assistant"
        assert reply.message.content.strip() and reply.model == "chat-ollama"
        assert reply.eval_count == 6  # the OpenAI backend's usage, translated

        parts = list(client.chat(model="chat-ollama", messages=ASK, stream=True))
        assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
        text = "".join(p.message.content for p in parts)
        assert text.strip() and parts[-1].eval_count == 6

        generated = client.generate(model="chat-ollama", prompt="hello")
        assert generated.done and generated.response.strip()
    # All three went to one OpenAI simulator (alice is sticky), none got lost.
    after = started(champion), started(challenger)
    assert sorted(a - b for a, b in zip(after, before, strict=True)) == [0, 3]


def test_ollama_clients_share_the_chat_canary_cohorts(
    demo: GatewayProc, chat_sims: tuple[Simulator, Simulator]
) -> None:
    champion, challenger = chat_sims
    before = started(champion), started(challenger)
    with ollama.Client(host=demo.url, headers={"x-cohort": "beta"}) as beta:
        for _ in range(3):
            assert beta.chat(model="chat-ollama", messages=ASK).done
    assert (started(champion), started(challenger)) == (before[0], before[1] + 3)
