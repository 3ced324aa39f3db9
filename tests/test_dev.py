"""dev.py: the lock it installs from (with --no-deps) must pin every requirement it declares."""

from __future__ import annotations

import dev

PYPROJECT = """
[project]
name = "example"
dependencies = ["Django>=5.2,<5.3", "drf-spectacular[sidecar]>=0.28", "zope.interface"]

[project.optional-dependencies]
dev = ["pytest_django>=4.9", "msgpack>=1.0,<2"]
docs = ["sphinx"]
"""
LOCK = """\
django==5.2.1 \\
    --hash=sha256:00
    # via example
drf-spectacular==0.28.0 \\
    --hash=sha256:00
pytest-django==4.11.1 \\
    --hash=sha256:00
zope-interface==7.2 \\
    --hash=sha256:00
"""


def test_a_requirement_the_lock_does_not_pin_is_named():
    # Names compare as PEP 503 normalizes them; an extra dev.py does not install is not asked.
    assert dev.unpinned_requirements(PYPROJECT, ("dev",), LOCK) == ["msgpack>=1.0,<2"]
    assert dev.unpinned_requirements(PYPROJECT, (), LOCK) == []
    assert dev.unpinned_requirements(PYPROJECT, ("dev", "docs"), LOCK) == [
        "msgpack>=1.0,<2",
        "sphinx",
    ]


def test_the_projects_lock_pins_every_requirement_dev_py_installs():
    lock_text = dev.LOCK.read_text()
    for path, extras in dev.LOCKED_MANIFESTS.items():
        assert dev.unpinned_requirements(path.read_text(), extras, lock_text) == [], path


def test_an_out_of_date_lock_is_reported_saying_to_run_dev_py_lock(tmp_path, monkeypatch):
    stale = tmp_path / "dev.lock"
    stale.write_text(
        "\n".join(line for line in dev.LOCK.read_text().splitlines() if "msgspec==" not in line)
    )
    monkeypatch.setattr(dev, "LOCK", stale)
    problems = dev.lock_problems()
    assert problems == ["pyproject.toml requires msgspec>=0.18,<1, which dev.lock does not pin"], (
        problems
    )
    monkeypatch.undo()
    message = dev.lock_problems_message(problems)
    assert "requirements/dev.lock is out of date" in message
    assert "python3 dev.py lock" in message
