# The two commands of the README: `make demo` and `make test`. Each one sets up everything it
# needs on a fresh Debian 12 machine (Debian packages, the virtualenv, the test guest) and then
# runs its job.

VENV     := .venv
PY       := $(VENV)/bin/python
DEB_PKGS := qemu-system-x86 qemu-utils openssh-server iproute2 binutils tcpdump curl cpio e2fsprogs prometheus chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
GUEST    := guest/build/testguest.img
LINUX    := guest/build/linux
DEBS     := guest/build/debs

.PHONY: demo test setup system-deps venv guest linux-guest lint bench clean

demo: setup
	$(PY) -m qvplan.demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -ra --durations=15

setup: system-deps venv guest linux-guest

system-deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

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
