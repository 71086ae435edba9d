"""The local server this add-on started, if any: one process on the port of the Server URL, its output in a
log file, stopped when the add-on is disabled or Blender quits. A server the add-on did not start is never
touched."""

from __future__ import annotations

import atexit
import shlex
import subprocess
from pathlib import Path

from .client import url_port

STOP_WAIT_S = 10.0


class LocalServer:
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    port: int | None = None

    @classmethod
    def command_line(cls, command: str, url: str) -> list[str]:
        """The command's words, with ``--port`` set from the Server URL unless the command names one."""
        args = shlex.split(command)
        if not args:
            raise ValueError("the Local Server Command is empty: set it in the add-on preferences")
        if not any(a == "--port" or a.startswith("--port=") for a in args):
            args += ["--port", str(url_port(url))]
        return args

    @classmethod
    def start(cls, command: str, url: str, log_path: Path) -> None:
        args = cls.command_line(command, url)
        cls.stop()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cls.log_path, cls.port = log_path, url_port(url)
        with open(log_path, "ab") as log:
            cls.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)

    @classmethod
    def running(cls) -> bool:
        return cls.process is not None and cls.process.poll() is None

    @classmethod
    def state(cls, ready: bool) -> tuple[str, str]:
        """(icon, text) for the preferences: starting / ready / exited (code)."""
        if cls.process is None:
            return "DOT", "Not started by Blender"
        code = cls.process.poll()
        if code is not None:
            return "ERROR", f"Exited (code {code}): see the log"
        if ready:
            return "CHECKMARK", f"Ready on port {cls.port}"
        return "TIME", f"Starting on port {cls.port}…"

    @classmethod
    def stop(cls) -> None:
        """Stop the server this add-on started (nothing else); the exit code stays readable until the next
        start."""
        if cls.running():
            cls.process.terminate()
            try:
                cls.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                cls.process.kill()
                cls.process.wait()


def stop_on_quit() -> None:
    """Registered with ``atexit``: Blender runs it when it quits."""
    LocalServer.stop()


def register():
    atexit.register(stop_on_quit)


def unregister():
    LocalServer.stop()
    atexit.unregister(stop_on_quit)
