# Baton: the two commands are `make demo` and `make test`. `make help` lists the rest.

SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

LAB ?= mini
# The lab image: base (default; site.yml installs every package, as on a fresh VM) or packages
# (the roles' packages preinstalled, services disabled: faster deploys of many nodes).
IMAGE ?=
# How Ansible reaches the lab: `podman` (default; the project's connection, no SSH set-up) or
# `ssh`: inventories/lab-ssh, shaped like inventories/example (SSH as baton-admin with sudo,
# host keys checked, secrets in ansible-vault). The SSH inventory lists the mini lab.
LAB_CONNECTION ?= podman
REGION ?=
SCENARIO ?=
# Every role's Molecule scenario (`make test-roles` runs them all, each with its idempotence
# step). `make test` runs MOLECULE_IN_TEST only: the scenarios whose checks no lab test makes
# (README, "The test suite"); the others converge roles that site.yml converges on the lab,
# where the same checks and the idempotence of every role are asserted.
SCENARIOS := common etcd haproxy patroni pgbouncer redis redis_sentinel dns prometheus witness
MOLECULE_IN_TEST ?= common
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
LABCTL := $(BIN)/python lab/labctl.py

export PATH := $(BIN):$(PATH)
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

ifeq ($(LAB_CONNECTION),ssh)
LAB_UP_SIZE := $(shell cat .lab/size 2>/dev/null)
ifneq ($(LAB),mini)
$(error LAB_CONNECTION=ssh drives the mini lab (inventories/lab-ssh lists its hosts): drop LAB=$(LAB) or use LAB_CONNECTION=podman)
endif
ifneq ($(filter-out mini,$(LAB_UP_SIZE)),)
$(error LAB_CONNECTION=ssh drives the mini lab, and the $(LAB_UP_SIZE) lab is up: run make lab-down first, or use LAB_CONNECTION=podman)
endif
ifneq ($(filter test test-integration test-lifecycle test-molecule test-roles bench,$(MAKECMDGOALS)),)
$(error LAB_CONNECTION=ssh is for demo, lab-up, site and health: the tests choose their own connection (their SSH scenarios use inventories/lab-ssh) and bench brings up the full lab)
endif
export ANSIBLE_INVENTORY := $(CURDIR)/inventories/lab-ssh
export ANSIBLE_VAULT_PASSWORD_FILE := $(CURDIR)/lab/vault-password
else ifneq ($(LAB_CONNECTION),podman)
$(error LAB_CONNECTION=$(LAB_CONNECTION) is not a lab connection: use podman (the default) or ssh)
endif

.PHONY: help demo test test-unit lint test-molecule test-roles test-integration test-lifecycle \
        bench ee-context venv deps \
        lab-up lab-down lab-status lab-image lab-stop-region lab-start-region lab-partition \
        lab-heal site health clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

## --- the two commands -------------------------------------------------------------------

demo: deps ## Fresh machine -> lab up, site.yml, and the health of every region
	$(LABCTL) up --size $(LAB)
	ansible-playbook site.yml
	ansible-playbook health.yml
	$(LABCTL) status

test: deps ## The whole suite (what CI runs); ends with a table of where the time went
	# lint and the unit tests need no lab: they run beside Molecule and the lab tests.
	bash tests/stages.sh --alongside "lint test-unit" test-molecule test-integration

## --- pieces ------------------------------------------------------------------------------

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --requirement requirements.txt
	touch $@

venv: $(BIN)/.installed ## The Python venv (Ansible, Molecule, linters, client libraries)

deps: venv ## venv + host packages (podman, runc, debootstrap, iptables, apt-cacher-ng)
	$(LABCTL) prereqs

test-unit: venv ## Fast: unit tests only
	pytest -q tests/unit

lint: venv ## ruff, yamllint, ansible-lint (production profile)
	ruff check .
	yamllint --strict .
	ansible-lint --profile production --offline

test-molecule: deps ## Molecule: the scenarios make test runs, or SCENARIO=name (idempotence on)
	$(LABCTL) image
	cd tests
	for scenario in $(or $(SCENARIO),$(MOLECULE_IN_TEST)); do
	  start=$$(date +%s)
	  molecule test --scenario-name "$$scenario"
	  echo "molecule $$scenario: $$(( $$(date +%s) - start )) s"
	done

test-roles: deps ## Molecule: every role's scenario (full sequence, idempotence on)
	$(MAKE) --no-print-directory test-molecule MOLECULE_IN_TEST="$(SCENARIOS)"

test-integration: deps ## The lab tests: mini lab, lifecycle scenarios, lab-down, the ha lab
	pytest -q -p no:cacheprovider -rxX --durations=60 tests/integration

test-lifecycle: venv ## One lifecycle scenario on the lab that is up: SCENARIO=partition (a -k)
	BATON_REUSE_LAB=1 pytest -q -s -p no:cacheprovider -rxX tests/integration/test_lifecycle.py \
	  $(if $(SCENARIO),-k "$(SCENARIO)")

bench: deps ## Benchmarks; each prints its figures (replaces any lab that is up)
	$(BIN)/python bench/lab_timings.py
	$(LABCTL) up --size bench --image packages
	# Four hosts at a time: eight containers installing packages at once starve this machine's
	# two cores and disk, and the witness's etcd with them (its members stopped answering for
	# over 10 s and every holder node fenced itself in a deploy with 20 forks).
	ansible-playbook site.yml --forks 4
	$(BIN)/python bench/inregion_failover.py
	$(BIN)/python bench/sentinel_failover.py
	$(BIN)/python bench/assess_timing.py
	$(BIN)/python bench/failover_timing.py
	$(LABCTL) down

ee-context: venv ## The execution environment's build context (build/ee-context), for AWX
	rm -rf build/ee-context
	$(BIN)/ansible-builder create --file execution-environment.yml --context build/ee-context

## --- the lab -----------------------------------------------------------------------------

lab-image: deps ## Build the lab's base image (cached by content)
	$(LABCTL) image

lab-up: deps ## Start the lab: LAB=mini (default), full, ha or bench; IMAGE=packages: roles' packages preinstalled
	$(LABCTL) up --size $(LAB) $(if $(IMAGE),--image $(IMAGE))

lab-down: venv ## Remove every lab container, network and firewall rule
	$(LABCTL) down

lab-status: venv ## Every lab host by site
	$(LABCTL) status

lab-stop-region: venv ## Kill every container of REGION at once (region loss; GRACEFUL=1: shut down)
	$(LABCTL) stop-region "$(REGION)" $(if $(filter 1,$(GRACEFUL)),--graceful)

lab-start-region: venv ## Start REGION's containers again
	$(LABCTL) start-region "$(REGION)"

lab-partition: venv ## Cut REGION off from every other site and the controller
	$(LABCTL) partition "$(REGION)"

lab-heal: venv ## Undo the partition of REGION (of every region when REGION is empty)
	$(LABCTL) heal $(REGION)

site: venv ## ansible-playbook site.yml
	ansible-playbook site.yml

health: venv ## ansible-playbook health.yml
	ansible-playbook health.yml

clean: lab-down ## lab-down, then remove the venv and the lab's cached images
	-podman rmi --force $$(podman images --filter reference='localhost/baton-debian13' -q) 2>/dev/null
	rm -rf $(VENV) .lab
