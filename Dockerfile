# Slim, non-root image running `switchyard serve`, with the Kubernetes extra (ConfigMap
# policies, k8s:// pools, Leases). deploy/ runs it with a read-only root filesystem.
# Build: docker build -t switchyard .   Run: docker run -p 8080:8080 -p 8081:8081 switchyard
# Expected size, an estimate (no container engine on the build machines): python:3.11-slim
# (~130 MB) plus the packages as a venv measured them installed, bytecode included: ~40 MB
# for the gateway and its runtime dependencies, ~150 MB more for the Kubernetes extra (the
# kubernetes client alone ~125 MB). So ~320 MB uncompressed with it, ~170 MB with
# `--build-arg EXTRAS=` (no Kubernetes extra). See README, "Running on Kubernetes".
# COMPILE=1 (default) builds the request path with mypyc (`switchyard compile`, about a
# third less CPU per request); the runtime image needs no compiler for it. COMPILE=0
# ships the pure-Python request path. Not built here (no container engine on the build
# machines): the same steps run in `make compile` and CI.
ARG EXTRAS=k8s
ARG COMPILE=1

FROM python:3.11-slim AS build
ARG EXTRAS
ARG COMPILE
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"
# Compiled against the installed dependencies' types, into /src/gateway/_compiled; its
# manifest pins it to these sources, which are the wheel's.
RUN mkdir -p gateway/_compiled && if [ "$COMPILE" = 1 ]; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
      && pip install --no-cache-dir /wheels/*.whl "mypy>=1.11" "setuptools>=69" \
      && python -m gateway compile; \
    fi

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app switchyard
WORKDIR /app
COPY --from=build /wheels /wheels
# Bytecode is compiled here, at build time: the running container's root filesystem is
# read-only (and PYTHONDONTWRITEBYTECODE keeps Python from trying at run time).
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY --from=build /src/gateway/_compiled /usr/local/lib/python3.11/site-packages/gateway/_compiled
COPY policies ./policies
USER 10001
ENV SWITCHYARD_HOST=0.0.0.0 \
    SWITCHYARD_ADMIN_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080 8081
# Liveness, as the Kubernetes probe asks it (readiness, /readyz, is for load balancers).
HEALTHCHECK --interval=10s --timeout=2s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/livez', timeout=2).status == 200 else 1)"
# The admin API refuses a non-loopback address without a token: pass SWITCHYARD_ADMIN_TOKEN.
ENTRYPOINT ["switchyard"]
CMD ["serve"]
