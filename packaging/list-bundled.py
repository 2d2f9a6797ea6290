"""Print every Python distribution in this environment with its version and licence.

The Debian package records this list in /usr/share/doc/tokend, so an operator
can tell which aiohttp (say) a given tokend package carries.
"""

from __future__ import annotations

import sys
from importlib.metadata import Distribution, distributions

SKIPPED = {"pip", "setuptools"}


def licence_of(dist: Distribution) -> str:
    """Return the licence a distribution declares, as briefly as it says it."""
    meta = dist.metadata
    expression = meta.get_all("License-Expression")
    if expression:
        return str(expression[0])
    classifiers = [
        c.rsplit(" :: ", 1)[-1]
        for c in meta.get_all("Classifier") or []
        if c.startswith("License :: ")
    ]
    if classifiers:
        return ", ".join(classifiers)
    text = (meta.get_all("License") or [""])[0].strip()
    # Some projects paste their whole licence text into this field.
    return text if text and "\n" not in text and len(text) < 60 else "see dist-info"


def main() -> int:
    rows = sorted(
        (str(d.metadata["Name"]), d.version, licence_of(d))
        for d in distributions()
        if str(d.metadata["Name"]).lower() not in SKIPPED
    )
    width = max(len(f"{name}=={version}") for name, version, _ in rows)
    for name, version, licence in rows:
        sys.stdout.write(f"{name + '==' + version:<{width}}  {licence}\n")

    return 0


if __name__ == "__main__":
    sys.exit(main())
