"""A PIL image plugin that kills the process that decodes it: a stand-in for a native decoder
that segfaults on a poison file. Loaded into the curation workers by `decode.plugins`
(the same hook that registers real extra decoders such as pillow_heif). Files starting with
MAGIC identify as this format; opening one sends SIGKILL to the worker (as a segfault or the
kernel's OOM killer would end it: no Python cleanup, no exception)."""

from __future__ import annotations

import os
import signal

from PIL import Image, ImageFile

MAGIC = b"POISON!!"


class PoisonImageFile(ImageFile.ImageFile):
    format = "POISON"
    format_description = "a file that kills its decoder"

    def _open(self):
        os.kill(os.getpid(), signal.SIGKILL)


def register() -> None:
    Image.register_open(PoisonImageFile.format, PoisonImageFile, lambda prefix: prefix[:8] == MAGIC)
