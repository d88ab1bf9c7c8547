"""tests/fixtures/ is a byte-for-byte copy of the recorded ground truth in ../shared/fixtures
(DESIGN.md 7) that the tests read, so a clone of the repository alone runs the suite. Every copied
file must still equal its original; when ../shared is not beside the repository there is nothing to
compare with, and the check says so instead of passing."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_fixtures import (
    FIXTURES,
    KUBE_API,
    P4RUNTIME_BMV2,
    RECORDED_CLUSTER,
    SHARED_FIXTURES,
)


def copied_files(copy: Path) -> list[Path]:
    """The copied files, relative to `copy`: everything in its folders (the top-level README.md
    says where the copy comes from and has no original)."""
    return sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file() and p.parent != copy)


def differences(copy: Path, original: Path) -> list[str]:
    """One line per copied file that is not byte-identical to its original."""
    out = []
    for rel in copied_files(copy):
        source = original / rel
        if not source.is_file():
            out.append(f"{rel}: not in {original} (renamed or removed there?)")
        elif source.read_bytes() != (copy / rel).read_bytes():
            out.append(f"{rel}: differs from {source}")
    return out


def test_the_copy_holds_what_the_tests_read() -> None:
    names = {str(p) for p in copied_files(FIXTURES)}
    for folder in (KUBE_API, P4RUNTIME_BMV2, RECORDED_CLUSTER):
        assert f"{folder.name}/README.md" in names  # the recordings' provenance and surprises
    assert len(list(KUBE_API.glob("[0-9][0-9]-*.json"))) == 12  # the replay sends every file
    assert (RECORDED_CLUSTER / "cluster.yaml").is_file()
    assert (RECORDED_CLUSTER / "expected-replicas.json").is_file()
    assert (P4RUNTIME_BMV2 / "transcript-program.p4info.txtpb").is_file()


@pytest.mark.skipif(
    not SHARED_FIXTURES.is_dir(),
    reason=f"{SHARED_FIXTURES} is not present (a clone without ../shared beside it): "
    "nothing to compare tests/fixtures/ with",
)
def test_every_copied_file_equals_its_recorded_original() -> None:
    files = copied_files(FIXTURES)
    assert len(files) >= 20
    assert differences(FIXTURES, SHARED_FIXTURES) == [], (
        "tests/fixtures/ no longer matches ../shared/fixtures: copy the changed files again "
        "(see tests/fixtures/README.md)"
    )


def test_the_comparison_finds_a_changed_byte_and_a_missing_original(tmp_path: Path) -> None:
    copy, original = tmp_path / "copy", tmp_path / "original"
    for root in (copy, original):
        (root / "kube-api").mkdir(parents=True)
        (root / "kube-api" / "01.json").write_bytes(b'{"a": 1}\n')
    (copy / "README.md").write_text("about the copy, no original\n")
    assert differences(copy, original) == []

    (original / "kube-api" / "01.json").write_bytes(b'{"a": 1} \n')  # one byte more
    (copy / "kube-api" / "02.json").write_bytes(b"{}")
    assert differences(copy, original) == [
        f"kube-api/01.json: differs from {original / 'kube-api' / '01.json'}",
        f"kube-api/02.json: not in {original} (renamed or removed there?)",
    ]
