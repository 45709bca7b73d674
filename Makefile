# The two commands of the README: `make demo` and `make test`. Each one sets up everything it
# needs on a fresh Debian 12 machine (Debian packages, the virtualenv, the test guest) and then
# runs its job.

VENV     := .venv
PY       := $(VENV)/bin/python
DEB_PKGS := qemu-system-x86 qemu-utils openssh-server iproute2 binutils tcpdump curl prometheus chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
GUEST    := guest/build/testguest.img

.PHONY: demo test setup system-deps venv guest lint bench clean

demo: setup
	$(PY) -m qvplan.demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -ra --durations=15

setup: system-deps venv guest

system-deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

guest: $(GUEST)

$(GUEST): guest/testguest.S guest/testguest.ld
	mkdir -p guest/build
	as --32 -o guest/build/testguest.o guest/testguest.S
	ld -m elf_i386 -T guest/testguest.ld -o guest/build/testguest.elf guest/build/testguest.o
	objcopy -O binary guest/build/testguest.elf $@

lint: venv
	$(VENV)/bin/ruff check .

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) guest/build *.egg-info
