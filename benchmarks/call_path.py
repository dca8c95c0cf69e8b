"""The files a registration crosses, from the blocking ``Registry.register`` to the backend's write.

It runs one real registration with a profiler on the caller's thread and on the registry's loop thread, and
stops at the first call of the backend client's write (aetcd ``Client.put`` for etcd). It prints two lists:

* the *call path*: our frames on the stack at the moment of the write (caller's thread, then the loop thread),
  one line per hop, and the distinct files among them;
* every file of ours entered at all on the way (validation, codecs and other side calls included).

``--source`` names the tree the modules are loaded from (default: this checkout), so an older commit can be
measured the same way: ``git archive <commit> | tar -x -C /tmp/old`` and
``PYTHONPATH=/tmp/old:/tmp/old/backends python -m benchmarks.call_path --source /tmp/old --url etcd://...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

#: (file name suffix, function name) of the server write per URL scheme: where the path ends.
WRITES = {
    "etcd": ("aetcd/client.py", "put"),
}


class PathRecorder:
    """A ``sys.setprofile`` function recording our frames until the backend client's write is called."""

    def __init__(self, source: Path, roots: tuple[Path, ...], write: tuple[str, str]) -> None:
        self._source = str(source) + "/"
        self._roots = tuple(str(root) + "/" for root in roots)
        self._write = write
        self._lock = threading.Lock()
        self.entered: dict[str, None] = {}
        self.stacks: dict[str, list[tuple[str, int, str]]] = {}
        self.done = threading.Event()

    def ours(self, filename: str) -> bool:
        """Whether a code file belongs to the measured tree."""
        return filename.startswith(self._roots)

    def relative(self, filename: str) -> str:
        """A file name relative to the source tree."""
        return filename[len(self._source):] if filename.startswith(self._source) else filename

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or self.done.is_set():
            return
        filename = frame.f_code.co_filename
        if filename.endswith(self._write[0]) and frame.f_code.co_name == self._write[1]:
            with self._lock:
                self.stacks[threading.current_thread().name] = self.stack_of(frame.f_back)
            self.done.set()
        elif self.ours(filename):
            with self._lock:
                self.entered.setdefault(self.relative(filename))

    def stack_of(self, frame: FrameType | None) -> list[tuple[str, int, str]]:
        """Our frames from ``frame`` outwards, outermost first, up to the event loop running the task (the loop
        thread's own frames are not part of the registration's path).
        """
        found = []
        while frame is not None and f"{os.sep}asyncio{os.sep}" not in frame.f_code.co_filename:
            if self.ours(frame.f_code.co_filename):
                found.append((self.relative(frame.f_code.co_filename), frame.f_lineno, frame.f_code.co_qualname))
            frame = frame.f_back
        return found[::-1]


def main(argv: list[str] | None = None) -> None:
    """Measure one registration and print the path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="e.g. etcd://127.0.0.1:2379/call-path")
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the source tree holding discovery/ and backends/")
    args = parser.parse_args(argv)

    from discovery import Instance, Registry

    source = args.source.resolve()
    roots = (source / "discovery", source / "backends")
    import discovery
    if not Path(discovery.__file__).resolve().is_relative_to(source):
        raise SystemExit(f"discovery is loaded from {discovery.__file__}, not from {source}")
    scheme = args.url.split(":", 1)[0]
    recorder = PathRecorder(source, roots, WRITES[scheme])
    registry = Registry.connect(args.url)
    caller_stack: list[tuple[str, int, str]] = []
    try:
        installed = threading.Event()

        def install() -> None:
            sys.setprofile(recorder)
            installed.set()

        loop_thread = _loop_of(registry)
        loop_thread.call_soon_threadsafe(install)
        installed.wait(5)

        def on_main(frame: FrameType, event: str, arg: Any) -> None:
            if event == "call" and not caller_stack and frame.f_code.co_name == "run" \
                    and recorder.ours(frame.f_code.co_filename):
                caller_stack.extend(recorder.stack_of(frame))
            recorder(frame, event, arg)

        sys.setprofile(on_main)
        try:
            registry.register(Instance("call-path", f"i-{uuid.uuid4().hex[:8]}", "127.0.0.1", 8080))
        finally:
            sys.setprofile(None)
            loop_thread.call_soon_threadsafe(sys.setprofile, None)
    finally:
        registry.close()
    loop_stack = next((stack for name, stack in recorder.stacks.items() if name != "MainThread"), [])
    path = caller_stack + loop_stack
    print(f"call path at the write ({len(path)} frames of ours):")
    for relative, line, function in path:
        print(f"  {relative}:{line}  {function}")
    on_path = list(dict.fromkeys(relative for relative, _, _ in path))
    print(f"files on the call path: {len(on_path)}")
    for relative in on_path:
        print(f"  {relative}")
    print(f"files entered at all: {len(recorder.entered)}")
    for relative in recorder.entered:
        print(f"  {relative}")


def _loop_of(registry: Any) -> Any:
    loop = getattr(registry, "loop", None)
    if loop is None:  # before Registry.loop existed
        loop = registry._loop.loop  # noqa: SLF001 - measuring a commit from before Registry.loop
    return loop


if __name__ == "__main__":
    main(sys.argv[1:])
