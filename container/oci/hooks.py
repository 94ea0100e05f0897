"""OCI hooks (``hooks`` in config.json): programs the runtime runs at
fixed points of a container's life, each given the container's state on
its stdin.  ``prestart``, ``createRuntime`` and ``poststart``/``poststop``
run in the runtime's namespaces; ``createContainer`` and ``startContainer``
in the container's (the first before ``pivot_root``, the second just
before the command's exec).  A failing hook fails the step it belongs to,
except ``poststart`` and ``poststop``, whose failures are only reported,
as the spec says."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field

from .reader import Reader

POINTS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
          "poststop")


class HookError(RuntimeError):
    """A hook failed; the message is one line."""


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True)
class Hooks:
    points: dict[str, tuple[Hook, ...]] = field(default_factory=dict)

    def at(self, point: str) -> tuple[Hook, ...]:
        return self.points.get(point, ())


def parse(section: Reader | None) -> Hooks:
    if section is None:
        return Hooks()
    hooks = Hooks({point: section.take_objects(point, _hook) for point in POINTS})
    section.done()
    return hooks


def _hook(section: Reader) -> Hook:
    path = section.take("path", str)
    if not path.startswith("/"):
        raise section.error("path", "must be an absolute path")
    timeout = section.take("timeout", int, None)
    if timeout is not None and timeout <= 0:
        raise section.error("timeout", "must be more than 0 seconds")
    hook = Hook(path, tuple(section.take_list("args", str)),
                tuple(section.take_list("env", str)), timeout)
    section.done()
    return hook


def run(hooks: Hooks, point: str, state: dict) -> None:
    """Run the hooks of ``point`` in order; the first failure stops them."""
    for hook in hooks.at(point):
        _run_one(hook, point, state)


def _run_one(hook: Hook, point: str, state: dict) -> None:
    env = dict(item.split("=", 1) for item in hook.env if "=" in item)
    try:
        done = subprocess.run(list(hook.args) or [hook.path], executable=hook.path,
                              input=json.dumps(state).encode(), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        raise HookError(f"{point} hook {hook.path}: timed out after {hook.timeout} s") from None
    except OSError as exc:
        raise HookError(f"{point} hook {hook.path}: {exc.strerror}") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().replace("\n", " ")
        raise HookError(f"{point} hook {hook.path} failed with code {done.returncode}"
                        + (f": {said}" if said else ""))
