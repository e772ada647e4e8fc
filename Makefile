# midprobe — every target sets itself up from a fresh clone (make setup runs first).
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
# the midprobe command: `midprobe probe …` runs the same main() as `python -m probe …`
MIDPROBE := $(VENV)/bin/midprobe
DATA     ?= data
DATASET  ?= synthetic
MODEL    ?=
TASK     ?=
HEAD     ?=
LAYERS   ?=
LR       ?=
EPOCHS   ?=
PROTOCOL ?= midprobe
PRECISION ?= fp16
AUGMENT  ?=
LOCKSTEP ?=
DISK_BUDGET ?=
DEVICE   ?= cpu
WEIGHTS  ?=
SHARD    ?= 0/1
SPLIT    ?=
RAW      ?=
OPTIONS  ?=
NAME     ?=
SIZE     ?=
DEPTH_SCALE ?=
CHECK    ?=
LOG      ?=
CACHE_BUDGET ?=
EXAMPLE  ?= $(DATA)/raw/example
REPAIR   ?=
CORRUPT  ?=
TEST_CORRUPT ?=
TRAIN_IMAGES ?=
SEEDS    ?=
PAPER_CODE ?=
GRID     ?=
DRY      ?=
SCHEDULER ?=
CLUSTER  ?= local
JOBS     ?= 1
export MIDPROBE_DATA := $(DATA)

# $(call q,VALUE): VALUE as one single-quoted shell word, whatever it holds (spaces, ; " ' $ …),
# so every variable reaches the program as exactly one argument and nothing of it runs as shell
q = '$(subst ','\'',$(1))'

STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup docs test soak data example-folder extract probe grid demo bench bench-gpu fidelity parity studies report verify clean-data help

# What the targets are (all of them, with every variable: docs/cli.md).
help:
	@echo "make setup | test | soak | docs | data DATASET=synthetic | data DATASET=folder RAW=… | example-folder | extract MODEL=… DATASET=… [DRY=1] | probe TASK=… [LOG=tensorboard] | grid GRID=grids/….toml [DRY=1] | demo | bench | bench-gpu | fidelity | parity PAPER_CODE=… | studies | report | verify [REPAIR=1]"
	@echo "the same stages as one command, after make setup: $(MIDPROBE) --help"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $(STAMP)

