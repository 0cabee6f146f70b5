"""``vetting firmware …`` against a real server: a plan created from YAML whose artifact
is a local file (hashed, added, pinned), started, shown per host; artifacts and hosts
listed; a bad plan refused with the field named."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from tests.support.firmware_bmc import package

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def cli(fw, *args: str, check: bool = True) -> tuple[int, str]:
    argv = [sys.executable, "-m", "vetting_server", "firmware", *args, "--server", str(fw.client.base_url), "--token", fw.token]
    r = await anyio.run_process(argv, check=False)
    out = r.stdout.decode() + r.stderr.decode()
    assert not check or r.returncode == 0, out
    return r.returncode, out


async def test_plan_from_yaml_with_a_local_image_then_progress_per_host(fw, bmc_factory, tmp_path: Path):
    await fw.bmc_host("node1", bmc_factory("a", multipart=True))
    await fw.bmc_host("node2", bmc_factory("b", multipart=True))
    (tmp_path / "images").mkdir()
    image = tmp_path / "images" / "bios-1.1.0.bin"
    image.write_bytes(package("BIOS", "1.1.0", install_s=0.2))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: bios-1.1.0\n"
        "targets: [node1, node2]\n"
        "artifacts:\n"
        "  - {component: bios, version: \"1.1.0\", file: images/bios-1.1.0.bin}\n"
        "policy: {max_concurrent: 2}\n"
    )
    _, out = await cli(fw, "plan", "create", str(plan), "--start")
    assert "added bios-1.1.0.bin as artifact 1 (bios 1.1.0)" in out
    assert "plan 1 'bios-1.1.0': running" in out
    await fw.wait_plan(1, "completed")
    _, out = await cli(fw, "plan", "show", "1")
    assert "plan 1 'bios-1.1.0': completed (2 completed)" in out
    assert "✔ node1" in out and "done: bios 1.0.0 → 1.1.0" in out and "✔ node2" in out
    _, out = await cli(fw, "plan", "list")
    assert "bios-1.1.0" in out and "2 completed" in out
    # the same file again: already in the store, pinned, nothing uploaded twice
    _, out = await cli(fw, "plan", "create", str(plan))
    assert "added" not in out and "plan 2 'bios-1.1.0': draft" in out
    _, out = await cli(fw, "artifact", "list")
    assert out.count("bios-1.1.0.bin") == 1
    _, out = await cli(fw, "host", "inventory", "node2")
    assert "bios       BIOS  System BIOS   1.1.0" in out
    plan.write_text(plan.read_text().replace("max_concurrent: 2", "max_concurrent: 0"))
    code, out = await cli(fw, "plan", "create", str(plan), check=False)
    assert code != 0 and "max_concurrent" in out


@pytest.fixture
def database_url(tmp_path) -> str:
    """The CLI only talks HTTP: one engine is enough here."""
    return f"sqlite:///{tmp_path / 'vetting.db'}"
