# The two commands a new user needs: `make test` and `make run`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test run venv bench sim chaos clean compose-tool zt-libs zt-native

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's docker-compose validates docker-compose.yml in the tests (no Docker engine is needed for that).
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing Debian's docker-compose (needed by tests/test_compose.py)"; \
	  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }

# Debian's libsodium (Salsa20) and liblz4 (bounded LZ4), loaded by hactl/zt/_native.py through ctypes.
zt-libs:
	@{ ldconfig -p | grep -q "libsodium.so.23 " && ldconfig -p | grep -q "liblz4.so.1 "; } || { \
	  echo "installing Debian's libsodium23 and liblz4-1 (needed by hactl/zt)"; \
	  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsodium23 liblz4-1 >/dev/null; }

# The C accelerator of the identity hash (hactl/zt/_mhh.c: own SHA-512 and Salsa20/20, libc only), written next
# to its loader hactl/zt/_mhh.py, where an editable install finds it. Without it identity validation falls back
# to Python (~40x slower) with a warning; tests/zt/test_zt_mhh.py fails without it.
MHH_SO := hactl/zt/libhactl_mhh.so
$(MHH_SO): hactl/zt/_mhh.c
	$(CC) -O2 -shared -fPIC -o $@ $<

zt-native: $(MHH_SO)

# The whole suite. pytest exit code 5 (no tests collected) is a failure, as is any other non-zero code.
test: $(STAMP) compose-tool zt-libs zt-native
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 tests

# A longer simulator run than CI's: make sim SEEDS=10000
SEEDS ?= 2000
sim: $(STAMP)
	$(PY) -m tests.sim --seeds $(SEEDS)

bench: $(STAMP) zt-libs zt-native
	$(PY) bench/raft_core.py
	$(PY) bench/fsm.py --members 100000
	$(PY) bench/failover.py
	$(PY) bench/failover.py --trials 20 --load 8
	$(PY) bench/netconf.py
	$(PY) bench/workers.py
	$(PY) bench/fsync.py
	$(PY) bench/gil.py
	$(PY) bench/lincheck.py
	$(PY) bench/roots.py
	$(PY) bench/planet_move.py

# A long chaos run (tests/chaos/run.py): make chaos SECONDS=3600 SEED=7; the report, history and logs go to
# CHAOS_WORK (default /tmp/hactl-chaos-SEED); a failing run prints its seed and how to replay the check.
SECONDS ?= 600
SEED ?= 1
CHAOS_WORK ?= /tmp/hactl-chaos-$(SEED)
chaos: $(STAMP) zt-libs zt-native
	$(PY) -m tests.chaos.run --seconds $(SECONDS) --seed $(SEED) --work $(CHAOS_WORK)

# A local three-node cluster in the foreground (Ctrl-C stops it; running it again resumes it).
run: $(STAMP) zt-libs zt-native
	$(VENV)/bin/hactl dev up --data ./data

clean:
	rm -rf $(VENV) build *.egg-info $(MHH_SO)

# hactl vs etcd vs pysyncobj through their HTTP APIs, three nodes each on loopback (bench/api_load.py; ~2 min).
# Extra flags: make bench-load BENCH_LOAD_ARGS="--targets hactl,etcd --seconds 3"
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

.PHONY: bench-load
bench-load: $(BENCH_STAMP)
	$(PY) bench/api_load.py $(BENCH_LOAD_ARGS)
	$(PY) bench/channel.py
