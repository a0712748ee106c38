"""Providers' official JavaScript SDKs, run with node, as oracles for signature tests.

Packages are installed with npm once into a cache directory (``$HOOKGATE_TEST_NODE_DIR``). Where
node is missing the tests that need it are skipped, unless HOOKGATE_TEST_REQUIRE_NODE=1 (as
``.ci/run`` sets), which makes them fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(os.environ.get("HOOKGATE_TEST_NODE_DIR", Path.home() / ".cache" / "hookgate-tests" / "node"))

#: Reads a JSON list of items on stdin, answers a JSON list of results: ``handle`` is the body
#: of an async function of one item.
WRAPPER = """
{imports}
let text = "";
for await (const chunk of process.stdin) text += chunk;
const out = [];
for (const item of JSON.parse(text)) {{
  out.push(await (async (item) => {{ {handle} }})(item));
}}
console.log(JSON.stringify(out));
"""


def node_script(name: str, package: str, version: str, imports: str, handle: str) -> Path:
    """A node script that can import ``package`` (installed at ``version`` if it is missing)."""
    if not (NODE_DIR / "node_modules" / package).exists():
        if not (shutil.which("node") and shutil.which("npm")):
            if os.environ.get("HOOKGATE_TEST_REQUIRE_NODE"):
                pytest.fail(f"node and npm are required for the {package} cross-check")
            pytest.skip(f"node/npm not installed: the {package} cross-check needs them")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        spec = f"{package}@{version}"
        subprocess.run(["npm", "install", "--silent", "--prefix", str(NODE_DIR), spec], check=True, timeout=300)
    script = NODE_DIR / f"{name}.mjs"
    script.write_text(WRAPPER.format(imports=imports, handle=handle))
    return script


def run_node(script: Path, items: list[dict[str, Any]]) -> list[Any]:
    result = subprocess.run(
        ["node", str(script)], input=json.dumps(items), capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(result.stdout)
