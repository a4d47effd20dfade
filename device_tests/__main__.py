"""`python -m device_tests [TARGET ...]`: the device suite on the given targets (default: both
emulated Pis, plus SSH/adb when EDGEPACK_DEVICE_SSH / EDGEPACK_DEVICE_ADB name hardware)."""

import sys
from pathlib import Path

import pytest

from device_tests.targets import targets_from

if __name__ == "__main__":
    specs = [a for a in sys.argv[1:] if not a.startswith("-")]
    try:
        targets_from(specs)
    except ValueError as e:
        print(f"device_tests: {e}", file=sys.stderr)
        sys.exit(2)
    extra = [a for a in sys.argv[1:] if a.startswith("-")]
    args = [str(Path(__file__).parent), "-q", *extra] + [f"--device={s}" for s in specs]
    sys.exit(pytest.main(args))
