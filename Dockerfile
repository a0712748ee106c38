# Hookgate: a small, non-root image that carries no configuration and no secret.
# Not built on the development machines (they have no Docker engine); see the README.
#
#   docker build -t hookgate .
#
# The image fails closed: without a providers.yaml at /etc/hookgate/providers.yaml it refuses to
# start and says so. Add yours (and your handler modules) in an image of your own:
#
#   FROM hookgate
#   COPY providers.yaml /etc/hookgate/providers.yaml
#   COPY myhandlers/ /app/myhandlers/          # `handlers: [myhandlers]`; /app is on the path
#
# or mount it read-only: docker run -v $PWD/providers.yaml:/etc/hookgate/providers.yaml:ro ...
# Secrets come from the environment (${STRIPE_WEBHOOK_SECRET} in providers.yaml).
#
#   docker run -p 8000:8000 -e HOOKGATE_DATABASE_URL=postgresql://... -e HOOKGATE_REDIS_URL=redis://... myimage
#   docker run --no-healthcheck ... myimage hookgate worker --processes 2 --threads 8
#
# Everything Hookgate writes goes to /data (SQLite and the embedded Redis when their URLs are not
# given); with PostgreSQL and Redis configured it writes nothing, and the root filesystem may be
# read-only.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY providers providers
COPY workers workers
COPY examples examples
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'

FROM python:3.11-slim
RUN useradd --no-create-home --home-dir /nonexistent --uid 10001 hookgate \
    && mkdir -p /data /etc/hookgate /app \
    && chown hookgate /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
ENV HOOKGATE_CONFIG=/etc/hookgate/providers.yaml \
    HOOKGATE_DATA_DIR=/data \
    HOOKGATE_DATABASE_URL=sqlite:////data/hookgate.db \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME /data
USER hookgate
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["hookgate", "serve", "--host", "0.0.0.0", "--port", "8000"]
