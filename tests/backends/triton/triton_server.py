"""Real NVIDIA Triton (from nvidia-pytriton) serving the fraud detector on the CPU.

Run with the Triton environment's interpreter (.venv-triton, made by install.sh):

    .venv-triton/bin/python tests/backends/triton/triton_server.py \
        --http-port 8000 --grpc-port 8001 --workspace /tmp/triton-ws

Three models, all on the same `features` FP32 [-1, 4] input (see fraud_model.py):
- fraud-champion and fraud-challenger: the two versions of the detector (different
  weights), `probability` FP32 [-1, 1] out;
- fraud-stream: decoupled (answers through ModelStreamInfer only), the champion's
  weights, one response per row of the request, each with that row's `probability`
  FP32 [1, 1] and its row number `index` INT32 [1].

`batching=False`: the tensors' shapes are the whole request shapes, as a client sends
them (pytriton's `max_batch_size=0` path misreads such configs). Prints one line
"triton-fraud ready http=PORT grpc=PORT" once every model is loaded, and serves until
SIGTERM or SIGINT, when pytriton stops tritonserver and removes its workspace.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fraud_model beside this file

from fraud_model import (
    CHALLENGER,
    CHAMPION,
    FEATURES,
    INDEX,
    INPUT,
    MODELS,
    OUTPUT,
    STREAM,
    Logistic,
)

Request = dict[str, np.ndarray]


def scorer(model: Logistic) -> Any:
    """An inference callable for one model version: one probability per row."""

    def infer(requests: list[Request]) -> list[dict[str, np.ndarray]]:
        return [{OUTPUT: model.predict(request[INPUT])} for request in requests]

    return infer


def streamer(model: Logistic) -> Any:
    """A decoupled inference callable: yields one response per row of the request."""

    def infer(requests: list[Request]) -> Any:
        # Without a dynamic batcher Triton hands the backend one request per call; a
        # decoupled generator must answer every request in each yield, so it would not
        # stream rows of several requests at once anyway.
        if len(requests) != 1:
            raise ValueError(f"fraud-stream takes one request per call, got {len(requests)}")
        rows = np.asarray(requests[0][INPUT], dtype=np.float32).reshape(-1, len(FEATURES))
        for i, p in enumerate(model.predict(rows)):
            yield [{OUTPUT: p.reshape(1, 1), INDEX: np.array([i], np.int32)}]

    return infer


def use_this_libpython() -> None:
    """Put this interpreter's lib directory first in LD_LIBRARY_PATH for tritonserver.

    pytriton hands tritonserver (and through it the Python backend stub) a copy of this
    process's environment. Without this, the stub can resolve libpython3.X.so from the
    system (Debian's) instead of this interpreter's, and model start-up fails inside
    multiprocessing with "'_thread.RLock' object has no attribute '_recursion_count'".
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    rest = os.environ.get("LD_LIBRARY_PATH", "")
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{rest}" if rest else libdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args()
    use_this_libpython()

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_metrics=False,  # one port fewer to pick; the tests do not scrape Triton
        log_verbose=args.log_verbose,
    )
    inputs = [Tensor(name=INPUT, dtype=np.float32, shape=(-1, len(FEATURES)))]
    with Triton(config=config, workspace=args.workspace) as triton:
        for name in (CHAMPION, CHALLENGER):
            triton.bind(
                model_name=name,
                infer_func=scorer(MODELS[name]),
                inputs=inputs,
                outputs=[Tensor(name=OUTPUT, dtype=np.float32, shape=(-1, 1))],
                config=ModelConfig(batching=False),
                strict=True,
            )
        triton.bind(
            model_name=STREAM,
            infer_func=streamer(MODELS[CHAMPION]),
            inputs=inputs,
            outputs=[
                Tensor(name=OUTPUT, dtype=np.float32, shape=(1, 1)),
                Tensor(name=INDEX, dtype=np.int32, shape=(1,)),
            ],
            config=ModelConfig(batching=False, decoupled=True),
            strict=True,
        )

        # SIGTERM (the tests' stop) becomes the KeyboardInterrupt that serve() handles
        # by stopping tritonserver and cleaning the workspace; the default action would
        # kill this process and leave tritonserver and the workspace behind.
        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
        triton.connect()  # returns once tritonserver is up and every model is loaded
        print(f"triton-fraud ready http={args.http_port} grpc={args.grpc_port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
