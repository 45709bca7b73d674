"""The control socket: the one door for everything that changes a host's state.

A Unix socket (`[api] socket`, default /run/quantavirt/api.sock), mode 0660, owned by root and
the `[api] group` (`quantavirt`), so the kernel lets only root and that group connect; on top
of that every request's peer credentials (SO_PEERCRED) are checked again and recorded, so a
socket left open by a wrong mode still admits nobody else, and routes can ask who is calling
(`peer_uid`: HMP passthrough and trust imports are root's alone).
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..contract.reasons import Reason
from ..errors import QVError
from ..host.http import Handler, Middleware, error_response
from ..pqc.gate import RateLimitedLog

log = logging.getLogger(__name__)
refusals = RateLimitedLog(log)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a control-socket connection, as the kernel says."""

    pid: int
    uid: int
    gid: int

    @property
    def root(self) -> bool:
        return self.uid == 0


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Peer(pid, uid, gid)


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Admission:
    """Who may use the control socket: root, the agent's own user, and members of `group`."""

    def __init__(self, group: str) -> None:
        self.group = group

    def admits(self, peer: Peer) -> bool:
        if peer.uid in (0, os.geteuid()):
            return True
        try:
            entry = grp.getgrnam(self.group)
        except KeyError:
            return False  # no such group: the socket is root's (and the agent user's) alone
        if peer.gid == entry.gr_gid:
            return True
        try:
            user = pwd.getpwuid(peer.uid)
        except KeyError:
            return False
        return user.pw_gid == entry.gr_gid or user.pw_name in entry.gr_mem


def not_admitted(peer: Peer, group: str) -> QVError:
    return QVError(f"uid {peer.uid} may not use the control socket", f"run as root or a member of group {group!r}",
                   code=Reason.FORBIDDEN)


def admission_middleware(admission: Admission) -> Middleware:
    """Check the caller's credentials on every request (a connection may carry many)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is None or sock.family != socket.AF_UNIX:
            return error_response(QVError("the control API answers on its Unix socket only",
                                          "connect to [api] socket", code=Reason.FORBIDDEN))
        peer = peer_of(sock)
        if not admission.admits(peer):
            refusals.warning(f"uid:{peer.uid}", "control socket: refused uid %d (pid %d)", peer.uid, peer.pid)
            return error_response(not_admitted(peer, admission.group))
        if request.body_exists and request.content_type != "application/json":
            return error_response(QVError(f"a request body of type {request.content_type!r}",
                                          "send JSON (Content-Type: application/json)", code=Reason.BAD_REQUEST))
        request["peer"] = peer
        return await handler(request)

    return check


def require_root(request: web.Request, what: str, fix: str) -> None:
    """Refuse unless the caller is root on the control socket."""
    peer = request.get("peer")
    if not isinstance(peer, Peer) or not peer.root:
        who = f"uid {peer.uid}" if isinstance(peer, Peer) else "this caller"
        raise QVError(f"{what} is root's only ({who} asked)", fix, code=Reason.FORBIDDEN)


def bind_control_socket(path: str, group: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0660, group `group` (when it exists).

    Bound under a temporary name and renamed into place, so it never exists at `path` with a
    wider mode; a stale socket from a crashed agent is replaced, anything else at `path` is not.
    """
    target = Path(path)
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
        target.parent.chmod(0o755)  # as /run/libvirt: walkable (the agent's umask is 077); the socket's mode decides
    if target.is_symlink() or (target.exists() and not target.is_socket()):
        raise QVError(f"{target} exists and is not a socket", "remove it, or set [api] socket to another path",
                      code=Reason.BAD_REQUEST)
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    temp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # bound 0600; widened to 0660 below, once the group is set
        try:
            sock.bind(str(temp))
        finally:
            os.umask(old)
        gid = group_id(group)
        if gid is not None:
            os.chown(temp, -1, gid)
            os.chmod(temp, 0o660)
        else:
            log.warning("group %r does not exist: the control socket %s is root's only (make setup creates it)",
                        group, target)
        os.rename(temp, target)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        temp.unlink(missing_ok=True)
        raise QVError(f"cannot open the control socket {target}: {err.strerror or err}",
                      "check [api] socket names a directory the agent may write", code=Reason.BAD_REQUEST) from None
    return sock
