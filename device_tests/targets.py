"""Where the device suite runs: emulated Raspberry Pis (qemu-user), a real board over SSH, or an
Android phone over adb (Termux + a Debian proot). Each target runs `python3 on_device.py ...` and
`python3 -m edgepack.cli ...` with edgepack's runtime-only install, optionally under a memory
limit standing for a smaller board, and reports the exit code, output and peak memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgepack.system import LITERT_API_ENV

HERE = Path(__file__).resolve().parent
ON_DEVICE = HERE / "on_device.py"
SERVE_ON_DEVICE = HERE / "serve_on_device.py"
SCRIPTS = (ON_DEVICE, SERVE_ON_DEVICE)  # what a board runs, copied to real boards by prepare()

# /proc/cpuinfo of each board (onnxruntime reads it; qemu would otherwise show the host's x86 one).
# Cortex-A72 (Pi 4) has no LSE atomics; Cortex-A76 (Pi 5) has them.
CPUINFO = {
    "cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0xd08", 3),
    "cortex-a76": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                   "dcpop asimddp", "0xd0b", 1),
}


class Unavailable(Exception):
    """The target can't run here (no board given, no adb): the suite skips it with this line."""


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    peak: int | None = None  # bytes, where the target measures it (the memory limit's cgroup)
    oom_killed: bool = False


class Emulated:
    """A Raspberry Pi model under qemu-aarch64-static: its CPU (QEMU_CPU), its /proc/cpuinfo, an
    arm64 bookworm root with the runtime's aarch64 wheels (device_tests/rootfs.py). Bundles are
    reached by their host paths (qemu falls back to the host's files outside the root)."""

    def __init__(self, name: str, cpu: str):
        self.name, self.cpu = name, cpu

    def prepare(self, once=None) -> dict:
        """Builds the arm64 root and this board's copy of it. `once(key, make)` runs `make(folder)`
        once per test run whoever asks first (conftest.py's `shared`: pytest-xdist workers share one
        root, and rebuilding it under a running board would pull the files from under it)."""
        if not shutil.which("qemu-aarch64-static"):
            raise Unavailable(f"{self.name}: qemu-aarch64-static is not installed "
                              "(scripts/setup installs it: apt-get install qemu-user-static)")
        once = once or _here

        def build_root(folder: Path) -> None:
            from device_tests import rootfs

            env = rootfs.prepare(log=lambda m: print(m, file=sys.stderr))
            folder.mkdir()
            (folder / "env.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                                         for k, v in env.items()}))

        env = json.loads((once("device-root", build_root) / "env.json").read_text())
        self.env = {k: Path(v) if k in ("root", "site", "app") else v for k, v in env.items()}
        # Each board gets its own root (hard links) with its own /proc/cpuinfo.
        self.root = self.env["root"].parent / f"root-{self.cpu}"
        once(f"device-board-{self.cpu}", self._make_board_root)
        return {"cpu": self.cpu, "versions": self.env["versions"]}

    def _make_board_root(self, marker: Path) -> None:
        if not self.root.exists():
            subprocess.run(["cp", "-al", str(self.env["root"]), str(self.root)], check=True)
        features, part, rev = CPUINFO[self.cpu]
        cpuinfo = self.root / "proc" / "cpuinfo"
        cpuinfo.unlink(missing_ok=True)
        cpuinfo.write_text("".join(
            f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
            f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: {rev}\n\n"
            for i in range(os.cpu_count() or 1)))
        marker.mkdir()

    def path(self, host_path: Path) -> str:
        return str(host_path)

    def run(self, args: list[str], memory_limit: int | None = None, timeout: float = 1800) -> Result:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": self.cpu,
               "PYTHONPATH": f"{self.env['app']}:{self.env['site']}", "PYTHONDONTWRITEBYTECODE": "1"}
        if LITERT_API_ENV in os.environ:  # a forced LiteRT API reaches the device too
            env[LITERT_API_ENV] = os.environ[LITERT_API_ENV]
        cmd = ["qemu-aarch64-static", "-L", str(self.root), str(self.root / "usr/bin/python3"), *args]
        if memory_limit is None:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            return Result(p.returncode, p.stdout, p.stderr)
        with MemoryCgroup(memory_limit) as cg:
            p = subprocess.run(cg.wrap(cmd), env=env, capture_output=True, text=True, timeout=timeout)
            return Result(p.returncode, p.stdout, p.stderr, cg.peak(), cg.oom_killed())


