"""The host side of apply's lock: a small Python program run over SSH (`python3 -c`).

It never follows a symlink and never truncates a file it did not open itself:

- the lock directory is `/run/quantavirt/locks` for root (`/tmp/qvplan-locks-<uid>` for another
  user), walked from `/` one component at a time with O_NOFOLLOW. Each directory on the way must
  belong to root or to us and, when others may write it, be sticky (/tmp); the lock directory
  itself must be ours and 0700 (created so when missing). Anything else is refused;
- the lock file is opened inside it with O_CREAT|O_NOFOLLOW (a symlink is refused, not
  followed), must be a regular file of ours with one link, and is rewritten only once locked.

`take DIR NAME WAIT OWNER`: print `LOCKED <pid> <path>` and hold the flock (on fd 9) until stdin
ends, or `BUSY <path> <content>` when another holds it for WAIT seconds, or `ERROR <why>`.
`break DIR NAME`: end the process whose fd 9 is this lock file, and nothing else.
"""

from __future__ import annotations

import shlex

SCRIPT = r'''
import fcntl, os, signal, stat, sys, time

def fail(why):
    print("ERROR " + why, flush=True)
    sys.exit(3)

def lock_dir(path):
    if path == "auto":
        path = "/run/quantavirt/locks" if os.geteuid() == 0 else "/tmp/qvplan-locks-%d" % os.geteuid()
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        try:
            os.mkdir(part, 0o700 if last else 0o755, dir_fd=fd)
        except FileExistsError:
            pass
        except OSError as err:
            fail("cannot create %s: %s" % (path, err.strerror))
        try:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as err:
            fail("unsafe lock directory %s: /%s is not a plain directory (%s)"
                 % (path, "/".join(parts[:i + 1]), err.strerror))
        os.close(fd)
        fd = nfd
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()):
            fail("unsafe lock directory %s: /%s belongs to uid %d" % (path, "/".join(parts[:i + 1]), st.st_uid))
        if last and (st.st_uid != os.geteuid() or st.st_mode & 0o077):
            fail("unsafe lock directory %s: must be ours and mode 0700, is %o" % (path, stat.S_IMODE(st.st_mode)))
        if not last and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            fail("unsafe lock directory %s: /%s is writable by others" % (path, "/".join(parts[:i + 1])))
    return path, fd

def lock_file(dfd, path, name):
    if "/" in name or name in ("", ".", ".."):
        fail("bad lock name %r" % name)
    full = path + "/" + name
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError as err:
        fail("cannot open the lock %s (a symlink is refused): %s" % (full, err.strerror))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        fail("unsafe lock file %s: not a plain file of ours with one link" % full)
    return full, fd

def content(fd):
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()

op, where, name = sys.argv[1:4]
path, dfd = lock_dir(where)
full, fd = lock_file(dfd, path, name)
if op == "break":
    words = content(fd).split(" ", 1)
    pid = words[0] if words else ""
    if pid.isdigit():
        try:
            if os.readlink("/proc/%s/fd/9" % pid) == full:
                os.kill(int(pid), signal.SIGTERM)
        except OSError:
            pass
    sys.exit(0)
deadline = time.monotonic() + float(sys.argv[4])
while True:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except BlockingIOError:
        if time.monotonic() >= deadline:
            print("BUSY %s %s" % (full, content(fd)), flush=True)
            sys.exit(0)
        time.sleep(0.1)
os.dup2(fd, 9)
os.ftruncate(fd, 0)
os.pwrite(fd, ("%d %s\n" % (os.getpid(), sys.argv[5])).encode(), 0)
print("LOCKED %d %s" % (os.getpid(), full), flush=True)
while sys.stdin.buffer.read(65536):
    pass
'''


# The system's interpreter when there is one: a `python3` found through the login shell's PATH
# may be a version manager's shim (pyenv's costs ~0.5 s a start) or whatever the user put first.
PYTHON = 'p=/usr/bin/python3; [ -x "$p" ] || p=python3; exec "$p"'


def command(op: str, lock_dir: str, name: str, *args: str) -> str:
    """The remote command line (for `create_process`/`run`; a POSIX login shell runs it)."""
    # -I -S: no PYTHON* variables, user site or site-packages (the script needs only the stdlib),
    # and ~15 ms less start-up per host.
    return PYTHON + " " + " ".join(shlex.quote(a) for a in ("-I", "-S", "-c", SCRIPT, op, lock_dir, name, *args))
