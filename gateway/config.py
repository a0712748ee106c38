"""providers.yaml: load, substitute ``${ENV}``, validate everything once, before serving.

Every problem is reported together, each as ``file:line: field: message`` so that
``hookgate check`` can list them all and a start-up failure points at the exact line.
"""

from __future__ import annotations

import difflib
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from providers import PROVIDER_TYPES, BaseProvider, ProviderConfigError, ProviderSettings
from providers.api import ApiSettings
from providers.base import Clock

from .errors import ConfigError

#: ``${NAME}``, or ``${NAME:-default}`` for an explicit fallback (used by the quick start).
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
COMMON_KEYS = ("type", "secrets", "tolerance_seconds", "max_body_bytes", "api", "ordering", "retention")
SECTIONS = ("defaults", "providers", "handlers", "workers", "retention", "alerts")
DEFAULTS_KEYS = ("tolerance_seconds", "max_body_bytes", "ordering")
#: How long fresh events of a resource are held so that stragglers are applied in order.
DEFAULT_WINDOW_MS = 2000
Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The ``workers:`` section: leases, recovery and retries."""

    #: How long a claimed event stays leased without renewal (a live worker renews it).
    lease_seconds: float = 60.0
    #: How often each worker process looks for unfinished work the broker has lost.
    sweep_interval_seconds: float = 1.0
    #: How long a stored event may wait before the sweep checks that the broker still has it.
    requeue_after_seconds: float = 15.0
    #: Tries of an event's handlers before it is marked ``failed``.
    max_attempts: int = 8
    min_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 600.0
    #: A handler call still running after this long is interrupted and counts as failed; its leases
    #: are renewed for this long plus a grace from the start of each call, no longer.
    handler_time_limit_seconds: float = 600.0
    #: How often one worker process applies the retention policies (see :mod:`gateway.retention`).
    prune_interval_seconds: float = 600.0
    #: After SIGTERM, how long handler calls already running may go on: one still running then is
    #: interrupted and its event retried elsewhere; the process exits at most 5 s later.
    stop_timeout_seconds: float = 45.0
    #: How often one worker process evaluates the ``alerts:`` rules (see :mod:`workers.alerts`).
    alert_interval_seconds: float = 15.0

    def backoff(self, attempts: int) -> float:
        """Delay before try ``attempts + 1``: doubling from the minimum, capped."""
        return min(self.max_backoff_seconds, self.min_backoff_seconds * 2 ** max(0, attempts - 1))


@dataclass(frozen=True, slots=True)
class Retention:
    """``retention:`` at the top of providers.yaml, or in one provider's entry (see
    :mod:`gateway.retention`)."""

    #: Finished events (processed, superseded, failed) are deleted this long after they arrived.
    events_days: float = 30.0
    #: An event id is answered ``duplicate`` this long after it arrived, even once its event is gone.
    dedupe_days: float = 30.0


#: Stripe retries for three days and GitHub allows redeliveries for three: an id remembered for
#: less would let a retried payment event run its handlers twice.
MIN_DEDUPE_DAYS = 3.0


#: What an alert rule watches, by its key in ``when:``, and the rule's kind: failed tries in a
#: window, signature rejections in a window (a rotated secret not yet configured), and the age of
#: the oldest unfinished event.
ALERT_CONDITIONS = {"failures": "failures", "rejections": "rejections", "backlog_age_seconds": "backlog"}
#: The keys of ``when:``: one condition, and the window of a count.
ALERT_WHEN_KEYS = (*ALERT_CONDITIONS, "within_minutes")
#: Where an alert goes (the keys of ``send:``): a generic JSON webhook, or a Slack incoming webhook.
ALERT_DESTINATIONS = ("webhook", "slack")
#: After a firing message, the rule sends no other firing message for this long (``cooldown_minutes``).
DEFAULT_COOLDOWN_SECONDS = 3600.0
#: ``name`` is optional: without it the rule is named after what it watches (see :func:`alert_name`).
ALERT_KEYS = ("when", "provider", "send", "cooldown_minutes", "name")
ALERT_EXAMPLE = "{when: {failures: 10, within_minutes: 5}, send: {webhook: URL}}"
#: A key of ``when:`` or ``send:`` written in the rule itself is named with the section it belongs in.
ALERT_NESTED_KEYS = {
    **dict.fromkeys(ALERT_WHEN_KEYS, ("when", "{failures: 10, within_minutes: 5}")),
    **dict.fromkeys(ALERT_DESTINATIONS, ("send", "{webhook: URL}")),
}


def alert_name(kind: str, threshold: float, within_minutes: float, provider: str | None) -> str:
    """The name of a rule that has no ``name:``, read off what it watches (``failures≥10/5min
    stripe``, ``backlog≥300s``), so that the same rule keeps its state row across restarts."""
    condition = f"backlog≥{threshold:g}s" if kind == "backlog" else f"{kind}≥{threshold:g}/{within_minutes:g}min"
    return f"{condition} {provider}" if provider else condition


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One rule of the ``alerts:`` section (see :mod:`workers.alerts`)."""

    #: The ``name:`` of the rule, else :func:`alert_name`; the key of its row in ``hookgate_alert_states``.
    name: str
    #: ``failures``, ``rejections`` or ``backlog`` (see :data:`ALERT_CONDITIONS`).
    kind: str
    #: A count (failures, rejections) or an age in seconds (backlog) that fires the alert when reached.
    threshold: float
    #: ``webhook`` or ``slack``, and the URL to POST to (it may carry a secret: never logged whole).
    destination: str
    url: str = field(repr=False)
    #: The rule covers this provider only; ``None``: every provider.
    provider: str | None = None
    #: The window the failures or rejections are counted in (``within_minutes``); 0 for backlog.
    window_seconds: float = 0.0
    #: After a firing message, no other firing message of the rule for this long (``cooldown_minutes``).
    cooldown_seconds: float = DEFAULT_COOLDOWN_SECONDS


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    """A configured route ``/webhooks/{name}``, with its reconciliation and ordering settings."""

    provider: BaseProvider
    max_body_bytes: int
    #: The provider's API for reconciliation; ``None`` when ``api:`` is not configured.
    api: ApiSettings | None = None
    #: ``ordering.window_ms`` in seconds: a resource's events are held this long after arrival.
    window_seconds: float = DEFAULT_WINDOW_MS / 1000
    #: The provider's own ``retention:`` (over the top-level one); ``None`` when it has none.
    retention: Retention | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    path: Path
    providers: dict[str, ProviderEntry]
    handlers: tuple[str, ...] = ()
    workers: WorkerSettings = WorkerSettings()
    retention: Retention = Retention()
    alerts: tuple[AlertRule, ...] = ()
    #: Line numbers of the file's entries, so that problems found later (a handler module that
    #: cannot be imported) point at their line like the loader's own problems do.
    lines: _Lines | None = field(default=None, compare=False, repr=False)

    def where(self, path: Path_) -> str:
        """``file:line: dotted.path``, the prefix of every problem about the entry at ``path``."""
        return _where(self.path, self.lines, path)

    @property
    def retention_by_provider(self) -> dict[str, Retention]:
        """The providers whose entry has its own ``retention:``."""
        return {name: entry.retention for name, entry in self.providers.items() if entry.retention is not None}

    @property
    def provider_types(self) -> dict[str, str]:
        """Each configured provider's built-in type, by name."""
        return {name: entry.provider.type_name for name, entry in self.providers.items()}


