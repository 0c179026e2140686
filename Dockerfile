# quota-service: slim, non-root, with a gRPC health check.
# Build: docker build -t quota-service .
# Run:   docker run -p 50051:50051 -e QUOTA_REDIS_URL=redis://redis:6379/0 -e QUOTA_ADMIN_TOKEN=... quota-service
#        (without QUOTA_REDIS_URL it starts an embedded redis-server, keeping its AOF in /data)
FROM python:3.11-slim

# redis-server only for the embedded mode; production points QUOTA_REDIS_URL at Redis or Redis Cluster.
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /app quota \
 && mkdir -p /data && chown quota /data

WORKDIR /app
COPY clients/python /app/clients/python
COPY pyproject.toml README.md /app/
COPY quota_service /app/quota_service
RUN pip install --no-cache-dir ./clients/python . \
 && rm -rf /root/.cache
COPY policies /app/policies

USER quota
ENV QUOTA_LISTEN=0.0.0.0:50051 \
    QUOTA_POLICIES=/app/policies \
    QUOTA_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
EXPOSE 50051
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["quota-service", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["quota-service"]
CMD ["serve"]
