"""Coalition Sync through the generated Python bindings, against a real relay.

Two devices (a mine action centre tablet and an operator's field tablet) enroll with invites,
edit offline, sync, and must end with each other's edits and the same report; a listener on
the operator's background sync must hear a change the mine action centre makes.

Run by mobile/tests/run.sh, which builds everything and sets:
  COALITION_BINDINGS   directory of coalition_mobile.py and libcoalition_mobile.so
  COALITION_SERVER     path of the coalition-server binary
Exits non-zero on the first failed check. Binds only to 127.0.0.1.
"""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.environ["COALITION_BINDINGS"])
import coalition_mobile as cm  # noqa: E402

SERVER = os.environ["COALITION_SERVER"]
AS_OF = "2026-12-31"
SQUARE = (
    '{"type":"Polygon","coordinates":[[[18.40,43.80],[18.41,43.80],'
    '[18.41,43.81],[18.40,43.81],[18.40,43.80]]]}'
)
# Every wait is bounded: a hang is a failure, not a stuck CI run.
LIMIT = 60.0


def admin(data, *args):
    out = subprocess.run(
        [SERVER, "admin", "--data", data, *args],
        check=True, capture_output=True, text=True, timeout=LIMIT,
    )
    return out.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_relay(data, log):
    """Starts the relay on a free port of 127.0.0.1; returns (process, url)."""
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [SERVER, "serve", "--listen", f"127.0.0.1:{port}", "--data", data],
            stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return proc, url
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError("the relay did not start")


