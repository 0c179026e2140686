# quota-service: every target sets up what it needs (a .venv with the server,
# the client package and the dev tools) on a machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test proto sync-client lint bench bench-flat bench-ledger bench-durability bench-shadow bench-simulate check-policy clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./clients/python -e '.[dev]'
	touch $(STAMP)

## Serve the shipped policies on an embedded Redis (gRPC on 127.0.0.1:50051) with the
## dashboard and the JSON API on http://127.0.0.1:8080/ (HTTP=HOST:PORT to change it).
## Without QUOTA_ADMIN_TOKEN in the environment a fresh admin token is made for this run
## and printed here (only here: never in a URL or the service's log).
HTTP ?= 127.0.0.1:8080
run: $(STAMP)
	@token="$${QUOTA_ADMIN_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(18))')}"; \
	echo "dashboard: http://$(HTTP)/  (sign in with the admin token $$token)"; \
	QUOTA_ADMIN_TOKEN="$$token" exec $(BIN)/quota-service serve --http $(HTTP) $(ARGS)

## The whole suite: unit, integration (real redis-server) and end-to-end (real server).
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## Regenerate the gRPC/protobuf code (server and clients share it).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

## Regenerate the sync client (quota_client/client.py) from the async one (aio.py).
sync-client: $(STAMP)
	$(BIN)/python scripts/gen_sync_client.py

lint: $(STAMP)
	$(BIN)/ruff check quota_service clients/python/src/quota_client tests bench scripts
	$(BIN)/ruff format --check quota_service clients/python/src/quota_client tests bench scripts
	$(BIN)/mypy

# The bench-only extra (the `limits` library baseline), on top of the dev install.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(ARGS)

## Flat cost (issue 8): 1,000 vs 1,000,000 subjects, 0 vs 100,000 overrides (needs ~2.5 GB for Redis).
bench-flat: $(STAMP)
	$(BIN)/python -m bench.flat $(ARGS)

## The usage ledger's cost (issue 9): reserve + commit with the ledger off, on SQLite (and ARGS="--ledger-url URL").
bench-ledger: $(STAMP)
	$(BIN)/python -m bench.ledger $(ARGS)

## What a shadow policy costs the live answer (issue 11): live alone vs live + --shadow-policies.
bench-shadow: $(STAMP)
	$(BIN)/python -m bench.shadow $(ARGS)

## What durability costs (issue 13): appendfsync everysec vs always vs WAIT for one replica.
bench-durability: $(STAMP)
	$(BIN)/python -m bench.durability $(ARGS)

## quota-service simulate over a seeded SQLite ledger (issue 11): 1,000,000 records in < 60 s (ARGS="--records N").
bench-simulate: $(STAMP)
	$(BIN)/python -m bench.simulate $(ARGS)

check-policy: $(STAMP)
	$(BIN)/quota-service check-policy policies

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
