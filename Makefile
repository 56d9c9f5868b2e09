# The course's commands. Every target creates .venv and installs the course on first use.
#   make lab       open JupyterLab on the lessons
#   make test      every test (units, lessons, exercises, autograder, browser)
#   make test-fast the quick loop: library units only
#   make course    execute every lesson headless into build/ (notebooks, HTML, figures, runtimes)
#   make grade SUBMISSIONS=dir OUT=dir   autograde a folder of student submissions (in a sandbox)
#   make formgrader OUT=dir              grade written answers by hand in nbgrader's formgrader
#   make export OUT=dir                  grades.csv again, with the manual grades merged
#   make release   regenerate exercises/ from solutions/ with nbgrader
#   make bench     benchmarks, table printed and written to build/bench.json
#   make checkpoints  rebuild the tokenizer and tiny GPT-2 checkpoints in data/

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The pinned CPU wheel of torch; override (e.g. TORCH_SPEC=torch) where another build is wanted.
TORCH_SPEC ?= torch==2.13.0
SUBMISSIONS ?= submissions
OUT ?= build/grades
# UNSAFE=1 grades without a sandbox where bubblewrap cannot run; ROSTER=file.csv limits ids to a roster.
UNSAFE ?=
ROSTER ?=
# EXTRAS=1 grades the optional extra exercises (exercises/extra_*) too.
EXTRAS ?=
GRADE_ARGS ?=
PYTEST_ARGS ?=
LAB_ARGS ?=

.PHONY: install lab course test test-fast grade formgrader export release bench checkpoints clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[lessons,lab,dev]"
	touch $@

# Serves the whole course (lessons/ and exercises/), opening on lessons/;
# --allow-root only where the shell runs as root (containers, Colab-like machines).
lab: install
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/lessons \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

course: install
	$(PY) -m tools.course --out build

# Two workers, one thread each: on 2 cores the small models run faster side by side than threaded.
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=25 $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not lesson and not browser" -q $(PYTEST_ARGS)

grade: install
	$(PY) -m autograder.grade "$(SUBMISSIONS)" --out "$(OUT)" $(if $(UNSAFE),--unsafe) $(if $(ROSTER),--roster "$(ROSTER)") $(if $(EXTRAS),--extras) $(GRADE_ARGS)

# nbgrader's formgrader on OUT's course gradebook (written answers, score overrides); then `make export`.
formgrader: install
	@test -f "$(OUT)/course/nbgrader_config.py" || { echo "no graded course in $(OUT): run make grade first"; exit 2; }
	cd "$(OUT)/course" && "$(abspath $(VENV))/bin/jupyter" lab --ServerApp.root_dir=. --LabApp.default_url=/formgrader \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

export: install
	$(PY) -m autograder.grade --export --out "$(OUT)"

release: install
	$(PY) -m autograder.release

bench: install
	$(PY) -m benchmarks.run --out build/bench.json

checkpoints: install
	$(PY) -m tools.build_checkpoints --out data

clean:
	rm -rf build .pytest_cache
