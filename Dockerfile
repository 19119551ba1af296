# hactl controller image. Build: docker build -t hactl .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hactl ./hactl
RUN pip install --no-cache-dir . && useradd --system --uid 10001 --home /var/lib/hactl hactl \
    && mkdir -p /var/lib/hactl /shared /data && chown hactl /var/lib/hactl /shared /data
USER hactl
WORKDIR /var/lib/hactl
EXPOSE 6262 9993
ENTRYPOINT ["hactl"]