# The test extras (pytest, selenium, TensorBoard, imagecorruptions with OpenCV: ~430 MB), only for the tests.
$(DEV_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

# A .venv with midprobe and what the demo needs (pip install -e .); every target runs it first.
setup: $(STAMP)

# Installs the test extras ('.[dev]') once, then lints and runs the suite (not the soak).
test: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests

# The slow reliability soak (not in make test): 20 SIGKILLs at random points of an extraction, 8 of a
# lockstep run, 12 Ctrl-Cs at random moments of a probe, and Ctrl-C to a running grid's process group.
soak: $(DEV_STAMP)
	$(PY) -m pytest tests -m slow

# Regenerate docs/cli.md from the parsers and the Makefile, then check every docs page's links and commands.
docs: setup
	$(PY) -m midprobe.docs_cli
	$(PY) -m midprobe.docs_check

data: setup
	$(MIDPROBE) data --dataset $(call q,$(DATASET)) $(if $(RAW),--raw $(call q,$(RAW))) $(if $(NAME),--name $(call q,$(NAME))) \
		$(if $(SIZE),--size $(call q,$(SIZE))) $(if $(DEPTH_SCALE),--option $(call q,depth_scale=$(DEPTH_SCALE))) $(if $(CHECK),--check) \
		$(foreach o,$(OPTIONS),--option $(call q,$(o))) $(if $(filter-out midprobe,$(PROTOCOL)),--protocol $(call q,$(PROTOCOL)))

# A small folder in the layout of docs/own-data.md, rendered in seconds.
example-folder: setup
	$(PY) -m extract.datasets.folder_example $(call q,$(EXAMPLE))

extract: setup
	@test -n $(call q,$(MODEL)) || { echo "error: MODEL is required, e.g. make extract MODEL=vit_b_mae DATASET=synthetic" >&2; exit 2; }
	$(MIDPROBE) extract --model $(call q,$(MODEL)) --dataset $(call q,$(DATASET)) --protocol $(call q,$(PROTOCOL)) --precision $(call q,$(PRECISION)) \
		--device $(call q,$(DEVICE)) --shard $(call q,$(SHARD)) $(if $(AUGMENT),--augment $(call q,$(AUGMENT))) \
		$(if $(LAYERS),--layers $(call q,$(LAYERS))) $(if $(WEIGHTS),--weights $(call q,$(WEIGHTS))) $(if $(SPLIT),--split $(call q,$(SPLIT))) \
		$(if $(CORRUPT),--corrupt $(call q,$(CORRUPT))) $(if $(DRY),--dry-run)

probe: setup
	@test -n $(call q,$(TASK)) || { echo "error: TASK is required, e.g. make probe TASK=normals" >&2; exit 2; }
	$(MIDPROBE) probe --task $(call q,$(TASK)) --dataset $(call q,$(DATASET)) --protocol $(call q,$(PROTOCOL)) --precision $(call q,$(PRECISION)) --device $(call q,$(DEVICE)) \
		$(if $(AUGMENT),--augment $(call q,$(AUGMENT))) $(if $(LOCKSTEP),--lockstep) \
		$(if $(HEAD),--head $(call q,$(HEAD))) $(if $(LR),--lr $(call q,$(LR))) $(if $(EPOCHS),--epochs $(call q,$(EPOCHS))) \
		$(if $(MODEL),--model $(call q,$(MODEL))) $(if $(LAYERS),--layers $(call q,$(LAYERS))) $(if $(LOG),--log $(call q,$(LOG))) \
		$(if $(TRAIN_IMAGES),--train-images $(call q,$(TRAIN_IMAGES))) $(if $(SEEDS),--seeds $(call q,$(SEEDS))) \
		$(if $(TEST_CORRUPT),--test-corrupt $(call q,$(TEST_CORRUPT))) $(if $(CACHE_BUDGET),--cache-budget $(call q,$(CACHE_BUDGET)))

# With no records under DATA but the demo's (data/demo), reports the demo and says so.
report: setup
	$(MIDPROBE) report

# Check every store under DATA (metadata, fingerprints, every chunk's size and checksum);
# REPAIR=1 marks damaged chunks for the same make extract (damaged dataset stores for make data).
verify: setup
	$(MIDPROBE) verify $(if $(REPAIR),--repair)

# A grid file run on dask.distributed: a local cluster sized to this machine, SCHEDULER=tcp://host:8786
# for a running one, CLUSTER=slurm for JOBS one-GPU SLURM jobs; DRY=1 prints the plan and runs nothing.
# DEVICE= and PRECISION= (fp16 or int8) given on the command line or in the environment override
# the grid file's device and precision; left unset, the file decides (not the defaults above).
grid: setup
	@test -n $(call q,$(GRID)) || { echo "error: GRID is required, e.g. make grid GRID=grids/paper.toml DRY=1" >&2; exit 2; }
	$(MIDPROBE) grid $(call q,$(GRID)) $(if $(DRY),--dry-run) $(if $(SCHEDULER),--scheduler $(call q,$(SCHEDULER))) --cluster $(call q,$(CLUSTER)) \
		$(if $(filter slurm,$(CLUSTER)),--jobs $(call q,$(JOBS))) $(if $(filter command line environment,$(origin DEVICE)),--device $(call q,$(DEVICE))) \
		$(if $(and $(PRECISION),$(filter command line environment,$(origin PRECISION))),--precision $(call q,$(PRECISION))) \
		$(if $(DISK_BUDGET),--disk-budget $(call q,$(DISK_BUDGET)))

# The demo is grids/demo.toml in its own data root: a small synthetic set (256 train / 64 test at
# 112 px, 16 pairs, 16 triplets), three weight-free backbones, linear and MLP heads on every dense
# task, both zero-shot tasks, the report.
DEMO_DATA ?= $(DATA)/demo
demo: setup
	$(MIDPROBE) grid grids/demo.toml --data $(call q,$(DEMO_DATA)) $(if $(SCHEDULER),--scheduler $(call q,$(SCHEDULER)))

bench: setup
	$(MIDPROBE) bench

# The GPU figures in one go (about 8 minutes on one H100): a short loan of a GPU is enough.
bench-gpu: $(DEV_STAMP)
	PYTHON=$(PY) bash bench/gpu.sh

# How much each of the paper's choices moves the numbers (synthetic set, weight-free and random
# backbones, SEEDS= at least 3, default 0,1,2): effects paired by seed with 95 % intervals; writes
# docs/fidelity.md (deterministic; the run's date and time go to $(DATA)/fidelity/reports/fidelity.log).
fidelity: setup
	$(MIDPROBE) fidelity --data $(call q,$(DATA)/fidelity) --page docs/fidelity.md $(if $(SEEDS),--seeds $(call q,$(SEEDS)))

# The paper's own functions (a checkout of midvision-probe @ 984b325) beside midprobe's on the same
# tensors; without PAPER_CODE it says so and does nothing.
parity: setup
	$(PY) -m bench.parity $(if $(PAPER_CODE),--paper-code $(call q,$(PAPER_CODE)))

# Label efficiency and robustness on a small synthetic set (weight-free and random backbones):
# a labels-vs-headline curve, two corruptions at three severities, and their report.
STUDIES_DATA ?= $(DATA)/studies
studies: $(DEV_STAMP)
	$(PY) -m bench.studies --data $(call q,$(STUDIES_DATA))

# Delete the data root (every store, record and report under DATA).
clean-data:
	rm -rf $(call q,$(DATA))
