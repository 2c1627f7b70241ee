"""The embedded broker delivers every message whole while a consumer polls the folder."""

from __future__ import annotations

import threading

from kombu import Connection

import backend.queue_fs  # noqa: F401


def test_concurrent_put_and_get_deliver_every_message_whole(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    opts = {"data_folder_in": str(folder), "data_folder_out": str(folder),
            "processed_folder": str(tmp_path / "processed"), "control_folder": str(tmp_path / "control")}
    # A name of its own: kombu keeps exchange bindings per process, and other tests in this
    # process have declared Celery's "gpu" exchange with bindings of their own.
    queue_name = f"stress-{tmp_path.name}"
    n = 200
    payload = "x" * 100_000  # big enough that a non-atomic write is visible half-done
    got: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:
        with Connection("vlfs://", transport_options=opts) as conn:
            q = conn.SimpleQueue(queue_name)
            try:
                while len(got) < n:
                    msg = q.get(timeout=120)  # generous: CI's 2 cores can be busy with other processes
                    assert msg.payload["body"] == payload
                    got.append(msg.payload["i"])
                    msg.ack()
            except BaseException as e:  # reported to the test thread below
                errors.append(e)

    t = threading.Thread(target=consume)
    t.start()
    with Connection("vlfs://", transport_options=opts) as conn:
        q = conn.SimpleQueue(queue_name)
        for i in range(n):
            q.put({"i": i, "body": payload})
    t.join(timeout=300)
    assert not errors, errors
    assert sorted(got) == list(range(n))
    assert not [p for p in folder.iterdir()], "temporary or undelivered files left behind"
