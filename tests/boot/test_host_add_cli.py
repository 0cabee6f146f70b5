"""``vetting host add --boot-provider ipmi|redfish`` against a real server process, and a
run it starts powering the host through ipmi_sim."""

from __future__ import annotations

from tests.support.bmc import IpmiSim, wait_until
from tests.support.server import ServerProcess


def test_host_add_with_a_bmc_provider_and_a_run_powers_it_on(tmp_path):
    with IpmiSim(tmp_path / "bmc") as bmc, ServerProcess(tmp_path / "srv", env={"BMC_PW": bmc.password}) as srv:
        opts = [f"--boot-option={k}={v}" for k, v in bmc.config(password_env="BMC_PW", efiboot=True).items()]
        cp = srv.cli("host", "add", "bm1", "--mac", "52:54:00:00:16:01", "--boot-provider", "ipmi", *opts, check=True)
        assert "(boot: ipmi)" in cp.stdout
        host = srv.api("GET", "/api/v1/hosts").json()["items"][0]
        # values are typed, and only the reference to the password is stored
        assert host["boot_config"] == {"address": "127.0.0.1", "port": bmc.port, "username": "vetting",
                                       "cipher_suite": 3, "password_env": "BMC_PW", "efiboot": True}
        run_id, _ = srv.start_run(host["id"], stages=["InventoryCheck"])
        run = srv.wait_state(run_id, "Booting", timeout=30)["run"]
        assert "next boot from PXE (UEFI); powered on" in run["boot_message"]
        wait_until(lambda: bmc.powered, 5, "the machine to run")
        assert bmc.boot_device == "pxe"

        cp = srv.cli("host", "add", "bm2", "--mac", "52:54:00:00:16:02", "--boot-provider", "redfish",
                     "--boot-option", "address=10.0.0.7", "--boot-option", "username=root",
                     "--boot-option", "password=calvin")
        assert cp.returncode != 0 and "never stored in a host's boot_config" in cp.stdout + cp.stderr
        assert "calvin" not in srv.log_path.read_text()
        cp = srv.cli("host", "add", "bm3", "--mac", "52:54:00:00:16:03", "--boot-provider", "ipmi",
                     "--boot-option", "address")
        assert cp.returncode != 0 and "expected KEY=VALUE" in cp.stderr
