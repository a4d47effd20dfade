"""Targets for the device suite. `--device TARGET` (repeatable) picks them; the default is both
emulated Pis plus the SSH and adb targets, which skip with one line when no hardware is given."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from device_tests.targets import ON_DEVICE, Emulated, Unavailable, default_targets, targets_from


def pytest_addoption(parser):
    parser.addoption("--device", action="append", default=None,
                     help="device target: emulated-pi4, emulated-pi5, ssh://user@host[:port], adb[:SERIAL]")


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        specs = metafunc.config.getoption("--device") or default_targets()
        metafunc.parametrize("target", specs, indirect=True, ids=[s.split("://")[0].split(":")[0] for s in specs])


_prepared: dict = {}


@pytest.fixture
def target(request, shared):
    """A prepared target (built root, installed runtime), once per run (the emulated boards' root
    is shared by every pytest-xdist worker); skipped with the reason when it can't run here."""
    spec = request.param
    if spec not in _prepared:
        t = targets_from([spec])[0]
        try:
            t.info = t.prepare(shared) if isinstance(t, Emulated) else t.prepare()
            _prepared[spec] = t
        except Unavailable as e:
            _prepared[spec] = str(e)
    if isinstance(_prepared[spec], str):
        pytest.skip(_prepared[spec])
    return _prepared[spec]


def on_host(bundles, prompts, tokens, shared=None, extra=()) -> dict:
    """on_device.py run by the host's own python: the reference the device must reproduce. With
    the `shared` fixture, once per run for every target that asks the same."""
    args = [sys.executable, str(ON_DEVICE), *map(str, bundles), "--tokens", str(tokens), *extra]
    for p in prompts:
        args += ["--prompt", p]

    def run(folder=None) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if folder is not None:
            folder.mkdir()
            (folder / "host.json").write_text(proc.stdout.strip().splitlines()[-1])
        return proc.stdout.strip().splitlines()[-1]

    if shared is None:
        return json.loads(run())
    key = hashlib.sha256(json.dumps(args[1:]).encode()).hexdigest()[:16]
    return json.loads((shared(f"device-host-{key}", run) / "host.json").read_text())


def on_target(target, bundles, prompts, tokens, memory_limit=None, extra=()):
    args = [str(ON_DEVICE), *(target.path(b) for b in bundles), "--tokens", str(tokens), *extra]
    for p in prompts:
        args += ["--prompt", p]
    return target.run(args, memory_limit=memory_limit)
