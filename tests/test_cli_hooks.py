"""`kourier run --hooks module:attr`: what it loads, what it refuses, and in one line."""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import pytest

from kourier.cli import EXIT_USAGE, CLIError, build_parser, load_hooks
from kourier.cli import run as cli
from kourier.server.hooks import HOOK_NAMES, Hooks


@pytest.fixture
def module(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An importable module ``fake_hooks`` whose attributes each test sets."""
    fake = types.ModuleType("fake_hooks")
    monkeypatch.setitem(sys.modules, "fake_hooks", fake)
    return fake


async def fired(hooks: Hooks, name: str = "reply") -> list[str]:
    seen: list[str] = []
    await hooks.emit(name, seen)
    return seen


def mark(label: str) -> Any:
    return lambda seen: seen.append(label)


async def test_a_mapping_takes_one_callable_or_a_list(module: Any) -> None:
    """{event: callable} and {event: [callables]} both attach, the list in its order."""
    module.hooks = {"start": mark("s"), "reply": [mark("a"), mark("b")]}
    hooks = load_hooks(["fake_hooks:hooks"])
    assert await fired(hooks, "start") == ["s"]
    assert await fired(hooks) == ["a", "b"]
    assert not hooks.has("request")


async def test_a_hooks_object_and_factories_of_either(module: Any) -> None:
    """A Hooks object, or a function of no arguments returning hooks; specs add up in order."""
    module.ready = Hooks({"reply": [mark("object")]})
    module.make_mapping = lambda: {"reply": mark("mapping factory")}
    module.make_hooks = lambda: Hooks({"reply": [mark("hooks factory")]})
    module.nested = types.SimpleNamespace(hooks={"reply": [mark("dotted")]})
    specs = ["fake_hooks:ready", "fake_hooks:make_mapping", "fake_hooks:make_hooks"]
    hooks = load_hooks([*specs, "fake_hooks:nested.hooks"])
    assert await fired(hooks) == ["object", "mapping factory", "hooks factory", "dotted"]
    assert await fired(module.ready) == ["object"], "the module's own Hooks is not changed"


@pytest.mark.parametrize(
    ("spec", "attribute", "message"),
    [
        ("fake_hooks", None, "--hooks 'fake_hooks' must be given as 'module:attribute'"),
        ("no_such_hooks_module:hooks", None, "could not import module 'no_such_hooks_module'"),
        ("fake_hooks:missing", None, "module 'fake_hooks' has no attribute 'missing'"),
        (
            "fake_hooks:hooks",
            {"replied": [print]},
            f"'replied' is not a hook event; choose from {', '.join(HOOK_NAMES)}",
        ),
        ("fake_hooks:hooks", {"reply": [print, 42]}, "the 'reply' hook 42 is not callable"),
        ("fake_hooks:hooks", {"reply": "print"}, "the 'reply' hook 'print' is not callable"),
        ("fake_hooks:hooks", [print], "is a list: give a mapping of event name to hooks"),
        ("fake_hooks:hooks", lambda event: None, "is a callable that takes arguments"),
        ("fake_hooks:hooks", lambda: 42, "is an int: give a mapping"),
    ],
)
def test_a_bad_spec_is_one_line_and_exit_2(
    module: Any, spec: str, attribute: object, message: str
) -> None:
    """Each mistake names the spec and what is wrong with it, in one line, for exit 2."""
    if attribute is not None:
        module.hooks = attribute
    with pytest.raises(CLIError) as raised:
        load_hooks([spec])
    assert raised.value.code == EXIT_USAGE == 2
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"--hooks {spec!r}")
    assert "\n" not in str(raised.value)


def test_specs_come_from_the_option_else_from_kourier_hooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--hooks (repeatable) wins; without it KOURIER_HOOKS is split on commas."""
    parser = build_parser()
    monkeypatch.setenv("KOURIER_HOOKS", " a.b:hooks , ,c:make ")
    assert cli._hook_specs(parser.parse_args(["run", "m:app"])) == ["a.b:hooks", "c:make"]
    given = parser.parse_args(["run", "m:app", "--hooks", "x:h", "--hooks", "y:h"])
    assert cli._hook_specs(given) == ["x:h", "y:h"]
    monkeypatch.delenv("KOURIER_HOOKS")
    assert cli._hook_specs(parser.parse_args(["run", "m:app"])) == []


def test_run_passes_the_loaded_hooks_to_serve(module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kourier run` hands serve() one Hooks with what KOURIER_HOOKS named."""
    module.app = lambda scope, receive, send: None
    module.hooks = {"stop": mark("stopped")}
    served: dict[str, Any] = {}

    async def serve(app: Any, service: str, settings: Any, **options: Any) -> None:
        served.update(options, app=app, service=service)

    monkeypatch.setattr("kourier.server.serve.serve", serve)
    monkeypatch.setenv("KOURIER_HOOKS", "fake_hooks:hooks")
    monkeypatch.delenv("KOURIER_SERVICE", raising=False)
    assert cli.cmd_run(build_parser().parse_args(["run", "fake_hooks:app"])) == 0
    assert served["app"] is module.app and served["service"] == "fake-hooks"
    assert isinstance(served["hooks"], Hooks)
    assert asyncio.run(fired(served["hooks"], "stop")) == ["stopped"]
