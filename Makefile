# shield-orchestrator: deploy the orchestrator worker pool, test it, measure it.
# Entry point on a fresh Debian machine: ./run TARGET (installs make first).
#
#   ./run deploy        the local lab: a systemd container deployed by the real playbook
#   ./run deploy-cluster  the multi-host lab: a data host and two workers (Sentinel, TLS)
#   ./run test          everything CI runs: lint, service tests, bench smoke, Molecule
#   ./run bench         the benchmarks (not part of the tests)
#   ./run lab-destroy   remove the lab container (cluster-destroy: the multi-host lab)
#   ./run backup        back up the lab into backups/<UTC time>/ (./run restore [BACKUP=name] puts it back)
#   ./run rollback      switch the lab back to its previous release (RELEASE=name for another one)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON        ?= /usr/bin/python3
VENV          := .venv
SVC_VENV      := .venv-service
ROLE          := roles/orchestrator_workers
CONSTRAINTS   := $(ROLE)/files/constraints.txt
DEFAULTS      := $(ROLE)/defaults/main.yml
ANSIBLE_BIN   := $(VENV)/bin
DOCKER        := /usr/bin/docker
export PATH   := $(CURDIR)/$(VENV)/bin:$(PATH)
export DOCKER_HOST ?= unix:///var/run/docker.sock
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# --- setup ----------------------------------------------------------------
.PHONY: bootstrap
bootstrap: ## apt packages, Docker engine, controller venv (.venv)
	scripts/bootstrap-host.sh

.PHONY: images
images: bootstrap ## systemd base images for the lab and Molecule (built offline, cached)
	scripts/build-base-image.sh bookworm
	scripts/build-base-image.sh trixie

# The service venv for tests and benchmarks: the role's pinned requirements,
# its constraints file and the test tools, and the package itself as an
# editable install of the template tree (its console script, shield-orchestrator).
# Rebuilt when any of them changes.
$(SVC_VENV)/.stamp: $(DEFAULTS) $(CONSTRAINTS) requirements-test.txt scripts/service-requirements.py pyproject.toml
	$(PYTHON) -m venv $(SVC_VENV)
	$(SVC_VENV)/bin/pip install -q --upgrade pip
	$(PYTHON) scripts/service-requirements.py > $(SVC_VENV)/requirements.txt
	for attempt in 1 2 3; do \
	  $(SVC_VENV)/bin/pip install -q -r $(SVC_VENV)/requirements.txt -r requirements-test.txt \
	    -c $(CONSTRAINTS) && break; \
	  [ $$attempt = 3 ] && exit 1; sleep 5; \
	done
	for attempt in 1 2 3; do \
	  $(SVC_VENV)/bin/pip install -q --no-deps -e . && break; \
	  [ $$attempt = 3 ] && exit 1; sleep 5; \
	done
	touch $@

.PHONY: venv-service
venv-service: bootstrap $(SVC_VENV)/.stamp ## the service venv (tests, benchmarks)

# promtool alone, extracted from Debian's prometheus package (installing the
# package would also start a Prometheus server); a no-op once it runs.
.PHONY: promtool
promtool: ## promtool for the alert-rule tests, into .cache/promtool (no Prometheus server)
	scripts/install-promtool.sh

