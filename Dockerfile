# hactl controller image. Build: docker build -t hactl .

# The C accelerator of ZeroTier's identity hash (hactl/zt/_mhh.c, libc only), compiled where a compiler is; the
# final image gets only the library. Same base image, so the same glibc.
FROM python:3.11-slim AS zt-native
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev make >/dev/null \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY hactl/zt/_mhh.c ./hactl/zt/
RUN make zt-native

FROM python:3.11-slim
# hactl/zt loads Debian's libsodium (Salsa20) and liblz4 through ctypes (hactl/zt/_native.py).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libsodium23 liblz4-1 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
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
# Next to the installed hactl/zt/_mhh.py, where it looks; the build fails if the library does not load.
COPY --from=zt-native /src/hactl/zt/libhactl_mhh.so /usr/local/lib/python3.11/site-packages/hactl/zt/
RUN cd / && python -c "from hactl.zt import _mhh; assert _mhh.backend() == 'native', _mhh._error"
USER hactl
WORKDIR /var/lib/hactl
# 6262 control channel (mutual TLS), 9993 the API (TCP) and the ZeroTier endpoint (UDP)
EXPOSE 6262 9993 9993/udp
ENTRYPOINT ["hactl"]
