"""The plugin manager: built-ins, entry points, allow/block lists, and the registries they fill."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from clmkit import hookspecs
from clmkit.errors import ConfigError, PluginError, UnknownNameError

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from clmkit.args import ClmTrainingArguments

ENTRY_POINT_GROUP = "clmkit"
BUILTIN_PLUGINS = (
    "clmkit.builtins.architectures",
    "clmkit.builtins.chunkers",
    "clmkit.builtins.collators",
    "clmkit.builtins.filters",
    "clmkit.builtins.losses",
    "clmkit.builtins.optimizers",
    "clmkit.builtins.param_groups",
)


@dataclass(frozen=True)
class Kind:
    """One registry: its name, the hook that fills it, and the ``ClmTrainingArguments`` fields that choose from it.

    Everything that lists the registries derives from ``KINDS``: the hook names, the name checks
    of a run (``Plugins.check_names``), the CLI's help, ``clmkit plugins`` and the error texts.
    """

    name: str  # the registry, e.g. "chunkers"
    singular: str  # one of its entries, in messages: "chunker"
    option: str  # the option that names the entry (a list of specs for filters): a ClmTrainingArguments field,
    # or for architectures a `clmkit train` flag (a model reaches the training paths built)
    kwargs_option: str | None  # the field holding the factory's keyword arguments

    @property
    def hook(self) -> str:
        """The register hook that fills this registry: ``clmkit_register_<name>``."""
        return f"clmkit_register_{self.name}"

    def chosen(self, args: ClmTrainingArguments) -> list[str]:
        """The names of this registry that ``args`` uses (several for ``filters``)."""
        from clmkit.args import parse_filter_specs

        value = getattr(args, self.option, None)
        if value is None:  # architectures: chosen by `clmkit train --architecture`, not by the arguments
            return []
        return [name for name, _ in parse_filter_specs(value)] if self.name == "filters" else [value]


KINDS: tuple[Kind, ...] = (
    Kind("chunkers", "chunker", "chunker", "chunker_kwargs"),
    Kind("filters", "filter", "filters", None),
    Kind("collators", "collator", "collator", "collator_kwargs"),
    Kind("losses", "loss", "loss", "loss_kwargs"),
    Kind("param_groupers", "param grouper", "param_grouper", None),
    Kind("optimizers", "optimizer", "optimizer", "optimizer_kwargs"),
    Kind("architectures", "architecture", "architecture", None),
)
KIND_BY_NAME = {kind.name: kind for kind in KINDS}
OTHER_HOOKS = ("clmkit_prepare_model", "clmkit_callbacks")


@dataclass(frozen=True)
class Entry:
    """One registered object and the plugin that registered it."""

    name: str
    obj: Any
    plugin: str


@dataclass(frozen=True)
class PluginInfo:
    """Where a loaded plugin came from."""

    name: str
    distribution: str | None
    version: str | None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class Plugins:
    """A pluggy manager for project ``clmkit`` plus the registries its plugins fill.

    Built-in plugins are always registered; third-party ones come from the ``clmkit`` entry-point
    group unless ``CLMKIT_DISABLE_PLUGIN_AUTOLOAD=1`` (or ``autoload=False``), limited to the
    names in ``CLMKIT_PLUGINS=a,b`` when that is set. ``extra`` plugin objects are registered last.
    """

    def __init__(self, extra: Sequence[object] = (), autoload: bool | None = None) -> None:
        self.pm = pluggy.PluginManager("clmkit")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        for module_name in BUILTIN_PLUGINS:
            module = __import__(module_name, fromlist=["_"])
            self._register(module, module_name, PluginInfo(module_name, "clmkit", _version("clmkit")))
        if autoload is None:
            autoload = not _env_flag("CLMKIT_DISABLE_PLUGIN_AUTOLOAD")
        if autoload:
            self._load_entry_points()
        for plugin in extra:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            if self.pm.is_registered(plugin):
                continue
            if self.pm.has_plugin(name):
                name = f"{name}-{id(plugin):x}"
            self._register(plugin, name, PluginInfo(name, None, None))
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"plugin {self.pm.get_name(exc.plugin)!r} implements a hook that does not exist: {exc}. "
                f"Fix the hook name (known hooks: {', '.join([*(k.hook for k in KINDS), *OTHER_HOOKS])})."
            ) from exc
        self._registries: dict[str, dict[str, Entry]] = {}

    def _register(self, plugin: object, name: str, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} does not match clmkit's hooks: {exc}. Fix its signature.") from exc
        self.info[name] = info

    def _load_entry_points(self) -> None:
        eps: Iterable[EntryPoint] = entry_points(group=ENTRY_POINT_GROUP)
        wanted = os.environ.get("CLMKIT_PLUGINS")
        allowed = {n.strip() for n in wanted.split(",") if n.strip()} if wanted is not None else None
        found = set()
        for ep in eps:
            found.add(ep.name)
            if allowed is not None and ep.name not in allowed:
                continue
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} (entry point {ep.value!r} of distribution {dist!r}) failed to import: "
                    f"{type(exc).__name__}: {exc}. Fix or uninstall it (pip uninstall {dist}), or start with "
                    "CLMKIT_DISABLE_PLUGIN_AUTOLOAD=1 or CLMKIT_PLUGINS=<names to load>."
                ) from exc
            if self.pm.is_registered(plugin):
                continue
            self._register(plugin, ep.name, PluginInfo(ep.name, dist, version))
        if allowed is not None and allowed - found:
            raise PluginError(
                f"CLMKIT_PLUGINS names {sorted(allowed - found)} but no installed distribution provides them; "
                f"installed plugins: {sorted(found) or 'none'}. Install them or fix CLMKIT_PLUGINS."
            )

    def registry(self, kind: str) -> dict[str, Entry]:
        """All entries of one registry (``chunkers``, ``collators``, ``losses``, ``param_groupers``, ``filters``)."""
        if kind not in self._registries:
            entries: dict[str, Entry] = {}
            hook = getattr(self.pm.hook, _kind(kind).hook)
            for impl in hook.get_hookimpls():  # registration order
                impl.function(register=self._registrar(kind, impl.plugin_name, entries))
            self._registries[kind] = entries
        return self._registries[kind]

    @staticmethod
    def _registrar(kind: str, plugin: str, entries: dict[str, Entry]) -> Callable[[str, Any], None]:
        def register(name: str, obj: Any) -> None:
            if name in entries:
                raise PluginError(
                    f"{_kind(kind).singular} name {name!r} is registered twice: by plugin "
                    f"{entries[name].plugin!r} and by plugin {plugin!r}. Rename one of them, or load only one "
                    "(CLMKIT_PLUGINS / CLMKIT_DISABLE_PLUGIN_AUTOLOAD)."
                )
            entries[name] = Entry(name, obj, plugin)

        return register

    def get(self, kind: str, name: str) -> Entry:
        """The entry registered as ``name``, or an error listing the names that exist."""
        entries = self.registry(kind)
        if name not in entries:
            raise UnknownNameError(
                f"unknown {_kind(kind).singular} {name!r}; registered names: {', '.join(sorted(entries))}. "
                "Pick one of these, or install the plugin that provides it."
            )
        return entries[name]

    def build(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name``; keyword arguments it does not take are a ``ConfigError``."""
        factory = self.get(kind, name).obj
        check_kwargs(factory, f"{_kind(kind).singular} {name!r}", args, kwargs, f"{_kind(kind).singular}_kwargs")
        return factory(*args, **kwargs)

    def check_names(self, args: ClmTrainingArguments, chunkers: Iterable[str] = ()) -> None:
        """Fail before any work on a name of any registry that ``args`` (or a mixture's ``chunkers``) uses
        and no plugin registered."""
        for kind in KINDS:
            for name in kind.chosen(args):
                self.get(kind.name, name)
        for name in chunkers:
            self.get("chunkers", name)

    def prepare_model(self, model: Any, tokenizer: Any, args: ClmTrainingArguments, chunkers: Sequence[str]) -> None:
        """Let every plugin adapt model and tokenizer (hook ``clmkit_prepare_model``), in plugin order."""
        values = {"model": model, "tokenizer": tokenizer, "args": args, "chunkers": list(chunkers)}
        for impl in self.pm.hook.clmkit_prepare_model.get_hookimpls():  # registration order
            impl.function(*(values[name] for name in impl.argnames))

    def callbacks(self, args: ClmTrainingArguments) -> list[TrainerCallback]:
        """The TrainerCallbacks all plugins add for this run, in plugin order."""
        results = self.pm.hook.clmkit_callbacks(args=args)
        return [cb for result in reversed(results) if result for cb in result]

    def third_party(self) -> list[dict[str, str | None]]:
        """The loaded plugins that are not clmkit's own: name, distribution and version, as a run records them."""
        return [
            {"plugin": name, "distribution": info.distribution, "version": info.version}
            for name, info in self.info.items()
            if info.distribution != "clmkit"
        ]

    def describe(self) -> list[dict[str, Any]]:
        """One JSON-ready record per plugin: name, distribution, version, hooks and registered names."""
        names: dict[str, dict[str, list[str]]] = {}
        for kind in KIND_BY_NAME:
            for entry in self.registry(kind).values():
                names.setdefault(entry.plugin, {}).setdefault(kind, []).append(entry.name)
        records = []
        for name, plugin in self.pm.list_name_plugin():
            info = self.info[name]
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            records.append(
                {
                    "plugin": name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "hooks": hooks,
                    "registered": names.get(name, {}),
                }
            )
        return records


def check_kwargs(
    factory: Callable[..., Any], what: str, args: tuple[Any, ...], kwargs: dict[str, Any], field: str
) -> None:
    """Raise a ConfigError naming the arguments ``factory`` does not accept, and the ones it does."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        named = [p.name for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        accepted = [name for name in named[len(args) :] if name != "tokenizer"]  # clmkit passes the tokenizer
        raise ConfigError(
            f"{what} got arguments it does not take ({exc}); it accepts: {', '.join(accepted) or 'none'}. Fix {field}."
        ) from None


def _kind(name: str) -> Kind:
    """The registry ``name``; an unknown one is a programming error, not bad input."""
    if name not in KIND_BY_NAME:
        raise ValueError(f"no registry {name!r}; registries: {', '.join(KIND_BY_NAME)}")
    return KIND_BY_NAME[name]


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