class Listener(cm.SyncListener):
    """Collects what background sync reports; called on a library thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.changes = []
        self.statuses = []

    def on_document_changed(self, change):
        with self.lock:
            self.changes.append(change)

    def on_sync_status(self, status):
        with self.lock:
            self.statuses.append(status)

    def snapshot(self):
        with self.lock:
            return list(self.changes), list(self.statuses)


async def wait_for(what, predicate, limit=LIMIT):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check(condition, message):
    if not condition:
        raise AssertionError(message)


async def expect_error(kind, call):
    try:
        await call
    except kind as e:
        return e
    raise AssertionError(f"expected {kind.__name__}")


async def scenario(tmp, url, coalition, nmac_invite, operator_invite):
    nmac = cm.CoalitionClient.open(os.path.join(tmp, "bhmac-tablet"))
    operator = cm.CoalitionClient.open(os.path.join(tmp, "npa-tablet"))

    # A wrong invite is refused with the relay's code, and nothing is stored.
    refused = await expect_error(
        cm.CoalitionError.InviteRefused, operator.enroll(url, "inv-nope", "npa-tablet"))
    print("refused invite:", refused)
    check(await operator.identity() is None, "a refused enrollment stored an identity")

    enrolled = await nmac.enroll(url, nmac_invite, "bhmac-tablet")
    check(enrolled.identity.org == "BHMAC" and enrolled.role == "nmac", f"nmac: {enrolled}")
    check(enrolled.coalitions == [coalition], f"coalitions: {enrolled.coalitions}")
    enrolled = await operator.enroll(url, operator_invite, "npa-tablet")
    check(enrolled.identity.org == "NPA" and enrolled.role == "operator", f"op: {enrolled}")

    # First sync fetches the coalition the relay created.
    for device in (nmac, operator):
        await device.sync_now()
    listed = await nmac.coalitions()
    check([c.id for c in listed] == [coalition], f"coalitions: {listed}")
    check(listed[0].name == "BiH CCM coalition" and listed[0].synced, f"{listed[0]}")

    # The mine action centre adds a hazard area; the operator gets it.
    area_id = await nmac.add_hazard_area(coalition, cm.HazardAreaInput(
        code="BA-HA-0001", name="Brdo", admin_area="Tuzla", geometry=SQUARE,
        hazard_class=cm.HazardClass.CHA, baseline_m2=12000, hazard_types=["submunitions"],
        priority=3, status=cm.AreaStatus.ACTIVE))
    await nmac.sync_now()
    await operator.sync_now()
    areas = await operator.hazard_areas(coalition)
    check([a.id for a in areas] == [area_id], f"operator areas: {areas}")

    # Rights and rules are checked before anything is written.
    e = await expect_error(cm.CoalitionError.NotAllowed, operator.edit_hazard_area(
        coalition, area_id, cm.HazardAreaChanges(priority=1)))
    print("operator editing an area:", e)
    e = await expect_error(cm.CoalitionError.Invalid, operator.record_land_release(
        coalition, cm.LandReleaseInput(
            area_id=area_id, method=cm.ReleaseMethod.NTS, cancelled_m2=0, reduced_m2=0,
            cleared_m2=500, items={}, date_of_information="2026-11-20")))
    check(e.field.startswith("releases/") and e.field.endswith("/cleared_m2"), f"field: {e}")
    print("invalid entry:", e)
    e = await expect_error(cm.CoalitionError.NotFound, nmac.edit_hazard_area(
        coalition, "no-such-area", cm.HazardAreaChanges(priority=1)))
    check(e.what == "hazard area", f"not found: {e}")
    e = await expect_error(cm.CoalitionError.Invalid, nmac.report(coalition, "31/12/2026"))
    check(e.field == "as_of", f"as_of: {e}")

    # Offline on both devices.
    await nmac.edit_hazard_area(coalition, area_id, cm.HazardAreaChanges(priority=1))
    await nmac.set_narrative(coalition, cm.NarrativeSection.SUMMARY, "Clear Brdo by 2027.")
    entry_id = await operator.record_land_release(coalition, cm.LandReleaseInput(
        area_id=area_id, method=cm.ReleaseMethod.CLEARANCE, cancelled_m2=0, reduced_m2=0,
        cleared_m2=4200, items={"submunitions": 3}, date_of_information="2026-11-20",
        location="north slope"))
    await operator.add_comment(coalition, cm.CommentKind.FIELD_NOTE, area_id, "Mud on the access road.")
    status = await operator.status()
    check(status.unsent_documents >= 2, f"operator unsent: {status}")

    # Sync both; the first to sync gets the other's edits on its next sync.
    await nmac.sync_now()
    await operator.sync_now()
    await nmac.sync_now()

    areas = await operator.hazard_areas(coalition)
    check(areas[0].fields.priority == 1, f"operator sees the priority edit: {areas}")
    entries = await nmac.land_release_entries(coalition)
    check([x.id for x in entries] == [entry_id], f"nmac sees the entry: {entries}")
    check(entries[0].figures.cleared_m2 == 4200 and entries[0].decision is None, f"{entries[0]}")
    a = await nmac.report(coalition, AS_OF)
    b = await operator.report(coalition, AS_OF)
    check(a.json == b.json, "both devices must produce the same report")
    check(a == b, "the key figures must be equal too")
    check(a.pending_entries == 1 and a.pending_m2 == 4200, f"pending: {a}")
    check(a.hazard_areas == 1 and a.remaining_cha_m2 == 12000, f"areas: {a}")
    history = await operator.history(coalition, cm.HistoryFilter(entity_id=area_id))
    check({h.org for h in history} == {"BHMAC"} and len(history) >= 2, f"history: {history}")
    check(await nmac.conflicts(coalition) == [], "no conflicting fields")
    check((await nmac.status()).unsent_documents == 0, "nmac has sent everything")
    check((await nmac.status()).refused_changes == [], "the relay refused nothing of the nmac's")

    # Background sync on the operator's tablet; the mine action centre approves the entry.
    listener = Listener()
    check(operator.start_background_sync(listener), "background sync starts")
    check(not operator.start_background_sync(listener), "a second start is refused")
    await wait_for("background sync in sync", lambda: any(
        s.state == cm.SyncState.IN_SYNC for s in listener.snapshot()[1]))
    await nmac.approve_land_release(coalition, entry_id, None, "2026-11-25")
    await nmac.sync_now()
    await wait_for("a remote change on the operator's tablet", lambda: any(
        c.remote and c.kind == "plan" for c in listener.snapshot()[0]))
    changes, _ = listener.snapshot()
    remote = [c for c in changes if c.remote and c.kind == "plan"][0]
    print("callback:", remote)
    check(remote.coalition_id == coalition, f"the change names its coalition: {remote}")
    check(any("BHMAC" in author for author in remote.authors), f"authors: {remote}")
    b = await operator.report(coalition, AS_OF)
    check(b.released_m2 == 4200 and b.pending_entries == 0, f"approved on the operator: {b}")
    check(b.items_destroyed == 3 and b.remaining_cha_m2 == 7800, f"figures: {b}")

    # An edit on the operator's tablet reaches the relay through background sync alone.
    note = await operator.add_comment(coalition, cm.CommentKind.COMMENT, entry_id, "Thanks.")
    await wait_for("the local edit reported", lambda: any(
        not c.remote for c in listener.snapshot()[0]))

    async def nmac_has_note():
        await nmac.sync_now()
        return note in await nmac.state_json(coalition)

    deadline = time.monotonic() + LIMIT
    while not await nmac_has_note():
        check(time.monotonic() < deadline, "background sync did not push the local edit")
        await asyncio.sleep(0.3)

    check(operator.stop_background_sync(), "background sync was running")
    await wait_for("background sync stopped", lambda: any(
        s.state == cm.SyncState.STOPPED for s in listener.snapshot()[1]))
    check(not operator.is_background_sync_running(), "stopped")
    check(not operator.stop_background_sync(), "nothing left to stop")

    a = await nmac.report(coalition, AS_OF)
    b = await operator.report(coalition, AS_OF)
    check(a.json == b.json, "same report after background sync")
    print(f"report: released {a.released_m2} m², remaining CHA {a.remaining_cha_m2} m², "
          f"{len(a.flags)} flag(s)")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "relay")
        coalition = admin(
            data, "create-coalition", "--state", "BA", "--name", "BiH CCM coalition",
            "--org", "MCA-BA", "--org-name", "Ministry of Civil Affairs", "--user", "amra")
        nmac_invite = admin(
            data, "invite", "--coalition", coalition, "--user", "dario", "--org", "BHMAC",
            "--org-name", "BH Mine Action Centre", "--role", "nmac")
        operator_invite = admin(
            data, "invite", "--coalition", coalition, "--user", "opal", "--org", "NPA",
            "--org-name", "Norwegian People's Aid", "--role", "operator")
        log_path = os.path.join(tmp, "relay.log")
        with open(log_path, "w") as log:
            relay, url = start_relay(data, log)
            try:
                asyncio.run(asyncio.wait_for(
                    scenario(tmp, url, coalition, nmac_invite, operator_invite), 300))
            except BaseException:
                with open(log_path) as f:
                    sys.stderr.write("--- relay log (tail)\n" + "".join(f.readlines()[-40:]))
                raise
            finally:
                relay.terminate()
                relay.wait(timeout=10)
    print("python bindings: OK")


if __name__ == "__main__":
    main()