class _Lines:
    """Maps a path inside the YAML document to its line number, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines: dict[Path_, int] = {}
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self._walk(value, (*path, key.value))
                self.lines[(*path, key.value)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def line(self, path: Path_) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _where(file: Path, lines: _Lines | None, path: Path_) -> str:
    line = lines.line(path) if lines else 1
    return f"{file}:{line}: {_dotted(path)}" if path else f"{file}:{line}"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` is probably a typo of, if one is close enough (difflib's ratio >= 0.6)."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return close[0] if close else None


def unknown(what: str, word: str, known: Iterable[str], *, label: str = "known", always_list: bool = False) -> str:
    """``unknown key: did you mean 'type'?``: the near match, else (or also) the known choices."""
    known = list(known)
    near = did_you_mean(word, known)
    message = f"{what}: did you mean {near!r}?" if near else what
    return f"{message} ({label}: {', '.join(known)})" if always_list or not near else message


def _field_path(field_name: str) -> Path_:
    """``secrets[0]`` or ``signature.header`` from a provider's problem, as a path."""
    path: list[str | int] = []
    for part in field_name.split("."):
        name, *indexes = part.replace("]", "").split("[")
        path.append(name)
        path += [int(i) for i in indexes]
    return tuple(path)


class _Loader:
    def __init__(self, path: Path, environ: Mapping[str, str], clock: Clock | None) -> None:
        self.path, self.environ, self.clock = path, environ, clock or time.time
        self.problems: list[str] = []
        self.lines: _Lines | None = None
        #: Paths whose ``${NAME}`` could not be resolved (their follow-on problems are not repeated).
        self.unresolved: set[Path_] = set()

    def problem(self, path: Path_, message: str) -> None:
        self.problems.append(f"{_where(self.path, self.lines, path)}: {message}")

    def line(self, path: Path_) -> int:
        """The line of the entry at ``path``, for a problem that names a second entry."""
        return self.lines.line(path) if self.lines else 1

    def substitute(self, value: Any, path: Path_) -> Any:
        """Replace ``${NAME}`` in every string; a missing variable is a problem, never ''."""
        if isinstance(value, str):

            def replace(match: re.Match[str]) -> str:
                name, fallback = match.group(1), match.group(2)
                if name not in self.environ and fallback is not None:
                    return fallback
                if name not in self.environ:
                    owner = f" (provider {path[1]})" if len(path) > 1 and path[0] == "providers" else ""
                    self.problem(path, f"environment variable {name} is not set{owner}")
                    self.unresolved.add(path[:2])
                    return ""
                return self.environ[name]

            return ENV_REFERENCE.sub(replace, value)
        if isinstance(value, dict):
            return {k: self.substitute(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v, (*path, i)) for i, v in enumerate(value)]
        return value

    def positive_int(self, section: Mapping[str, Any], key: str, path: Path_, default: int) -> int:
        value = section.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.problem((*path, key), "must be a whole number >= 0")
            return default
        return value

    def load(self) -> Config:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{self.path}: cannot read the configuration: {exc.strerror}"]) from None
        try:
            data = yaml.safe_load(text) or {}
            self.lines = _Lines(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else 1
            raise ConfigError([f"{self.path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
        if not isinstance(data, dict):
            raise ConfigError([f"{self.path}:1: the file must be a mapping with a providers: section"])
        for key in data:
            if key not in SECTIONS:
                self.problem((key,), unknown("unknown section", str(key), SECTIONS, always_list=True))
        data = self.substitute(data, ())
        defaults = data.get("defaults") or {}
        self.unknown_keys(defaults, ("defaults",), DEFAULTS_KEYS)
        tolerance = self.positive_int(defaults, "tolerance_seconds", ("defaults",), 300)
        max_body = self.positive_int(defaults, "max_body_bytes", ("defaults",), 1_048_576)
        window_ms = self.window_ms(defaults, ("defaults",), DEFAULT_WINDOW_MS)
        retention = self.retention(data.get("retention"), ("retention",), Retention()) or Retention()
        providers = {}
        raw_providers = data.get("providers")
        if not isinstance(raw_providers, dict) or not raw_providers:
            self.problem(("providers",), "at least one provider is required")
            raw_providers = {}
        for name, raw in raw_providers.items():
            entry = self.provider(str(name), raw, tolerance, max_body, window_ms, retention)
            if entry is not None:
                providers[str(name)] = entry
        handlers = data.get("handlers") or []
        if not isinstance(handlers, list) or not all(isinstance(h, str) and h for h in handlers):
            self.problem(("handlers",), "must be a list of importable module names")
            handlers = []
        workers = self.workers(data.get("workers") or {})
        alerts = self.alerts(data.get("alerts") or [], raw_providers)
        if self.problems:
            raise ConfigError(self.problems)
        return Config(self.path, providers, tuple(handlers), workers, retention, alerts, self.lines)

    def unknown_keys(self, section: Any, path: Path_, known: Iterable[str], what: str = "unknown key") -> set[str]:
        """Report each key of ``section`` not in ``known``, naming the near match; returns them."""
        known = list(known)
        found = [key for key in section if key not in known] if isinstance(section, dict) else []
        for key in found:
            self.problem((*path, key), unknown(what, str(key), known))
        return set(found)

    def type_problem(self, raw: dict[Any, Any], path: Path_) -> None:
        """A missing or unknown ``type:``; the type's own keys cannot be judged without it, but a
        misspelt ``type`` key (``tpye``) is named as such."""
        type_name = raw.get("type")
        built_in = sorted(PROVIDER_TYPES)
        if type_name is None:
            for key in raw:
                if did_you_mean(str(key), ["type"]):
                    self.problem((*path, key), "unknown key: did you mean 'type'?")
            self.problem((*path, "type"), "required: one of the built-in types, e.g. type: stripe")
        else:
            what = f"unknown type {type_name!r}"
            self.problem((*path, "type"), unknown(what, str(type_name), built_in, label="built in", always_list=True))

    def window_ms(self, section: Mapping[str, Any], path: Path_, default: int) -> int:
        ordering = section.get("ordering") or {}
        if not isinstance(ordering, dict):
            self.problem((*path, "ordering"), "must be a mapping, e.g. {window_ms: 2000}")
            return default
        self.unknown_keys(ordering, (*path, "ordering"), ["window_ms"])
        return self.positive_int(ordering, "window_ms", (*path, "ordering"), default)

    def retention(self, raw: Any, path: Path_, default: Retention) -> Retention | None:
        """A ``retention:`` mapping over ``default``; ``None`` when there is none."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.problem(path, "must be a mapping, e.g. {events_days: 30, dedupe_days: 30}")
            return None
        values: dict[str, float] = {}
        unknown_keys = self.unknown_keys(raw, path, [f.name for f in fields(Retention)])
        for key, value in raw.items():
            if key in unknown_keys:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
                self.problem((*path, key), "must be a number of days > 0")
            else:
                values[key] = float(value)
        found = replace(default, **values)
        if "dedupe_days" in values and found.dedupe_days < MIN_DEDUPE_DAYS:
            self.problem(
                (*path, "dedupe_days"),
                "must be at least 3: Stripe retries an event for three days and GitHub allows redeliveries "
                "for three, so an id forgotten sooner could run its handlers twice",
            )
        return found

    def provider(
        self, name: str, raw: Any, tolerance: int, max_body: int, window_ms: int, retention: Retention
    ) -> ProviderEntry | None:
        path: Path_ = ("providers", name)
        if not PROVIDER_NAME.match(name):
            self.problem(path, "provider names are lower-case letters, digits, '-' and '_' (they become the URL)")
        if not isinstance(raw, dict):
            self.problem(path, "must be a mapping with at least a type:")
            return None
        type_name = raw.get("type")
        cls = PROVIDER_TYPES.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            self.type_problem(raw, path)
            return None
        known = [*COMMON_KEYS, *sorted(cls.option_keys)]
        unknown_keys = self.unknown_keys(raw, path, known, f"unknown key for type {cls.type_name!r}")
        secrets = raw.get("secrets", [])
        if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
            self.problem((*path, "secrets"), "must be a list of strings")
            secrets = []
        raw_api = raw.get("api")
        if raw_api is not None and not isinstance(raw_api, dict):
            self.problem((*path, "api"), "must be a mapping")
            raw_api = None
        window = self.window_ms(raw, path, window_ms)
        if path in self.unresolved:
            return None
        settings = ProviderSettings(
            name=name,
            type=str(type_name),
            secrets=tuple(secrets),
            tolerance_seconds=self.positive_int(raw, "tolerance_seconds", path, tolerance),
            options={k: v for k, v in raw.items() if k not in COMMON_KEYS and k not in unknown_keys},
        )
        try:
            provider = cls(settings, clock=self.clock)
        except ProviderConfigError as exc:
            for field_name, message in exc.problems:
                self.problem((*path, *_field_path(field_name)), message)
            return None
        api = None
        if raw_api is not None:
            api, problems = ApiSettings.parse(raw_api, cls.api_base_url)
            for field_name, message in problems:
                if message == "unknown key":
                    message = unknown(message, field_name.removeprefix("api."), ApiSettings.KEYS)
                self.problem((*path, *_field_path(field_name)), message)
        max_body = self.positive_int(raw, "max_body_bytes", path, max_body)
        own_retention = self.retention(raw.get("retention"), (*path, "retention"), retention)
        return ProviderEntry(provider, max_body, api, window / 1000, own_retention)

    def workers(self, raw: Any) -> WorkerSettings:
        if not isinstance(raw, dict):
            self.problem(("workers",), "must be a mapping")
            return WorkerSettings()
        known = {f.name: f for f in fields(WorkerSettings)}
        values: dict[str, Any] = {}
        unknown_keys = self.unknown_keys(raw, ("workers",), known)
        for key, value in raw.items():
            if key in unknown_keys:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                self.problem(("workers", key), "must be a number > 0")
            else:
                values[key] = int(value) if key == "max_attempts" else float(value)
        return WorkerSettings(**values)

    def alerts(self, raw: Any, providers: Mapping[Any, Any]) -> tuple[AlertRule, ...]:
        """The ``alerts:`` section: a list of rules, each checked like the rest of the file."""
        if not isinstance(raw, list):
            self.problem(("alerts",), f"must be a list of rules, e.g. - {ALERT_EXAMPLE}")
            return ()
        rules: list[AlertRule] = []
        named: dict[str, Path_] = {}  # each name, and the rule that has it
        for index, item in enumerate(raw):
            path: Path_ = ("alerts", index)
            rule = self.alert(item, path, [str(p) for p in providers])
            if rule is None:
                continue
            if rule.name in named:
                first = named[rule.name]
                own = item.get("name") is not None
                fix = "names must be unique" if own else "give one of them a name:"
                self.problem(
                    (*path, "name") if own else path,
                    f"{rule.name!r} is also the name of {_dotted(first)} (line {self.line(first)}): {fix}",
                )
            named.setdefault(rule.name, path)
            rules.append(rule)
        return tuple(rules)

    def alert(self, raw: Any, path: Path_, providers: list[str]) -> AlertRule | None:
        """One rule: ``when:`` (one condition), optional ``provider:``, ``send:`` (one destination),
        optional ``cooldown_minutes:`` and ``name:``."""
        if not isinstance(raw, dict):
            self.problem(path, f"must be a mapping, e.g. {ALERT_EXAMPLE}")
            return None
        before = len(self.problems)
        for key in [key for key in raw if key in ALERT_NESTED_KEYS]:
            section, example = ALERT_NESTED_KEYS[key]
            self.problem((*path, key), f"unknown key: {key} belongs in {section}:, e.g. {section}: {example}")
        self.unknown_keys({k: v for k, v in raw.items() if k not in ALERT_NESTED_KEYS}, path, ALERT_KEYS)
        name = raw.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 255):
            self.problem((*path, "name"), "must be a name of at most 255 characters")
        condition = self.alert_condition(raw.get("when"), (*path, "when"))
        provider = raw.get("provider")
        if provider is not None and provider not in providers:
            what = f"unknown provider {provider!r}"
            self.problem((*path, "provider"), unknown(what, str(provider), providers, label="configured"))
        destination = self.alert_destination(raw.get("send"), (*path, "send"))
        cooldown = self.alert_number(raw, "cooldown_minutes", path, required=False)
        if len(self.problems) > before or condition is None or destination is None:
            return None
        kind, threshold, within_minutes = condition
        return AlertRule(
            name=name or alert_name(kind, threshold, within_minutes, provider),
            kind=kind,
            threshold=threshold,
            destination=destination[0],
            url=destination[1],
            provider=provider,
            window_seconds=within_minutes * 60,
            cooldown_seconds=cooldown * 60 if "cooldown_minutes" in raw else DEFAULT_COOLDOWN_SECONDS,
        )

    def alert_condition(self, raw: Any, path: Path_) -> tuple[str, float, float] | None:
        """``when:``: the rule's kind, its threshold and its window in minutes (0 for backlog)."""
        key = self.one_key(
            raw,
            path,
            ALERT_CONDITIONS,
            ALERT_WHEN_KEYS,
            "one condition, e.g. {failures: 10, within_minutes: 5}",
            "one condition: failures: N or rejections: N with within_minutes: M, or backlog_age_seconds: S",
        )
        if key is None:
            return None
        threshold = self.alert_number(raw, key, path, required=True)
        if key == "backlog_age_seconds":
            if "within_minutes" in raw:
                self.problem((*path, "within_minutes"), "a backlog condition has no window: it is an age in seconds")
            return ALERT_CONDITIONS[key], threshold, 0.0
        return ALERT_CONDITIONS[key], threshold, self.alert_number(raw, "within_minutes", path, required=True)

    def alert_destination(self, raw: Any, path: Path_) -> tuple[str, str] | None:
        """``send:``: ``webhook`` or ``slack``, and its URL."""
        example = "one destination, {webhook: URL} or {slack: URL}"
        needs = "one destination: webhook: URL or slack: URL"
        key = self.one_key(raw, path, ALERT_DESTINATIONS, ALERT_DESTINATIONS, example, needs)
        if key is None:
            return None
        url = raw[key]
        unresolved = path[:2] in self.unresolved  # its ${NAME} is reported already
        if not unresolved and (not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url)):
            self.problem((*path, key), "must be an http:// or https:// URL")
        return key, str(url)

    def one_key(
        self, raw: Any, path: Path_, choices: Iterable[str], known: Iterable[str], example: str, needs: str
    ) -> str | None:
        """The one key of ``choices`` in the mapping ``raw`` (``when:``'s condition, ``send:``'s
        destination); ``None``, and a problem, when ``raw`` is no mapping or has none or several."""
        if not isinstance(raw, dict):
            what = "required" if raw is None else "must be a mapping"
            self.problem(path, f"{what}: {example}")
            return None
        misspelt = self.unknown_keys(raw, path, known)
        found = [key for key in choices if key in raw]
        if len(found) == 1:
            return found[0]
        if found or not misspelt:  # a misspelt key is named as such already
            self.problem(path, f"needs {needs}" + (f" (found {', '.join(found)})" if found else ""))
        return None

    def alert_number(self, raw: Mapping[str, Any], key: str, path: Path_, *, required: bool) -> float:
        value = raw.get(key)
        if value is None:
            if required:
                self.problem((*path, key), "required: a number > 0")
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.problem((*path, key), "must be a number > 0")
            return 0.0
        return float(value)


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, clock: Clock | None = None
) -> Config:
    """Load and validate providers.yaml.

    Raises:
        ConfigError: listing every problem found, each with file and line.
    """
    return _Loader(Path(path), os.environ if environ is None else environ, clock).load()
