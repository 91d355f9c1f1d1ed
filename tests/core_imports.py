"""Import every module of forgetless; exit 1 if one fails other than by naming its extra.

Run under the core dependencies only (``.ci/run`` does, in a fresh virtual environment with
no extras; ``test_core_install.py`` does by hiding the optional packages): a module that
imports an optional package must either import it where it is used or raise
:class:`forgetless.errors.MissingExtraError`, which names the extra to install.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys


def main() -> int:
    import forgetless
    from forgetless.errors import MissingExtraError

    failures, needs_extra, count = [], [], 0
    for info in pkgutil.walk_packages(forgetless.__path__, "forgetless."):
        if any(part.startswith("__") for part in info.name.split(".")):
            continue
        count += 1
        try:
            importlib.import_module(info.name)
        except MissingExtraError as error:
            needs_extra.append(f"{info.name}: {error}")
        except Exception as error:  # noqa: BLE001 - report every kind of failure
            failures.append(f"{info.name}: {type(error).__name__}: {error}")
    for line in needs_extra:
        print(f"needs an extra (clean): {line}")
    for line in failures:
        print(f"FAILED: {line}")
    print(f"{count} modules, {len(needs_extra)} need an extra, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
