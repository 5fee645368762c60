"""A real vLLM OpenAI server on the CPU, as a child process of the tests or the load test.

vLLM lives in its own environment (.venv-vllm, made by install.sh) because its pins clash
with the gateway's; this module runs in the gateway's environment and only starts
processes from that one. Nothing is downloaded at run time: the model is built locally
(tiny_model.py) and the server runs with the Hugging Face hub offline and vLLM's usage
reporting off (this machine may only reach package registries).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
VENV = Path(os.environ.get("SWITCHYARD_VLLM_VENV", str(REPO / ".venv-vllm")))
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed-stamp"
SERVED_MODEL = "tiny"
MAX_MODEL_LEN = 512
# Expected 30-60 s on 2 shared cores; the bound leaves room for a loaded CI machine but
# still ends a hung start long before the test timeout.
START_TIMEOUT_S = 180.0


def environment_problem() -> str | None:
    """Why the vLLM environment cannot be used, or None when install.sh completed it."""
    if not STAMP.is_file() or not PYTHON.exists():
        return (
            f"the vLLM environment {VENV} is missing or incomplete: "
            "run `make vllm-env` (bash tests/backends/vllm/install.sh)"
        )
    return None


def server_env() -> dict[str, str]:
    """Environment for every vLLM-side process: offline, no telemetry, small KV cache."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",  # vLLM otherwise reports usage to a server on the internet
        DO_NOT_TRACK="1",
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB; the default (4+) is wasted on a 512-token model
        PYTHONUNBUFFERED="1",
    )
    return env


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, one model, on the CPU.

    The server runs in its own process group: vLLM forks an engine-core and a worker
    process, and a kill that reached only the API server would leave them holding ~2 GB.
    """

    model_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0  # seconds the last start took, for the stage's report

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
            *self.extra_args,
        ]

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and wait (bounded) until `/health` answers 200."""
        begun = time.monotonic()
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command(),
                env={**server_env(), **self.extra_env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_healthy(begun + timeout)
        except BaseException:
            self.kill()
            raise
        self.started_s = time.monotonic() - begun

    def _wait_healthy(self, deadline: float) -> None:
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"vLLM exited during start-up:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.5)
        raise RuntimeError(f"vLLM was not healthy within the bound:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ensure_running(self) -> None:
        """Restart the server if a test killed it (keeps test order free)."""
        if not self.alive():
            self.start()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or an OOM kill would."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (vLLM shuts its engine down), then SIGKILL whatever is left."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()  # the group: children that outlived the API server go too

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def metric(self, name: str) -> float:
        """Sum of the samples of one metric in vLLM's `/metrics` (all label sets)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in {"{", " "}:
                total += float(line.rpartition(" ")[2])
        return total
