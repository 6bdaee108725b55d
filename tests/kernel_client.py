"""A started pyx kernel (jupyter_client) for tests that talk the kernel protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Kernel:
    """A started pyx kernel and its client."""

    def __init__(self, cwd: Path) -> None:
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="pyx")
        self.km.start_kernel(cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str) -> tuple[dict[str, Any], str]:
        """Execute ``code``; returns the reply content and the stream/error text it produced."""
        text: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            c = msg["content"]
            if msg["msg_type"] == "stream":
                text.append(c["text"])
            elif msg["msg_type"] == "error":
                text.append(f"{c['ename']}: {c['evalue']}\n")

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=60)
        return reply["content"], "".join(text)

    def messages(self, code: str) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """Execute ``code``; returns the reply content and its IOPub outputs in order, as (msg_type, content)."""
        outputs: list[tuple[str, dict[str, Any]]] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                outputs.append((msg["msg_type"], msg["content"]))

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=60)
        return reply["content"], outputs

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
