"""What a collected test needs, found from what it uses: the ``nats`` and ``redis`` markers.

A test needs a server when it (or a fixture it uses, or a helper of the suite that either
calls, followed through ``tests.*`` code) uses the suite's server fixtures, starts a server
with one of the suite's helpers, or runs the services as processes. ``tests/conftest.py``
turns the answer into markers, so no test file has to say it and none can forget.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from typing import Any

import pytest

from tests import natsserver, redisservers, serviceproc
from voiceagent import stack

FIXTURES: dict[str, frozenset[str]] = {
    "nats_url": frozenset({"nats"}),
    "private_nats": frozenset({"nats"}),
    "redis_url": frozenset({"redis"}),
}

# The suite's ways to start a server or a service; a test reaching one of them needs it.
# (ServiceProcess and Stack run services, which need NATS; each test passes them its own.)
USES: dict[int, frozenset[str]] = {
    id(natsserver.private_nats_server): frozenset({"nats"}),
    id(natsserver.nats_server_binary): frozenset({"nats"}),
    id(stack.nats_server_binary): frozenset({"nats"}),
    id(redisservers.redis_server): frozenset({"redis"}),
    id(redisservers.redis_cluster): frozenset({"redis"}),
    id(redisservers.redis_server_binary): frozenset({"redis"}),
    id(serviceproc.ServiceProcess): frozenset({"nats"}),
    id(stack.Stack): frozenset({"nats"}),
}
# ...only when the same function also calls this method (building a Stack to read its plan
# starts nothing).
ONLY_WITH: dict[int, str] = {id(stack.Stack): "start"}
# The same, imported inside a function (``from tests.natsserver import private_nats_server``).
_LOCAL: list[tuple[Any, frozenset[str]]] = [
    (natsserver.private_nats_server, frozenset({"nats"})),
    (natsserver.nats_server_binary, frozenset({"nats"})),
    (redisservers.redis_server, frozenset({"redis"})),
    (redisservers.redis_cluster, frozenset({"redis"})),
    (serviceproc.ServiceProcess, frozenset({"nats"})),
]
BY_NAME = {(obj.__module__, obj.__name__): need for obj, need in _LOCAL}
# A path to a binary kept in a constant (``REDIS_SERVER = "/usr/bin/redis-server"``).
BINARIES: dict[str, frozenset[str]] = {
    "nats-server": frozenset({"nats"}),
    "redis-server": frozenset({"redis"}),
}


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _ours(obj: Any) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("tests.")


def _scan(obj: Any, seen: set[int]) -> set[str]:
    """Needs of a function or class of ours, following the names its code uses."""
    if id(obj) in seen:
        return set()
    seen.add(id(obj))
    if id(obj) in USES:
        return set(USES[id(obj)])
    if isinstance(obj, str):
        return set(BINARIES.get(obj.rsplit("/", 1)[-1], ()))
    if inspect.isclass(obj):
        found: set[str] = set()
        for klass in obj.__mro__:
            if id(klass) in USES:
                found |= USES[id(klass)]
            elif _ours(klass) or klass is obj:
                for member in vars(klass).values():
                    found |= _scan(inspect.unwrap(_func(member)), seen) if _func(member) else set()
        return found
    fn = inspect.unwrap(obj) if callable(obj) else obj
    code = getattr(fn, "__code__", None)
    if code is None:
        return set()
    scope = getattr(fn, "__globals__", {})
    names = {name for c in _codes(code) for name in c.co_names}
    found = {
        n
        for c in _codes(code)
        for const in c.co_consts
        if isinstance(const, str)
        for n in BINARIES.get(const.rsplit("/", 1)[-1], ())
    }
    for (module, name), need in BY_NAME.items():
        if module in names and name in names:
            found |= need
    for name in names & scope.keys():
        value = scope[name]
        if ONLY_WITH.get(id(value), name) not in names:
            continue
        if id(value) in USES or isinstance(value, str) or _ours(value):
            found |= _scan(value, seen)
    return found


def _func(member: Any) -> Any:
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member if inspect.isfunction(member) else None


def needs_of(item: pytest.Item) -> set[str]:
    """The servers ``item`` needs: a subset of {"nats", "redis"}."""
    found: set[str] = set()
    info = getattr(item, "_fixtureinfo", None)
    names = info.names_closure if info is not None else []
    for name in names:
        found |= FIXTURES.get(name, frozenset())
    seen: set[int] = set()
    funcs = [getattr(item, "function", None)]
    if info is not None:
        for name in names:
            for fixturedef in info.name2fixturedefs.get(name, ()):
                funcs.append(fixturedef.func)
    for fn in funcs:
        if fn is not None and (_ours(fn) or fn is getattr(item, "function", None)):
            found |= _scan(fn, seen)
    return found
