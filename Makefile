# One-command set-up: `make test` creates .venv/ at the repository root, installs the
# pinned requirements, detectron2 and this package into it, then runs the tests.
# The installs run again only when requirements.txt, setup.py or the detectron2
# installer change (a stamp file records the last successful install).

PYTHON      ?= python3
VENV        := .venv
VENV_PY     := $(VENV)/bin/python
STAMP       := $(VENV)/.stamp-requirements
PYTEST_ARGS ?=

.PHONY: venv test demo clean-venv

test: venv
	$(VENV_PY) -m pytest -q tests $(PYTEST_ARGS)

demo: venv
	$(VENV_PY) tools/train_det.py --config configs/demo_shapes_revmvit.yaml

# Rev-MViT video classification on the synthetic shapes videos: train, then evaluate.
.PHONY: demo-video
demo-video: venv
	$(VENV_PY) tools/train_video.py --config configs/demo_video_revmvit.yaml

# Internal: the environment the other targets run in.
venv: $(STAMP)

$(VENV_PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt setup.py tools/install_detectron2.py | $(VENV_PY)
	$(VENV_PY) -m pip install --progress-bar off -r requirements.txt
	$(VENV_PY) tools/install_detectron2.py
	$(VENV_PY) -m pip install --no-deps --no-build-isolation -e .
	touch $@

clean-venv:
	rm -rf $(VENV)
