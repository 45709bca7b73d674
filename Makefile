# The two commands of the README: `make demo` and `make test`. Each one sets up everything it
# needs on a fresh Debian 12 machine (Debian packages, the virtualenv, the test guest) and then
# runs its job.

VENV     := .venv
PY       := $(VENV)/bin/python
DEB_PKGS := openssh-server iproute2 binutils tcpdump curl cpio e2fsprogs prometheus chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
GUEST    := guest/build/testguest.img
LINUX    := guest/build/linux
DEBS     := guest/build/debs
QEMU72   := guest/build/qemu-7.2

.PHONY: demo test setup system-deps qemu qemu-7.2 venv guest linux-guest lint bench clean

demo: setup
	$(PY) -m qvplan.demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -ra --durations=15

setup: system-deps venv guest linux-guest qemu-7.2

system-deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# QEMU 9.0 or later. Under TCG, QEMU before 9.0 loses guest writes during pre-copy (a QEMU bug,
# fixed in 9.0: see qvplan/migration/live/ramcheck.py, which guards hosts that still run one).
# Debian 12 ships 7.2, so there QEMU comes from Debian's bookworm-backports; later releases ship
# a fixed QEMU of their own.
BACKPORTS := /etc/apt/sources.list.d/debian-backports.sources
system-deps: qemu
qemu:
	@major=$$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p'); \
	if [ -z "$$major" ] || [ "$$major" -lt 9 ] || ! command -v qemu-img >/dev/null; then \
		. /etc/os-release; suite=""; \
		if [ "$$VERSION_CODENAME" = bookworm ]; then \
			suite="-t bookworm-backports"; \
			[ -f $(BACKPORTS) ] || printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
				| $(SUDO) tee $(BACKPORTS) >/dev/null; \
		fi; \
		echo "installing QEMU 9.0 or later $$suite"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
			$$suite qemu-system-x86 qemu-utils; \
	fi

# Debian 12's own QEMU 7.2, unpacked (not installed) for the tests of the RAM check that guards it
# (tests/migration/test_ramcheck.py): the agents there find it first on their PATH.
qemu-7.2: $(QEMU72)/bin/qemu-system-x86_64

$(QEMU72)/bin/qemu-system-x86_64:
	rm -rf $(QEMU72) && mkdir -p $(QEMU72)/debs $(QEMU72)/bin
	cd $(QEMU72)/debs && apt-get download -q qemu-system-x86/bookworm qemu-system-common/bookworm qemu-system-data/bookworm
	for deb in $(QEMU72)/debs/*.deb; do dpkg-deb -x $$deb $(QEMU72)/root; done
	root=$$(cd $(QEMU72)/root && pwd); \
	printf '#!/bin/sh\nexec %s/usr/bin/qemu-system-x86_64 -L %s/usr/share/qemu -L /usr/share/seabios "$$@"\n' "$$root" "$$root" > $@.tmp
	chmod 755 $@.tmp && mv $@.tmp $@

# A root agent runs every QEMU as this unprivileged system user (qvplan/vmm/confine.py).
QEMU_USER := quantavirt-qemu
.PHONY: qemu-user
setup: qemu-user
qemu-user:
	@getent passwd $(QEMU_USER) >/dev/null || \
		$(SUDO) useradd --system --no-create-home --shell /usr/sbin/nologin $(QEMU_USER)

# Root and this group may use the agent's control socket (/run/quantavirt/api.sock, mode 0660).
API_GROUP := quantavirt
.PHONY: api-group
setup: api-group
api-group:
	@getent group $(API_GROUP) >/dev/null || $(SUDO) groupadd --system $(API_GROUP)

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

# The Linux test guest: the cloud kernel and busybox-static as Debian packages (apt-get download,
# unpacked by guest/linux/build.sh with dpkg-deb -x; nothing is installed on this host).
linux-guest: $(LINUX)/initrd.img

$(DEBS)/.downloaded:
	mkdir -p $(DEBS)
	kernel=$$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $$2; exit}'); \
	[ -n "$$kernel" ] || { echo "no linux-image-cloud-amd64 in apt: run apt-get update"; exit 1; }; \
	cd $(DEBS) && rm -f *.deb && apt-get download -q "$$kernel" busybox-static
	touch $@

$(LINUX)/initrd.img: $(DEBS)/.downloaded guest/linux/build.sh guest/linux/init guest/linux/qvwriter \
		guest/linux/qvctl guest/linux/udpecho.S
	guest/linux/build.sh $(LINUX) $$(ls $(DEBS)/linux-image-*.deb) $$(ls $(DEBS)/busybox-static_*.deb)

lint: venv
	$(VENV)/bin/ruff check .

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) guest/build *.egg-info