class MemoryCgroup:
    """A child memory cgroup (v1 or v2) of this process's own, with a hard limit and no swap: the
    kernel kills the run at the limit, as on a swapless board."""

    def __init__(self, limit: int):
        self.limit = limit
        self.dir = None
        lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
        v1 = next((rel for _, controllers, rel in lines if "memory" in controllers.split(",")), None)
        self.v2 = v1 is None  # no v1 memory controller: the unified hierarchy ("0::/path")
        rel = v1 if v1 is not None else next(rel for _, controllers, rel in lines if controllers == "")
        self.parent = Path("/sys/fs/cgroup/memory" if v1 is not None else "/sys/fs/cgroup") / rel.lstrip("/")

    def __enter__(self) -> "MemoryCgroup":
        self.dir = self.parent / f"edgepack-device-{os.getpid()}-{id(self)}"
        try:
            self.dir.mkdir()
            if self.v2:
                (self.dir / "memory.max").write_text(str(self.limit))
                (self.dir / "memory.swap.max").write_text("0")
            else:
                (self.dir / "memory.limit_in_bytes").write_text(str(self.limit))
        except OSError as e:
            self.dir = None
            raise Unavailable(f"can't make a memory cgroup under {self.parent}: {e}") from None
        return self

    def wrap(self, cmd: list[str]) -> list[str]:
        """The command, started inside the cgroup."""
        return ["sh", "-c", f'echo $$ > {shlex.quote(str(self.dir / "cgroup.procs"))} && exec "$@"', "sh", *cmd]

    def peak(self) -> int | None:
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            p = self.dir / name
            if p.exists():
                return int(p.read_text().split()[0])
        return None

    def oom_killed(self) -> bool:
        if self.v2:
            events = (self.dir / "memory.events").read_text()
            return any(l.split()[0] == "oom_kill" and int(l.split()[1]) > 0 for l in events.splitlines())
        ctl = (self.dir / "memory.oom_control").read_text()
        return any(l.startswith("oom_kill ") and int(l.split()[1]) > 0 for l in ctl.splitlines())

    def __exit__(self, *exc) -> None:
        if self.dir is not None:
            try:
                self.dir.rmdir()
            except OSError:
                pass


def _here(key: str, make) -> Path:
    """`once` without a test run to share with: make it in a new temporary folder."""
    folder = Path(tempfile.mkdtemp()) / key
    make(folder)
    return folder


