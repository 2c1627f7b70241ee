"""The embedded mode's broker: kombu's filesystem transport with atomic writes.

kombu's own ``_put`` creates the message file and then writes it; a worker polling the folder
can move and read the file in between, get an empty payload and die with a JSONDecodeError
("Unrecoverable error"). Writing to a hidden temporary name and renaming it into place makes a
message appear whole or not at all (``os.replace`` is atomic within one folder)."""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "vlfs"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):  # noqa: ANN001, ANN202, ARG002
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # No "<...>.<queue>.msg" pattern: readers skip the file until it is renamed.
        tmp = os.path.join(self.data_folder_out, f".part-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = driver_name = SCHEME


TRANSPORT_ALIASES.setdefault(SCHEME, "backend.queue_fs:Transport")
