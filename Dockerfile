# Hookgate: a small, non-root image. Not built on the development machines (no Docker engine there).
#   docker build -t hookgate .
#   docker run -p 8000:8000 -e HOOKGATE_DATABASE_URL=... -e HOOKGATE_REDIS_URL=... hookgate
#   docker run ... hookgate hookgate worker --processes 2 --threads 8

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY providers providers
COPY workers workers
COPY examples examples
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 hookgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY providers.yaml ./
USER hookgate
ENV HOOKGATE_CONFIG=/app/providers.yaml \
    HOOKGATE_DATA_DIR=/home/hookgate/.hookgate \
    PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["hookgate", "serve", "--host", "0.0.0.0", "--port", "8000"]
