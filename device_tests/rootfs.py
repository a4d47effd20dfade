"""An arm64 Debian bookworm root with python3 and edgepack's runtime, built without running anything
arm64, so it takes under a minute instead of a chroot's ten.

1. `debootstrap --foreign --variant=minbase --include=python3` downloads the packages and unpacks
   the required ones; the rest (python3 and its libraries) are unpacked with `dpkg-deb -x`. No
   maintainer script runs: nothing in the root is configured, which python doesn't need.
2. The host's pip resolves `edgepack[runtime,serve]` for aarch64 and cp311 (`--platform manylinux_*_aarch64
   --only-binary=:all:`): exactly the wheels a Pi running Raspberry Pi OS (bookworm) would get,
   and neither a compiler nor torch can slip in.

The root and the dependency wheels are cached in ~/.cache/edgepack/device-roots, keyed by the
runtime's requirements; edgepack itself is rebuilt from this checkout on every run (a second).
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGEPACK_DEVICE_CACHE", Path.home() / ".cache" / "edgepack" / "device-roots"))
SUITE = "bookworm"  # Raspberry Pi OS 12 is built on it
PYTHON_TAG = ("3.11", "cp311")  # bookworm's python3
GLIBC = 36  # bookworm's glibc 2.36: manylinux_2_17 ... manylinux_2_36 wheels run


def mirror() -> str:
    """The Debian mirror this machine's apt uses (EDGEPACK_DEBIAN_MIRROR overrides)."""
    if os.environ.get("EDGEPACK_DEBIAN_MIRROR"):
        return os.environ["EDGEPACK_DEBIAN_MIRROR"]
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in src.read_text().splitlines():
            if line.startswith("URIs:") and line.split()[1].rstrip("/").endswith("/debian"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def build_wheel(out: Path) -> Path:
    """edgepack's wheel from this checkout, built from a copy so the checkout gets no build/."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "edgepack", "runtime", "converters"):
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
                REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
    return next(out.glob("edgepack-*.whl"))


def runtime_requirements(wheel: Path) -> list[str]:
    """The `runtime` and `serve` extras of the wheel's own metadata: what `pip install
    edgepack[runtime,serve]` pulls."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    reqs = msg.get_all("Requires-Dist") or []
    return sorted(r for r in reqs if "extra" not in r or '"runtime"' in r or '"serve"' in r)


def aarch64_pip_args() -> list[str]:
    plats = [f"manylinux_2_{v}_aarch64" for v in range(17, GLIBC + 1)] + ["manylinux2014_aarch64"]
    args = ["--only-binary=:all:", "--python-version", PYTHON_TAG[0], "--implementation", "cp",
            "--abi", PYTHON_TAG[1], "--abi", "abi3", "--abi", "none"]
    for p in plats:
        args += ["--platform", p]
    return args


def prepare(log=print) -> dict:
    """Builds (or reuses) the root; returns {"root", "site", "app", "versions"} for the runner."""
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("edgepack-*.whl"):
        old.unlink()
    wheel = build_wheel(wheels)
    reqs = runtime_requirements(wheel)
    key = hashlib.sha256(json.dumps([SUITE, PYTHON_TAG, GLIBC, reqs]).encode()).hexdigest()[:16]
    base = CACHE / key
    if not (base / "ready").exists():
        log(f"building the arm64 {SUITE} root in {base} (once; about a minute)")
        _build(base, wheel)
    # edgepack itself, fresh from this checkout, in front of the cached dependencies.
    app = base / "app"
    shutil.rmtree(app, ignore_errors=True)
    _pip("install", "--no-deps", "--target", str(app), *aarch64_pip_args(), str(wheel))
    return {"root": base / "root", "site": base / "site", "app": app,
            "versions": json.loads((base / "versions.json").read_text())}


def _build(base: Path, wheel: Path) -> None:
    for tool in ("debootstrap", "dpkg-deb"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is not installed (scripts/setup installs it: apt-get install debootstrap)")
    stage = Path(tempfile.mkdtemp(prefix=f".{base.name}.partial-", dir=base.parent))
    try:
        root = stage / "root"
        subprocess.run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", "--include=python3",
                        SUITE, str(root), mirror()], check=True, capture_output=True, text=True)
        for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        site = stage / "site"
        _pip("install", "--target", str(site), *aarch64_pip_args(), f"{wheel}[runtime,serve]")
        for p in site.glob("edgepack*"):  # edgepack comes fresh from the checkout on every run
            shutil.rmtree(p)
        versions = {}
        for d in sorted(site.glob("*.dist-info")):
            name, version = d.name[:-len(".dist-info")].rsplit("-", 1)
            versions[name] = version
        (stage / "versions.json").write_text(json.dumps(versions, indent=1))
        (stage / "ready").write_text("")
        shutil.rmtree(base, ignore_errors=True)
        stage.rename(base)
    except subprocess.CalledProcessError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise RuntimeError(f"building the arm64 root failed: {' '.join(e.cmd[:3])} ...: "
                           f"{(e.stderr or '')[-2000:]}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args[:2])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
