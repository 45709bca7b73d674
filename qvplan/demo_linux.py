"""The demo's Linux guests: start them, talk to them while the plan runs, say what the client saw."""

from __future__ import annotations

from typing import Any

from .lab import Lab
from .lab.linuxguest import Client, address_of, linux_vm, wait_serial
from .lab.usage import lab_cpu

# name → (guest number on the VM network, host it starts on); plans/demo.yaml moves them.
LINUX_GUESTS = {"lx-1": (1, "hv-a"), "lx-2": (2, "hv-b")}


async def start(lab: Lab) -> dict[str, str]:
    """Define and boot the Linux guests (left alone where they exist); {name: address}."""
    addresses: dict[str, str] = {}
    where: dict[str, str] = {}
    for host in lab.hosts:
        async with lab.connect(host.name) as conn:
            for vm in await conn.api("GET", "vms"):
                where[vm["name"]] = host.name
    for name, (k, host) in LINUX_GUESTS.items():
        definition = linux_vm(lab, name, k)
        addresses[name] = address_of(definition)
        if name in where:
            continue
        async with lab.connect(host) as conn:
            await conn.api("POST", "vms", definition)
            await conn.api("POST", f"vms/{name}/start", {}, timeout=60)
        wait_serial(lab.host(host), name, "QV-READY")
        print(f"  {name} on {host}: Linux booted, {addresses[name]} on the VM network", flush=True)
    return addresses


def talk_to(lab: Lab, addresses: dict[str, str]) -> dict[str, Client]:
    """A client per guest in the client namespace: one TCP connection, UDP probes every 1 ms."""
    return {name: Client(lab, address) for name, address in addresses.items()}


def listen(clients: dict[str, Client]) -> dict[str, dict[str, Any]]:
    return {name: client.stop() for name, client in clients.items()}


def report(seen: dict[str, dict[str, Any]]) -> bool:
    """One line per guest; False when a client lost its TCP connection or got bytes back wrong."""
    ok = True
    for name, s in seen.items():
        tcp, udp = s["tcp"], s["udp"]
        kept = bool(tcp.get("survived") and tcp.get("intact"))
        every = tcp.get("answered") == tcp.get("sent")
        lost = udp["sent"] - udp["answered"]
        print(f"  {name:<8} client: {'answered every request' if every and kept else 'LOST ITS CONNECTION ❌'} "
              f"on one TCP connection ({tcp.get('echoed_bytes', 0)} bytes echoed intact, longest gap "
              f"{tcp['longest_gap_ms']:.0f} ms); UDP probes every 1 ms: longest gap {udp['longest_gap_ms']:.0f} ms, "
              f"{lost} of {udp['sent']} unanswered")
        ok &= kept
    return ok


async def stop_test_guests(lab: Lab) -> None:
    """Stop the running test guests (never idle by design); Linux guests keep running."""
    for host in lab.hosts:
        async with lab.connect(host.name) as conn:
            for vm in await conn.api("GET", "vms"):
                if vm["state"] == "running" and (vm.get("spec") or {}).get("guest", {}).get("test") is not None:
                    await conn.api("POST", f"vms/{vm['name']}/stop", {}, timeout=30)


def idle_cpu(lab: Lab) -> float:
    return lab_cpu(lab, seconds=5.0)
