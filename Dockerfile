# Slim, non-root image running `switchyard serve`.
# Build: docker build -t switchyard .   Run: docker run -p 8080:8080 -p 8081:8081 switchyard
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app switchyard
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY policies ./policies
USER 10001
ENV SWITCHYARD_HOST=0.0.0.0 \
    SWITCHYARD_ADMIN_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/livez', timeout=2).status == 200 else 1)"
# The admin API refuses a non-loopback address without a token: pass SWITCHYARD_ADMIN_TOKEN.
ENTRYPOINT ["switchyard"]
CMD ["serve"]
