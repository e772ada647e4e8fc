# midprobe — every target sets itself up from a fresh clone (make setup runs first).
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
DATA     ?= data
DATASET  ?= synthetic
MODEL    ?=
TASK     ?=
HEAD     ?=
LAYERS   ?=
LR       ?=
EPOCHS   ?=
PROTOCOL ?= midprobe
DEVICE   ?= cpu
WEIGHTS  ?=
SHARD    ?= 0/1
SPLIT    ?=
RAW      ?=
OPTIONS  ?=
GRID     ?=
DRY      ?=
SCHEDULER ?=
CLUSTER  ?= local
JOBS     ?= 1
export MIDPROBE_DATA := $(DATA)

STAMP := $(VENV)/.installed

.PHONY: setup test data extract probe grid demo bench report clean-data help

help:
	@echo "make setup | test | data DATASET=synthetic | extract MODEL=… DATASET=… | probe TASK=… | grid GRID=grids/….toml | demo | bench | report"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest tests

data: setup
	$(PY) -m extract.datasets --dataset $(DATASET) $(if $(RAW),--raw $(RAW)) $(foreach o,$(OPTIONS),--option $(o))

extract: setup
	@test -n "$(MODEL)" || { echo "error: MODEL is required, e.g. make extract MODEL=vit_b_mae DATASET=synthetic" >&2; exit 2; }
	$(PY) -m extract --model $(MODEL) --dataset $(DATASET) --protocol $(PROTOCOL) --device $(DEVICE) --shard $(SHARD) \
		$(if $(LAYERS),--layers $(LAYERS)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(SPLIT),--split $(SPLIT)) \
		$(if $(DRY),--dry-run)

probe: setup
	@test -n "$(TASK)" || { echo "error: TASK is required, e.g. make probe TASK=normals" >&2; exit 2; }
	$(PY) -m probe --task $(TASK) --dataset $(DATASET) --protocol $(PROTOCOL) --device $(DEVICE) \
		$(if $(HEAD),--head $(HEAD)) $(if $(LR),--lr $(LR)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
		$(if $(MODEL),--model $(MODEL)) $(if $(LAYERS),--layers "$(LAYERS)")

report: setup
	$(PY) -m probe.report

# A grid file run on dask.distributed: a local cluster sized to this machine, SCHEDULER=tcp://host:8786
# for a running one, CLUSTER=slurm for JOBS one-GPU SLURM jobs; DRY=1 prints the plan and runs nothing.
# DEVICE= given on the command line overrides the grid's device.
grid: setup
	@test -n "$(GRID)" || { echo "error: GRID is required, e.g. make grid GRID=grids/paper.toml DRY=1" >&2; exit 2; }
	$(PY) -m grid $(GRID) $(if $(DRY),--dry-run) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) --cluster $(CLUSTER) \
		$(if $(filter slurm,$(CLUSTER)),--jobs $(JOBS)) $(if $(filter command line environment,$(origin DEVICE)),--device $(DEVICE))

# The demo is grids/demo.toml in its own data root: a small synthetic set (256 train / 64 test at
# 224 px, 16 pairs, 16 triplets), three weight-free backbones, linear and MLP heads on every dense
# task, both zero-shot tasks, the report.
DEMO_DATA ?= $(DATA)/demo
demo: setup
	$(PY) -m grid grids/demo.toml --data $(DEMO_DATA) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

bench: setup
	$(PY) -m bench

clean-data:
	rm -rf $(DATA)