class Ssh:
    """A real board (Raspberry Pi OS, or any aarch64 Debian): a venv with `edgepack[runtime,serve]` from
    this checkout's wheel, bundles copied over with scp, memory limits through systemd-run."""

    remote_dir = "edgepack-device"

    def __init__(self, name: str, spec: str | None):
        self.name, self.spec = name, spec

    def _ssh_base(self) -> list[str]:
        target = self.spec.removeprefix("ssh://")
        host, _, port = target.partition(":") if target.count(":") == 1 else (target, "", "")
        self.host = host
        return ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"] + (["-p", port] if port else [])

    def _sh(self, command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", *self._ssh_base(), self.host, command], capture_output=True,
                              text=True, timeout=timeout)

    def _copy(self, src: Path, dest: str) -> None:
        base = self._ssh_base()
        port = ["-P", base[base.index("-p") + 1]] if "-p" in base else []
        subprocess.run(["scp", "-q", "-r", *port, "-o", "BatchMode=yes", str(src), f"{self.host}:{dest}"],
                       check=True, capture_output=True, timeout=3600)

    def prepare(self) -> dict:
        if not self.spec:
            raise Unavailable(f"{self.name}: no board given (EDGEPACK_DEVICE_SSH=user@host[:port], "
                              f"or python -m device_tests ssh://user@host)")
        if not shutil.which("ssh"):
            raise Unavailable(f"{self.name}: ssh is not installed")
        from device_tests import rootfs

        wheel = rootfs.build_wheel(rootfs.CACHE / "wheels")
        d = self.remote_dir
        if self._sh(f"mkdir -p {d}/bundles && test -x {d}/venv/bin/python || python3 -m venv {d}/venv",
                    60).returncode != 0:
            raise Unavailable(f"{self.name}: can't reach {self.spec} or make a venv there")
        self._copy(wheel, f"{d}/")
        for script in SCRIPTS:
            self._copy(script, f"{d}/")
        p = self._sh(f"{d}/venv/bin/pip install -q --force-reinstall --no-deps {d}/{wheel.name} && "
                     f"{d}/venv/bin/pip install -q '{d}/{wheel.name}[runtime,serve]' && "
                     f"{d}/venv/bin/python -c 'import platform; print(platform.machine())'")
        if p.returncode != 0:
            raise RuntimeError(f"{self.name}: installing edgepack[runtime,serve] failed:\n{p.stderr[-3000:]}")
        self.copied: dict[Path, str] = {}
        return {"machine": p.stdout.strip()}

    def path(self, host_path: Path) -> str:
        if host_path not in self.copied:
            dest = f"{self.remote_dir}/bundles/{len(self.copied)}-{host_path.name}"
            self._sh(f"rm -rf {shlex.quote(dest)}")
            self._copy(host_path, dest)
            self.copied[host_path] = dest
        return self.copied[host_path]

    def run(self, args: list[str], memory_limit: int | None = None, timeout: float = 1800) -> Result:
        scripts = {str(s): f"{self.remote_dir}/{s.name}" for s in SCRIPTS}
        args = [scripts.get(a, a) for a in args]
        cmd = shlex.join([f"{self.remote_dir}/venv/bin/python", *args])
        if memory_limit is not None:
            cmd = (f"systemd-run --user --scope --quiet -p MemoryMax={memory_limit} -p MemorySwapMax=0 {cmd}")
        p = self._sh(self._wrap(cmd), timeout)
        return Result(p.returncode, p.stdout, p.stderr, None, p.returncode in (137, -9))

    def _wrap(self, cmd: str) -> str:
        return cmd


class Adb(Ssh):
    """An Android phone: Termux's sshd (port 8022) forwarded over adb, commands run inside
    `proot-distro login debian`, where the manylinux aarch64 wheels work (Termux's bionic libc
    can't load them)."""

    def __init__(self, name: str, serial: str | None):
        super().__init__(name, "ssh://localhost:8022")
        self.serial = serial

    def prepare(self) -> dict:
        if not shutil.which("adb"):
            raise Unavailable(f"{self.name}: adb is not installed, no phone to talk to")
        serial = ["-s", self.serial] if self.serial else []
        p = subprocess.run(["adb", *serial, "forward", "tcp:8022", "tcp:8022"], capture_output=True, text=True)
        if p.returncode != 0:
            raise Unavailable(f"{self.name}: no phone answers adb ({p.stderr.strip()})")
        return super().prepare()

    def _wrap(self, cmd: str) -> str:
        return f"proot-distro login debian --termux-home -- sh -c {shlex.quote(cmd)}"


def targets_from(specs: list[str]) -> list:
    """`emulated-pi4`, `emulated-pi5`, `ssh://user@host[:port]`, `adb[:SERIAL]`."""
    out = []
    for spec in specs:
        if spec == "emulated-pi4":
            out.append(Emulated(spec, "cortex-a72"))
        elif spec == "emulated-pi5":
            out.append(Emulated(spec, "cortex-a76"))
        elif spec == "ssh" or spec.startswith("ssh://"):
            out.append(Ssh("ssh", None if spec == "ssh" else spec))
        elif spec == "adb" or spec.startswith("adb:"):
            out.append(Adb("adb", spec.partition(":")[2] or None))
        else:
            raise ValueError(f"unknown device target {spec!r}: emulated-pi4, emulated-pi5, "
                             f"ssh://user@host[:port], adb[:SERIAL]")
    return out


def default_targets() -> list[str]:
    """Both emulated Pis, plus the board and phone named by EDGEPACK_DEVICE_SSH / EDGEPACK_DEVICE_ADB
    (without them the ssh and adb targets skip, saying so)."""
    ssh, adb = os.environ.get("EDGEPACK_DEVICE_SSH"), os.environ.get("EDGEPACK_DEVICE_ADB")
    return ["emulated-pi4", "emulated-pi5", "ssh://" + ssh.removeprefix("ssh://") if ssh else "ssh",
            "adb:" + adb if adb else "adb"]
