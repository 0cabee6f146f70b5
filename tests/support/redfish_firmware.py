"""sushy-emulator with a working firmware UpdateService: a test BMC for firmware campaigns.

Run as a program (``python -m tests.support.redfish_firmware CONFIG``); tests use
:class:`tests.support.firmware_bmc.FirmwareBmc`, which writes CONFIG and starts it.

What sushy-tools 2.2 offers, and why this extension exists (checked by
``tests/firmware/test_emulator.py`` against the plain ``sushy-emulator --fake``):
its UpdateService resource is a static template (``HttpPushUri`` points at a
FirmwareInventory it does not serve); ``SimpleUpdate`` requires ``Targets``, never
downloads ``ImageURI``, and with the fake driver answers 500 ("Failed fetching BIOS
information": only the libvirt driver implements ``get_versions``); its only task
is a static ``Tasks/42`` that is always ``Completed``; there is no
FirmwareInventory, no ``MultipartHttpPushUri`` and no SessionService.

The emulator is a Flask application run through its own ``main()``; its documented
ways in are the Flask configuration file (``--config``, read with
``config.from_pyfile``) and the WSGI app object ``sushy_tools.emulator.main:app``
(the docs run it under gunicorn). This module keeps everything the emulator does
(systems, power with the fake driver's 1–11 s delays, boot override, managers) and,
on that app object, with Flask's own extension API:

- registers a blueprint serving ``UpdateService/FirmwareInventory`` (members from
  the config's ``VETTING_FW_INVENTORY``), ``TaskService/Tasks/<n>`` whose tasks
  really progress (``New`` → ``Running`` → ``Completed``/``Exception``) in a thread,
  ``MultipartHttpPushUri`` (when ``VETTING_FW_MULTIPART``), and ``SessionService``
  with sessions (``X-Auth-Token``, ``DELETE`` to close);
- replaces the views of the service root (links to the SessionService), the
  UpdateService resource and ``SimpleUpdate`` (which now downloads ``ImageURI``);
- wraps ``ComputerSystem.Reset`` so an image installed with ``apply: on_reset``
  becomes active once the system is back on;
- authenticates in a ``before_request`` handler: HTTP Basic against the bcrypt
  htpasswd file (as the emulator's own middleware does) or a session token.

A "firmware package" for this BMC is a header line ``VETTING-FW {json}`` then any
bytes. The header says which inventory item it updates and how the BMC behaves:
``{"id": "BIOS", "version": "1.1.0", "apply": "immediate" | "on_reset",
"install_s": 1.0, "fail": "message the task ends with"}``. Anything else is refused
by the task like a real BMC refuses a corrupt package.

Everything the BMC sees is appended to ``events.jsonl`` in the state directory
(sessions opened and closed, updates received, images downloaded, task states,
resets), for the tests to assert on.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HEADER = b"VETTING-FW "


def main(config_path: str) -> int:
    os.environ["SUSHY_EMULATOR_CONFIG"] = config_path
    import bcrypt
    import flask
    from sushy_tools.emulator import main as emulator

    app = emulator.app
    app.configure(config_file=config_path)
    cfg = app.config
    state_dir = Path(cfg["SUSHY_EMULATOR_STATE_DIR"])
    log_path = state_dir / "events.jsonl"
    lock = threading.Lock()
    inventory: dict[str, dict[str, Any]] = {
        k: {"Name": v["Name"], "Version": v["Version"], "Updateable": v.get("Updateable", True)}
        for k, v in cfg["VETTING_FW_INVENTORY"].items()
    }
    pending: dict[str, str] = {}  # inventory id -> version active after the next reset
    reset_seen = {"count": 0}
    tasks: dict[str, dict[str, Any]] = {}
    task_ids = itertools.count(100)
    sessions: dict[str, str] = {}  # token -> session id
    session_ids = itertools.count(1)
    users = _htpasswd(Path(cfg["VETTING_FW_AUTH_FILE"]))

    def record(event: str, **data: Any) -> None:
        with lock, log_path.open("a") as f:
            f.write(json.dumps({"event": event, "t": time.time(), **data}) + "\n")

    def error(status: int, message: str) -> flask.Response:
        body = {"error": {"code": "Base.1.8.GeneralError", "message": message,
                          "@Message.ExtendedInfo": [{"MessageId": "Base.1.8.GeneralError", "Message": message}]}}
        return flask.Response(json.dumps(body), status=status, mimetype="application/json")

    # ----------------------------------------------------------------- auth
    @app.before_request
    def authenticate() -> Any:
        path = flask.request.path.rstrip("/")
        if path in ("/redfish/v1", "/redfish") or (path == "/redfish/v1/SessionService/Sessions" and flask.request.method == "POST"):
            return None
        token = flask.request.headers.get("X-Auth-Token")
        if token is not None:
            return None if token in sessions else error(401, "session token is not valid (expired or closed)")
        header = flask.request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if user in users and bcrypt.checkpw(password.encode(), users[user]):
                return None
        return error(401, "authentication required")

    # ----------------------------------------------------------------- sessions
    bp = flask.Blueprint("vetting_firmware", __name__)

    def root() -> Any:
        doc = json.loads(emulator.app.render_template("root.json"))
        doc["SessionService"] = {"@odata.id": "/redfish/v1/SessionService"}
        doc["TaskService"] = {"@odata.id": "/redfish/v1/TaskService"}
        doc["Links"] = {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
        return flask.jsonify(doc)

    app.view_functions["root_resource"] = root

    @bp.route("/redfish/v1/SessionService", methods=["GET"])
    def session_service() -> Any:
        return flask.jsonify({"@odata.id": "/redfish/v1/SessionService", "Id": "SessionService",
                              "ServiceEnabled": True, "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}})

    @bp.route("/redfish/v1/SessionService/Sessions", methods=["GET", "POST"])
    def session_collection() -> Any:
        if flask.request.method == "GET":
            members = [{"@odata.id": f"/redfish/v1/SessionService/Sessions/{sid}"} for sid in sessions.values()]
            return flask.jsonify({"Members": members, "Members@odata.count": len(members)})
        body = flask.request.get_json(silent=True) or {}
        user, password = str(body.get("UserName", "")), str(body.get("Password", ""))
        if user not in users or not bcrypt.checkpw(password.encode(), users[user]):
            record("session_refused", user=user)
            return error(401, "invalid user name or password")
        sid = str(next(session_ids))
        token = base64.b32encode(os.urandom(15)).decode()
        sessions[token] = sid
        record("session_created", session=sid, user=user)
        uri = f"/redfish/v1/SessionService/Sessions/{sid}"
        resp = flask.jsonify({"@odata.id": uri, "Id": sid, "UserName": user})
        resp.status_code = 201
        resp.headers["X-Auth-Token"] = token
        resp.headers["Location"] = uri
        return resp

    @bp.route("/redfish/v1/SessionService/Sessions/<sid>", methods=["GET", "DELETE"])
    def session_member(sid: str) -> Any:
        token = next((t for t, s in sessions.items() if s == sid), None)
        if token is None:
            return error(404, f"no session {sid}")
        if flask.request.method == "DELETE":
            del sessions[token]
            record("session_deleted", session=sid)
            return "", 204
        return flask.jsonify({"@odata.id": f"/redfish/v1/SessionService/Sessions/{sid}", "Id": sid})

    # ----------------------------------------------------------------- inventory
    def apply_pending() -> None:
        """An image staged for the next reset is active once the system is on again."""
        if not pending or not reset_seen["count"]:
            return
        systems = app.systems
        if all(systems.get_power_state(s) == "On" for s in systems.systems):
            with lock:
                for item, version in pending.items():
                    inventory[item]["Version"] = version
                pending.clear()
            record("activated", inventory={k: v["Version"] for k, v in inventory.items()})

    @bp.route("/redfish/v1/UpdateService/FirmwareInventory", methods=["GET"])
    def firmware_inventory() -> Any:
        apply_pending()
        members = [{"@odata.id": f"/redfish/v1/UpdateService/FirmwareInventory/{k}"} for k in inventory]
        return flask.jsonify({"@odata.id": "/redfish/v1/UpdateService/FirmwareInventory", "Name": "Firmware Inventory",
                              "Members": members, "Members@odata.count": len(members)})

    @bp.route("/redfish/v1/UpdateService/FirmwareInventory/<item>", methods=["GET"])
    def firmware_item(item: str) -> Any:
        apply_pending()
        if item not in inventory:
            return error(404, f"no firmware inventory item {item}")
        v = inventory[item]
        return flask.jsonify({"@odata.id": f"/redfish/v1/UpdateService/FirmwareInventory/{item}",
                              "@odata.type": "#SoftwareInventory.v1_3_0.SoftwareInventory", "Id": item,
                              "Name": v["Name"], "Version": v["Version"], "Updateable": v["Updateable"],
                              "Status": {"State": "Enabled", "Health": "OK"}})

    def update_service() -> Any:
        doc: dict[str, Any] = {
            "@odata.id": "/redfish/v1/UpdateService", "@odata.type": "#UpdateService.v1_11_0.UpdateService",
            "Id": "UpdateService", "Name": "Update Service", "ServiceEnabled": True,
            "FirmwareInventory": {"@odata.id": "/redfish/v1/UpdateService/FirmwareInventory"}, "Actions": {},
        }
        if cfg.get("VETTING_FW_SIMPLE", True):
            doc["Actions"]["#UpdateService.SimpleUpdate"] = {
                "target": "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
                "TransferProtocol@Redfish.AllowableValues": ["HTTP", "HTTPS"]}
        if cfg.get("VETTING_FW_MULTIPART", False):
            doc["MultipartHttpPushUri"] = "/redfish/v1/UpdateService/upload"
        return flask.jsonify(doc)

    app.view_functions["UpdateService.update_service_resource"] = update_service

    # ----------------------------------------------------------------- tasks
    def task_doc(tid: str) -> dict[str, Any]:
        t = tasks[tid]
        return {"@odata.id": f"/redfish/v1/TaskService/Tasks/{tid}", "@odata.type": "#Task.v1_4_3.Task", "Id": tid,
                "Name": f"Update task {tid}", "TaskState": t["state"], "TaskStatus": t["status"],
                "PercentComplete": t["percent"], "Messages": t["messages"]}

    def set_task(tid: str, state: str, percent: int, message: str, message_id: str = "Update.1.0.OperationTransitionedToJob",
                 status: str = "OK") -> None:
        with lock:
            tasks[tid].update(state=state, percent=percent, status=status)
            tasks[tid]["messages"].append({"MessageId": message_id, "Message": message})
        record("task", task=tid, state=state, percent=percent, message=message)

    def run_task(tid: str, fetch: Any, targets: list[str]) -> None:
        try:
            set_task(tid, "Running", 0, "downloading the image" if callable(fetch) else "image received")
            data = fetch() if callable(fetch) else fetch
            if callable(fetch):
                record("image_downloaded", task=tid, bytes=len(data))
            if not data.startswith(HEADER):
                return set_task(tid, "Exception", 0, "the image is not a firmware package for this system",
                                "Update.1.0.VerificationFailed", "Critical")
            header = json.loads(data[len(HEADER):data.index(b"\n")])
            item = header["id"]
            if item not in inventory:
                return set_task(tid, "Exception", 0, f"the package is for {item}, which this system does not have",
                                "Update.1.0.VerificationFailed", "Critical")
            uri = f"/redfish/v1/UpdateService/FirmwareInventory/{item}"
            if targets and uri not in targets:
                return set_task(tid, "Exception", 0, f"the package updates {item}, not the targets {targets}",
                                "Update.1.0.TargetDetermined", "Critical")
            steps = 4
            for i in range(1, steps + 1):
                time.sleep(float(header.get("install_s", 1.0)) / steps)
                set_task(tid, "Running", int(100 * i / (steps + 1)), f"installing {item} {header['version']}",
                         "Update.1.0.ApplyingOnComponent")
            if header.get("fail"):
                return set_task(tid, "Exception", 100, str(header["fail"]), "Update.1.0.ApplyFailed", "Critical")
            if header.get("apply", "immediate") == "on_reset":
                with lock:
                    pending[item] = header["version"]
                return set_task(tid, "Completed", 100, f"{item} {header['version']} is staged; reset the system to activate it",
                                "Base.1.8.ResetRequired")
            with lock:
                inventory[item]["Version"] = header["version"]
            set_task(tid, "Completed", 100, f"{item} updated to {header['version']}", "Update.1.0.UpdateSuccessful")
        except Exception as exc:  # the download failed, a bad header...
            set_task(tid, "Exception", 0, f"update failed: {type(exc).__name__}: {exc}", "Update.1.0.ApplyFailed", "Critical")

    def start_task(fetch: Any, targets: list[str]) -> Any:
        tid = str(next(task_ids))
        with lock:
            tasks[tid] = {"state": "New", "status": "OK", "percent": 0, "messages": []}
        threading.Thread(target=run_task, args=(tid, fetch, targets), daemon=True).start()
        resp = flask.jsonify(task_doc(tid))
        resp.status_code = 202
        resp.headers["Location"] = f"/redfish/v1/TaskService/Tasks/{tid}"
        return resp

    def simple_update() -> Any:
        if not cfg.get("VETTING_FW_SIMPLE", True):
            return error(404, "SimpleUpdate is not offered")
        body = flask.request.get_json(silent=True) or {}
        image_uri = body.get("ImageURI")
        if not image_uri:
            return error(400, "ImageURI is required")
        targets = list(body.get("Targets") or [])
        record("simple_update", image_uri=image_uri, targets=targets, protocol=body.get("TransferProtocol"))

        def fetch() -> bytes:
            with urllib.request.urlopen(image_uri, timeout=30) as r:  # noqa: S310 - the test's loopback server
                return r.read()

        return start_task(fetch, targets)

    app.view_functions["UpdateService.update_service_simple_update"] = simple_update

    @bp.route("/redfish/v1/UpdateService/upload", methods=["POST"])
    def multipart_push() -> Any:
        if not cfg.get("VETTING_FW_MULTIPART", False):
            return error(404, "multipart push is not offered")
        params = flask.request.files.get("UpdateParameters") or flask.request.form.get("UpdateParameters")
        image = flask.request.files.get("UpdateFile")
        if params is None or image is None:
            return error(400, "a multipart push needs the parts UpdateParameters and UpdateFile")
        parameters = json.loads(params.read() if hasattr(params, "read") else params)
        data = image.read()
        targets = list(parameters.get("Targets") or [])
        record("multipart_push", filename=image.filename, bytes=len(data), targets=targets,
               apply_time=parameters.get("@Redfish.OperationApplyTime"))
        return start_task(data, targets)

    @bp.route("/redfish/v1/TaskService/Tasks", methods=["GET"])
    def task_collection() -> Any:
        members = [{"@odata.id": f"/redfish/v1/TaskService/Tasks/{t}"} for t in tasks]
        return flask.jsonify({"Members": members, "Members@odata.count": len(members)})

    @bp.route("/redfish/v1/TaskService/Tasks/<tid>", methods=["GET"])
    def task(tid: str) -> Any:
        if tid not in tasks:
            return error(404, f"no task {tid}")
        return flask.jsonify(task_doc(tid))

    reset_view = app.view_functions["system_reset_action"]

    def reset(identity: str) -> Any:
        result = reset_view(identity=identity)
        reset_type = (flask.request.get_json(silent=True) or {}).get("ResetType")
        reset_seen["count"] += 1
        record("reset", system=identity, reset_type=reset_type)
        return result

    app.view_functions["system_reset_action"] = reset
    app.register_blueprint(bp)
    sys.argv = ["sushy-emulator", "--config", config_path]
    return emulator.main()


def _htpasswd(path: Path) -> dict[str, bytes]:
    users = {}
    for line in path.read_text().splitlines():
        user, _, digest = line.strip().partition(":")
        if user:
            users[user] = digest.encode()
    return users


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