.PHONY: constraints
constraints: bootstrap ## regenerate the constraints file from a clean install of the requirements
	rm -rf .cache/lockvenv && $(PYTHON) -m venv .cache/lockvenv
	$(PYTHON) scripts/service-requirements.py > .cache/requirements.txt
	.cache/lockvenv/bin/pip install -q -r .cache/requirements.txt
	{ sed -n '1,3p' $(CONSTRAINTS); .cache/lockvenv/bin/pip freeze --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

# --- lint -------------------------------------------------------------------
.PHONY: lint
lint: bootstrap venv-service ## yamllint, ansible-lint (production), ruff, mypy --strict on the service's tree as it is
	yamllint --strict .
	ansible-lint --profile production
	$(SVC_VENV)/bin/python scripts/role-docs.py --check
	$(SVC_VENV)/bin/python scripts/render_service.py --check-deployed
	ruff check tests scripts bench roles molecule
	ruff format --check tests scripts bench roles molecule
	$(SVC_VENV)/bin/mypy --config-file pyproject.toml -p shield_orchestrator

# --- tests ------------------------------------------------------------------
.PHONY: test-unit
test-unit: venv-service promtool ## the unit layer: the service's pure parts, the role's contract, the alert rules and dashboard; no server
	$(SVC_VENV)/bin/python -m pytest tests/unit tests/role

.PHONY: test-service
test-service: venv-service images ## service tests against real Redis, PostgreSQL, LightRAG (+ bench smoke; its W6 on PostgreSQL runs pgvector in a Debian 13 container)
	$(SVC_VENV)/bin/python -m pytest tests/service bench/test_bench_smoke.py

.PHONY: test-molecule
test-molecule: images ## every Molecule scenario (systemd containers)
	molecule test --all

.PHONY: test
test: test-unit lint test-service test-molecule ## everything CI runs (the unit layer first)

# --- the lab ----------------------------------------------------------------
.PHONY: deploy
deploy: images ## build the lab container and deploy data services + the worker pool into it
	scripts/build-wheelhouse.sh bookworm >/dev/null
	scripts/lab.sh up
	ansible-playbook -i inventory/lab playbooks/data-services.yml
	ansible-playbook -i inventory/lab playbooks/deploy-orchestrator-workers.yml
	@echo "lab ready: curl -s http://127.0.0.1:8000/health"

# Backups of the lab land in $(BACKUP_DIR)/<UTC time>/ on this machine;
# restore takes BACKUP=<name> (default: the newest complete one).
BACKUP_DIR ?= $(CURDIR)/backups
BACKUP     ?=

.PHONY: backup
backup: bootstrap ## back up the lab (job history, LightRAG workspace, queued chunks) into $(BACKUP_DIR)/<UTC time>/
	ansible-playbook -i inventory/lab playbooks/backup.yml -e orchestrator_workers_backup_dir=$(BACKUP_DIR)

.PHONY: restore
restore: bootstrap ## restore a lab backup (BACKUP=<name>, default the newest) onto the lab, e.g. after ./run deploy
	ansible-playbook -i inventory/lab playbooks/restore.yml -e orchestrator_workers_backup_dir=$(BACKUP_DIR) \
	  -e orchestrator_workers_backup_name=$(BACKUP)

RELEASE ?=

.PHONY: rollback
rollback: bootstrap ## switch the lab back to its previous release (RELEASE=<name> for another; /health reports the release)
	ansible-playbook -i inventory/lab playbooks/rollback.yml -e orchestrator_workers_rollback_to=$(RELEASE)

.PHONY: lab-destroy
lab-destroy: ## remove the lab container
	scripts/lab.sh down

.PHONY: deploy-cluster
deploy-cluster: images ## the multi-host lab: shield-data (Redis, PostgreSQL+pgvector, stand-in) + two workers
	scripts/build-wheelhouse.sh bookworm >/dev/null
	scripts/cluster.sh up
	ansible-playbook -i inventory/cluster playbooks/data-services.yml
	ansible-playbook -i inventory/cluster playbooks/deploy-orchestrator-workers.yml
	@echo "cluster ready: curl -s http://127.0.0.1:8001/health; curl -s http://127.0.0.1:8002/health"

.PHONY: cluster-destroy
cluster-destroy: ## remove the multi-host lab (its containers and its network)
	scripts/cluster.sh down

# --- benchmarks ---------------------------------------------------------------
.PHONY: bench
bench: venv-service images ## throughput, latency and memory against peer queues and lightrag-server (prints a table)
	bench/run.sh
