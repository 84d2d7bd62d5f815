"""The registry that validation, planning and the CLI consult, filled from plugin hooks."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy
import structlog

from wanflow import __version__
from wanflow.errors import PluginError
from wanflow.plugins import builtin
from wanflow.plugins.hookspecs import PROJECT, AttentionEntry, Hooks, SamplerEntry, SaverEntry
from wanflow.families.spec import FamilySpec

log = structlog.get_logger(__name__)

#: Set to 1 to ignore third-party plugins (entry points); built-ins always load.
NO_PLUGINS_ENV = "WANFLOW_NO_PLUGINS"


@attrs.frozen
class Registry:
    """Everything plugins registered, by name, with the plugin that registered it."""

    families_by_name: dict[str, FamilySpec]
    samplers: dict[str, SamplerEntry]
    savers: dict[str, SaverEntry]
    pipelines: dict[str, Any]
    step_kinds: dict[str, Any]
    attention: dict[str, AttentionEntry]
    owners: dict[tuple[str, str], str]  # (what, name) -> plugin name
    plugin_versions: dict[str, str]
    manager: pluggy.PluginManager

    def family(self, name: str) -> FamilySpec | None:
        return self.families_by_name.get(name)

    def family_names(self) -> list[str]:
        return sorted(self.families_by_name)

    def solver_names(self) -> list[str]:
        return sorted(self.samplers)

    def pipeline(self, family_name: str) -> Any:
        """The family's pipeline, bound to this registry when it asks (``bind``) for savers and solvers."""
        family = self.families_by_name[family_name]
        if family.pipeline not in self.pipelines:
            from wanflow.errors import WanflowError

            raise WanflowError(f"{family_name}: no installed plugin provides its pipeline {family.pipeline!r}")
        found = self.pipelines[family.pipeline]
        bind = getattr(found, "bind", None)
        return bind(self) if callable(bind) else found

    def provided(self, what: str, name: str) -> tuple[Any, str]:
        """A registered saver or sampler and "plugin@version" of the plugin that provides it ("" for
        wanflow's own, whose step versions already key it)."""
        table = {"saver": self.savers, "sampler": self.samplers}[what]
        if name not in table:
            from wanflow.errors import PluginError

            raise PluginError(f"no installed plugin provides the {what} {name!r}; installed: "
                              + ", ".join(sorted(table)))
        owner = self.owners[(what, name)]
        return table[name], "" if owner == builtin.NAME else f"{owner}@{self.plugin_versions[owner]}"

    def attention_backend(self, name: str) -> AttentionEntry:
        """The registered attention backend ``name``; an unknown name names the installed ones."""
        if name not in self.attention:
            raise PluginError(f"no installed plugin provides the attention backend {name!r}; installed: "
                              + ", ".join(sorted(self.attention)))
        return self.attention[name]

    def attention_uses(self, name: str) -> tuple[str, ...]:
        """What of the backend ``name`` a step that attends with it is keyed on, beside the name it
        reads from ``[runtime].attention``: a plugin's "plugin@version" and the backend's own
        "attention.<name>@version" (wanflow's own kernels are versioned with the step that runs
        them, as its solvers are), and "package@version" of each installed package the kernel
        comes from (FlashAttention 3, SageAttention): a new release may change the numbers."""
        entry = self.attention_backend(name)
        owner = self.owners[("attention backend", name)]
        uses = [] if owner == builtin.NAME else [f"{owner}@{self.plugin_versions[owner]}",
                                                 f"attention.{name}@{entry.version}"]
        return tuple(uses + [f"{p}@{v}" for p, v in ((p, _installed_version(p)) for p in entry.packages) if v])

    def plugins(self) -> list[tuple[str, str]]:
        """(name, version) of every loaded plugin, for run locks and step keys."""
        return sorted(self.plugin_versions.items())

    def owner(self, what: str, name: str) -> str:
        return self.owners[(what, name)]

    def notify(self, event: Mapping[str, Any]) -> None:
        """Pass an engine event to the observer hooks (step started; step hit or computed)."""
        if event.get("event") == "step.start":
            self.manager.hook.wanflow_step_started(step=dict(event))
        elif event.get("event") in ("step.hit", "step.done"):
            outcome = {"hit": event["event"] == "step.hit", **event}
            self.manager.hook.wanflow_step_finished(step=dict(event), outcome=outcome)


def build_registry(extra_plugins: Iterable[tuple[str, object]] = (), *, entry_points: bool | None = None) -> Registry:
    """Create a plugin manager with the built-ins, entry-point plugins and ``extra_plugins``."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(Hooks)
    pm.register(builtin, name=builtin.NAME)
    versions = {builtin.NAME: __version__}
    if entry_points is None:
        entry_points = os.environ.get(NO_PLUGINS_ENV, "") not in ("1", "true", "yes")
    if entry_points:
        _load_entry_points(pm, versions)
    for name, plugin in extra_plugins:
        pm.register(plugin, name=name)
        versions[name] = str(getattr(plugin, "__version__", "0"))
    return _collect(pm, versions)


def _load_entry_points(pm: pluggy.PluginManager, versions: dict[str, str]) -> None:
    try:
        pm.load_setuptools_entrypoints(PROJECT)
    except Exception as exc:  # a broken third-party plugin must not hide which one it was
        raise PluginError(f"a wanflow plugin failed to load: {exc!r}; uninstall it or set {NO_PLUGINS_ENV}=1") from exc
    for plugin, dist in pm.list_plugin_distinfo():
        versions[pm.get_name(plugin)] = dist.version


def _collect(pm: pluggy.PluginManager, versions: dict[str, str]) -> Registry:
    owners: dict[tuple[str, str], str] = {}
    families = _gather(pm, "wanflow_families", "family", lambda f: f.name, owners)
    samplers = _gather(pm, "wanflow_samplers", "sampler", lambda s: s.name, owners)
    savers = _gather(pm, "wanflow_savers", "saver", lambda s: s.name, owners)
    pipelines = _gather(pm, "wanflow_pipelines", "pipeline", None, owners)
    step_kinds = _gather(pm, "wanflow_step_kinds", "step kind", lambda s: s.kind, owners)
    attention = _gather(pm, "wanflow_attention_backends", "attention backend", lambda a: a.name, owners)
    log.debug("plugins.loaded", plugins=sorted(versions))
    return Registry(families, samplers, savers, pipelines, step_kinds, attention, owners, versions, pm)


def _installed_version(distribution: str) -> str:
    """The installed version of a distribution, "" when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _gather(pm: pluggy.PluginManager, hook: str, what: str, name_of: Any, owners: dict) -> dict[str, Any]:
    """Call each implementation alone so that every name is tied to its plugin; refuse collisions."""
    out: dict[str, Any] = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        result = impl.function() or ([] if name_of else {})
        items = result.items() if name_of is None else ((name_of(r), r) for r in result)
        for name, item in items:
            if name in out:
                raise PluginError(f"{what} {name!r} is registered by both plugin {owners[(what, name)]!r} "
                                  f"and plugin {impl.plugin_name!r}; uninstall one or rename it")
            out[name] = item
            owners[(what, name)] = impl.plugin_name
    return out
