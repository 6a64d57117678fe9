# Fovea — the two set-up commands are `make serve` and `make test` (README).
PORT ?= 3000
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Stamps record what the venv holds; they are rebuilt when pyproject.toml changes.
SERVE_STAMP := $(VENV)/.fovea-serve
DEV_STAMP := $(VENV)/.fovea-dev
# glibc malloc settings that make PyTorch CPU training ~1.8x faster here (DESIGN.md, measured facts).
TRAIN_ENV := MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736

.PHONY: serve test venv default-model default-models default-quality quality-real real-grader bento bench bench-backbones bench-detector clean

$(PY):
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $@ $(SERVE_STAMP)

venv: $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(PY) -m models.store ensure-defaults
	$(VENV)/bin/bentoml serve service.service:Fovea --host 127.0.0.1 --port $(PORT)

test: $(DEV_STAMP)
	$(PY) -m pytest

# Retrain and re-export the embedded defaults (models/default/): the grader, the lesion detector and the
# image-quality model, each with the command recorded in its card (README "Models and the model store").
DEFAULT_CONFIGS := grader detector quality
default-models: $(addprefix default-,$(DEFAULT_CONFIGS))
default-model: default-grader
	@:
default-%: $(DEV_STAMP)
	$(TRAIN_ENV) $(PY) -m training train --config training/configs/$*.yaml
	$(PY) -m training export --config training/configs/$*.yaml --out models/default

# The research grader on real photographs (README "Real photographs (research model)"): train on the EyePACS
# folder DATA (non-commercial research use only), export with the parity check, measured on the patient-disjoint
# validation split, and register it in the model store under the config's version (dr-grader:<version>).
DATA ?= ../shared/real-dev/eyepacs256
REAL_CONFIG := training/configs/real-grader.yaml
REAL_EXPORT := runs/real-grader/export
REAL_TAG := dr-grader:$(shell sed -n 's/^version: *//p' $(REAL_CONFIG))
real-grader: $(DEV_STAMP)
	$(TRAIN_ENV) $(PY) -m training train --config $(REAL_CONFIG) --data $(DATA)
	$(PY) -m training export --config $(REAL_CONFIG) --checkpoint runs/real-grader/last.pt --out $(REAL_EXPORT)
	$(PY) -m training register --card $(REAL_EXPORT)/dr-grader.card.json
	@echo "registered $(REAL_TAG) (research use, not for clinical use); serve it with:"
	@echo "  FOVEA_GRADER_TAG=$(REAL_TAG) make serve"

# The image-quality default: the synthetic trunk, then its head refitted on real EyeQ-graded photographs
# (../shared/real-dev, docs/quality-gate.md); `make quality-real` writes the real-photograph report.
default-quality: $(DEV_STAMP)
	$(TRAIN_ENV) $(PY) -m training train --config training/configs/quality.yaml
	$(PY) -m training export --config training/configs/quality.yaml --out models/default
	$(PY) -m training.quality_refit --version 0.2.0 --min-sensitivity 0.8 --out models/default

quality-real: $(DEV_STAMP)
	$(PY) -m training.quality_real --report runs/quality-real

bento: $(SERVE_STAMP)
	$(VENV)/bin/bentoml build

# Fovea (all three default models) against a competent and a naive PyTorch + Grad-CAM stack, in-process and
# over HTTP (docs/performance.md; README headline; ~15 minutes on 2 quiet cores).
bench: $(DEV_STAMP)
	$(PY) -m bench.pipeline

bench-backbones: $(DEV_STAMP)
	$(TRAIN_ENV) $(PY) -m bench.backbones

# The lesion detector as served (docs/detector-served.md): mAP@0.5 from the lesions /analyze returns on 200
# held-out synthetic photographs at 1024 px and three camera sizes, written into the detector's card.
DETECTOR_CAMERAS := --camera 3888x2592 --camera 2592x1944 --camera 4928x3264
bench-detector: $(DEV_STAMP)
	$(PY) -m bench.served_detector --count 200 $(DETECTOR_CAMERAS) --floor \
		--json runs/served-detector/served.json --write-card models/default/lesion-detector.card.json

clean:
	rm -rf build dist *.egg-info .pytest_cache   # runs/ (checkpoints) and data/ are kept
