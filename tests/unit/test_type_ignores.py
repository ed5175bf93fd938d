"""Every `type: ignore` in the packages names its error code and says why on the same line
(docs/architecture.md#gates): `# type: ignore[attr-defined]  # nats-py's KV watcher is untyped`."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.test_layers import MODULES, ROOT

IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]+\])?(?P<rest>.*)$")


def test_every_type_ignore_has_a_code_and_a_reason() -> None:
    bare = []
    for path in MODULES.values():
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            found = IGNORE.search(line)
            if found and (not found["codes"] or not re.match(r"\s*#\s*\S", found["rest"])):
                bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "say which error and why:\n" + "\n".join(bare)
