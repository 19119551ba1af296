# hactl controller image. Build: docker build -t hactl .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hactl ./hactl
# Mount points of docker-compose.yml's volumes, owned by uid 10001: a named volume starts as a copy of its mount
# point (owner and mode included), so `init` (uid 10001) can write /ca and /nodes/ctrlN, and each controller (uid
# 10001) can read the bundle init wrote (keys 0600). /nodes has room for 5 nodes (`dev init --nodes 1|3|5`).
RUN pip install --no-cache-dir . && useradd --system --uid 10001 --home /var/lib/hactl hactl \
    && mkdir -p /var/lib/hactl /data /conf /ca /nodes/ctrl1 /nodes/ctrl2 /nodes/ctrl3 /nodes/ctrl4 /nodes/ctrl5 \
    && chown -R hactl /var/lib/hactl /data /conf /ca /nodes \
    && chmod 0700 /conf /ca /nodes/ctrl1 /nodes/ctrl2 /nodes/ctrl3 /nodes/ctrl4 /nodes/ctrl5
USER hactl
WORKDIR /var/lib/hactl
EXPOSE 6262 9993
ENTRYPOINT ["hactl"]
