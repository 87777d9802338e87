# twinrig: `make demo` runs the closed loop on the simulated rig, `make test` runs every check.
# Both install what a fresh Debian/Ubuntu machine with only the Rust toolchain lacks.

SHELL := /bin/bash
CARGO ?= cargo
# Root installs directly; anyone else goes through sudo.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_PACKAGES := libhdf5-dev pkg-config
# `rig present` is tested in a virtual X server and checked with screenshots (tests/present_x11.rs);
# TWINRIG_NO_X=1 skips that test where X cannot be had.
# The X11 client libraries `rig present` loads at run time (dlopen) come with them, and Mesa's
# software OpenGL (llvmpipe through EGL/GLX) that runs its GL renderer there.
X_PACKAGES := xvfb x11-apps libx11-xcb1 libxcursor1 libxrandr2 libxi6 libxkbcommon-x11-0 \
	libgl1-mesa-dri libegl1 libegl-mesa0 libgl1 libglx-mesa0
# `rig report`'s page is rendered in headless Chromium and checked, with screenshots left in
# target/report-screenshots/ (tests/report.rs); TWINRIG_NO_CHROMIUM=1 skips the browser there.
CHROMIUM_PACKAGES := chromium

# Tests check the project's files with Python clients it did not write: tests/crash_safety.rs
# opens a SIGKILLed session in h5py, tests/import_tiff.rs writes ScanImage-style TIFFs with
# tifffile, tests/export_nwb.rs and tests/import_rois.rs read and write NWB with pynwb and
# nwbinspector. `make venv` puts a Python with them in target/venv (ignored, rebuilt whenever
# this list changes; CI may cache it), and `make unit` requires it (TWINRIG_REQUIRE_H5PY,
# TWINRIG_REQUIRE_NWB). pip runs as `python -m pip`, so a venv whose scripts were copied from
# another checkout still installs into itself.
VENV := target/venv
VENV_PIP := h5py tifffile
PYTHON_PACKAGES := python3 python3-venv

.PHONY: deps build demo test test-slurm bench-slurm lint unit bench clean check-root venv

deps:
	@command -v $(CARGO) >/dev/null || { echo "make: the Rust toolchain (cargo) is required: https://rustup.rs" >&2; exit 1; }
	@if ! command -v pkg-config >/dev/null || ! pkg-config --exists hdf5; then \
		echo "make: installing $(APT_PACKAGES) (HDF5 is read and written through libhdf5)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi
	@if [ "$${TWINRIG_NO_X:-}" != 1 ] && { ! command -v Xvfb >/dev/null || ! command -v xwd >/dev/null || \
		! /sbin/ldconfig -p | grep -q libxkbcommon-x11.so.0 || ! /sbin/ldconfig -p | grep -q libEGL_mesa.so.0 || \
		! /sbin/ldconfig -p | grep -q libGLX_mesa.so.0 || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; }; then \
		echo "make: installing $(X_PACKAGES) (the presenter test runs under Xvfb, draws with Mesa's OpenGL and takes screenshots with xwd)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(X_PACKAGES); \
	fi
	@if [ "$${TWINRIG_NO_CHROMIUM:-}" != 1 ] && [ ! -x /usr/bin/chromium ]; then \
		echo "make: installing $(CHROMIUM_PACKAGES) (the report test renders report.html in headless Chromium)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(CHROMIUM_PACKAGES); \
	fi
	@if command -v rustup >/dev/null; then \
		rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy; \
		rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt; \
	fi

VENV_STAMP := $(VENV)/.ready-$(subst $() ,-,$(VENV_PIP))

venv: $(VENV_STAMP) $(VENV)/.nwb

$(VENV_STAMP):
	@if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
		echo "make: installing $(PYTHON_PACKAGES) (the tests check files with Python clients)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(PYTHON_PACKAGES); \
	fi
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q $(VENV_PIP)
	$(VENV)/bin/python -c 'import h5py, tifffile' && touch $@

# The latest pynwb and nwbinspector: the acceptance is that the current readers take the file.
$(VENV)/.nwb: $(VENV_STAMP)
	$(VENV)/bin/python -m pip install -q --upgrade pynwb nwbinspector
	$(VENV)/bin/python -c 'import pynwb, nwbinspector' && touch $@

build: deps
	$(CARGO) build --release

# The demo's folder (out/demo) is scratch: a rerun replaces the last demo's files.
demo: deps
	$(CARGO) run --release --bin rig -- demo --overwrite

check-root:
	bash tools/check_root.sh

lint: deps check-root
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

unit: deps venv
	TWINRIG_PYTHON=$(CURDIR)/$(VENV)/bin/python TWINRIG_REQUIRE_H5PY=1 TWINRIG_REQUIRE_NWB=1 \
		$(CARGO) test --release --workspace

test: lint unit

# The Slurm scale-out (tools/insilico_sbatch.sh) on a real one-node cluster on this machine:
# tools/slurm_local.sh installs slurm-wlm and munge through apt-get when they are missing, starts
# munged, slurmctld and slurmd with their state in a temp folder, and stops them afterwards.
# CI runs it after `make test`.
RIG_BIN = $(or $(CARGO_TARGET_DIR),target)/release/rig

test-slurm: build venv
	bash tools/test_slurm.sh $(RIG_BIN) $(VENV)/bin/python

# Wall time of 1, 2 and 4 shards on the same cluster, as speed-up over one shard (a few minutes).
bench-slurm: build venv
	bash tools/bench_slurm.sh $(RIG_BIN) $(VENV)/bin/python

bench: deps
	$(CARGO) bench --bench sim_render --bench writer --bench ring --bench extract --bench ingest --bench harp --bench twin --bench insilico

clean:
	$(CARGO) clean
