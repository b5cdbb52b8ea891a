"""US-11 between real node processes: a deposit made while the patient's node is offline is queued,
retried, and delivered once the node is back; nothing acknowledged is lost."""

from __future__ import annotations

import time

import pytest

from fedrecord.demo import Node


@pytest.fixture
def nodes(tmp_path):
    patient = Node(tmp_path, "patient", "patient", "Camille")
    lab = Node(tmp_path, "lab", "clinic", "Laboratoire")
    yield patient, lab
    for node in (patient, lab):
        node.stop()


def test_deposit_while_the_patient_node_is_offline_is_delivered_later(nodes, tmp_path):
    patient, lab = nodes
    patient.start(tmp_path / "patient.log")
    lab.start(tmp_path / "lab.log")
    lab.run("connect", patient.run("invite", "--label", "lab")["code"])

    patient.stop()
    result_file = tmp_path / "result.txt"
    result_file.write_text("Ferritin 85 ng/mL\n")
    queued = lab.run(
        "deposit", str(result_file), "--patient", patient.did, "--title", "Ferritin", "--category", "lab"
    )
    assert queued["delivered"] is False and queued["pending"] == 1
    retried = lab.run("poll")
    assert retried["sent"] == 0 and retried["pending"] == 1

    patient.start(tmp_path / "patient.log")
    # The outbox retries with exponential backoff (the lab's own serve loop also retried while the
    # patient was down, so the next attempt may be some seconds away); `poll` sends what is due now.
    deadline = time.monotonic() + 90
    while True:
        delivered = lab.run("poll")
        if delivered["pending"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert delivered["pending"] == 0
    inbox = patient.run("inbox")
    assert [item["title"] for item in inbox] == ["Ferritin"] and inbox[0]["doc"] == queued["doc"]
