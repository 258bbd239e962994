# webfarm - run `make help` for the list.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
K8S_VENV := .venv-k8s
export N RUNTIME HTTP_PORT BASE_PORT REDIS_PORT SESSION_BACKEND BALANCE DEMO_CONTROLS
export REDIS REPLICA_PORT SENTINEL_PORTS CLUSTER_PORTS
export USERS DURATION KILL_EVERY CHAOS

.DEFAULT_GOAL := help
.PHONY: help up down status logs test lint loadtest compare clean prereqs roll scale redis-restart

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (3.11+) to create $(VENV)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.lock
	@touch $@

# The Kubernetes validation tools, apart from .venv: checkov pins versions older than requirements.lock's.
$(K8S_VENV)/.installed: k8s/requirements.lock
	$(PYTHON) -m venv $(K8S_VENV)
	$(K8S_VENV)/bin/pip install --quiet -r k8s/requirements.lock
	@touch $@

prereqs:
	@farmctl/prereqs.sh nginx redis-server prometheus prometheus-nginx-exporter prometheus-redis-exporter

up: prereqs $(VENV)/.installed ## start the farm (N=3; DEMO_CONTROLS=1, the default: the crash button and the live console; REDIS=sentinel for HA Redis, REDIS=cluster for a Redis Cluster)
	@DEMO_CONTROLS=$${DEMO_CONTROLS:-1} $(PY) -m farmctl up

down: $(VENV)/.installed ## stop the farm and free its ports
	@$(PY) -m farmctl down

roll: $(VENV)/.installed ## restart every instance one by one, without failing a request
	@$(PY) -m farmctl roll

scale: $(VENV)/.installed ## change the number of instances (make scale N=5) without dropping requests
	@test -n "$(N)" || { echo "usage: make scale N=5"; exit 1; }
	@DEMO_CONTROLS=$${DEMO_CONTROLS:-1} $(PY) -m farmctl up

redis-restart: $(VENV)/.installed ## restart Redis (sessions survive: AOF, fsync every second)
	@$(PY) -m farmctl restart redis

status: $(VENV)/.installed ## each process: name, port, pid, up/down
	@$(PY) -m farmctl status

logs: $(VENV)/.installed ## follow every log of the farm
	@$(PY) -m farmctl logs

lint: $(VENV)/.installed ## ruff and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(K8S_VENV)/.installed ## install what is missing, lint, then every test against real farms (natively and under Docker)
	@farmctl/prereqs.sh nginx redis-server chromium wrk iptables prometheus promtool prometheus-nginx-exporter \
		prometheus-redis-exporter
	@# The Docker farms' engine and image builder (tests/conftest.py starts dockerd for the run if none answers).
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then farmctl/prereqs.sh dockerd mmdebstrap; fi
	@$(MAKE) --no-print-directory lint
	$(VENV)/bin/pytest

loadtest: prereqs $(VENV)/.installed ## Locust + chaos through the balancer (USERS=50 DURATION=2m KILL_EVERY=15 N=3 REDIS=sentinel|cluster CHAOS=instances|redis|hang|redis-stall|partition|storm|mixed)
	@farmctl/prereqs.sh iptables  # CHAOS=partition cuts an instance off with it
	$(PY) -m loadtest run

compare: prereqs $(VENV)/.installed ## the same load test under in-proc, sticky and Redis sessions
	$(PY) -m loadtest compare

.PHONY: images docker-engine
images: ## build stand-ins for compose.yaml's images from Debian's packages (no registry needed)
	@farmctl/docker/standins.sh
	@echo "use them: export PYTHON_IMAGE=webfarm-standin/python:3.11 NGINX_IMAGE=webfarm-standin/nginx:sid REDIS_IMAGE=webfarm-standin/redis:7"
	@echo "  PROMETHEUS_IMAGE=webfarm-standin/monitoring:bookworm NGINX_EXPORTER_IMAGE=webfarm-standin/monitoring:bookworm"
	@echo "  REDIS_EXPORTER_IMAGE=webfarm-standin/monitoring:bookworm"

docker-engine: ## start a Docker engine where none runs (root on Debian/Ubuntu: installs docker.io)
	@farmctl/docker/dockerd.sh start

.PHONY: bench
bench: $(VENV)/.installed ## wrk: balancer, both session modes, Redis commands and CPU per request, peers, latency at RATE (ROUNDS=3 DURATION=3s CONNECTIONS=16 N=3 RATE=1000)
	@farmctl/prereqs.sh nginx redis-server wrk
	$(PY) -m bench $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(DURATION),--duration $(DURATION)) \
		$(if $(CONNECTIONS),--connections $(CONNECTIONS)) $(if $(N),--instances $(N)) $(if $(RATE),--rate $(RATE))

.PHONY: bench-growth
bench-growth: $(VENV)/.installed ## what grows with the work: 1k vs 1M live sessions, sign-out-everywhere of 10k (SESSIONS=1000000 USER_SESSIONS=10000)
	@farmctl/prereqs.sh nginx redis-server wrk
	$(PY) -m bench.growth $(if $(SESSIONS),--sessions $(SESSIONS)) $(if $(USER_SESSIONS),--user-sessions $(USER_SESSIONS))

.PHONY: manifests
manifests: $(VENV)/.installed ## re-render k8s/base/nginx.conf from nginx/nginx.conf.j2
	$(PY) -c 'from farmctl.render import render_nginx_kubernetes as r; print(r(), end="")' > k8s/base/nginx.conf.tmp
	mv k8s/base/nginx.conf.tmp k8s/base/nginx.conf

clean: down ## stop the farm and delete its state and reports
	rm -rf .farm reports
