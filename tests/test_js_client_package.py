"""The JavaScript client as a package: its TypeScript declarations, package.json, vendored codec.

tsc (TypeScript from package-lock.json, installed by `dev.ensure_node_tools()`) type-checks a
usage of the package against client.d.ts, and client.js against its JSDoc; `npm pack` shows
what the package ships. Without npm these skip, except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import dev

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "realtime" / "static" / "realtime"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    try:
        found = dev.ensure_node_tools()
    except subprocess.CalledProcessError as exc:  # no network for the registry, say
        found, reason = None, f"`npm ci` failed ({exc.returncode}): see its output above."
    else:
        reason = "The JavaScript package checks need npm (Node.js 18+): apt-get install npm."
    if found is None:
        if os.environ.get("CI") or os.environ.get("TRADINGRT_REQUIRE_SERVICES"):
            pytest.fail(reason + " (CI is set, so this fails instead of skipping)")
        pytest.skip(reason)
    return found


def tsc(node_modules: Path, project: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(node_modules / ".bin" / "tsc"), "-p", project],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_declarations_type_check_a_usage_of_the_package_and_refuse_misuse(node_modules):
    """usage.ts imports @tradingrt/realtime-client as a web team would; its @ts-expect-error
    lines (an unknown encoding, an unknown option, a nested filter value, a presence listener
    of the wrong shape) fail the check if the declarations accept them."""
    result = tsc(node_modules, "tests/typescript/tsconfig.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_mistake_in_a_usage_is_reported(node_modules, tmp_path):
    usage = (ROOT / "tests" / "typescript" / "usage.ts").read_text()
    (tmp_path / "usage.ts").write_text(usage + '\nclient.subscribe("orders", { throttle: 5 });\n')
    config = json.loads((ROOT / "tests" / "typescript" / "tsconfig.json").read_text())
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    (tmp_path / "node_modules").symlink_to(node_modules)
    result = tsc(node_modules, str(tmp_path / "tsconfig.json"))
    assert result.returncode != 0
    assert "'throttle' does not exist in type 'SubscribeOptions'" in result.stdout


def test_client_js_type_checks_against_its_jsdoc(node_modules):
    result = tsc(node_modules, "tests/typescript/tsconfig.client.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_declarations_name_every_export_of_the_module_and_nothing_else():
    exported = set(
        re.findall(
            r"^export (?:const|function|class) (\w+)",
            (CLIENT / "client.js").read_text(),
            re.MULTILINE,
        )
    )
    declared = set(
        re.findall(
            r"^export declare (?:const|function|class) (\w+)",
            (CLIENT / "client.d.ts").read_text(),
            re.MULTILINE,
        )
    )
    assert declared == exported


def test_the_package_ships_the_module_its_types_and_the_codec_with_its_licence(node_modules):
    npm = shutil.which("npm")
    assert npm is not None
    result = subprocess.run(
        [npm, "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (packed,) = json.loads(result.stdout)
    files = {entry["path"] for entry in packed["files"]}
    manifest = json.loads((CLIENT / "package.json").read_text())
    assert packed["name"] == manifest["name"] == "@tradingrt/realtime-client"
    assert {"client.js", "client.d.ts", "package.json"} <= files
    assert {"vendor/msgpack/index.mjs", "vendor/msgpack/LICENSE"} <= files
    assert all(
        name in {"client.js", "client.d.ts", "package.json"} or name.startswith("vendor/msgpack/")
        for name in files
    )
    assert manifest["exports"]["."] == {"types": "./client.d.ts", "default": "./client.js"}
    assert manifest["type"] == "module"


def test_the_vendored_msgpack_is_the_locked_npm_package_unmodified(node_modules):
    assert dev.vendored_msgpack_differences() == []


def test_the_dashboards_vendored_uplot_is_the_locked_npm_package_unmodified(node_modules):
    assert dev.vendored_uplot_differences() == []


def test_a_changed_or_incomplete_uplot_copy_is_reported(node_modules, tmp_path, monkeypatch):
    copy = tmp_path / "uplot"
    shutil.copytree(dev.UPLOT, copy)
    with (copy / "uPlot.esm.js").open("a") as script:
        script.write("// patched\n")
    (copy / "uPlot.min.css").unlink()
    readme = copy / "README.md"
    readme.write_text(readme.read_text().replace("uplot@", "uplot@0."))
    monkeypatch.setattr(dev, "UPLOT", copy)
    problems = dev.vendored_uplot_differences()
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    version = locked["node_modules/uplot"]["version"]
    assert problems == [
        f"vendor/uplot/README.md does not name the locked uplot@{version}",
        "differs from the npm package: vendor/uplot/uPlot.esm.js",
        "missing: vendor/uplot/uPlot.min.css",
    ], problems
