"""The OVH API fake rejects what the real API rejects, in the shapes python-ovh reads.

Error bodies checked against what OVH answered in its clients' issue threads:
`{"errorCode": "INVALID_SIGNATURE", "httpCode": "400 Bad Request", "message": "Invalid
signature"}` (ovh/php-ovh#80), `INVALID_CREDENTIAL` "This credential is not valid"
(ovh/php-ovh#56), "This credential does not exist" and "This application key is invalid".
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import ovh
import ovh.client
import ovh.exceptions
import pytest
import requests

from clonefleet.fakes.machines import BootMode
from clonefleet.fakes.ovh import OvhFake, make_server
from clonefleet.retry import RetryPolicy, wait_until

pytestmark = pytest.mark.integration

SERVICE = "ns1234567.ip-203-0-113.eu"
FAST = RetryPolicy(first=0.005, cap=0.01, factor=1.0, jitter=0.0)
AK, AS, CK = "lab-application-key", "lab-application-secret", "lab-consumer-key"


@dataclass
class KeyMachines:
    """Records power-ons with the keys the rescue root would get."""

    calls: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        with self.lock:
            self.calls.append((server, mode, tuple(ssh_keys)))

    def power_off(self, server: str) -> None:
        with self.lock:
            self.calls.append((server, "off", ()))

    def running(self, server: str) -> BootMode | None:
        return None


@pytest.fixture
def machines() -> KeyMachines:
    return KeyMachines()


@pytest.fixture
def fake(machines: KeyMachines) -> Iterator[OvhFake]:
    server = make_server(machines, task_step=0.02).start()
    server.add_server(SERVICE, "203.0.113.10")
    ovh.client.ENDPOINTS["ovh-fake-test"] = server.url
    try:
        yield server
    finally:
        server.shutdown()


def client(ak: str = AK, secret: str = AS, ck: str = CK) -> ovh.Client:
    return ovh.Client("ovh-fake-test", ak, secret, ck)


def signed(fake: OvhFake, method: str, path: str, body: str = "", *, secret: str = AS,
           ck: str = CK, ak: str = AK) -> requests.Response:
    """A raw signed request, to see status and body as the wire carries them."""
    url = fake.url + path
    now = str(int(time.time()))
    signature = "$1$" + hashlib.sha1("+".join([secret, ck, method, url, body, now]).encode()
                                     ).hexdigest()
    headers = {"X-Ovh-Application": ak, "X-Ovh-Consumer": ck, "X-Ovh-Timestamp": now,
               "X-Ovh-Signature": signature, "Content-Type": "application/json"}
    return requests.request(method, url, data=body, headers=headers, timeout=5)


def wait_task(api: ovh.Client, task_id: int,
              seen: set[str] | None = None) -> dict[str, object]:
    """Poll a task to its end, noting every status it showed on the way."""

    def check() -> dict[str, object] | None:
        task: dict[str, object] = api.get(f"/dedicated/server/{SERVICE}/task/{task_id}")
        if seen is not None:
            seen.add(str(task["status"]))
        return task if task["status"] in ("done", "cancelled", "customerError",
                                           "ovhError") else None

    return wait_until(check, what=f"task {task_id}", timeout=5, policy=FAST)


# -- authentication -------------------------------------------------------------------------


def test_auth_time_is_unauthenticated_and_answers_the_epoch(fake: OvhFake) -> None:
    answer = requests.get(fake.url + "/auth/time", timeout=5)

    assert answer.status_code == 200
    assert abs(answer.json() - time.time()) < 5


def test_a_correct_signature_passes(fake: OvhFake) -> None:
    assert client().get("/dedicated/server") == [SERVICE]
    assert signed(fake, "GET", "/dedicated/server").json() == [SERVICE]


def test_a_wrong_secret_is_invalid_signature_in_ovhs_shape(fake: OvhFake) -> None:
    answer = signed(fake, "GET", "/dedicated/server", secret="wrong")

    assert answer.status_code == 400
    assert answer.json() == {"errorCode": "INVALID_SIGNATURE", "httpCode": "400 Bad Request",
                             "message": "Invalid signature"}
    with pytest.raises(ovh.exceptions.BadParametersError, match="Invalid signature"):
        client(secret="wrong").get("/dedicated/server")


def test_a_body_changed_after_signing_is_rejected(fake: OvhFake) -> None:
    url = fake.url + f"/dedicated/server/{SERVICE}"
    now = str(int(time.time()))
    signature = "$1$" + hashlib.sha1("+".join(
        [AS, CK, "PUT", url, '{"bootId":1}', now]).encode()).hexdigest()
    answer = requests.put(url, data='{"bootId":8}', timeout=5, headers={
        "X-Ovh-Application": AK, "X-Ovh-Consumer": CK, "X-Ovh-Timestamp": now,
        "X-Ovh-Signature": signature})

    assert answer.status_code == 400 and answer.json()["errorCode"] == "INVALID_SIGNATURE"
    assert fake.server(SERVICE).boot_id == 1


def test_an_unknown_application_key_is_invalid_key(fake: OvhFake) -> None:
    answer = signed(fake, "GET", "/dedicated/server", ak="nope")

    assert answer.status_code == 403
    assert answer.json() == {"errorCode": "INVALID_KEY", "httpCode": "403 Forbidden",
                             "message": "This application key is invalid"}
    with pytest.raises(ovh.exceptions.InvalidKey):
        client(ak="nope").get("/dedicated/server")


def test_an_unknown_consumer_key_is_not_credential(fake: OvhFake) -> None:
    answer = signed(fake, "GET", "/dedicated/server", ck="nope")

    assert answer.status_code == 403
    assert answer.json()["errorCode"] == "NOT_CREDENTIAL"
    with pytest.raises(ovh.exceptions.NotCredential, match="This credential does not exist"):
        client(ck="nope").get("/dedicated/server")


def test_a_consumer_key_not_validated_is_invalid_credential(fake: OvhFake) -> None:
    fake.add_credential(AK, AS, "pending", state="pendingValidation")

    with pytest.raises(ovh.exceptions.InvalidCredential, match="This credential is not valid"):
        client(ck="pending").get("/dedicated/server")


def test_calls_outside_the_access_rules_are_not_granted(fake: OvhFake) -> None:
    fake.add_credential(AK, AS, "reader", rules=[("GET", "/dedicated/server"),
                                                ("GET", "/dedicated/server/*")])
    reader = client(ck="reader")

    assert reader.get(f"/dedicated/server/{SERVICE}")["name"] == SERVICE
    with pytest.raises(ovh.exceptions.NotGrantedCall, match="has not been granted"):
        reader.post(f"/dedicated/server/{SERVICE}/reboot")
    assert fake.tasks == {}


def test_no_credentials_at_all_is_401(fake: OvhFake) -> None:
    answer = requests.get(fake.url + "/dedicated/server", timeout=5)

    assert answer.status_code == 401


# -- servers and boots ---------------------------------------------------------------------


def test_a_server_reads_in_the_shape_of_dedicated_server(fake: OvhFake) -> None:
    server = client().get(f"/dedicated/server/{SERVICE}")

    assert {"name", "serverId", "ip", "bootId", "state", "powerState", "datacenter",
            "rescueSshKey", "rescueMail", "rootDevice", "monitoring"} <= set(server)
    assert (server["ip"], server["state"], server["powerState"]) == ("203.0.113.10", "ok",
                                                                     "poweron")


def test_an_unknown_service_is_not_found(fake: OvhFake) -> None:
    with pytest.raises(ovh.exceptions.ResourceNotFoundError, match="does not exist"):
        client().get("/dedicated/server/ns9.ip-198-51-100.eu")
    answer = signed(fake, "GET", "/dedicated/server/ns9.ip-198-51-100.eu")
    assert answer.status_code == 404 and answer.json()["class"] == "Client::NotFound"


def test_boots_filter_by_type_and_kernel_and_differ_per_server(fake: OvhFake) -> None:
    fake.add_server("ns2.ip-198-51-100.eu", "198.51.100.20")
    api = client()

    rescue = api.get(f"/dedicated/server/{SERVICE}/boot", bootType="rescue")
    customer = api.get(f"/dedicated/server/{SERVICE}/boot", bootType="rescue",
                       kernel="rescue-customer")
    other = api.get("/dedicated/server/ns2.ip-198-51-100.eu/boot", bootType="rescue")

    assert len(rescue) == 3 and customer[0] in rescue and len(customer) == 1
    assert set(other).isdisjoint(rescue)
    assert api.get(f"/dedicated/server/{SERVICE}/boot/{customer[0]}") == {
        "bootId": customer[0], "bootType": "rescue", "kernel": "rescue-customer",
        "description": "Customer rescue system (Linux)"}


def test_an_unknown_boot_id_is_rejected_on_read_and_on_update(fake: OvhFake) -> None:
    api = client()

    with pytest.raises(ovh.exceptions.ResourceNotFoundError):
        api.get(f"/dedicated/server/{SERVICE}/boot/999")
    with pytest.raises(ovh.exceptions.BadParametersError):
        api.put(f"/dedicated/server/{SERVICE}", bootId=999)
    with pytest.raises(ovh.exceptions.BadParametersError, match="not valid for type long"):
        api.put(f"/dedicated/server/{SERVICE}", bootId="rescue")
    assert fake.server(SERVICE).boot_id == 1


def test_read_only_properties_cannot_be_written(fake: OvhFake) -> None:
    with pytest.raises(ovh.exceptions.BadParametersError, match="ip"):
        client().put(f"/dedicated/server/{SERVICE}", ip="198.51.100.1")


def test_ips_lists_the_servers_addresses(fake: OvhFake) -> None:
    assert client().get(f"/dedicated/server/{SERVICE}/ips") == ["203.0.113.10/32"]


# -- reboot tasks ----------------------------------------------------------------------------


def test_a_reboot_on_the_rescue_netboot_boots_rescue_with_the_key(
        fake: OvhFake, machines: KeyMachines) -> None:
    api = client()
    rescue = api.get(f"/dedicated/server/{SERVICE}/boot", bootType="rescue",
                     kernel="rescue-customer")[0]
    assert api.put(f"/dedicated/server/{SERVICE}", bootId=rescue,
                   rescueSshKey="ssh-ed25519 AAAA operator") is None

    task = api.post(f"/dedicated/server/{SERVICE}/reboot")

    assert task["function"] == "hardReboot" and task["status"] == "init"
    assert {"taskId", "comment", "startDate", "lastUpdate", "doneDate"} <= set(task)
    statuses: set[str] = set()
    assert wait_task(api, task["taskId"], statuses)["status"] == "done"
    assert "done" in statuses and statuses <= {"init", "todo", "doing", "done"}
    assert len(statuses) >= 2  # it progressed, it did not jump
    assert machines.calls[-1] == (SERVICE, "rescue", ("ssh-ed25519 AAAA operator",))
    assert api.get(f"/dedicated/server/{SERVICE}/task", function="hardReboot") == [
        task["taskId"]]


def test_a_reboot_on_the_disk_netboot_boots_the_disk(fake: OvhFake,
                                                     machines: KeyMachines) -> None:
    api = client()
    task = api.post(f"/dedicated/server/{SERVICE}/reboot")

    assert wait_task(api, task["taskId"])["status"] == "done"
    assert machines.calls[-1] == (SERVICE, "disk", ())


def test_a_new_task_may_flap_404_then_500_before_it_answers(fake: OvhFake) -> None:
    api = client()
    fake.inject("task_404")
    fake.inject("task_500")
    task = api.post(f"/dedicated/server/{SERVICE}/reboot")
    path = f"/dedicated/server/{SERVICE}/task/{task['taskId']}"

    with pytest.raises(ovh.exceptions.ResourceNotFoundError):
        api.get(path)
    with pytest.raises(ovh.exceptions.APIError) as caught:
        api.get(path)
    assert caught.value.response.status_code == 500
    assert api.get(path)["taskId"] == task["taskId"]


def test_an_injected_task_error_ends_ovh_error_and_boots_nothing(
        fake: OvhFake, machines: KeyMachines) -> None:
    api = client()
    fake.inject("task_error")
    before = list(machines.calls)

    task = wait_task(api, api.post(f"/dedicated/server/{SERVICE}/reboot")["taskId"])

    assert task["status"] == "ovhError" and task["doneDate"]
    assert machines.calls == before


def test_a_refused_reboot_is_a_conflict_and_creates_no_task(fake: OvhFake) -> None:
    fake.inject("reboot_refused")

    with pytest.raises(ovh.exceptions.ResourceConflictError):
        client().post(f"/dedicated/server/{SERVICE}/reboot")
    assert fake.tasks == {}


# -- limits and outages ----------------------------------------------------------------------


def test_a_rate_limit_answers_429_once_the_window_is_full(machines: KeyMachines) -> None:
    fake = make_server(machines, rate_limit=(2, 60.0)).start()
    ovh.client.ENDPOINTS["ovh-fake-rate"] = fake.url
    api = ovh.Client("ovh-fake-rate", AK, AS, CK)
    try:
        api.get("/dedicated/server")
        api.get("/dedicated/server")
        with pytest.raises(ovh.exceptions.APIError) as caught:
            api.get("/dedicated/server")
        assert caught.value.response.status_code == 429
        assert caught.value.response.json()["class"] == "Client::TooManyRequests"
    finally:
        fake.shutdown()


def test_a_bad_gateway_is_an_html_page_python_ovh_cannot_decode(fake: OvhFake) -> None:
    fake.inject("bad_gateway")

    with pytest.raises(ovh.exceptions.InvalidResponse):
        client().get("/dedicated/server")
    assert client().get("/dedicated/server") == [SERVICE]


def test_failures_can_be_injected_over_http_too(fake: OvhFake) -> None:
    answer = requests.post(fake.url.removesuffix("/1.0") + "/__fake__/inject",
                           data=json.dumps({"failure": "server_error", "times": 1}),
                           timeout=5)

    assert answer.status_code == 200
    with pytest.raises(ovh.exceptions.APIError) as caught:
        client().get("/dedicated/server")
    assert caught.value.response.status_code == 500
    assert client().get("/dedicated/server") == [SERVICE]


def test_an_unknown_failure_name_is_refused(fake: OvhFake) -> None:
    with pytest.raises(ValueError, match="task_404"):
        fake.inject("locked")
