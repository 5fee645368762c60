"""A real vLLM OpenAI server on the CPU, as a child process of the tests or the load test.

vLLM lives in its own environment (.venv-vllm, made by install.sh) because its pins clash
with the gateway's; this module runs in the gateway's environment and only starts
processes from that one. Nothing is downloaded at run time: the model is built locally
(tiny_model.py) and the server runs with the Hugging Face hub offline and vLLM's usage
reporting off (this machine may only reach package registries).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

from tests.backends import proc
from tests.backends.proc import BackendServer, child_env, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
VENV = Path(os.environ.get("SWITCHYARD_VLLM_VENV", str(REPO / ".venv-vllm")))
PYTHON = VENV / "bin" / "python"
SERVED_MODEL = "tiny"
MAX_MODEL_LEN = 512
# Expected 30-60 s on 2 shared cores; the bound leaves room for a loaded CI machine but
# still ends a hung start long before the test timeout.
START_TIMEOUT_S = 180.0


def environment_problem() -> str | None:
    """Why the vLLM environment cannot be used, or None when install.sh completed it."""
    return proc.environment_problem(VENV, PYTHON, "vLLM", "vllm")


def server_env() -> dict[str, str]:
    """Environment for every vLLM-side process: offline, no telemetry, small KV cache."""
    return child_env(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",  # vLLM otherwise reports usage to a server on the internet
        DO_NOT_TRACK="1",
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB; the default (4+) is wasted on a 512-token model
    )


def build_tiny_model(out: Path, *options: str, timeout: float = 180.0) -> Path:
    """Write the tiny random Llama into `out` (see tiny_model.py) and return `out`."""
    done = subprocess.run(
        [str(PYTHON), str(HERE / "tiny_model.py"), str(out), *options],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{done.stdout}\n{done.stderr}")
    return out


def build_tiny_lora(base: Path, out: Path, *options: str, timeout: float = 120.0) -> Path:
    """Write a random rank-8 LoRA adapter for the tiny model `base` into `out` (see
    tiny_lora.py) and return `out`."""
    done = subprocess.run(
        [str(PYTHON), str(HERE / "tiny_lora.py"), str(base), str(out), *options],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the tiny LoRA adapter failed:\n{done.stdout}\n{done.stderr}")
    return out


@dataclass
class VllmServer(BackendServer):
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, one model, on the CPU.

    vLLM forks an engine-core and a worker process; the process group (BackendServer)
    keeps a kill from leaving them holding ~2 GB.
    """

    name: ClassVar[str] = "vLLM"
    start_timeout_s: ClassVar[float] = START_TIMEOUT_S

    model_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    # LoRA adapters served next to the base model, {name: adapter dir}: a request picks
    # one by naming it in `model`. Empty (the default) starts vLLM without LoRA support.
    lora_modules: dict[str, Path] = field(default_factory=dict)
    max_lora_rank: int = 8  # one of vLLM's allowed ranks (1, 8, 16, 32, ...)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # No --device flag exists (the CPU platform is detected from the vllm-cpu build),
        # and the `vllm` console script fails on the distribution name "vllm-cpu".
        return [
            str(PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            SERVED_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--enforce-eager",  # no torch.compile: saves minutes of start-up on the CPU
            *self.lora_args(),
            *self.extra_args,
        ]

    def lora_args(self) -> list[str]:
        """`--enable-lora` and the adapters, all loaded at once; none without adapters."""
        if not self.lora_modules:
            return []
        modules = [f"{name}={path}" for name, path in self.lora_modules.items()]
        return [
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            # One slot more than there are adapters, so one stays empty. vLLM's CPU LoRA
            # ops (0.32) index the adapter slots with a base-model token's -1 instead of
            # skipping it, so in a batch mixing base and adapter requests the base ones
            # get the LAST slot's adapter applied (vllm-project/vllm PR #48421); an empty
            # last slot adds nothing. With --max-loras 1 (the default) and one adapter,
            # the base model's answers turn into the adapter's whenever they share a batch.
            "--max-loras",
            str(len(modules) + 1),
            "--lora-modules",
            *modules,
        ]

    def env(self) -> dict[str, str]:
        return {**server_env(), **self.extra_env}

    def waiting_for(self, client: httpx.Client) -> str | None:
        if client.get(f"{self.url}/health").status_code == 200:
            return None
        return "/health to answer 200"

    def metric(self, name: str) -> float:
        """Sum of the samples of one metric in vLLM's `/metrics` (all label sets)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in {"{", " "}:
                total += float(line.rpartition(" ")[2])
        return total
