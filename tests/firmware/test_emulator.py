"""What the plain ``sushy-emulator --fake`` (sushy-tools) offers for firmware updates,
checked against the installed version: the reason tests/support/redfish_firmware.py
extends it. When a release grows these features this test fails, and the extension
should shrink to match."""

from __future__ import annotations

import httpx

from tests.support.bmc import SushyEmulator


def test_the_fake_driver_has_no_working_update_service(tmp_path):
    with SushyEmulator(tmp_path / "bmc", tls=False) as bmc:
        auth = ("vetting", bmc.password)

        def call(method: str, path: str, **kw) -> httpx.Response:
            return httpx.request(method, bmc.url + path, auth=auth, timeout=10, **kw)

        service = call("GET", "/redfish/v1/UpdateService").json()
        assert "MultipartHttpPushUri" not in service  # no multipart push
        inventory = service["FirmwareInventory"]["@odata.id"]
        assert call("GET", inventory).status_code == 404  # linked, not served
        simple = service["Actions"]["#UpdateService.SimpleUpdate"]["target"]
        image = {"ImageURI": "http://127.0.0.1:9/bios.bin"}
        r = call("POST", simple, json=image)
        assert r.status_code == 400 and "Targets" in r.text  # Targets are required
        r = call("POST", simple, json={**image, "Targets": [bmc.system_path]})
        # the fake driver cannot report or change versions (only libvirt's can), and the
        # image is never downloaded
        assert r.status_code == 500 and "Failed fetching BIOS information" in r.text
        assert call("GET", "/redfish/v1/TaskService/Tasks/42").json()["TaskState"] == "Completed"  # one static task
        assert call("GET", "/redfish/v1/SessionService").status_code == 404
        assert "SessionService" not in call("GET", "/redfish/v1/").json()
